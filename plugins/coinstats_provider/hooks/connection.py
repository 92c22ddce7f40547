"""Settings of a ``coinstats`` connection: strict parsing of host, port, API key and extras."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from coinstats_provider.exceptions import CoinStatsConfigError
from coinstats_provider.hooks.connection_limits import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_MAX_RETRIES,
    DEFAULT_SUPPORT_CACHE_TTL,
    DEFAULT_TIMEOUT,
    EXTRA_RANGES,
    MAX_RETRIES_RANGE,
)

if TYPE_CHECKING:
    from airflow.sdk import Connection

#: Items per page the provider asks for on paged routes (CoinStats serves at most 100, CONTRACT §3).
DEFAULT_PAGE_SIZE = 100
#: Connection id a hook uses when none is given.
DEFAULT_CONN_NAME = "coinstats_default"
DEFAULT_BASE_URL = "https://openapiv1.coinstats.app"


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
    :param key: Extra name, a key of ``EXTRA_RANGES``.
    :param value: The configured value; ``None`` or ``""`` means the default.
    :param default: Value used when nothing is configured.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    low, high = EXTRA_RANGES[key]
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
    """Validate ``max_retries``: an integer within ``MAX_RETRIES_RANGE`` (not a boolean, fraction or NaN).

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
    low, high = MAX_RETRIES_RANGE
    if number is None or not low <= number <= high:
        raise CoinStatsConfigError(
            f"Extra 'max_retries' of connection '{conn_id}' must be an integer between {low} and {high}, "
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
        import ipaddress  # only when a connection is parsed, never at DAG parse time

        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


#: Environment variable naming extra hosts (comma-separated) that may be reached over plain ``http://``,
#: such as a sandbox container (``coinstats-sandbox``). Set by whoever runs Airflow, never by a connection.
PLAIN_HTTP_HOSTS_ENV = "COINSTATS_PLAIN_HTTP_HOSTS"


def _plain_http_allowed(hostname: str) -> bool:
    """Tell whether plain ``http://`` may reach ``hostname``: loopback, or listed in ``PLAIN_HTTP_HOSTS_ENV``.

    :param hostname: Host name as parsed from a URL (lower-cased, without brackets).
    """
    import os  # read when a connection is parsed, never at DAG parse time

    listed = {name.strip().lower() for name in os.environ.get(PLAIN_HTTP_HOSTS_ENV, "").split(",") if name.strip()}
    return _is_loopback(hostname) or hostname.lower() in listed


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
    if parts.scheme == "http" and not _plain_http_allowed(parts.hostname):
        raise CoinStatsConfigError(
            f"Connection '{conn_id}' uses plain http:// for host {parts.hostname}: the API key would travel "
            f"unencrypted. Use https://{parts.netloc}{parts.path.rstrip('/')} as the host; plain http is only "
            "accepted for a loopback host (localhost, 127.0.0.0/8, ::1), such as the sandbox at "
            f"http://127.0.0.1:8765, or a host listed in the environment variable {PLAIN_HTTP_HOSTS_ENV}."
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
