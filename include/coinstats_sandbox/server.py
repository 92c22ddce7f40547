"""A local HTTP server that imitates the CoinStats portfolio API, with fault injection.

Every option is a :class:`SandboxConfig` field, settable at construction, at runtime through
:meth:`SandboxServer.update` / ``POST /_sandbox/config`` and (most of them) as a CLI flag. With every
switch below at its default the sandbox answers exactly as a well-behaved API would.

Wallets: ``GET /wallet/blockchains`` (1 credit), ``POST /portfolio/wallet`` (40; idempotent per API key,
blockchain and address; the address prefixes ``empty``/``stuck`` work like the exchange keys) and
``DELETE /portfolio/{portfolioId}`` (10; the route key in stats and ``*_routes`` switches is the template)
are served like the exchange routes: deterministic data per portfolio, faults and credits alike.

Random faults (one draw per API request from ``fault_seed``): ``fault_rate_429``, ``fault_rate_5xx``,
``fault_rate_reset`` (TCP RST, no answer), ``fault_rate_slow`` (``slow_seconds`` before answering),
``fault_rate_truncate`` (a complete message whose JSON body is cut in half). ``faults=<total>``
spreads a total evenly over these five kinds (:data:`FAULT_KINDS`); the ``cut`` kind is not part
of the spread.

Switches that make the sandbox misbehave like a real API:

* **Redirects** -- ``redirect_to`` (absolute ``http(s)://`` base URL), ``redirect_status`` (301, 302,
  303, 307 or 308; default 307), ``redirect_routes`` (API paths; ``None`` = every API route): the
  request is answered with that status and ``Location: <redirect_to><path>?<query>`` and nothing
  else happens (no auth, no credits, no fault draw, no state change).
* **Shifting transaction list** -- ``shift_after_page`` (page number or ``None``), ``shift_insert``
  (default 1), ``shift_delete`` (default 0): after serving that page of ``GET /portfolio/transactions``
  for a portfolio, ``shift_delete`` transactions are removed from the head of its list and then
  ``shift_insert`` brand-new ones (dated after every other) are added at the head. This happens once
  per portfolio per arming; any config update that names a ``shift_*`` field, and
  :meth:`SandboxApp.arm_shift` / ``POST /_sandbox/shift/arm``, re-arm it.
* **Edits between runs** -- :meth:`SandboxApp.add_transactions`, :meth:`SandboxApp.edit_note`,
  :meth:`SandboxApp.edit_labels`, :meth:`SandboxApp.delete_transaction` and the admin routes
  ``POST /_sandbox/transactions/{add,note,labels,delete}``; :meth:`SandboxApp.transactions` and
  ``GET /_sandbox/transactions`` return a portfolio's complete current list.
* **Capped page size** -- ``limit_cap``: ``/portfolio/coins`` and ``/portfolio/transactions`` serve at
  most that many items per page, page ``p`` being items ``[(p-1)*cap, p*cap)``, and the transactions
  envelope reports ``meta.limit = cap``.
* **Stall mid-stream** -- ``stall_seconds`` with ``stall_routes`` (API paths; ``None`` = all) and
  ``stall_on_page`` (``None`` = every request): the status line, headers and first half of the body
  are sent, then the server sleeps, then sends the rest (a complete, valid answer).
* **2xx cut on the wire** -- ``fault_rate_cut`` (random, drawn together with the other kinds) and the
  targeted ``cut_routes`` + ``cut_count`` (the next ``cut_count`` answers of those routes;
  the remaining count is visible in the config): the call is performed (credits charged, sync
  started, ...), then the answer's headers and half of its body are sent and the connection is
  closed. ``cut_mode`` ``"length"`` announces the full ``Content-Length``; ``"chunked"`` uses
  ``Transfer-Encoding: chunked`` and stops mid-chunk.
* **Transaction ids** -- ``transaction_ids``: every transaction carries
  ``hash: {"id": "0x...", "explorerUrl": "..."}``, stable per transaction and across edits.
* **Date filter** -- ``GET /portfolio/transactions`` honours ``from`` (ISO 8601 date-time with a
  timezone, or ``YYYY-MM-DD`` for midnight UTC; inclusive): it pages through only the transactions dated
  at or after it. ``ignore_from`` makes it accept ``from`` and page through the whole list anyway, like an
  API that ignores the filter.

The opt-in datasets' routes (``GET /portfolio/chart`` 10 credits, ``GET /portfolio/defi`` 400,
``GET /portfolio/snapshot/items`` 500 a page) answer deterministic data per portfolio from
:mod:`include.coinstats_sandbox.datasets`, with the same faults and credit accounting as the others.

``GET /_sandbox/stats`` counts the redirect, shift, stall and cut events under ``switches``.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import http
import ipaddress
import json
import math
import random
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from . import data, datasets

DEFAULT_API_KEY = "sandbox-api-key"
FAULT_KINDS: tuple[str, ...] = ("429", "5xx", "reset", "slow", "truncate")
FAULT_FIELDS: dict[str, str] = {
    "429": "fault_rate_429",
    "5xx": "fault_rate_5xx",
    "reset": "fault_rate_reset",
    "slow": "fault_rate_slow",
    "truncate": "fault_rate_truncate",
}
INVALID_API_KEY_MESSAGE = (
    "Your API Key is invalid. Please login to https://openapi.coinstats.app and generate your API Key."
)
CREDITS_EXHAUSTED_MESSAGE = "Credits limit reached. Please upgrade your plan or wait for renewal."
NOT_SYNCED_MESSAGE = "Transactions not synced. Please call PATCH /transactions"
MAX_BODY_BYTES = 1 << 20
CUT_FIELD = "fault_rate_cut"
"""Config field of the ``cut`` fault rate (kept out of :data:`FAULT_KINDS` and the ``faults`` spread)."""
CUT_MODES: tuple[str, ...] = ("length", "chunked")
REDIRECT_STATUSES: tuple[int, ...] = (301, 302, 303, 307, 308)
SWITCH_EVENTS: tuple[str, ...] = ("cut", "redirect", "shift", "stall")
_SHIFT_FIELDS = frozenset({"shift_after_page", "shift_insert", "shift_delete"})

_SERVER_ERRORS: dict[int, str] = {
    500: "Internal server error",
    502: "Bad Gateway",
    503: "Service Unavailable. Please Contact Support",
    504: "Gateway Timeout",
}
_RUNTIME_FIXED = frozenset({"host", "port", "container_network"})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def spread_fault_rate(total: float) -> dict[str, float]:
    """Config fields that spread ``total`` evenly over the five fault kinds."""
    return {name: total / len(FAULT_FIELDS) for name in FAULT_FIELDS.values()}


@dataclass(frozen=True)
class SandboxConfig:
    """Every option of the sandbox; validated on construction."""

    host: str = "127.0.0.1"
    port: int = 0
    api_keys: tuple[str, ...] = (DEFAULT_API_KEY,)
    credits: int = 1_000_000
    sync_seconds: float = 2.0
    transactions: int = 2500
    coins: int | None = None
    latency_ms: float = 0.0
    fault_rate_429: float = 0.0
    fault_rate_5xx: float = 0.0
    fault_rate_reset: float = 0.0
    fault_rate_slow: float = 0.0
    slow_seconds: float = 5.0
    fault_rate_truncate: float = 0.0
    fault_seed: int = 0
    retry_after: float | None = None
    quiet: bool = False
    redirect_to: str | None = None
    redirect_status: int = 307
    redirect_routes: tuple[str, ...] | None = None
    shift_after_page: int | None = None
    shift_insert: int = 1
    shift_delete: int = 0
    limit_cap: int | None = None
    stall_seconds: float = 0.0
    stall_routes: tuple[str, ...] | None = None
    stall_on_page: int | None = None
    fault_rate_cut: float = 0.0
    cut_routes: tuple[str, ...] | None = None
    cut_count: int = 0
    cut_mode: str = "length"
    transaction_ids: bool = False
    #: Allow a non-loopback ``host`` (e.g. ``0.0.0.0``): only for a container on a private network,
    #: such as the ``coinstats-sandbox`` service of ``docker-compose.override.yml``.
    container_network: bool = False
    ignore_from: bool = False

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            self._check_type(item.name, getattr(self, item.name))
        if not _is_loopback(self.host) and not self.container_network:
            raise ValueError(
                f"refusing to listen on {self.host!r}: the sandbox only binds to loopback "
                "addresses (127.0.0.1, ::1, localhost) unless --container-network is given"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be within 0..65535")
        if not self.api_keys or not all(self.api_keys):
            raise ValueError("api_keys must hold at least one non-empty key")
        for name in ("credits", "transactions", "latency_ms", "slow_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.coins is not None and self.coins < 0:
            raise ValueError("coins must not be negative")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        rates = {FAULT_FIELDS[kind]: rate for kind, rate in self.fault_rates().items()}
        rates[CUT_FIELD] = self.fault_rate_cut
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError("the fault rates (fault_rate_cut included) must add up to at most 1")
        self._check_switches()

    def _check_switches(self) -> None:
        if self.redirect_to is not None:
            target = urlsplit(self.redirect_to)
            if target.scheme not in ("http", "https") or not target.netloc or target.query or target.fragment:
                raise ValueError(
                    "redirect_to must be an absolute http(s) base URL without query or fragment, "
                    "e.g. http://127.0.0.1:8766"
                )
        if self.redirect_status not in REDIRECT_STATUSES:
            raise ValueError(f"redirect_status must be one of {', '.join(map(str, REDIRECT_STATUSES))}")
        for name in ("shift_after_page", "limit_cap", "stall_on_page"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or null to switch it off)")
        for name in ("shift_insert", "shift_delete", "stall_seconds", "cut_count"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.cut_mode not in CUT_MODES:
            raise ValueError(f"cut_mode must be one of {', '.join(CUT_MODES)}")

    def _check_type(self, name: str, value: object) -> None:
        kind = _FIELD_KINDS[name]
        if value is None and kind.endswith("?"):
            return
        kind = kind.rstrip("?")
        if kind == "keys":
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, name, value)
            if not isinstance(value, tuple) or not all(isinstance(key, str) for key in value):
                raise ValueError(f"{name} must be a list of strings")
        elif kind == "routes":
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, name, value)
            if not isinstance(value, tuple) or not all(isinstance(path, str) for path in value):
                raise ValueError(f"{name} must be a list of API paths such as /portfolio/transactions")
            unknown = sorted(set(value) - _API_PATHS)
            if unknown:
                raise ValueError(
                    f"{name}: unknown API path(s) {', '.join(unknown)}; known: {', '.join(sorted(_API_PATHS))}"
                )
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a boolean")
        elif kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a number")
        else:
            object.__setattr__(self, name, float(value))

    def fault_rates(self) -> dict[str, float]:
        """Probability of each fault kind, keyed by kind."""
        return {kind: float(getattr(self, name)) for kind, name in FAULT_FIELDS.items()}

    def public_dict(self) -> dict[str, Any]:
        """The options as JSON-ready data, without the API keys themselves."""
        values = dataclasses.asdict(self)
        del values["api_keys"]
        values["api_key_count"] = len(self.api_keys)
        return values

    def updated(self, changes: Mapping[str, Any]) -> SandboxConfig:
        """A copy with ``changes`` applied (``faults`` spreads a total rate over the kinds)."""
        changes = dict(changes)
        if "faults" in changes:
            total = changes.pop("faults")
            if isinstance(total, bool) or not isinstance(total, int | float):
                raise ValueError("faults must be a number")
            changes = {**spread_fault_rate(float(total)), **changes}
        unknown = sorted(set(changes) - set(_FIELD_KINDS))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


_FIELD_KINDS: dict[str, str] = {
    "host": "str",
    "port": "int",
    "api_keys": "keys",
    "credits": "int",
    "sync_seconds": "float",
    "transactions": "int",
    "coins": "int?",
    "latency_ms": "float",
    "fault_rate_429": "float",
    "fault_rate_5xx": "float",
    "fault_rate_reset": "float",
    "fault_rate_slow": "float",
    "slow_seconds": "float",
    "fault_rate_truncate": "float",
    "fault_seed": "int",
    "retry_after": "float?",
    "quiet": "bool",
    "redirect_to": "str?",
    "redirect_status": "int",
    "redirect_routes": "routes?",
    "shift_after_page": "int?",
    "shift_insert": "int",
    "shift_delete": "int",
    "limit_cap": "int?",
    "stall_seconds": "float",
    "stall_routes": "routes?",
    "stall_on_page": "int?",
    "fault_rate_cut": "float",
    "cut_routes": "routes?",
    "cut_count": "int",
    "cut_mode": "str",
    "transaction_ids": "bool",
    "container_network": "bool",
    "ignore_from": "bool",
}


def _route_matches(routes: tuple[str, ...] | None, path: str) -> bool:
    """Whether ``path`` is an API path selected by ``routes`` (``None`` selects every API path)."""
    return path in _API_PATHS and (routes is None or path in routes)


@dataclass
class Response:
    """A JSON response produced by the sandbox application."""

    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


class ApiError(Exception):
    """Raised by route handlers to answer with an error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, path: str) -> Response:
    """Error body in the CoinStats shape (503 carries only statusCode and message)."""
    body: dict[str, Any] = {"statusCode": status, "message": message}
    if status != 503:
        body["requestId"] = str(uuid.uuid4())
        body["path"] = path
    return Response(status, body)


