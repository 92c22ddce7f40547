"""A local HTTP server that imitates the CoinStats portfolio API, with fault injection."""

from __future__ import annotations

import contextlib
import dataclasses
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from . import data

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

_SERVER_ERRORS: dict[int, str] = {
    500: "Internal server error",
    502: "Bad Gateway",
    503: "Service Unavailable. Please Contact Support",
    504: "Gateway Timeout",
}
_RUNTIME_FIXED = frozenset({"host", "port"})


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

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            self._check_type(item.name, getattr(self, item.name))
        if not _is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host!r}: the sandbox only binds to loopback "
                "addresses (127.0.0.1, ::1, localhost)"
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
        rates = self.fault_rates()
        for kind, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{FAULT_FIELDS[kind]} must be within 0..1")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError("the fault rates must add up to at most 1")

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
}


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
    sync_until: float = math.inf
    synced_once: bool = False

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
        """Count the request and draw its fault: (kind or None, status code for 5xx)."""
        with self._lock:
            self._requests[route_key] += 1
            draw = self._fault_rng.random()
            chosen: str | None = None
            threshold = 0.0
            for kind, rate in self._config.fault_rates().items():
                threshold += rate
                if draw < threshold:
                    chosen = kind
                    break
            code = 0
            if chosen is not None:
                self._faults[chosen] += 1
                if chosen == "5xx":
                    code = self._fault_rng.choice(tuple(_SERVER_ERRORS))
            return chosen, code

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
        return values["page"], values["limit"]

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
        with self._lock:
            portfolio = self._lookup(call)
            assert portfolio is not None
            synced = portfolio.ever_synced(time.monotonic())
            spec = self._spec(portfolio, call.config)
        if not synced:
            raise ApiError(409, NOT_SYNCED_MESSAGE)
        return {
            "data": data.transaction_items(spec, page, limit, currency),
            "meta": {"page": page, "limit": limit},
        }

    @staticmethod
    def _lookup_required_first(call: _Call) -> None:
        if not call.query.get("portfolioId"):
            raise ApiError(400, "Invalid parameter: portfolioId")

    # -- admin ----------------------------------------------------------------------------------

    def handle_admin(self, method: str, path: str, body: bytes, *, running: bool) -> Response:
        """``/_sandbox/*``: stats, reset and runtime configuration (no auth, never charged)."""
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
    ("GET", "/usage/credits"): _Route(SandboxApp._usage, _fixed(0)),
}


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
        body = self._read_body(app, path)
        if body is None:
            return
        if path == "/_sandbox" or path.startswith("/_sandbox/"):
            response = app.handle_admin(self.command, path, body, running=self._server.running)
            self._send(response)
            app.log(self.command, path, str(response.status))
            return

        config = app.config
        if config.latency_ms > 0:
            time.sleep(config.latency_ms / 1000.0)
        kind, code = app.plan_fault(app.route_key(self.command, path))
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
        self._send(response, truncate=kind == "truncate")
        app.log(self.command, path, str(response.status) + (" truncated" if kind == "truncate" else ""))

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

    def _send(self, response: Response, *, truncate: bool = False) -> None:
        raw = json.dumps(response.payload, separators=(",", ":"), allow_nan=False).encode()
        if truncate:
            raw = raw[: len(raw) // 2]
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
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
