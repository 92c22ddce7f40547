"""CoinStatsBaseHook: the transport to the CoinStats API, sync (``requests``) and async (``httpx``).

Both paths plan a call once, send it, and hand each answer to one shared decision step
(:meth:`CoinStatsBaseHook._decide`); only sending, reading and sleeping differ between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import amask_secret, mask_secret

from coinstats_provider import __version__
from coinstats_provider.credits import CreditMeter, credit_cost
from coinstats_provider.exceptions import (
    CoinStatsCreditsExhaustedError,
    CoinStatsError,
    CoinStatsResponseError,
    CoinStatsTruncatedAnswerError,
)
from coinstats_provider.hooks.attempt import Answer, Call, Verdict, decode_body
from coinstats_provider.hooks.connection import DEFAULT_CONN_NAME, ClientSettings, settings_from_connection
from coinstats_provider.hooks.errors import (
    RETRYABLE_STATUS,
    error_from_response,
    parse_retry_after,
    redirect_error,
    short_cause,
    transport_error,
    unreadable_write_message,
)

if TYPE_CHECKING:
    # requests is imported when a task first sends a request, not when a DAG file is parsed.
    import requests

USER_AGENT = f"airflow-provider-coinstats/{__version__}"


def _transport_errors() -> tuple[type[Exception], ...]:
    """The ``requests`` errors that mean the request may not have reached CoinStats (retryable)."""
    import requests

    return (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def _body_errors() -> tuple[type[Exception], ...]:
    """The errors that cut off reading a body after the status line arrived."""
    import http.client

    import requests
    import urllib3

    return (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


class CoinStatsBaseHook(BaseHook):
    """Transport to the CoinStats OpenAPI; :class:`~coinstats_provider.hooks.CoinStatsHook` adds the endpoints.

    Retries connection errors, timeouts, malformed or cut-off 2xx bodies of reads, 429 and
    500/502/503/504 with ``Retry-After`` or capped exponential backoff with jitter; every other error
    raises a typed exception at once. A paid write answered 2xx is never sent twice, and redirects are
    never followed. Counts credits per call in :attr:`credits`.

    :param coinstats_conn_id: Airflow connection of type ``coinstats``.
    :param timeout: Seconds per request; overrides the connection extra ``timeout``.
    :param max_retries: Retries per request; overrides the connection extra ``max_retries``.
    :param credit_budget: Maximum credits this hook may spend; overrides extra ``credit_budget``.
    """

    def __init__(
        self,
        coinstats_conn_id: str = DEFAULT_CONN_NAME,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        credit_budget: int | None = None,
    ) -> None:
        super().__init__()
        self.coinstats_conn_id = coinstats_conn_id
        self._overrides: dict[str, Any] = dict(timeout=timeout, max_retries=max_retries, credit_budget=credit_budget)
        self._sleep: Callable[[float], None] = time.sleep
        self._asleep: Callable[[float], Any] = asyncio.sleep

    # -- configuration ---------------------------------------------------------------------------

    @cached_property
    def settings(self) -> ClientSettings:
        """Validated settings of the connection (resolved once per hook)."""
        settings = settings_from_connection(self.get_connection(self.coinstats_conn_id), **self._overrides)
        mask_secret(settings.api_key)
        return settings

    async def asettings(self) -> ClientSettings:
        """Async variant of :attr:`settings` for triggers (uses the async connection lookup)."""
        if "settings" not in self.__dict__:
            try:
                conn = await self.aget_connection(self.coinstats_conn_id)
            except AirflowNotFoundException:
                # `airflow dags test` runs triggers inline, where only the synchronous lookup reaches the
                # metadata DB; run it off the event loop.
                conn = await asyncio.to_thread(self.get_connection, self.coinstats_conn_id)
            settings = settings_from_connection(conn, **self._overrides)
            await amask_secret(settings.api_key)
            self.__dict__["settings"] = settings
        return self.settings

    @cached_property
    def credits(self) -> CreditMeter:
        """Credits spent by this hook, with the configured budget."""
        return CreditMeter(self.settings.credit_budget)

    @property
    def credits_spent(self) -> int:
        """Credits charged so far (earlier tries' carried over included); 0 before the first call.

        Reading it never resolves the connection, so it is safe in ``finally`` blocks.
        """
        return self.credits.spent if "credits" in self.__dict__ else 0

    @cached_property
    def session(self) -> requests.Session:
        """One pooled session, built on first use."""
        import requests
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        session.headers.update(self._headers(self.settings))
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def get_conn(self) -> requests.Session:
        """Return the pooled :class:`requests.Session`."""
        return self.session

    @staticmethod
    def _headers(settings: ClientSettings) -> dict[str, str]:
        """Headers of every request: the API key, JSON, and this provider's User-Agent."""
        return {"X-API-KEY": settings.api_key, "Accept": "application/json", "User-Agent": USER_AGENT}

    # -- the decision step shared by request() and arequest() ------------------------------------

    def _plan(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        secrets: Collection[str],
        need_body: bool,
        resend_after_2xx: bool | None,
        exact_numbers: bool,
    ) -> Call:
        """Fix cost, secrets and resend policy of a call once, before its first attempt (see :meth:`request`)."""
        resend = method.upper() == "GET" if resend_after_2xx is None else resend_after_2xx
        cost = credit_cost(method, path, params)
        return Call(method, path, cost, (self.settings.api_key, *secrets), need_body, resend, exact_numbers)

    def _attempts(self, call: Call) -> Iterator[int]:
        """Yield attempt numbers 0, 1, ...; the credit budget is checked before each one."""
        for attempt in itertools.count():
            # A retry costs credits again if CoinStats answered the last attempt 2xx.
            self.credits.check(call.method, call.path, call.cost)
            yield attempt

    def _refuse_redirect(self, call: Call, status: int, location: str | None) -> None:
        """Raise :class:`~coinstats_provider.exceptions.CoinStatsRedirectError` for a 3xx answer (no credits counted).

        Following one would re-send the ``X-API-KEY`` header (and a POST body with exchange credentials).

        :param call: The call.
        :param status: HTTP status of the answer.
        :param location: Its ``Location`` header; only scheme, host and port are ever shown.
        """
        if 300 <= status < 400:
            raise redirect_error(
                call.method,
                call.path,
                status,
                location,
                base_url=self.settings.base_url,
                conn_id=self.coinstats_conn_id,
                secrets=call.secrets,
            )

    def _decide(self, call: Call, attempt: int, answer: Answer) -> Verdict:
        """Judge one attempt: return its decoded body, or the wait before the next; raise what is final.

        Counts the credits of a 2xx answer (CoinStats served it, whether or not its body arrived intact).

        :param call: The call.
        :param attempt: 0-based attempt number.
        :param answer: What the attempt got back.
        """
        retry_after: float | None = None
        if answer.failure is not None:
            settings = self.settings
            error: CoinStatsError = transport_error(
                call.method, call.path, answer.failure, base_url=settings.base_url, timeout=settings.timeout
            )
        elif 200 <= answer.status < 300:
            self.credits.record(call.method, call.path, call.cost)
            data, unreadable = decode_body(answer, exact_numbers=call.exact_numbers)
            retryable = None if unreadable is None else self._unreadable(call, answer.status, *unreadable)
            if retryable is None:
                return Verdict(done=True, data=data)
            error = retryable
        else:
            error = error_from_response(
                answer.status, answer.content or b"", call.path, call.secrets, self.coinstats_conn_id
            )
            if answer.status not in RETRYABLE_STATUS or isinstance(error, CoinStatsCreditsExhaustedError):
                raise error
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
        return Verdict(done=False, delay=self._backoff(call.method, call.path, attempt, error, retry_after))

    def _unreadable(self, call: Call, status: int, problem: str, cause: str) -> CoinStatsError | None:
        """Handle a 2xx whose body is unreadable: accept it, refuse to re-send it, or retry it.

        :param call: The call; ``need_body`` and ``resend_after_2xx`` choose.
        :param status: HTTP status of the answer.
        :param problem: What was wrong with the body, for the message.
        :param cause: Short cause, for log lines.
        """
        method, path = call.method, call.path
        if not call.need_body:
            self.log.warning(
                "CoinStats %s %s answered %d with an unreadable body; the call succeeded, so it is "
                "not sent (and paid for) again (%s)",
                method,
                path,
                status,
                cause,
            )
            return None
        if not call.resend_after_2xx:
            raise CoinStatsTruncatedAnswerError(
                unreadable_write_message(method, path, status, problem),
                cause=cause,
                status=status,
                problem=problem,
            )
        message = f"CoinStats {method} {path} answered {status} with {problem}."
        return CoinStatsResponseError(message, retryable=True, cause=cause)

    def _backoff(self, method: str, path: str, attempt: int, error: CoinStatsError, retry_after: float | None) -> float:
        """Return how long to wait before the next attempt, or raise ``error`` when retries are used up.

        :param method: HTTP method.
        :param path: API path.
        :param attempt: 0-based number of the attempt that failed.
        :param error: Its retryable error.
        :param retry_after: Seconds the answer's ``Retry-After`` asked for, if any.
        """
        settings = self.settings
        if attempt >= settings.max_retries:
            raise error
        self.credits.retries += 1
        if retry_after is not None:
            delay = min(retry_after, settings.backoff_max)
        else:
            ceiling = min(settings.backoff_max, settings.backoff_base * 2.0**attempt)
            delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        self.log.warning(
            "CoinStats %s %s failed (%s); retry %d of %d in %.1f s",
            method,
            path,
            short_cause(error),
            attempt + 1,
            settings.max_retries,
            delay,
        )
        return delay

    # -- sync ------------------------------------------------------------------------------------

    def _send(self, call: Call, params: Mapping[str, Any] | None, json_body: Mapping[str, Any] | None) -> Answer:
        """Send one attempt through the pooled session; the status line is read before the body."""
        settings = self.settings
        try:
            response = self.session.request(
                call.method,
                settings.base_url + call.path,
                params=params,
                json=json_body,
                timeout=settings.timeout,
                allow_redirects=False,
                stream=True,
            )
        except _transport_errors() as err:
            return Answer(failure=err)
        with response:
            status, headers = response.status_code, response.headers
            self._refuse_redirect(call, status, headers.get("Location"))
            try:
                return Answer(status, headers, response.content)
            except _body_errors() as err:
                return Answer(status, headers, None, type(err).__name__)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Mapping[str, Any] | None = None,
        secrets: Collection[str] = (),
        need_body: bool = True,
        resend_after_2xx: bool | None = None,
        exact_numbers: bool = False,
    ) -> Any:
        """Send one API call with retries and credit accounting; return the decoded JSON.

        Redirects are never followed (a 3xx raises :class:`CoinStatsRedirectError`). The status line is
        read before the body, so a 2xx whose body is cut off on the wire is still known to be served.

        :param method: HTTP method.
        :param path: API path, e.g. ``/portfolio/coins``.
        :param params: Query parameters.
        :param json_body: JSON body.
        :param secrets: Extra secret values (besides the API key) to redact from error messages.
        :param need_body: ``False`` when the 2xx status alone proves success: a 2xx answer whose body is
            unreadable then returns ``None`` instead of being retried (and paid for) again.
        :param resend_after_2xx: Whether the call may be sent again after a 2xx answer whose body is cut
            off or unreadable. Default: only for ``GET``; a write then raises
            :class:`CoinStatsTruncatedAnswerError` (unless ``need_body`` is ``False``).
        :param exact_numbers: Decode numbers with a fraction or exponent as :class:`decimal.Decimal`
            (every digit kept) and treat ``NaN``/``Infinity`` in the body as a malformed answer.
        """
        call = self._plan(method, path, params, secrets, need_body, resend_after_2xx, exact_numbers)
        for attempt in self._attempts(call):
            verdict = self._decide(call, attempt, self._send(call, params, json_body))
            if verdict.done:
                return verdict.data
            self._sleep(verdict.delay)
        raise AssertionError("unreachable")

    # -- async -----------------------------------------------------------------------------------

    async def _asend(self, client: httpx.AsyncClient, call: Call, params: Mapping[str, Any] | None) -> Answer:
        """Async :meth:`_send` through ``client``; the response is always closed."""
        try:
            request = client.build_request(call.method, call.path, params=params)
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.TransportError as err:
            return Answer(failure=err)
        try:
            status, headers = response.status_code, response.headers
            self._refuse_redirect(call, status, headers.get("Location"))
            try:
                return Answer(status, headers, await response.aread())
            except (httpx.TransportError, httpx.DecodingError) as err:
                return Answer(status, headers, None, type(err).__name__)
        finally:
            with contextlib.suppress(httpx.HTTPError, OSError):
                await response.aclose()

    async def arequest(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        need_body: bool = True,
        resend_after_2xx: bool | None = None,
        exact_numbers: bool = False,
    ) -> Any:
        """Async variant of :meth:`request` (used by triggers); same retry, redirect and error policy.

        :param method: HTTP method.
        :param path: API path.
        :param params: Query parameters.
        :param need_body: As in :meth:`request`.
        :param resend_after_2xx: As in :meth:`request`.
        :param exact_numbers: As in :meth:`request`.
        """
        settings = await self.asettings()
        call = self._plan(method, path, params, (), need_body, resend_after_2xx, exact_numbers)
        async with httpx.AsyncClient(
            base_url=settings.base_url,
            headers=self._headers(settings),
            timeout=settings.timeout,
            follow_redirects=False,
        ) as client:
            for attempt in self._attempts(call):
                verdict = self._decide(call, attempt, await self._asend(client, call, params))
                if verdict.done:
                    return verdict.data
                await self._asleep(verdict.delay)
        raise AssertionError("unreachable")