@dataclass
class _Portfolio:
    portfolio_id: str
    owner: str
    connection_id: str
    name: str
    icon: str
    empty: bool
    stuck: bool
    kind: str = "exchange"
    sync_until: float = math.inf
    synced_once: bool = False
    # The transaction list is the generated one (indexes 0..n-1, newest first) with edits on top:
    # ``added`` holds the serials of added transactions (newest first, all newer than the generated
    # ones), ``deleted`` the sorted generated indexes that were removed, ``edits`` the note/label
    # changes by transaction identity ("g<index>" or "a<serial>").
    added: list[int] = field(default_factory=list)
    next_serial: int = 1
    deleted: list[int] = field(default_factory=list)
    edits: dict[str, dict[str, Any]] = field(default_factory=dict)
    shift_generation: int = -1

    def _refresh(self, now: float) -> None:
        if now >= self.sync_until:
            self.synced_once = True

    def status(self, now: float) -> str:
        self._refresh(now)
        return "synced" if now >= self.sync_until else "syncing"

    def ever_synced(self, now: float) -> bool:
        self._refresh(now)
        return self.synced_once

    def start_sync(self, now: float, seconds: float) -> None:
        self._refresh(now)
        self.sync_until = math.inf if self.stuck or seconds < 0 else now + seconds

    def length(self, generated: int) -> int:
        """Number of transactions when the portfolio generates ``generated`` of them."""
        return len(self.added) + generated - bisect.bisect_left(self.deleted, generated)

    def identity_at(self, generated: int, index: int) -> str:
        """Identity of the transaction at ``index`` (0 = newest) of the current list."""
        if index < len(self.added):
            return f"a{self.added[index]}"
        wanted = index - len(self.added)
        # The least ``base`` with ``base == wanted + #deleted <= base`` is the wanted-th kept index.
        base = wanted
        while True:
            moved = wanted + bisect.bisect_right(self.deleted, base)
            if moved == base:
                break
            base = moved
        if base >= generated:
            raise IndexError(index)
        return f"g{base}"

    def add(self, count: int) -> None:
        """Add ``count`` new transactions at the head, each newer than every other."""
        for _ in range(count):
            self.added.insert(0, self.next_serial)
            self.next_serial += 1

    def delete_at(self, generated: int, index: int) -> str:
        """Remove the transaction at ``index`` of the current list; returns its identity."""
        identity = self.identity_at(generated, index)
        if identity.startswith("a"):
            self.added.remove(int(identity[1:]))
        else:
            bisect.insort(self.deleted, int(identity[1:]))
        self.edits.pop(identity, None)
        return identity


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    api_key: str
    config: SandboxConfig


