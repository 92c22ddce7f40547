"""From an HTTP answer to a typed exception: redaction, ``Retry-After`` and error mapping (no HTTP client)."""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Collection
from typing import Any
from urllib.parse import urljoin, urlsplit

from coinstats_provider.exceptions import (
    CoinStatsAPIError,
    CoinStatsAuthError,
    CoinStatsBadRequestError,
    CoinStatsConflictError,
    CoinStatsCreditsExhaustedError,
    CoinStatsError,
    CoinStatsExchangeCredentialsError,
    CoinStatsInvalidApiKeyError,
    CoinStatsNotFoundError,
    CoinStatsPermissionError,
    CoinStatsRateLimitError,
    CoinStatsRedirectError,
    CoinStatsResponseError,
    CoinStatsServerError,
    CoinStatsTransportError,
)
from coinstats_provider.hooks.connection import DEFAULT_BASE_URL

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: Longest wait a ``Retry-After`` header can ask for (the retry delay is further capped by ``backoff_max``).
MAX_RETRY_AFTER = 86400.0
_EXCHANGE_ROUTES = ("/portfolio/exchange", "/exchange/", "/portfolio/sync")
_MAX_MESSAGE = 300
_RETRY_AFTER_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?", re.ASCII)


def redact(text: str, secrets: Collection[str]) -> str:
    """Replace every known secret value in ``text`` by ``***`` and cap its length.

    :param text: Text that may echo a secret (e.g. a CoinStats error message).
    :param secrets: Secret values to remove.
    """
    text = " ".join(_redact_forms(text, secrets).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _secret_forms(secret: str) -> set[str]:
    """Return ``secret`` as written raw, JSON-escaped (ASCII or not) and ``repr``/``ascii``-escaped."""
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
    }
    return {form for form in forms if form}


