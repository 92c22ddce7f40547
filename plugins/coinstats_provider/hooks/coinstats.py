"""CoinStatsHook: the only place that talks HTTP to the CoinStats API (sync and async)."""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import email.utils
import hashlib
import ipaddress
import itertools
import json
import logging
import math
import os
import random
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx
from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import mask_secret

from coinstats_provider import __version__
from coinstats_provider.credits import CreditMeter, credit_cost
from coinstats_provider.exceptions import (
    CoinStatsAPIError,
    CoinStatsAuthError,
    CoinStatsBadRequestError,
    CoinStatsConfigError,
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
    CoinStatsTruncatedAnswerError,
)
from coinstats_provider.hooks import paging
from coinstats_provider.hooks.paging import DEFAULT_MAX_PAGES, PagedRoute, iter_pages
from coinstats_provider.models import ConnectResult, ConnectStatus, CreditUsage, SupportedExchange, SyncStatus

if TYPE_CHECKING:
    # requests is imported when a task first sends a request, not when a DAG file is parsed.
    import requests

DEFAULT_BASE_URL = "https://openapiv1.coinstats.app"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_BASE = 1.0
DEFAULT_BACKOFF_MAX = 60.0
DEFAULT_SUPPORT_CACHE_TTL = 3600.0
DEFAULT_PAGE_SIZE = 100
USER_AGENT = f"airflow-provider-coinstats/{__version__}"

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_EXCHANGE_ROUTES = ("/portfolio/exchange", "/exchange/", "/portfolio/sync")
_MAX_MESSAGE = 300
#: Longest wait a ``Retry-After`` header can ask for (the retry delay is further capped by ``backoff_max``).
MAX_RETRY_AFTER = 86400.0
_RETRY_AFTER_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?", re.ASCII)
#: Allowed (minimum, maximum) of the numeric connection extras.
_EXTRA_RANGES: Mapping[str, tuple[float, float]] = {
    "timeout": (0.001, 3600.0),
    "backoff_base": (0.0, 3600.0),
    "backoff_max": (0.0, 86400.0),
    "support_cache_ttl": (0.0, 30 * 86400.0),
    "credit_budget": (0.0, 1e12),
}
#: How far in the future a cached ``fetched_at`` may lie (clock skew between workers) before it is rejected.
_CACHE_CLOCK_SKEW = 300.0
_CACHE_MAX_BYTES = 4 * 1024 * 1024

log = logging.getLogger(__name__)

# In-process cache of GET /exchange/support, keyed by base URL: (fetched_at, exchanges).
_SUPPORT_CACHE: dict[str, tuple[float, list[SupportedExchange]]] = {}
_SUPPORT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ClientSettings:
    """Resolved, validated settings of a ``coinstats`` connection."""

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    credit_budget: int | None = None
    support_cache_ttl: float = DEFAULT_SUPPORT_CACHE_TTL


def parse_extra(conn: Connection) -> dict[str, Any]:
    """Return a connection's extra as a dict, with a clear error when it is not a JSON object.

    :param conn: The Airflow connection.
    """
    raw = conn.extra
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, dict):
        return dict(raw)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CoinStatsConfigError(
            f"The extra of connection '{conn.conn_id}' is not valid JSON ({err.msg} at line {err.lineno} "
            f'column {err.colno}). Fix it to a JSON object such as {{"timeout": 30}}.'
        ) from None
    if not isinstance(value, dict):
        raise CoinStatsConfigError(
            f"The extra of connection '{conn.conn_id}' must be a JSON object, not {type(value).__name__}."
        )
    return value


def _shown(value: Any) -> str:
    """Render a configuration value for an error message (short, JSON-like)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _number(conn_id: str, key: str, value: Any, default: float) -> float:
    """Validate one numeric extra (or the hook argument of the same name) against its allowed range.

    :param conn_id: Connection id, for error messages.
    :param key: Extra name, a key of ``_EXTRA_RANGES``.
    :param value: The configured value; ``None`` or ``""`` means the default.
    :param default: Value used when nothing is configured.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    low, high = _EXTRA_RANGES[key]
    number: float | None = None
    if not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = None
    if number is None or not math.isfinite(number) or not low <= number <= high:
        raise CoinStatsConfigError(
            f"Extra '{key}' of connection '{conn_id}' must be a finite number from {low:g} to {high:g}, "
            f"got {_shown(value)}. Fix the connection extra (or the hook argument '{key}')."
        )
    return number