_Handler = Callable[["SandboxApp", _Call], Any]


@dataclass(frozen=True)
class _Route:
    handler: _Handler
    cost: Callable[[dict[str, str]], int]


def _fixed(cost: int) -> Callable[[dict[str, str]], int]:
    return lambda _query: cost


class SandboxApp:
    """Sandbox state and API logic, independent of the HTTP transport. Thread-safe."""

    def __init__(self, config: SandboxConfig) -> None:
        self._lock = threading.Lock()
        self._config = config
        self._fault_rng = random.Random(config.fault_seed)
        self._portfolios: dict[str, _Portfolio] = {}
        self._used: dict[str, int] = {}
        self._requests: Counter[str] = Counter()
        self._responses: Counter[str] = Counter()
        self._faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self._credits_by_path: Counter[str] = Counter()
        self._switches: dict[str, int] = dict.fromkeys(SWITCH_EVENTS, 0)
        self._shift_generation = 0

    # -- configuration, stats and logging ---------------------------------------------------

    @property
    def config(self) -> SandboxConfig:
        """The current configuration (an immutable snapshot)."""
        return self._config

    def update(self, changes: Mapping[str, Any], *, running: bool) -> SandboxConfig:
        """Apply config changes; raises ``ValueError`` on bad input."""
        if running and _RUNTIME_FIXED & set(changes):
            raise ValueError("host and port cannot be changed while the server runs")
        with self._lock:
            new = self._config.updated(changes)
            if new.fault_seed != self._config.fault_seed:
                self._fault_rng = random.Random(new.fault_seed)
            if _SHIFT_FIELDS & set(changes):
                self._shift_generation += 1
            self._config = new
            return new

    def reset(self) -> None:
        """Forget portfolios, credit usage and statistics; restart the fault sequence."""
        with self._lock:
            self._portfolios.clear()
            self._used.clear()
            self._requests.clear()
            self._responses.clear()
            self._faults = dict.fromkeys(FAULT_KINDS, 0)
            self._credits_by_path.clear()
            self._switches = dict.fromkeys(SWITCH_EVENTS, 0)
            self._fault_rng = random.Random(self._config.fault_seed)

    def stats(self) -> dict[str, Any]:
        """Counters of requests, responses, faults, credits and portfolios."""
        with self._lock:
            return {
                "requests": dict(self._requests),
                "responses": dict(self._responses),
                "faults": dict(self._faults),
                "credits_used": sum(self._used.values()),
                "credits_by_path": dict(self._credits_by_path),
                "portfolios": len(self._portfolios),
                "switches": dict(self._switches),
            }

    def record_response(self, status: int) -> None:
        """Count one API response by status code."""
        with self._lock:
            self._responses[str(status)] += 1

    def log(self, method: str, path: str, outcome: str) -> None:
        """One line per request on stderr: method, path (no query) and outcome."""
        if self._config.quiet:
            return
        shown = "".join(ch if ch.isprintable() else "?" for ch in path[:200])
        sys.stderr.write(f"coinstats-sandbox: {method[:16]} {shown} {outcome}\n")
        sys.stderr.flush()

    # -- faults ---------------------------------------------------------------------------------

    def route_key(self, method: str, path: str) -> str:
        """Statistics key of a request."""
        return f"{method} {path}" if (method, path) in _ROUTES else f"{method} (unknown)"

    def plan_fault(self, route_key: str) -> tuple[str | None, int]:
        """Count the request and draw its fault: (kind or None, status code for 5xx).

        The kind is one of :data:`FAULT_KINDS` or ``"cut"`` (drawn after the five kinds with
        ``fault_rate_cut``, or forced while ``cut_count`` is positive for a ``cut_routes`` path).
        """
        with self._lock:
            config = self._config
            self._requests[route_key] += 1
            draw = self._fault_rng.random()
            chosen: str | None = None
            threshold = 0.0
            for kind, rate in config.fault_rates().items():
                threshold += rate
                if draw < threshold:
                    chosen = kind
                    break
            if chosen is None and draw < threshold + config.fault_rate_cut:
                chosen = "cut"
            path = route_key.split(" ", 1)[1]
            if config.cut_count > 0 and _route_matches(config.cut_routes, path):
                chosen = "cut"
                self._config = dataclasses.replace(config, cut_count=config.cut_count - 1)
            code = 0
            if chosen == "cut":
                self._switches["cut"] += 1
            elif chosen is not None:
                self._faults[chosen] += 1
                if chosen == "5xx":
                    code = self._fault_rng.choice(tuple(_SERVER_ERRORS))
            return chosen, code

    def plan_redirect(self, route_key: str, path: str, raw_path: str, raw_query: str) -> Response | None:
        """The redirect answer of a request when ``redirect_to`` selects its path (counted), else None.

        :param route_key: Statistics key of the request.
        :param path: The normalised request path (matched against ``redirect_routes``).
        :param raw_path: The path as requested (copied into ``Location``).
        :param raw_query: The query string as requested (copied into ``Location``).
        """
        config = self._config
        if config.redirect_to is None or not _route_matches(config.redirect_routes, path):
            return None
        location = config.redirect_to.rstrip("/") + raw_path + (f"?{raw_query}" if raw_query else "")
        status = config.redirect_status
        with self._lock:
            self._requests[route_key] += 1
            self._switches["redirect"] += 1
        body = {"statusCode": status, "message": http.HTTPStatus(status).phrase}
        return Response(status, body, {"Location": location})

    def plan_stall(self, path: str, query: Mapping[str, str]) -> float:
        """Seconds to pause in the middle of this request's answer (0 = none; counted when positive).

        :param path: The normalised request path.
        :param query: The request's query parameters (``page`` is matched against ``stall_on_page``).
        """
        config = self._config
        if config.stall_seconds <= 0 or not _route_matches(config.stall_routes, path):
            return 0.0
        if config.stall_on_page is not None:
            raw = query.get("page", "")
            try:
                page = int(raw) if raw else 1
            except ValueError:
                return 0.0
            if page != config.stall_on_page:
                return 0.0
        with self._lock:
            self._switches["stall"] += 1
        return config.stall_seconds

    def fault_response(self, kind: str, code: int, path: str) -> Response:
        """The response of a 429 or 5xx fault."""
        if kind == "429":
            response = error_response(429, "Rate limit exceeded", path)
            retry_after = self._config.retry_after
            if retry_after is not None:
                text = str(int(retry_after)) if retry_after.is_integer() else str(retry_after)
                response.headers["Retry-After"] = text
            return response
        return error_response(code, _SERVER_ERRORS[code], path)

    # -- API ------------------------------------------------------------------------------------

    def handle_api(self, method: str, path: str, query: dict[str, str], body: bytes, api_key: str | None) -> Response:
        """Authenticate, charge credits and run the route handler."""
        config = self._config
        if api_key is None or api_key not in config.api_keys:
            return Response(401, {"statusCode": 401, "message": INVALID_API_KEY_MESSAGE})
        route = _ROUTES.get((method, path))
        if route is None:
            return error_response(404, f"Cannot {method} {path}", path)
        cost = route.cost(query)
        if not self._reserve(api_key, cost):
            return error_response(406, CREDITS_EXHAUSTED_MESSAGE, path)
        call = _Call(method, path, query, body, api_key, config)
        try:
            response = Response(200, route.handler(self, call))
        except ApiError as exc:
            response = error_response(exc.status, exc.message, path)
        except Exception:
            if not config.quiet:
                traceback.print_exc(file=sys.stderr)
            response = error_response(500, "Internal server error", path)
        self._settle(api_key, cost, f"{method} {path}", 200 <= response.status < 300)
        return response

    def _reserve(self, api_key: str, cost: int) -> bool:
        with self._lock:
            used = self._used.get(api_key, 0)
            if cost and self._config.credits - used < cost:
                return False
            self._used[api_key] = used + cost
            return True

    def _settle(self, api_key: str, cost: int, route_key: str, success: bool) -> None:
        with self._lock:
            if success and cost:
                self._credits_by_path[route_key] += cost
            else:
                self._used[api_key] = max(0, self._used.get(api_key, 0) - cost)

    def _lookup(self, call: _Call, *, required: bool = True) -> _Portfolio | None:
        pid = call.query.get("portfolioId", "")
        if not pid:
            if required:
                raise ApiError(400, "Invalid parameter: portfolioId")
            return None
        portfolio = self._portfolios.get(pid)
        if portfolio is None or portfolio.owner != call.api_key:
            raise ApiError(404, "Portfolio not found")
        return portfolio

    def _spec(self, portfolio: _Portfolio, config: SandboxConfig) -> data.PortfolioSpec:
        pid = portfolio.portfolio_id
        if portfolio.empty:
            coins = transactions = 0
        else:
            coins = config.coins if config.coins is not None else data.default_coin_count(pid)
            transactions = config.transactions
        return data.PortfolioSpec(pid, coins, transactions, portfolio.name, portfolio.icon)

    def _support(self, call: _Call) -> Any:
        return data.exchange_support()

    def _usage(self, call: _Call) -> Any:
        with self._lock:
            used = self._used.get(call.api_key, 0)
        total = call.config.credits
        return {
            "totalCredits": total,
            "usedCredits": used,
            "remainingCredits": max(0, total - used),
            "subscription": "SANDBOX",
        }

    def _connect(self, call: _Call) -> Any:
        try:
            body = json.loads(call.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "Request body must be valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        connection_id = body.get("connectionId")
        if not isinstance(connection_id, str) or not connection_id:
            raise ApiError(400, "connectionId is required")
        exchange = data.find_exchange(connection_id)
        if exchange is None:
            raise ApiError(400, "Invalid parameter: connectionId")
        fields = body.get("connectionFields")
        if not isinstance(fields, dict):
            raise ApiError(400, "connectionFields must be an object")
        missing = [
            key for key in exchange.field_keys if not isinstance(fields.get(key), str) or not fields[key].strip()
        ]
        if missing:
            raise ApiError(400, f"Missing connection fields: {', '.join(missing)}")
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "Invalid parameter: name")
        key, secret = str(fields["apiKey"]), str(fields["apiSecret"])
        if secret.startswith("rejected"):
            raise ApiError(401, "Exchange credentials expired")
        pid = data.portfolio_id(call.api_key, connection_id, key, secret)
        with self._lock:
            if pid in self._portfolios:
                status = "existing"
            else:
                portfolio = _Portfolio(
                    portfolio_id=pid,
                    owner=call.api_key,
                    connection_id=connection_id,
                    name=name or exchange.name,
                    icon=exchange.icon,
                    empty=key.startswith("empty"),
                    stuck=secret.startswith("stuck"),
                )
                portfolio.start_sync(time.monotonic(), call.config.sync_seconds)
                self._portfolios[pid] = portfolio
                status = "connected"
        return {"portfolioId": pid, "connectionId": connection_id, "status": status}

    def _blockchains(self, call: _Call) -> Any:
        return data.blockchains()

    def _connect_wallet(self, call: _Call) -> Any:
        """``POST /portfolio/wallet``: idempotent per (API key, blockchain, address); ``empty...``/``stuck...``
        address prefixes make an empty portfolio or one whose sync never ends, like the exchange keys."""
        try:
            body = json.loads(call.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "Request body must be valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        address, connection_id = body.get("address"), body.get("connectionId")
        if not isinstance(address, str) or not address.strip():
            raise ApiError(400, "address is required")
        if not isinstance(connection_id, str) or not connection_id:
            raise ApiError(400, "connectionId is required")
        chain = data.find_blockchain(connection_id)
        if chain is None:
            raise ApiError(400, "Invalid parameter: connectionId")
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "Invalid parameter: name")
        pid = data.wallet_portfolio_id(call.api_key, connection_id, address)
        with self._lock:
            if pid in self._portfolios:
                status = "existing"
            else:
                portfolio = _Portfolio(
                    portfolio_id=pid,
                    owner=call.api_key,
                    connection_id=connection_id,
                    name=name or f"{chain[1]} wallet",
                    icon=data.blockchains()[data.BLOCKCHAINS.index(chain)]["icon"],
                    empty=address.startswith("empty"),
                    stuck=address.startswith("stuck"),
                    kind="wallet",
                )
                # CoinStats starts a background transaction sync on connect.
                portfolio.start_sync(time.monotonic(), call.config.sync_seconds)
                self._portfolios[pid] = portfolio
                status = "connected"
        return {"portfolioId": pid, "connectionId": connection_id, "status": status}

    def _delete(self, call: _Call) -> Any:
        """``DELETE /portfolio/{portfolioId}`` (the id arrives as the ``portfolioId`` query value)."""
        with self._lock:
            portfolio = self._lookup(call)
            assert portfolio is not None
            del self._portfolios[portfolio.portfolio_id]
        return {"message": "Portfolio deleted successfully"}

    def has_portfolio(self, portfolio_id: str) -> bool:
        """Whether a portfolio with this id exists (for tests and the demo)."""
        with self._lock:
            return portfolio_id in self._portfolios

    def _sync(self, call: _Call) -> Any:
        with self._lock:
            now = time.monotonic()
            portfolio = self._lookup(call, required=call.path == "/exchange/sync")
            if portfolio is not None:
                targets = [portfolio]
            else:
                targets = [p for p in self._portfolios.values() if p.owner == call.api_key]
            for target in targets:
                target.start_sync(now, call.config.sync_seconds)
        return {"success": True}

    def _status(self, call: _Call) -> Any:
        with self._lock:
            portfolio = self._lookup(call)
            assert portfolio is not None
            return {"status": portfolio.status(time.monotonic())}

    @staticmethod
    def _currency(call: _Call, *, required: bool) -> str:
        currency = call.query.get("currency", "").upper()
        if not currency and not required:
            return "USD"
        if currency not in data.CURRENCY_RATES:
            raise ApiError(400, "Invalid parameter: currency")
        return currency

    @staticmethod
    def _paging(call: _Call) -> tuple[int, int]:
        values: dict[str, int] = {}
        for name, default, upper in (("page", 1, None), ("limit", 20, 100)):
            raw = call.query.get(name, "")
            try:
                number = int(raw) if raw else default
            except ValueError:
                raise ApiError(400, f"Invalid parameter: {name}") from None
            if number < 1 or (upper is not None and number > upper):
                raise ApiError(400, f"Invalid parameter: {name}")
            values[name] = number
        cap = call.config.limit_cap
        limit = values["limit"] if cap is None else min(values["limit"], cap)
        return values["page"], limit

    def _value(self, call: _Call) -> Any:
        currency = self._currency(call, required=False)
        with self._lock:
            portfolio = self._lookup(call)
            assert portfolio is not None
            spec = self._spec(portfolio, call.config)
        return data.portfolio_value(spec, currency)

    def _coins(self, call: _Call) -> Any:
        self._lookup_required_first(call)
        page, limit = self._paging(call)
        with self._lock:
            portfolio = self._lookup(call)
            assert portfolio is not None
            spec = self._spec(portfolio, call.config)
        return {"result": data.coin_items(spec, page, limit)}

    def _transactions(self, call: _Call) -> Any:
        self._lookup_required_first(call)
        currency = self._currency(call, required=True)
        page, limit = self._paging(call)
        since = self._since(call)
        with self._lock:
            portfolio = self._lookup(call)
            assert portfolio is not None
            synced = portfolio.ever_synced(time.monotonic())
            spec = self._spec(portfolio, call.config)
            if not synced:
                raise ApiError(409, NOT_SYNCED_MESSAGE)
            generated = spec.transaction_count
            start = (page - 1) * limit
            stop = min(start + limit, portfolio.length(generated))
            identities = [portfolio.identity_at(generated, index) for index in range(start, stop)]
            edits = {key: copy.deepcopy(portfolio.edits[key]) for key in identities if key in portfolio.edits}
            self._maybe_shift(portfolio, generated, page, call.config)
        ids = call.config.transaction_ids
        items = [_render(spec, key, edits.get(key), currency, ids=ids) for key in identities]
        if since is not None and not call.config.ignore_from:
            # The list is newest first, so the transactions from ``since`` on are a prefix of it.
            dates = [_parse_moment(item["date"]) for item in items]
            kept = next((i for i, moment in enumerate(dates) if moment is None or moment < since), len(items))
            items = items[:kept]
        return {"data": items, "meta": {"page": page, "limit": limit}}

    @staticmethod
    def _since(call: _Call) -> datetime | None:
        """The ``from`` query parameter as an aware moment (``None`` when absent); 400 when unreadable."""
        raw = call.query.get("from", "")
        if not raw:
            return None
        text = raw.strip()
        moment = _parse_moment(text + "T00:00:00Z" if len(text) == 10 else text, strict=True)
        if moment is None:
            raise ApiError(400, "Invalid parameter: from")
        return moment

    def _read_spec(self, call: _Call) -> data.PortfolioSpec:
        """The spec of the portfolio ``portfolioId`` names (400 without it, 404 when unknown)."""
        with self._lock:
            portfolio = self._lookup(call)
            assert portfolio is not None
            return self._spec(portfolio, call.config)

    def _chart(self, call: _Call) -> Any:
        chart_type = call.query.get("type", "")
        if chart_type not in datasets.CHART_STEPS:
            raise ApiError(400, "Invalid parameter: type")
        return {"result": datasets.chart_points(self._read_spec(call), chart_type)}

    def _defi(self, call: _Call) -> Any:
        return datasets.defi_positions(self._read_spec(call))

    @staticmethod
    def _day(call: _Call, name: str) -> date:
        try:
            return date.fromisoformat(call.query.get(name, ""))
        except ValueError:
            raise ApiError(400, f"Invalid parameter: {name}") from None

    def _snapshots(self, call: _Call) -> Any:
        self._lookup_required_first(call)
        first, last = self._day(call, "from"), self._day(call, "to")
        if first > last:
            raise ApiError(400, "Invalid parameter: from")
        page, limit = self._paging(call)
        return {"result": datasets.snapshot_items(self._read_spec(call), first, last, page, limit)}

    def _maybe_shift(self, portfolio: _Portfolio, generated: int, page: int, config: SandboxConfig) -> None:
        """Apply the armed ``shift_*`` switch after serving ``page`` (caller holds the lock)."""
        if config.shift_after_page != page or portfolio.shift_generation == self._shift_generation:
            return
        portfolio.shift_generation = self._shift_generation
        for _ in range(min(config.shift_delete, portfolio.length(generated))):
            portfolio.delete_at(generated, 0)
        portfolio.add(config.shift_insert)
        self._switches["shift"] += 1

    @staticmethod
    def _lookup_required_first(call: _Call) -> None:
        if not call.query.get("portfolioId"):
            raise ApiError(400, "Invalid parameter: portfolioId")

    # -- transaction edits (admin) -------------------------------------------------------------

    def _admin_portfolio(self, portfolio_id: str) -> tuple[_Portfolio, data.PortfolioSpec]:
        """The portfolio and its spec; the caller holds the lock. Raises ``LookupError``."""
        portfolio = self._portfolios.get(portfolio_id) if isinstance(portfolio_id, str) else None
        if portfolio is None:
            raise LookupError("no such portfolio in the sandbox: connect it first (POST /portfolio/exchange)")
        return portfolio, self._spec(portfolio, self._config)

    @staticmethod
    def _check_index(index: object, length: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError("index must be an integer (0 = the newest transaction)")
        if not 0 <= index < length:
            raise ValueError(f"index {index} is out of range: the portfolio has {length} transaction(s)")
        return index

    def transactions(self, portfolio_id: str, currency: str = "USD") -> list[dict[str, Any]]:
        """The portfolio's complete current transaction list, newest first, as the API would page it.

        :param portfolio_id: A connected portfolio.
        :param currency: Currency of the worth and price fields.
        :raises LookupError: The portfolio is unknown.
        :raises ValueError: The currency is not supported.
        """
        code = currency.upper() if isinstance(currency, str) else ""
        if code not in data.CURRENCY_RATES:
            raise ValueError(f"unsupported currency {currency!r}; use one of {', '.join(data.CURRENCY_RATES)}")
        with self._lock:
            portfolio, spec = self._admin_portfolio(portfolio_id)
            generated = spec.transaction_count
            identities = [portfolio.identity_at(generated, i) for i in range(portfolio.length(generated))]
            edits = copy.deepcopy(portfolio.edits)
            ids = self._config.transaction_ids
        return [_render(spec, key, edits.get(key), code, ids=ids) for key in identities]

    def transaction_count(self, portfolio_id: str) -> int:
        """Number of transactions the portfolio currently has.

        :param portfolio_id: A connected portfolio.
        :raises LookupError: The portfolio is unknown.
        """
        with self._lock:
            portfolio, spec = self._admin_portfolio(portfolio_id)
            return portfolio.length(spec.transaction_count)

    def add_transactions(self, portfolio_id: str, count: int = 1) -> int:
        """Add ``count`` brand-new transactions at the head (newest first); returns the new total.

        :param portfolio_id: A connected portfolio.
        :param count: How many (at least 1).
        :raises LookupError: The portfolio is unknown.
        :raises ValueError: ``count`` is not a positive integer.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be a positive integer")
        with self._lock:
            portfolio, spec = self._admin_portfolio(portfolio_id)
            portfolio.add(count)
            return portfolio.length(spec.transaction_count)

    def edit_note(self, portfolio_id: str, index: int, note: Any) -> dict[str, Any]:
        """Set the ``note`` of the transaction at ``index`` (0 = newest); returns the item (USD).

        :param portfolio_id: A connected portfolio.
        :param index: Position in the current list.
        :param note: Any JSON value; ``None`` removes the note again (the field disappears).
        :raises LookupError: The portfolio is unknown.
        :raises ValueError: Bad index or a note that is not JSON.
        """
        try:
            json.dumps(note, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError("note must be a JSON value (string, number, object, ...)") from None
        return self._edit(portfolio_id, index, "note", copy.deepcopy(note))

    def edit_labels(
        self, portfolio_id: str, index: int, *, name: str | None = None, icon: str | None = None
    ) -> dict[str, Any]:
        """Change the ``portfolioInfo`` labels of one transaction (not part of its identity).

        :param portfolio_id: A connected portfolio.
        :param index: Position in the current list (0 = newest).
        :param name: New ``portfolioInfo.name``.
        :param icon: New ``portfolioInfo.icon``.
        :return: The edited item (USD).
        :raises LookupError: The portfolio is unknown.
        :raises ValueError: Bad index or no/invalid label.
        """
        labels = {key: value for key, value in (("name", name), ("icon", icon)) if value is not None}
        if not labels or not all(isinstance(value, str) for value in labels.values()):
            raise ValueError("give name and/or icon as strings")
        return self._edit(portfolio_id, index, "portfolioInfo", labels)

    def _edit(self, portfolio_id: str, index: int, field_name: str, value: Any) -> dict[str, Any]:
        with self._lock:
            portfolio, spec = self._admin_portfolio(portfolio_id)
            generated = spec.transaction_count
            identity = portfolio.identity_at(generated, self._check_index(index, portfolio.length(generated)))
            edit = portfolio.edits.setdefault(identity, {})
            if field_name == "note" and value is None:
                edit.pop("note", None)
            elif field_name == "portfolioInfo":
                edit["portfolioInfo"] = {**edit.get("portfolioInfo", {}), **value}
            else:
                edit[field_name] = value
            if not edit:
                del portfolio.edits[identity]
            current = copy.deepcopy(edit)
            ids = self._config.transaction_ids
        return _render(spec, identity, current, "USD", ids=ids)

    def delete_transaction(self, portfolio_id: str, index: int) -> dict[str, Any]:
        """Delete the transaction at ``index`` (0 = newest); returns it as it was (USD).

        :param portfolio_id: A connected portfolio.
        :param index: Position in the current list.
        :raises LookupError: The portfolio is unknown.
        :raises ValueError: Bad index.
        """
        with self._lock:
            portfolio, spec = self._admin_portfolio(portfolio_id)
            generated = spec.transaction_count
            position = self._check_index(index, portfolio.length(generated))
            identity = portfolio.identity_at(generated, position)
            edit = copy.deepcopy(portfolio.edits.get(identity))
            portfolio.delete_at(generated, position)
            ids = self._config.transaction_ids
        return _render(spec, identity, edit, "USD", ids=ids)

    def arm_shift(self) -> None:
        """Re-arm the ``shift_*`` switch: every portfolio shifts once more after the configured page."""
        with self._lock:
            self._shift_generation += 1

    def _admin_transactions(self, method: str, path: str, body: bytes, query: Mapping[str, str]) -> Response:
        """``/_sandbox/transactions[/add|/note|/labels|/delete]``."""
        if (method, path) == ("GET", "/_sandbox/transactions"):
            items = self.transactions(query.get("portfolioId", ""), query.get("currency", "USD") or "USD")
            return Response(200, {"data": items, "count": len(items)})
        action = path.removeprefix("/_sandbox/transactions/")
        if method != "POST" or action not in ("add", "note", "labels", "delete"):
            return error_response(404, f"Cannot {method} {path}", path)
        try:
            request = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ValueError("the body must be a JSON object") from None
        if not isinstance(request, dict):
            raise ValueError("the body must be a JSON object")
        pid = request.get("portfolioId")
        if not isinstance(pid, str) or not pid:
            raise ValueError("portfolioId is required")
        if action == "add":
            total = self.add_transactions(pid, request.get("count", 1))
            return Response(200, {"count": total})
        if "index" not in request:
            raise ValueError("index is required (0 = the newest transaction)")
        index = request["index"]
        if action == "note":
            if "note" not in request:
                raise ValueError("note is required (null removes it)")
            item = self.edit_note(pid, index, request["note"])
        elif action == "labels":
            item = self.edit_labels(pid, index, name=request.get("name"), icon=request.get("icon"))
        else:
            item = self.delete_transaction(pid, index)
        return Response(200, {"transaction": item})

    # -- admin ----------------------------------------------------------------------------------

    def handle_admin(
        self, method: str, path: str, body: bytes, *, running: bool, query: Mapping[str, str] | None = None
    ) -> Response:
        """``/_sandbox/*``: stats, reset, runtime configuration and transaction edits (no auth, never charged).

        :param method: HTTP method.
        :param path: Normalised path.
        :param body: Request body.
        :param running: Whether the HTTP server is running (host and port are then fixed).
        :param query: Query parameters (``GET /_sandbox/transactions`` reads ``portfolioId`` and ``currency``).
        """
        if path == "/_sandbox/transactions" or path.startswith("/_sandbox/transactions/"):
            try:
                return self._admin_transactions(method, path, body, query or {})
            except LookupError as exc:
                return error_response(404, str(exc), path)
            except ValueError as exc:
                return error_response(400, str(exc), path)
        if (method, path) == ("POST", "/_sandbox/shift/arm"):
            self.arm_shift()
            return Response(200, {"success": True})
        if (method, path) == ("GET", "/_sandbox/stats"):
            return Response(200, self.stats())
        if (method, path) == ("POST", "/_sandbox/reset"):
            self.reset()
            return Response(200, {"success": True})
        if (method, path) == ("GET", "/_sandbox/config"):
            return Response(200, self._config.public_dict())
        if (method, path) == ("POST", "/_sandbox/config"):
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object of config fields")
                return Response(200, self.update(changes, running=running).public_dict())
            except ValueError as exc:
                return error_response(400, str(exc), path)
        return error_response(404, f"Cannot {method} {path}", path)


def _parse_moment(text: str, *, strict: bool = False) -> datetime | None:
    """An ISO 8601 date-time with a timezone; ``None`` if unreadable (or naive, with ``strict``)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None if strict else moment.replace(tzinfo=UTC)
    return moment


def _render(
    spec: data.PortfolioSpec, identity: str, edit: Mapping[str, Any] | None, currency: str, *, ids: bool
) -> dict[str, Any]:
    """``TransactionItemDto`` of one transaction identity ("g<index>" or "a<serial>") with its edits."""
    number = int(identity[1:])
    if identity.startswith("g"):
        item = data.transaction_at(spec, number, currency)
    else:
        item = data.new_transaction_at(spec, number, currency)
    if edit:
        if "portfolioInfo" in edit:
            item["portfolioInfo"] = {**item["portfolioInfo"], **edit["portfolioInfo"]}
        if "note" in edit:
            item["note"] = edit["note"]
    if ids:
        item["hash"] = data.transaction_hash(spec.portfolio_id, identity)
    return item


_ROUTES: dict[tuple[str, str], _Route] = {
    ("GET", "/exchange/support"): _Route(SandboxApp._support, _fixed(1)),
    ("POST", "/portfolio/exchange"): _Route(SandboxApp._connect, _fixed(10)),
    ("PATCH", "/portfolio/sync"): _Route(SandboxApp._sync, lambda query: 30 if query.get("portfolioId") else 300),
    ("PATCH", "/exchange/sync"): _Route(SandboxApp._sync, _fixed(20)),
    ("GET", "/portfolio/status"): _Route(SandboxApp._status, _fixed(3)),
    ("GET", "/exchange/status"): _Route(SandboxApp._status, _fixed(3)),
    ("GET", "/portfolio/value"): _Route(SandboxApp._value, _fixed(10)),
    ("GET", "/portfolio/coins"): _Route(SandboxApp._coins, _fixed(8)),
    ("GET", "/portfolio/transactions"): _Route(SandboxApp._transactions, _fixed(4)),
    ("GET", "/portfolio/chart"): _Route(SandboxApp._chart, _fixed(10)),
    ("GET", "/portfolio/defi"): _Route(SandboxApp._defi, _fixed(400)),
    ("GET", "/portfolio/snapshot/items"): _Route(SandboxApp._snapshots, _fixed(500)),
    ("GET", "/usage/credits"): _Route(SandboxApp._usage, _fixed(0)),
    ("GET", "/wallet/blockchains"): _Route(SandboxApp._blockchains, _fixed(1)),
    ("POST", "/portfolio/wallet"): _Route(SandboxApp._connect_wallet, _fixed(40)),
    ("DELETE", "/portfolio/{portfolioId}"): _Route(SandboxApp._delete, _fixed(10)),
}
_API_PATHS = frozenset(path for _, path in _ROUTES)
#: Routes whose last path segment is a parameter: (method, prefix) -> (route path, query name it becomes).
_PATH_PARAMS: dict[tuple[str, str], tuple[str, str]] = {
    ("DELETE", "/portfolio/"): ("/portfolio/{portfolioId}", "portfolioId"),
}


def _route_path(method: str, path: str, query: dict[str, str]) -> str:
    """The route path of a request: ``DELETE /portfolio/abc`` is ``/portfolio/{portfolioId}`` with
    ``portfolioId=abc`` added to ``query``; every other path is its own route path."""
    for (route_method, prefix), (route, name) in _PATH_PARAMS.items():
        rest = path.removeprefix(prefix)
        if method == route_method and rest != path and rest and "/" not in rest:
            from urllib.parse import unquote

            query[name] = unquote(rest)
            return route
    return path


# -- HTTP transport -------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: SandboxApp) -> None:
        self.app = app
        self.running = False
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # Skip HTTPServer's reverse DNS lookup of the host name.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore dropped client connections; report other handler crashes unless quiet."""
        if isinstance(sys.exc_info()[1], OSError) or self.app.config.quiet:
            return
        super().handle_error(request, client_address)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CoinStatsSandbox/1.0"
    sys_version = ""
    timeout = 120.0

    def version_string(self) -> str:
        return self.server_version

    @property
    def _server(self) -> _HTTPServer:
        return cast(_HTTPServer, self.server)

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default logging (it would show request lines with their queries)."""

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_GET
    do_PATCH = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET

    def _dispatch(self) -> None:
        app = self._server.app
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query: dict[str, str] = {}
        for name, value in parse_qsl(split.query, keep_blank_values=True):
            query.setdefault(name, value)
        path = _route_path(self.command, path, query)
        body = self._read_body(app, path)
        if body is None:
            return
        if path == "/_sandbox" or path.startswith("/_sandbox/"):
            response = app.handle_admin(self.command, path, body, running=self._server.running, query=query)
            self._send(response)
            app.log(self.command, path, str(response.status))
            return

        route_key = app.route_key(self.command, path)
        redirect = app.plan_redirect(route_key, path, split.path, split.query)
        if redirect is not None:
            app.record_response(redirect.status)
            self._send(redirect)
            app.log(self.command, path, f"{redirect.status} redirect")
            return
        config = app.config
        if config.latency_ms > 0:
            time.sleep(config.latency_ms / 1000.0)
        kind, code = app.plan_fault(route_key)
        if kind == "reset":
            self._reset_connection()
            app.log(self.command, path, "connection reset")
            return
        if kind in ("429", "5xx"):
            response = app.fault_response(kind, code, path)
        else:
            if kind == "slow":
                time.sleep(config.slow_seconds)
            api_key = self.headers.get("X-API-KEY")
            response = app.handle_api(self.command, path, query, body, api_key)
        app.record_response(response.status)  # before sending: clients may read stats right after
        if kind == "cut":
            self._send(response, cut=config.cut_mode)
            app.log(self.command, path, f"{response.status} cut")
            return
        stall = app.plan_stall(path, query) if kind is None else 0.0
        self._send(response, truncate=kind == "truncate", stall=stall)
        outcome = " truncated" if kind == "truncate" else " stalled" if stall else ""
        app.log(self.command, path, str(response.status) + outcome)

    def _read_body(self, app: SandboxApp, path: str) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send(error_response(411, "Length Required", path))
            return None
        raw_length = self.headers.get("Content-Length")
        if not raw_length:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(error_response(413 if length > 0 else 400, "Invalid request body size", path))
            return None
        return self.rfile.read(length)

    def _send(self, response: Response, *, truncate: bool = False, cut: str | None = None, stall: float = 0.0) -> None:
        """Write the answer.

        :param response: Status, JSON payload and extra headers.
        :param truncate: Send only the first half of the body (a complete message with bad JSON).
        :param cut: ``"length"`` or ``"chunked"``: announce the whole body, send half, close.
        :param stall: Seconds to pause after the first half of the body.
        """
        raw = json.dumps(response.payload, separators=(",", ":"), allow_nan=False).encode()
        if truncate:
            raw = raw[: len(raw) // 2]
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        if cut == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(raw)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        half = len(raw) // 2
        if cut is not None:
            self.close_connection = True
            prefix = f"{len(raw):x}\r\n".encode() if cut == "chunked" else b""
            self.wfile.write(prefix + raw[:half])
            return
        if stall > 0:
            self.wfile.write(raw[:half])
            self.wfile.flush()
            time.sleep(stall)
            self.wfile.write(raw[half:])
            return
        self.wfile.write(raw)

    def _reset_connection(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0) and no response at all."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class SandboxServer:
    """Runs the sandbox in a daemon thread; usable as a context manager."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self._app = SandboxApp(config if config is not None else SandboxConfig())
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    @property
    def config(self) -> SandboxConfig:
        """The current configuration."""
        return self._app.config

    @property
    def app(self) -> SandboxApp:
        """The transport-independent application (state and API logic)."""
        return self._app

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        if self._base_url is None:
            raise RuntimeError("the sandbox server is not running")
        return self._base_url

    def start(self) -> str:
        """Bind, serve in a daemon thread and return the base URL."""
        if self._httpd is not None:
            raise RuntimeError("the sandbox server is already running")
        config = self._app.config
        server_class = _HTTPServer6 if ":" in config.host else _HTTPServer
        httpd = server_class((config.host, config.port), self._app)
        host, port = httpd.socket.getsockname()[:2]
        shown_host = f"[{host}]" if ":" in str(host) else str(host)
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"coinstats-sandbox-{port}",
            daemon=True,
        )
        httpd.running = True
        thread.start()
        self._httpd, self._thread = httpd, thread
        self._base_url = f"http://{shown_host}:{port}"
        return self._base_url

    def stop(self) -> None:
        """Stop serving, drop open keep-alive connections and release the port."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.running = False
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = self._thread = None
        self._base_url = None

    def __enter__(self) -> SandboxServer:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """Same data as ``GET /_sandbox/stats``."""
        return self._app.stats()

    def reset(self) -> None:
        """Same as ``POST /_sandbox/reset``."""
        self._app.reset()

    def update(self, **changes: Any) -> SandboxConfig:
        """Change config fields at runtime (e.g. fault rates); returns the new config."""
        return self._app.update(changes, running=self._httpd is not None)
