"""Exceptions raised by the CoinStats provider.

Every exception carries a ``retryable`` flag: operators turn non-retryable errors into
``AirflowFailException`` so Airflow task retries never spend credits on a request that cannot succeed.
Messages name the cause and the fix; they never contain a credential, a header or a raw response body.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException


class CoinStatsError(AirflowException):
    """Base class of every CoinStats provider error."""

    retryable: bool = False


class CoinStatsConfigError(CoinStatsError, AirflowFailException):
    """An Airflow connection or argument is invalid; detected locally, before any credit is spent.

    Also an ``AirflowFailException``: raised from a plain ``@task`` (e.g. the pipeline steps), it fails
    the task without Airflow retries, which could not fix a configuration.
    """


class CoinStatsValidationError(CoinStatsConfigError):
    """Exchange credentials do not match what ``GET /exchange/support`` requires for that exchange."""


class CoinStatsCreditBudgetExceeded(CoinStatsError):
    """The next call would exceed the configured credit budget; it was not sent."""


class CoinStatsTransportError(CoinStatsError):
    """Connection error, reset or timeout that persisted through every retry."""

    retryable = True
    #: The transport exception's class name, e.g. ``ReadTimeout`` or ``ConnectionError``.
    cause: str = "transport error"


class CoinStatsResponseError(CoinStatsError):
    """CoinStats answered 2xx with a body that is not what the contract documents.

    :param message: What was wrong, already redacted.
    :param retryable: Whether sending the call again could help.
    :param cause: Short cause for retry log lines, e.g. ``unreadable JSON body``.
    """

    def __init__(self, message: str, *, retryable: bool = False, cause: str = "unreadable JSON body") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.cause = cause


class CoinStatsTruncatedAnswerError(CoinStatsResponseError):
    """A paid write was answered 2xx but its body was cut off or unreadable; the hook never re-sends it.

    CoinStats did the work (and billed it); sending the call again would pay twice. ``retryable`` tells
    whether a new Airflow try may send it again on purpose: only for the connect, whose answer (the
    portfolioId) can be learnt no other way and which CoinStats answers ``existing`` the second time.

    :param message: What happened and what to do, already redacted.
    :param cause: Short cause for log lines.
    :param retryable: Whether a new task try may send the call again.
    :param status: HTTP status CoinStats answered.
    :param problem: What was wrong with the body.
    """

    def __init__(
        self,
        message: str,
        *,
        cause: str = "body cut off",
        retryable: bool = False,
        status: int = 200,
        problem: str = "an unreadable body",
    ) -> None:
        super().__init__(message, retryable=retryable, cause=cause)
        self.status = status
        self.problem = problem


class CoinStatsListChangedError(CoinStatsResponseError):
    """A paged list changed upstream between two page reads; the stream was abandoned, nothing loaded.

    Reading the stream again from its first page gives a consistent list (retryable).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True, cause="list changed between page reads")


class CoinStatsFilterIgnoredError(CoinStatsResponseError):
    """CoinStats answered a ``from``-filtered read with items dated before ``from``: it did not apply the filter.

    The stream was abandoned before anything was written; read the whole list instead (the transactions
    load does that on its own). Not retryable: the same request gets the same answer.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, cause="date filter not applied")


class CoinStatsAPIError(CoinStatsError):
    """CoinStats answered with an HTTP error status.

    :param status_code: HTTP status code.
    :param message: CoinStats' ``message`` field, already redacted.
    :param request_id: CoinStats' ``requestId``, to quote to CoinStats support.
    :param path: The API path that failed.
    :param hint: What the user can do about it.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        request_id: str | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.http_status = status_code
        self.api_message = message
        self.request_id = request_id
        self.path = path
        self.hint = hint
        parts = [f"CoinStats API error {status_code}"]
        if path:
            parts.append(f" on {path}")
        parts.append(f": {message or '(no message)'}")
        if request_id:
            parts.append(f" (requestId {request_id})")
        if hint:
            parts.append(f"{'' if parts[-1].endswith('.') else '.'} {hint}")
        super().__init__("".join(parts))


class CoinStatsRedirectError(CoinStatsAPIError):
    """3xx: CoinStats (or something in between) redirected the call; redirects are never followed.

    Following one would re-send the API key header and a request body with exchange credentials to
    the redirect target. Not retryable: the connection's host must be fixed.
    """


class CoinStatsBadRequestError(CoinStatsAPIError):
    """400: bad parameters or request format."""


class CoinStatsAuthError(CoinStatsAPIError):
    """401 not attributable to a specific credential."""


class CoinStatsInvalidApiKeyError(CoinStatsAuthError):
    """401: the CoinStats API key itself is invalid or missing."""


class CoinStatsExchangeCredentialsError(CoinStatsAuthError):
    """401: CoinStats accepted the API key but the exchange rejected the exchange credentials."""


class CoinStatsPermissionError(CoinStatsAPIError):
    """403: the API key's plan does not allow this endpoint."""


class CoinStatsNotFoundError(CoinStatsAPIError):
    """404: the portfolio or resource does not exist for this API key."""


class CoinStatsCreditsExhaustedError(CoinStatsAPIError):
    """406 (or 402, or a 429 whose message is about credits): the account has no credits left."""


class CoinStatsConflictError(CoinStatsAPIError):
    """409: e.g. transactions are not synced yet."""


class CoinStatsRateLimitError(CoinStatsAPIError):
    """429 rate limit that persisted through every retry."""

    retryable = True


class CoinStatsServerError(CoinStatsAPIError):
    """5xx that persisted through every retry (or a 5xx that is never transient, such as 501)."""

    retryable = True


class CoinStatsSyncTimeoutError(CoinStatsError, AirflowFailException):
    """A portfolio sync did not reach ``synced`` before its deadline.

    Also an ``AirflowFailException``: Airflow does not retry the task; the fix is a longer sync timeout or
    a look at the account in CoinStats.
    """


def is_retryable(exc: BaseException) -> bool:
    """Tell whether an Airflow task retry could help after ``exc``.

    :param exc: The exception raised by a hook call.
    """
    return bool(getattr(exc, "retryable", False))