def _redact_forms(text: str, secrets: Collection[str]) -> str:
    """Replace every written form of every secret in ``text`` by ``***`` (no length cap)."""
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms |= _secret_forms(secret)
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def _flatten_message(value: Any, secrets: Collection[str], depth: int = 0) -> str:
    """Join a (possibly nested) CoinStats ``message`` into text, redacting each string leaf first.

    Each leaf is redacted before anything is stringified, so escaping (``str()`` of a list doubles a
    backslash) cannot hide a secret from :func:`redact`.
    """
    if depth > 8:
        return "..."
    if isinstance(value, str):
        return _redact_forms(value, secrets)
    if isinstance(value, list):
        return "; ".join(_flatten_message(item, secrets, depth + 1) for item in value)
    if isinstance(value, dict):
        return "; ".join(
            f"{_flatten_message(key, secrets, depth + 1)}: {_flatten_message(item, secrets, depth + 1)}"
            for key, item in value.items()
        )
    return _redact_forms(str(value), secrets)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header (seconds or HTTP date) into seconds to wait.

    Seconds must be ASCII digits (optionally with a decimal fraction); anything else that is not an
    HTTP date counts as no header. The wait is capped at :data:`MAX_RETRY_AFTER`.

    :param value: The header value, if any.
    :param now: Current epoch seconds (for tests).
    """
    if not value:
        return None
    value = value.strip()
    if _RETRY_AFTER_SECONDS.fullmatch(value):
        return min(float(value), MAX_RETRY_AFTER)
    if not value.isascii():
        return None
    try:
        wait = email.utils.parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, OverflowError, IndexError, OSError):
        return None
    if not math.isfinite(wait):
        return None
    return min(max(0.0, wait), MAX_RETRY_AFTER)


def _body_fields(content: bytes, secrets: Collection[str]) -> tuple[str, str | None]:
    """Return the redacted ``message`` and ``requestId`` of an error body (empty when unreadable).

    :param content: Response body.
    :param secrets: Values to redact.
    """
    body: Any = None
    try:
        body = json.loads(content) if content else None
    except (ValueError, RecursionError):
        body = None
    body = body if isinstance(body, dict) else {}
    message = redact(_flatten_message(body.get("message") or body.get("error") or "", secrets), secrets)
    request_id_raw = body.get("requestId") or body.get("request_id")
    request_id = redact(_flatten_message(request_id_raw, secrets), secrets)[:80] if request_id_raw else None
    return message, request_id


def _unauthorized(message: str, conn_id: str, *, path: str, request_id: str | None) -> CoinStatsAPIError:
    """Map a 401: an invalid API key, rejected exchange credentials, or another auth failure.

    :param message: Redacted CoinStats message.
    :param conn_id: CoinStats connection id, named in hints.
    :param path: API path that was called.
    :param request_id: CoinStats' request id, if any.
    """
    kwargs: dict[str, Any] = {"request_id": request_id, "path": path}
    lowered = message.lower()
    if "api key" in lowered or "apikey" in lowered or "api-key" in lowered:
        return CoinStatsInvalidApiKeyError(
            401,
            message,
            hint=f"The CoinStats API key in connection '{conn_id}' (Password field) is invalid; "
            "generate a new key at https://openapi.coinstats.app and update the connection.",
            **kwargs,
        )
    if path.startswith(_EXCHANGE_ROUTES) and path != "/exchange/support":
        return CoinStatsExchangeCredentialsError(
            401,
            message,
            hint="CoinStats accepted the API key but the exchange rejected the exchange credentials; "
            "create a new read-only API key on the exchange and update the exchange connection.",
            **kwargs,
        )
    return CoinStatsAuthError(401, message, hint=f"Check the API key in connection '{conn_id}'.", **kwargs)


def _not_found_hint(path: str, conn_id: str) -> str:
    """Explain a 404: a missing portfolio, or a wrong base URL.

    :param path: API path that was called.
    :param conn_id: CoinStats connection id, named in the hint.
    """
    if path.startswith("/portfolio/") and path != "/portfolio/exchange":
        return "The portfolio does not exist for this API key; connect the exchange again."
    return (
        f"CoinStats has no {path} at this address; check the host (base URL) of connection "
        f"'{conn_id}' (default {DEFAULT_BASE_URL})."
    )


def error_from_response(
    status: int, content: bytes, path: str, secrets: Collection[str], conn_id: str
) -> CoinStatsAPIError:
    """Map an HTTP error answer to a typed exception; the raw body never leaves this function.

    :param status: HTTP status code.
    :param content: Response body.
    :param path: API path that was called.
    :param secrets: Values to redact from CoinStats' message.
    :param conn_id: CoinStats connection id, named in hints.
    """
    message, request_id = _body_fields(content, secrets)
    kwargs: dict[str, Any] = {"request_id": request_id, "path": path}
    if status == 400:
        return CoinStatsBadRequestError(status, message, hint="Check the request parameters.", **kwargs)
    if status == 401:
        return _unauthorized(message, conn_id, path=path, request_id=request_id)
    if status in (402, 406) or (status == 429 and "credit" in message.lower()):
        return CoinStatsCreditsExhaustedError(
            status,
            message,
            hint="The CoinStats account has no credits left: upgrade the plan or wait for the renewal "
            "(GET /usage/credits shows the balance). Retrying cannot help.",
            **kwargs,
        )
    if status == 403:
        return CoinStatsPermissionError(
            status,
            message,
            hint="The API key's plan does not include this endpoint; upgrade the CoinStats plan or use "
            f"an API key whose plan includes {path} in connection '{conn_id}'.",
            **kwargs,
        )
    if status == 404:
        return CoinStatsNotFoundError(status, message, hint=_not_found_hint(path, conn_id), **kwargs)
    if status == 409:
        hint = "Trigger a portfolio sync and wait until GET /portfolio/status says synced."
        return CoinStatsConflictError(status, message, hint=hint, **kwargs)
    if status == 429:
        return CoinStatsRateLimitError(status, message, hint="Rate limited; lower the pool size.", **kwargs)
    if status in RETRYABLE_STATUS:
        return CoinStatsServerError(status, message, hint="CoinStats is having trouble; retry later.", **kwargs)
    return CoinStatsAPIError(status, message, **kwargs)


def redirect_target(location: str | None, request_url: str) -> str:
    """Return scheme, host and port of a redirect's ``Location`` (never its path or query).

    :param location: The ``Location`` header, if any.
    :param request_url: URL of the redirected request, to resolve a relative ``Location``.
    """
    if not location or not location.strip():
        return "an address not given (no Location header)"
    try:
        parts = urlsplit(urljoin(request_url, location.strip()))
        port = parts.port
    except ValueError:
        return "an unreadable Location"
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not re.fullmatch(r"[A-Za-z0-9._:-]{1,253}", host, re.ASCII):
        return "an unreadable Location"
    shown_host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown_host}" + (f":{port}" if port else "")


def redirect_error(
    method: str, path: str, status: int, location: str | None, *, base_url: str, conn_id: str, secrets: Collection[str]
) -> CoinStatsRedirectError:
    """Build the error of a 3xx answer; only scheme, host and port of ``Location`` are shown.

    :param method: HTTP method.
    :param path: API path.
    :param status: HTTP status of the answer.
    :param location: Its ``Location`` header.
    :param base_url: API base URL of the connection.
    :param conn_id: CoinStats connection id, named in the hint.
    :param secrets: Values to redact.
    """
    target = redact(redirect_target(location, base_url + path), secrets)
    return CoinStatsRedirectError(
        status,
        f"{method} {path} was redirected to {target}; redirects are never followed, so the API key "
        "and the request body were not sent there",
        path=path,
        hint=f"Set the host of connection '{conn_id}' (now {base_url}) to the final base "
        "URL of the CoinStats API (without the redirect), e.g. the https address the redirect points to "
        "if it is genuinely CoinStats.",
    )


def transport_error(
    method: str, path: str, err: Exception, *, base_url: str, timeout: float
) -> CoinStatsTransportError:
    """Build the retryable error of a request that may not have reached CoinStats.

    :param method: HTTP method.
    :param path: API path.
    :param err: The HTTP client's exception; only its class name is kept.
    :param base_url: API base URL of the connection.
    :param timeout: Seconds per request, named in the hint.
    """
    error = CoinStatsTransportError(
        f"CoinStats {method} {path} failed: {type(err).__name__} talking to {base_url} "
        f"(timeout {timeout:g} s). Check that the host is reachable or raise the connection "
        "extra 'timeout'."
    )
    error.cause = type(err).__name__
    return error


def unreadable_write_message(method: str, path: str, status: int, problem: str) -> str:
    """Explain a paid write answered 2xx whose body could not be read, and what to do.

    :param method: HTTP method.
    :param path: API path.
    :param status: HTTP status of the answer.
    :param problem: What was wrong with the body.
    """
    return (
        f"CoinStats accepted {method} {path} (answered {status}) but its answer was cut off or unreadable "
        f"({problem}). The call was served and billed; it was not sent again automatically because it is a "
        "paid write. Check its effect on CoinStats before rerunning the task."
    )


def short_cause(error: CoinStatsError) -> str:
    """Name an error in a retry log line: ``HTTP 503``, ``ReadTimeout``, ``unreadable JSON body``...

    :param error: The retryable error.
    """
    if isinstance(error, CoinStatsAPIError):
        return f"HTTP {error.http_status}"
    if isinstance(error, CoinStatsTransportError):
        return error.cause  # ReadTimeout, ConnectionError, ... (which one matters when reading a log)
    if isinstance(error, CoinStatsResponseError):
        return error.cause  # unreadable JSON body, body cut off: ChunkedEncodingError, ...
    return type(error).__name__
