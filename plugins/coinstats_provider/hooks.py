"""CoinStatsHook: the only place that talks HTTP to the CoinStats API (sync and async)."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import itertools
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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
    CoinStatsResponseError,
    CoinStatsServerError,
    CoinStatsTransportError,
)
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


def _number(conn_id: str, extra: Mapping[str, Any], key: str, default: float, *, minimum: float) -> float:
    value = extra.get(key, default)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CoinStatsConfigError(
            f"Extra '{key}' of connection '{conn_id}' must be a number, got {type(value).__name__}."
        ) from None
    if number < minimum:
        raise CoinStatsConfigError(f"Extra '{key}' of connection '{conn_id}' must be >= {minimum}.")
    return number


def build_base_url(conn_id: str, host: str | None, port: int | None) -> str:
    """Build the API base URL from a connection's host and port.

    ``host`` may be empty (default CoinStats URL), a bare host name, or a full URL with scheme, port
    and path; a separate ``port`` is added when the host has none.

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
    budget = None if budget_raw in (None, "") else int(_number(conn_id, {"b": budget_raw}, "b", 0, minimum=0))
    retries = max_retries if max_retries is not None else extra.get("max_retries", DEFAULT_MAX_RETRIES)
    try:
        retries_int = int(retries)
    except (TypeError, ValueError):
        raise CoinStatsConfigError(f"Extra 'max_retries' of connection '{conn_id}' must be an integer.") from None
    if not 0 <= retries_int <= 20:
        raise CoinStatsConfigError(f"Extra 'max_retries' of connection '{conn_id}' must be between 0 and 20.")
    return ClientSettings(
        conn_id=conn_id,
        base_url=build_base_url(conn_id, conn.host, conn.port),
        api_key=api_key,
        timeout=timeout if timeout is not None else _number(conn_id, extra, "timeout", DEFAULT_TIMEOUT, minimum=0.001),
        max_retries=retries_int,
        backoff_base=_number(conn_id, extra, "backoff_base", DEFAULT_BACKOFF_BASE, minimum=0),
        backoff_max=_number(conn_id, extra, "backoff_max", DEFAULT_BACKOFF_MAX, minimum=0),
        credit_budget=budget,
        support_cache_ttl=_number(conn_id, extra, "support_cache_ttl", DEFAULT_SUPPORT_CACHE_TTL, minimum=0),
    )


def redact(text: str, secrets: Collection[str]) -> str:
    """Replace every known secret value in ``text`` by ``***`` and cap its length.

    :param text: Text that may echo a secret (e.g. a CoinStats error message).
    :param secrets: Secret values to remove.
    """
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header (seconds or HTTP date) into seconds to wait.

    :param value: The header value, if any.
    :param now: Current epoch seconds (for tests).
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    raw_message = body.get("message") or body.get("error") or ""
    if isinstance(raw_message, list):
        raw_message = "; ".join(str(m) for m in raw_message)
    message = redact(str(raw_message), secrets)
    request_id_raw = body.get("requestId") or body.get("request_id")
    request_id = redact(str(request_id_raw), secrets)[:80] if request_id_raw else None
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


def _items(data: Any, keys: tuple[str, ...], path: str) -> list[dict[str, Any]]:
    """Return the item list of a paged envelope, accepting either ``result`` or ``data``."""
    if isinstance(data, dict):
        for key in keys:
            value = data.get(key)
            if isinstance(value, list):
                return value
    raise CoinStatsResponseError(
        f"CoinStats {path} answered without a list under {' or '.join(repr(k) for k in keys)}."
    )