def _max_retries(conn_id: str, value: Any) -> int:
    """Validate ``max_retries``: an integer from 0 to 20 (not a boolean, not a fraction, not NaN).

    :param conn_id: Connection id, for error messages.
    :param value: The configured value.
    """
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,6}\s*", value, re.ASCII)
    ):
        number = int(value)
    if number is None or not 0 <= number <= 20:
        raise CoinStatsConfigError(
            f"Extra 'max_retries' of connection '{conn_id}' must be an integer between 0 and 20, "
            f"got {_shown(value)}. Fix the connection extra (or the hook argument 'max_retries')."
        )
    return number


def _is_loopback(hostname: str) -> bool:
    """Tell whether ``hostname`` is ``localhost``, an address in 127.0.0.0/8 or ``::1``.

    :param hostname: Host name as parsed from a URL (lower-cased, without brackets).
    """
    if hostname.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def build_base_url(conn_id: str, host: str | None, port: int | None) -> str:
    """Build the API base URL from a connection's host and port.

    ``host`` may be empty (default CoinStats URL), a bare host name, or a full URL with scheme, port
    and path; a separate ``port`` is added when the host has none. Plain ``http://`` is accepted only
    for a loopback host; every other host must use ``https://``.

    :param conn_id: Connection id, for error messages.
    :param host: The connection's host field.
    :param port: The connection's port field.
    """
    host = (host or "").strip()
    if not host:
        base = DEFAULT_BASE_URL
    elif "://" in host:
        base = host
    else:
        base = f"https://{host}"
    try:
        parts = urlsplit(base)
        host_port = parts.port
    except ValueError:
        parts, host_port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise CoinStatsConfigError(
            f"Connection '{conn_id}' has an invalid host: expected a base URL such as {DEFAULT_BASE_URL} "
            "or http://127.0.0.1:8765 (scheme http or https, a host name, optional port)."
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise CoinStatsConfigError(
            f"Connection '{conn_id}' host must not contain credentials, a query or a fragment; "
            "put the API key in the Password field."
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise CoinStatsConfigError(
            f"Connection '{conn_id}' uses plain http:// for host {parts.hostname}: the API key would travel "
            f"unencrypted. Use https://{parts.netloc}{parts.path.rstrip('/')} as the host; plain http is only "
            "accepted for a loopback host (localhost, 127.0.0.0/8, ::1), such as the sandbox at "
            "http://127.0.0.1:8765."
        )
    netloc = parts.netloc
    if port:
        if host_port and host_port != port:
            raise CoinStatsConfigError(
                f"Connection '{conn_id}' sets port {port} but its host already says port {host_port}; keep only one."
            )
        if not host_port:
            netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def settings_from_connection(
    conn: Connection,
    *,
    timeout: float | None = None,
    max_retries: int | None = None,
    credit_budget: int | None = None,
) -> ClientSettings:
    """Validate a ``coinstats`` connection and resolve its settings; nothing is sent.

    :param conn: The Airflow connection.
    :param timeout: Overrides extra ``timeout`` (seconds per request).
    :param max_retries: Overrides extra ``max_retries``.
    :param credit_budget: Overrides extra ``credit_budget``.
    """
    conn_id = conn.conn_id
    if conn.conn_type and conn.conn_type not in ("coinstats", "http", "https"):
        raise CoinStatsConfigError(
            f"Connection '{conn_id}' has conn_type '{conn.conn_type}', expected 'coinstats'. "
            "Create it as a CoinStats connection (conn_type coinstats)."
        )
    api_key = (conn.password or "").strip()
    if not api_key:
        raise CoinStatsConfigError(
            f"Connection '{conn_id}' has no CoinStats API key. Put the key in its Password field "
            '(in AIRFLOW_CONN_* JSON: "password"); keys come from https://openapi.coinstats.app.'
        )
    extra = parse_extra(conn)
    budget_raw = credit_budget if credit_budget is not None else extra.get("credit_budget")
    budget = None if budget_raw is None or budget_raw == "" else int(_number(conn_id, "credit_budget", budget_raw, 0))
    retries = max_retries if max_retries is not None else extra.get("max_retries", DEFAULT_MAX_RETRIES)
    return ClientSettings(
        conn_id=conn_id,
        base_url=build_base_url(conn_id, conn.host, conn.port),
        api_key=api_key,
        timeout=_number(conn_id, "timeout", timeout if timeout is not None else extra.get("timeout"), DEFAULT_TIMEOUT),
        max_retries=_max_retries(conn_id, retries),
        backoff_base=_number(conn_id, "backoff_base", extra.get("backoff_base"), DEFAULT_BACKOFF_BASE),
        backoff_max=_number(conn_id, "backoff_max", extra.get("backoff_max"), DEFAULT_BACKOFF_MAX),
        credit_budget=budget,
        support_cache_ttl=_number(
            conn_id, "support_cache_ttl", extra.get("support_cache_ttl"), DEFAULT_SUPPORT_CACHE_TTL
        ),
    )


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
    body: Any = None
    try:
        body = json.loads(content) if content else None
    except (ValueError, RecursionError):
        body = None
    body = body if isinstance(body, dict) else {}
    raw_message = body.get("message") or body.get("error") or ""
    message = redact(_flatten_message(raw_message, secrets), secrets)
    request_id_raw = body.get("requestId") or body.get("request_id")
    request_id = redact(_flatten_message(request_id_raw, secrets), secrets)[:80] if request_id_raw else None
    lowered = message.lower()
    kwargs: dict[str, Any] = {"request_id": request_id, "path": path}
    if status == 400:
        return CoinStatsBadRequestError(status, message, hint="Check the request parameters.", **kwargs)
    if status == 401:
        if "api key" in lowered or "apikey" in lowered or "api-key" in lowered:
            return CoinStatsInvalidApiKeyError(
                status,
                message,
                hint=f"The CoinStats API key in connection '{conn_id}' (Password field) is invalid; "
                "generate a new key at https://openapi.coinstats.app and update the connection.",
                **kwargs,
            )
        if path.startswith(_EXCHANGE_ROUTES) and path != "/exchange/support":
            return CoinStatsExchangeCredentialsError(
                status,
                message,
                hint="CoinStats accepted the API key but the exchange rejected the exchange credentials; "
                "create a new read-only API key on the exchange and update the exchange connection.",
                **kwargs,
            )
        return CoinStatsAuthError(status, message, hint=f"Check the API key in connection '{conn_id}'.", **kwargs)
    if status in (402, 406) or (status == 429 and "credit" in lowered):
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
        portfolio_route = path.startswith("/portfolio/") and path != "/portfolio/exchange"
        return CoinStatsNotFoundError(
            status,
            message,
            hint="The portfolio does not exist for this API key; connect the exchange again."
            if portfolio_route
            else f"CoinStats has no {path} at this address; check the host (base URL) of connection "
            f"'{conn_id}' (default {DEFAULT_BASE_URL}).",
            **kwargs,
        )
    if status == 409:
        return CoinStatsConflictError(
            status,
            message,
            hint="Trigger a portfolio sync and wait until GET /portfolio/status says synced.",
            **kwargs,
        )
    if status == 429:
        return CoinStatsRateLimitError(status, message, hint="Rate limited; lower the pool size.", **kwargs)
    if status in RETRYABLE_STATUS:
        return CoinStatsServerError(status, message, hint="CoinStats is having trouble; retry later.", **kwargs)
    return CoinStatsAPIError(status, message, **kwargs)


class CoinStatsHook(BaseHook):
    """Client for the CoinStats OpenAPI.

    Retries connection errors, timeouts, malformed or cut-off 2xx bodies of reads, 429 and
    500/502/503/504 with ``Retry-After`` or capped exponential backoff with jitter; every other error
    raises a typed exception at once. A paid write answered 2xx is never sent twice, and redirects are
    never followed. Counts credits per call in :attr:`credits`.

    :param coinstats_conn_id: Airflow connection of type ``coinstats``.
    :param timeout: Seconds per request; overrides the connection extra ``timeout``.
    :param max_retries: Retries per request; overrides the connection extra ``max_retries``.
    :param credit_budget: Maximum credits this hook may spend; overrides extra ``credit_budget``.
    """

    conn_name_attr = "coinstats_conn_id"
    default_conn_name = "coinstats_default"
    conn_type = "coinstats"
    hook_name = "CoinStats"

    def __init__(
        self,
        coinstats_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        credit_budget: int | None = None,
    ) -> None:
        super().__init__()
        self.coinstats_conn_id = coinstats_conn_id
        self._overrides: dict[str, Any] = {
            "timeout": timeout,
            "max_retries": max_retries,
            "credit_budget": credit_budget,
        }
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
            self.__dict__["settings"] = settings_from_connection(conn, **self._overrides)
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
        return {
            "X-API-KEY": settings.api_key,
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    # -- transport -------------------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        settings = self.settings
        if retry_after is not None:
            return min(retry_after, settings.backoff_max)
        ceiling = min(settings.backoff_max, settings.backoff_base * 2.0**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _answered(
        self,
        method: str,
        path: str,
        cost: int,
        status: int,
        content: bytes | None,
        headers: Mapping[str, str],
        secrets: Collection[str],
        *,
        need_body: bool = True,
        resend_after_2xx: bool = True,
        exact_numbers: bool = False,
        read_error: str | None = None,
    ) -> tuple[Any, CoinStatsError | None, float | None]:
        """Turn one HTTP answer into ``(json, None, None)`` or ``(None, retryable error, Retry-After)``.

        Counts the credits of a 2xx answer (CoinStats served it, whether or not its body arrived
        intact); raises non-retryable errors at once.

        :param content: The body, or ``None`` when reading it failed (``read_error`` says why).
        :param need_body: ``False`` when the 2xx status alone proves success.
        :param resend_after_2xx: ``False`` for a paid write: an unreadable 2xx body then raises
            :class:`CoinStatsTruncatedAnswerError` instead of sending (and paying for) the call again.
        :param exact_numbers: Decode JSON numbers with a fraction or exponent as :class:`decimal.Decimal`.
        :param read_error: Class name of the error that cut the body off, if any.
        """
        if 200 <= status < 300:
            self.credits.record(method, path, cost)
            if read_error is None:
                try:
                    return _decode_json(content or b"", exact_numbers=exact_numbers), None, None
                except _NonStandardConstantError as err:
                    problem, cause = f"the non-standard JSON constant {err.constant}", "non-standard JSON"
                except (ValueError, RecursionError):
                    problem, cause = "malformed or truncated JSON", "unreadable JSON body"
            else:
                problem, cause = f"a body cut off on the wire ({read_error})", f"body cut off: {read_error}"
            if not need_body:
                self.log.warning(
                    "CoinStats %s %s answered %d with an unreadable body; the call succeeded, so it is "
                    "not sent (and paid for) again (%s)",
                    method,
                    path,
                    status,
                    cause,
                )
                return None, None, None
            if not resend_after_2xx:
                raise CoinStatsTruncatedAnswerError(
                    _unreadable_write_message(method, path, status, problem),
                    cause=cause,
                    retryable=(method.upper(), path) == ("POST", "/portfolio/exchange"),
                )
            error: CoinStatsError = CoinStatsResponseError(
                f"CoinStats {method} {path} answered {status} with {problem}.", retryable=True, cause=cause
            )
            return None, error, None
        error = error_from_response(status, content or b"", path, secrets, self.coinstats_conn_id)
        if status not in RETRYABLE_STATUS or isinstance(error, CoinStatsCreditsExhaustedError):
            raise error
        return None, error, parse_retry_after(headers.get("Retry-After"))

    def _refuse_redirect(
        self, method: str, path: str, status: int, location: str | None, secrets: Collection[str]
    ) -> None:
        """Raise :class:`CoinStatsRedirectError` for a 3xx answer; redirects are never followed.

        Following one would re-send the ``X-API-KEY`` header (and a POST body with exchange
        credentials) to wherever ``Location`` points. No credits are counted.

        :param method: HTTP method.
        :param path: API path.
        :param status: HTTP status of the answer.
        :param location: Its ``Location`` header; only scheme, host and port are ever shown.
        :param secrets: Values to redact.
        """
        if not 300 <= status < 400:
            return
        base_url = self.settings.base_url
        target = redact(_redirect_target(location, base_url + path), secrets)
        raise CoinStatsRedirectError(
            status,
            f"{method} {path} was redirected to {target}; redirects are never followed, so the API key "
            "and the request body were not sent there",
            path=path,
            hint=f"Set the host of connection '{self.coinstats_conn_id}' (now {base_url}) to the final base "
            "URL of the CoinStats API (without the redirect), e.g. the https address the redirect points to "
            "if it is genuinely CoinStats.",
        )

    def _transport_error(self, method: str, path: str, err: Exception) -> CoinStatsTransportError:
        settings = self.settings
        error = CoinStatsTransportError(
            f"CoinStats {method} {path} failed: {type(err).__name__} talking to {settings.base_url} "
            f"(timeout {settings.timeout:g} s). Check that the host is reachable or raise the connection "
            "extra 'timeout'."
        )
        error.cause = type(err).__name__
        return error

    def _backoff(self, method: str, path: str, attempt: int, error: CoinStatsError, retry_after: float | None) -> float:
        """Return how long to wait before the next attempt, or raise ``error`` when retries are used up."""
        if attempt >= self.settings.max_retries:
            raise error
        self.credits.retries += 1
        delay = self._delay(attempt, retry_after)
        self.log.warning(
            "CoinStats %s %s failed (%s); retry %d of %d in %.1f s",
            method,
            path,
            _short(error),
            attempt + 1,
            self.settings.max_retries,
            delay,
        )
        return delay

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
        settings = self.settings
        cost = credit_cost(method, path, params)
        all_secrets = (settings.api_key, *secrets)
        url = settings.base_url + path
        resend = method.upper() == "GET" if resend_after_2xx is None else resend_after_2xx
        for attempt in itertools.count():
            # Before every attempt: a retry costs credits again if CoinStats answered the last one 2xx.
            self.credits.check(method, path, cost)
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    timeout=settings.timeout,
                    allow_redirects=False,
                    stream=True,
                )
            except _transport_errors() as err:
                error: CoinStatsError | None = self._transport_error(method, path, err)
                retry_after: float | None = None
            else:
                with response:
                    status = response.status_code
                    self._refuse_redirect(method, path, status, response.headers.get("Location"), all_secrets)
                    content: bytes | None = None
                    read_error: str | None = None
                    try:
                        content = response.content
                    except _body_errors() as err:
                        read_error = type(err).__name__
                    data, error, retry_after = self._answered(
                        method,
                        path,
                        cost,
                        status,
                        content,
                        response.headers,
                        all_secrets,
                        need_body=need_body,
                        resend_after_2xx=resend,
                        exact_numbers=exact_numbers,
                        read_error=read_error,
                    )
                if error is None:
                    return data
            assert error is not None
            self._sleep(self._backoff(method, path, attempt, error, retry_after))
        raise AssertionError("unreachable")

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
        cost = credit_cost(method, path, params)
        secrets = (settings.api_key,)
        resend = method.upper() == "GET" if resend_after_2xx is None else resend_after_2xx
        async with httpx.AsyncClient(
            base_url=settings.base_url,
            headers=self._headers(settings),
            timeout=settings.timeout,
            follow_redirects=False,
        ) as client:
            for attempt in itertools.count():
                self.credits.check(method, path, cost)
                try:
                    response = await client.send(
                        client.build_request(method, path, params=params), stream=True, follow_redirects=False
                    )
                except httpx.TransportError as err:
                    error: CoinStatsError | None = self._transport_error(method, path, err)
                    retry_after: float | None = None
                else:
                    try:
                        status = response.status_code
                        self._refuse_redirect(method, path, status, response.headers.get("Location"), secrets)
                        content: bytes | None = None
                        read_error: str | None = None
                        try:
                            content = await response.aread()
                        except (httpx.TransportError, httpx.DecodingError) as err:
                            read_error = type(err).__name__
                        data, error, retry_after = self._answered(
                            method,
                            path,
                            cost,
                            status,
                            content,
                            response.headers,
                            secrets,
                            need_body=need_body,
                            resend_after_2xx=resend,
                            exact_numbers=exact_numbers,
                            read_error=read_error,
                        )
                    finally:
                        with contextlib.suppress(httpx.HTTPError, OSError):
                            await response.aclose()
                    if error is None:
                        return data
                assert error is not None
                await self._asleep(self._backoff(method, path, attempt, error, retry_after))
        raise AssertionError("unreachable")

    # -- exchange connection ---------------------------------------------------------------------

    def get_supported_exchanges(self) -> list[SupportedExchange]:
        """Return ``GET /exchange/support`` (1 credit), cached in-process and on disk.

        The list is public and the same for every API key, so it is cached per base URL for the
        connection extra ``support_cache_ttl`` seconds (default 3600; 0 disables): a mapped run pays
        one credit per worker machine and hour instead of one per task. The disk copy lives in
        ``COINSTATS_CACHE_DIR`` or ``<tempdir>/coinstats-provider-<uid>`` (0700, owned by this user);
        any cache problem falls back to the network.
        """
        settings = self.settings
        ttl = settings.support_cache_ttl
        key = settings.base_url
        now = time.time()
        with _SUPPORT_LOCK:
            cached = _SUPPORT_CACHE.get(key)
            if ttl and cached and now - cached[0] < ttl:
                return list(cached[1])
            if ttl:
                from_disk = _read_support_cache(key, ttl, now)
                if from_disk is not None:
                    _SUPPORT_CACHE[key] = from_disk
                    return list(from_disk[1])
            data = self.request("GET", "/exchange/support")
            exchanges = _parse_support(data)
            _SUPPORT_CACHE[key] = (now, exchanges)
            if ttl:
                _write_support_cache(key, data, now)
            return list(exchanges)

    def connect_exchange_portfolio(
        self, connection_id: str, connection_fields: Mapping[str, str], name: str | None = None
    ) -> ConnectResult:
        """Connect an exchange account as a CoinStats portfolio (``POST /portfolio/exchange``, 10 credits).

        :param connection_id: CoinStats exchange id, e.g. ``binance``.
        :param connection_fields: Credentials keyed as ``GET /exchange/support`` lists them.
        :param name: Optional portfolio display name.
        """
        body: dict[str, Any] = {"connectionId": connection_id, "connectionFields": dict(connection_fields)}
        if name:
            body["name"] = name
        # POST /portfolio/exchange is idempotent on the CoinStats side: the same credentials answer
        # "existing" with the same portfolioId, so retrying after a timeout or 5xx is safe and cannot
        # create a second portfolio. A 2xx whose body is cut off is not re-sent (it was paid): it raises
        # CoinStatsTruncatedAnswerError, and a rerun reconnects.
        data = self.request("POST", "/portfolio/exchange", json_body=body, secrets=tuple(connection_fields.values()))
        secrets = (self.settings.api_key, *connection_fields.values())
        if not isinstance(data, dict):
            raise CoinStatsResponseError("CoinStats POST /portfolio/exchange answered with a non-object body.")
        portfolio_id = data.get("portfolioId")
        if not isinstance(portfolio_id, str) or not portfolio_id.strip():
            raise CoinStatsResponseError(
                "CoinStats POST /portfolio/exchange answered without a portfolioId; nothing can be synced. "
                "Retry later or contact CoinStats support."
            )
        raw_status = data.get("status")
        if raw_status not in {s.value for s in ConnectStatus}:
            shown = redact(str(raw_status), secrets)[:40]
            raise CoinStatsResponseError(
                f"CoinStats POST /portfolio/exchange answered an unknown status '{shown}' "
                "(expected 'connected' or 'existing')."
            )
        status = ConnectStatus(raw_status)
        answered_id = data.get("connectionId")
        if isinstance(answered_id, str) and answered_id != connection_id:
            self.log.warning(
                "CoinStats answered connectionId %r for a %r connect; keeping %r",
                redact(answered_id, secrets)[:40],
                connection_id,
                connection_id,
            )
        return ConnectResult(portfolio_id=portfolio_id, connection_id=connection_id, status=status)

    # -- usage and connection test ---------------------------------------------------------------

    def get_credit_usage(self) -> CreditUsage:
        """Return ``GET /usage/credits`` (no stated cost)."""
        data = self.request("GET", "/usage/credits")
        try:
            return CreditUsage(
                total_credits=float(data["totalCredits"]),
                used_credits=float(data["usedCredits"]),
                remaining_credits=float(data["remainingCredits"]),
                subscription=str(data.get("subscription") or "unknown")[:40],
            )
        except (KeyError, TypeError, ValueError):
            raise CoinStatsResponseError("CoinStats GET /usage/credits answered an unexpected body.") from None

    def test_connection(self) -> tuple[bool, str]:
        """Check the API key with a free authenticated call; never raises, never echoes a secret."""
        try:
            usage = self.get_credit_usage()
        except CoinStatsError as err:
            return False, str(err)
        except Exception as err:
            secrets = (self.__dict__["settings"].api_key,) if "settings" in self.__dict__ else ()
            return False, f"{type(err).__name__}: {redact(str(err), secrets)}"
        return True, (
            f"Connected to CoinStats at {self.settings.base_url}: {usage.remaining_credits:,.0f} of "
            f"{usage.total_credits:,.0f} credits left ({usage.subscription})."
        )

    # -- sync ------------------------------------------------------------------------------------

    def trigger_portfolio_sync(self, portfolio_id: str) -> None:
        """Start a sync of one portfolio (``PATCH /portfolio/sync``, 30 credits).

        :param portfolio_id: The portfolio; required, because without it CoinStats syncs every
            portfolio at 10x the cost.
        """
        if not portfolio_id:
            raise CoinStatsConfigError(
                "trigger_portfolio_sync needs a portfolio_id (without it CoinStats "
                "syncs every portfolio at 10x credits)."
            )
        # A 2xx answer means the sync started; a truncated body must not start (and pay for) a second one.
        data = self.request("PATCH", "/portfolio/sync", params={"portfolioId": portfolio_id}, need_body=False)
        if isinstance(data, dict) and data.get("success") is False:
            raise CoinStatsResponseError(f"CoinStats refused to sync portfolio {portfolio_id} (success=false).")

    @staticmethod
    def parse_sync_status(data: Any, secrets: Collection[str] = ()) -> SyncStatus:
        """Validate a ``GET /portfolio/status`` body.

        :param data: Decoded JSON body.
        :param secrets: Values to redact from the error message.
        """
        raw = data.get("status") if isinstance(data, dict) else None
        if raw not in {s.value for s in SyncStatus}:
            raise CoinStatsResponseError(
                f"CoinStats GET /portfolio/status answered an unknown status '{redact(str(raw), secrets)[:40]}' "
                "(expected 'syncing' or 'synced')."
            )
        return SyncStatus(raw)

    def get_portfolio_sync_status(self, portfolio_id: str) -> SyncStatus:
        """Return the sync status of a portfolio (``GET /portfolio/status``, 3 credits).

        :param portfolio_id: The portfolio.
        """
        data = self.request("GET", "/portfolio/status", params={"portfolioId": portfolio_id})
        return self.parse_sync_status(data, (self.settings.api_key,))

    async def aget_portfolio_sync_status(self, portfolio_id: str) -> SyncStatus:
        """Async :meth:`get_portfolio_sync_status`, for triggers.

        :param portfolio_id: The portfolio.
        """
        data = await self.arequest("GET", "/portfolio/status", params={"portfolioId": portfolio_id})
        return self.parse_sync_status(data, (self.settings.api_key,))

    # -- extract ---------------------------------------------------------------------------------

    def get_portfolio_value(self, portfolio_id: str, currency: str = "USD") -> dict[str, Any]:
        """Return ``GET /portfolio/value`` (10 credits), numbers decoded exactly (``Decimal``).

        :param portfolio_id: The portfolio.
        :param currency: Currency of the figures.
        """
        params = {"portfolioId": portfolio_id, "currency": currency}
        data = self.request("GET", "/portfolio/value", params=params, exact_numbers=True)
        if not isinstance(data, dict):
            raise CoinStatsResponseError("CoinStats GET /portfolio/value answered with a non-object body.")
        return data

    def _pages(
        self, route: PagedRoute, params: Mapping[str, Any], page_size: int, start_page: int, max_pages: int
    ) -> Iterator[list[dict[str, Any]]]:
        def fetch(page: int, limit: int) -> Any:
            return self.request("GET", route.path, params={**params, "page": page, "limit": limit}, exact_numbers=True)

        return iter_pages(fetch, route, page_size=page_size, start_page=start_page, max_pages=max_pages)

    def iter_portfolio_coins(
        self,
        portfolio_id: str,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        start_page: int = 1,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of ``GET /portfolio/coins`` (8 credits per page) until the end is proven.

        Paging checks (server caps, repeated pages, a list that shifts): :mod:`coinstats_provider.hooks.paging`.

        :param portfolio_id: The portfolio.
        :param page_size: Items per page (``limit``), 1 to 100.
        :param start_page: First page to fetch (1-based).
        :param max_pages: Most pages to read.
        """
        params = {"portfolioId": portfolio_id}
        return self._pages(paging.COINS, params, page_size, start_page, max_pages)

    def iter_portfolio_transactions(
        self,
        portfolio_id: str,
        *,
        currency: str = "USD",
        page_size: int = DEFAULT_PAGE_SIZE,
        start_page: int = 1,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of ``GET /portfolio/transactions`` (4 credits per page) until the end is proven.

        Raises :class:`~coinstats_provider.exceptions.CoinStatsListChangedError` when the list shifts
        between page reads (see :mod:`coinstats_provider.hooks.paging`); restart the stream then.

        :param portfolio_id: The portfolio.
        :param currency: Required by CoinStats on this route.
        :param page_size: Items per page (``limit``), 1 to 100.
        :param start_page: First page to fetch (1-based).
        :param max_pages: Most pages to read.
        """
        params = {"portfolioId": portfolio_id, "currency": currency or "USD"}
        return self._pages(paging.TRANSACTIONS, params, page_size, start_page, max_pages)


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


class _NonStandardConstantError(ValueError):
    """A JSON body used ``NaN``, ``Infinity`` or ``-Infinity``, which standard JSON does not allow."""

    def __init__(self, constant: str) -> None:
        super().__init__(f"non-standard JSON constant {constant}")
        self.constant = constant


def _reject_constant(constant: str) -> Any:
    raise _NonStandardConstantError(constant)


def _decode_json(content: bytes, *, exact_numbers: bool = False) -> Any:
    """Decode a JSON body; with ``exact_numbers`` floats become :class:`decimal.Decimal` and NaN/Infinity fail.

    :param content: The body.
    :param exact_numbers: Keep every digit of amounts (``1e400`` stays a finite Decimal).
    """
    if exact_numbers:
        return json.loads(content, parse_float=decimal.Decimal, parse_constant=_reject_constant)
    return json.loads(content)


def _unreadable_write_message(method: str, path: str, status: int, problem: str) -> str:
    """Explain a paid write answered 2xx whose body could not be read, and what to do."""
    if (method.upper(), path) == ("POST", "/portfolio/exchange"):
        return (
            f"CoinStats accepted the connect (POST /portfolio/exchange answered {status}) but its answer was "
            f"cut off or unreadable ({problem}), so the portfolioId is unknown. The portfolio exists on "
            "CoinStats; the hook does not send a paid write twice. The task's next try (or a rerun) "
            "reconnects for 10 credits and CoinStats answers 'existing' with the same portfolioId."
        )
    return (
        f"CoinStats accepted {method} {path} (answered {status}) but its answer was cut off or unreadable "
        f"({problem}). The call was served and billed; it was not sent again automatically because it is a "
        "paid write. Check its effect on CoinStats before rerunning the task."
    )


def _redirect_target(location: str | None, request_url: str) -> str:
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


def _short(error: CoinStatsError) -> str:
    if isinstance(error, CoinStatsAPIError):
        return f"HTTP {error.http_status}"
    if isinstance(error, CoinStatsTransportError):
        return error.cause  # ReadTimeout, ConnectionError, ... (which one matters when reading a log)
    if isinstance(error, CoinStatsResponseError):
        return error.cause  # unreadable JSON body, body cut off: ChunkedEncodingError, ...
    return type(error).__name__


def _parse_support(data: Any) -> list[SupportedExchange]:
    if not isinstance(data, list):
        raise CoinStatsResponseError("CoinStats GET /exchange/support answered with a non-list body.")
    exchanges = []
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("connectionId"), str):
            continue
        fields = [f for f in entry.get("connectionFields") or [] if isinstance(f, dict) and f.get("key")]
        exchanges.append(
            SupportedExchange(
                connection_id=entry["connectionId"],
                name=str(entry.get("name") or entry["connectionId"]),
                field_keys=tuple(str(f["key"]) for f in fields),
                field_labels=tuple(str(f.get("name") or f["key"]) for f in fields),
            )
        )
    if not exchanges:
        raise CoinStatsResponseError("CoinStats GET /exchange/support answered an empty exchange list.")
    return exchanges


def _cache_root() -> Path:
    """The exchange-support cache directory: ``COINSTATS_CACHE_DIR``, else a per-user temp directory."""
    configured = os.environ.get("COINSTATS_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"coinstats-provider-{os.getuid()}"


def _cache_file(base_url: str) -> Path:
    """The cache file of one base URL (its directory may not exist or be unusable).

    :param base_url: API base URL the cached list belongs to.
    """
    return _cache_root() / f"exchange-support-{hashlib.sha256(base_url.encode()).hexdigest()[:16]}.json"


def _usable_cache_dir() -> Path | None:
    """Create (0700) and vet the cache directory; ``None`` (disk cache skipped) when it is not safe.

    Safe means: a real directory (not a symlink), owned by the current user, not group- or
    world-writable, so nobody else can plant or swap the cached list.
    """
    root = _cache_root()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(root)
    except OSError as err:
        log.debug("Exchange-support disk cache skipped: cannot create %s (%s)", root, type(err).__name__)
        return None
    if not stat.S_ISDIR(info.st_mode):
        log.debug("Exchange-support disk cache skipped: %s is not a directory (or is a symlink)", root)
        return None
    if info.st_uid != os.getuid():
        log.debug("Exchange-support disk cache skipped: %s is owned by another user", root)
        return None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.debug("Exchange-support disk cache skipped: %s is group- or world-writable", root)
        return None
    return root


def _read_support_cache(base_url: str, ttl: float, now: float) -> tuple[float, list[SupportedExchange]] | None:
    """Return the cached ``(fetched_at, exchanges)`` if fresh and trustworthy, else ``None``.

    Never follows a symlink, rejects a ``fetched_at`` that is not finite or lies in the future (beyond
    a small clock skew), and never raises: any cache problem falls back to the network.

    :param base_url: API base URL the list belongs to.
    :param ttl: Maximum age in seconds.
    :param now: Current epoch seconds.
    """
    try:
        root = _usable_cache_dir()
        if root is None:
            return None
        path = root / _cache_file(base_url).name
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                log.debug("Exchange-support disk cache ignored: %s is not a regular file of this user", path)
                return None
            raw = handle.read(_CACHE_MAX_BYTES + 1)
        if len(raw) > _CACHE_MAX_BYTES:
            return None
        stored = json.loads(raw)
        fetched_at = float(stored["fetched_at"])
        if not math.isfinite(fetched_at) or fetched_at > now + _CACHE_CLOCK_SKEW:
            log.debug("Exchange-support disk cache ignored: fetched_at is not a past time")
            return None
        if now - fetched_at >= ttl:
            return None
        return fetched_at, _parse_support(stored["exchanges"])
    except FileNotFoundError:
        return None
    except Exception as err:
        log.debug("Exchange-support disk cache ignored (%s); fetching from CoinStats", type(err).__name__)
        return None


def _write_support_cache(base_url: str, data: Any, now: float) -> None:
    """Store the list atomically (``mkstemp`` in the vetted directory, then ``os.replace``); never raises.

    :param base_url: API base URL the list belongs to.
    :param data: The decoded ``GET /exchange/support`` body.
    :param now: Epoch seconds it was fetched at.
    """
    tmp: str | None = None
    try:
        root = _usable_cache_dir()
        if root is None:
            return
        path = root / _cache_file(base_url).name
        fd, tmp = tempfile.mkstemp(prefix=".exchange-support-", suffix=".tmp", dir=root)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"fetched_at": now, "exchanges": data}, handle)
        # rename() replaces a symlink at ``path`` itself, never the file it points to.
        os.replace(tmp, path)
        tmp = None
    except Exception as err:
        log.debug("Exchange-support disk cache not written (%s)", type(err).__name__)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