class CoinStatsHook(BaseHook):
    """Client for the CoinStats OpenAPI.

    Retries connection errors, timeouts, malformed 2xx bodies, 429 and 500/502/503/504 with
    ``Retry-After`` or capped exponential backoff with jitter; every other error raises a typed
    exception at once. Counts credits per call in :attr:`credits`.

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
        content: bytes,
        headers: Mapping[str, str],
        secrets: Collection[str],
        *,
        need_body: bool = True,
    ) -> tuple[Any, CoinStatsError | None, float | None]:
        """Turn one HTTP answer into ``(json, None, None)`` or ``(None, retryable error, Retry-After)``.

        Counts the credits of a 2xx answer; raises non-retryable errors at once.
        """
        if 200 <= status < 300:
            self.credits.record(method, path, cost)
            try:
                return json.loads(content), None, None
            except ValueError:
                if not need_body:
                    self.log.warning(
                        "CoinStats %s %s answered %d with an unreadable body; the call succeeded, so it is "
                        "not sent (and paid for) again",
                        method,
                        path,
                        status,
                    )
                    return None, None, None
                error: CoinStatsError = CoinStatsResponseError(
                    f"CoinStats {method} {path} answered {status} with malformed or truncated JSON.",
                    retryable=True,
                )
                return None, error, None
        error = error_from_response(status, content, path, secrets, self.coinstats_conn_id)
        if status not in RETRYABLE_STATUS or isinstance(error, CoinStatsCreditsExhaustedError):
            raise error
        return None, error, parse_retry_after(headers.get("Retry-After"))

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
    ) -> Any:
        """Send one API call with retries and credit accounting; return the decoded JSON.

        :param method: HTTP method.
        :param path: API path, e.g. ``/portfolio/coins``.
        :param params: Query parameters.
        :param json_body: JSON body.
        :param secrets: Extra secret values (besides the API key) to redact from error messages.
        :param need_body: ``False`` when the 2xx status alone proves success: a 2xx answer whose body is
            unreadable then returns ``None`` instead of being retried (and paid for) again.
        """
        settings = self.settings
        cost = credit_cost(method, path, params)
        all_secrets = (settings.api_key, *secrets)
        url = settings.base_url + path
        for attempt in itertools.count():
            # Before every attempt: a retry costs credits again if CoinStats answered the last one 2xx.
            self.credits.check(method, path, cost)
            try:
                response = self.session.request(method, url, params=params, json=json_body, timeout=settings.timeout)
            except _transport_errors() as err:
                error: CoinStatsError | None = self._transport_error(method, path, err)
                retry_after: float | None = None
            else:
                with response:
                    data, error, retry_after = self._answered(
                        method,
                        path,
                        cost,
                        response.status_code,
                        response.content,
                        response.headers,
                        all_secrets,
                        need_body=need_body,
                    )
                if error is None:
                    return data
            assert error is not None
            self._sleep(self._backoff(method, path, attempt, error, retry_after))
        raise AssertionError("unreachable")

    async def arequest(self, method: str, path: str, *, params: Mapping[str, Any] | None = None) -> Any:
        """Async variant of :meth:`request` (used by triggers); same retry and error policy.

        :param method: HTTP method.
        :param path: API path.
        :param params: Query parameters.
        """
        settings = await self.asettings()
        cost = credit_cost(method, path, params)
        secrets = (settings.api_key,)
        async with httpx.AsyncClient(
            base_url=settings.base_url, headers=self._headers(settings), timeout=settings.timeout
        ) as client:
            for attempt in itertools.count():
                self.credits.check(method, path, cost)
                try:
                    response = await client.request(method, path, params=params)
                except httpx.TransportError as err:
                    error: CoinStatsError | None = self._transport_error(method, path, err)
                    retry_after: float | None = None
                else:
                    data, error, retry_after = self._answered(
                        method, path, cost, response.status_code, response.content, response.headers, secrets
                    )
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
        one credit per worker machine and hour instead of one per task.
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
        # create a second portfolio.
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
        """Return ``GET /portfolio/value`` (10 credits).

        :param portfolio_id: The portfolio.
        :param currency: Currency of the figures.
        """
        data = self.request("GET", "/portfolio/value", params={"portfolioId": portfolio_id, "currency": currency})
        if not isinstance(data, dict):
            raise CoinStatsResponseError("CoinStats GET /portfolio/value answered with a non-object body.")
        return data

    def _pages(
        self, path: str, params: Mapping[str, Any], keys: tuple[str, ...], page_size: int, start_page: int
    ) -> Iterator[list[dict[str, Any]]]:
        if not 1 <= page_size <= 100:
            raise CoinStatsConfigError("page_size must be between 1 and 100.")
        page = start_page
        previous: str | None = None
        while True:
            items = _items(self.request("GET", path, params={**params, "page": page, "limit": page_size}), keys, path)
            if not items:
                return
            fingerprint = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()
            if fingerprint == previous:
                raise CoinStatsResponseError(
                    f"CoinStats {path} returned the same page twice (page {page}); stopping so a "
                    "pagination bug cannot burn credits."
                )
            previous = fingerprint
            yield items
            if len(items) < page_size:
                return
            page += 1

    def iter_portfolio_coins(
        self, portfolio_id: str, *, page_size: int = DEFAULT_PAGE_SIZE, start_page: int = 1
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of ``GET /portfolio/coins`` (8 credits per page) until a short or empty page.

        :param portfolio_id: The portfolio.
        :param page_size: Items per page (``limit``), 1 to 100.
        :param start_page: First page to fetch (1-based).
        """
        return self._pages("/portfolio/coins", {"portfolioId": portfolio_id}, ("result", "data"), page_size, start_page)

    def iter_portfolio_transactions(
        self,
        portfolio_id: str,
        *,
        currency: str = "USD",
        page_size: int = DEFAULT_PAGE_SIZE,
        start_page: int = 1,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of ``GET /portfolio/transactions`` (4 credits per page) until a short or empty page.

        :param portfolio_id: The portfolio.
        :param currency: Required by CoinStats on this route.
        :param page_size: Items per page (``limit``), 1 to 100.
        :param start_page: First page to fetch (1-based).
        """
        params = {"portfolioId": portfolio_id, "currency": currency or "USD"}
        return self._pages("/portfolio/transactions", params, ("data", "result"), page_size, start_page)


def _transport_errors() -> tuple[type[Exception], ...]:
    """The ``requests`` errors that mean the request may not have reached CoinStats (retryable)."""
    import requests

    return (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def _short(error: CoinStatsError) -> str:
    if isinstance(error, CoinStatsAPIError):
        return f"HTTP {error.http_status}"
    if isinstance(error, CoinStatsTransportError):
        return error.cause  # ReadTimeout, ConnectionError, ... (which one matters when reading a log)
    if isinstance(error, CoinStatsResponseError):
        return "unreadable JSON body"
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


def _cache_file(base_url: str) -> Path:
    root = Path(os.environ.get("COINSTATS_CACHE_DIR") or Path(tempfile.gettempdir()) / "coinstats-provider")
    return root / f"exchange-support-{hashlib.sha256(base_url.encode()).hexdigest()[:16]}.json"


def _read_support_cache(base_url: str, ttl: float, now: float) -> tuple[float, list[SupportedExchange]] | None:
    path = _cache_file(base_url)
    try:
        stored = json.loads(path.read_text())
        fetched_at = float(stored["fetched_at"])
        if now - fetched_at >= ttl:
            return None
        return fetched_at, _parse_support(stored["exchanges"])
    except (OSError, ValueError, KeyError, TypeError, CoinStatsError):
        return None


def _write_support_cache(base_url: str, data: Any, now: float) -> None:
    path = _cache_file(base_url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fetched_at": now, "exchanges": data}))
        tmp.replace(path)
    except OSError:
        pass
