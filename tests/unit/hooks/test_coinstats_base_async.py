"""Unit tests of the async transport (httpx) against a real local HTTP server: retries, errors, timeout."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowNotFoundException

from coinstats_provider import __version__
from coinstats_provider.exceptions import (
    CoinStatsCreditBudgetExceeded,
    CoinStatsInvalidApiKeyError,
    CoinStatsResponseError,
    CoinStatsServerError,
    CoinStatsTransportError,
)
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.models import SyncStatus
from tests.conftest import assert_no_canary, set_connection
from tests.unit.hooks.helpers import (
    API_KEY,
    INVALID_KEY_BODY,
)

# -- async (httpx) against a real local HTTP server ------------------------------------------------


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out closes its socket early; that is expected here, not worth a traceback."""


class ScriptedServer:
    """A tiny HTTP server answering scripted ``(status, json_body[, delay])`` replies; the last one repeats."""

    def __init__(self) -> None:
        self.script: list[tuple[Any, ...]] = [(200, {})]
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append({"method": handler.command, "path": handler.path, "headers": dict(handler.headers)})
            status, body, *delay = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if delay:
            time.sleep(delay[0])
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()  # bytes: sent as they are
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


@pytest.fixture
def local_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    server.thread.start()
    set_connection(
        monkeypatch,
        "cs_async",
        conn_type="coinstats",
        password=API_KEY,
        host=server.url,
        extra={"backoff_base": 0, "backoff_max": 0, "max_retries": 2, "timeout": 5},
    )
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)


def make_async_hook(**kwargs: Any) -> tuple[CoinStatsHook, list[float]]:
    hook = CoinStatsHook("cs_async", **kwargs)
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    hook._asleep = record
    return hook, delays


async def test_async_sync_status_retries_503(local_server: ScriptedServer) -> None:
    local_server.script = [
        (503, {"statusCode": 503, "message": "Service Unavailable. Please Contact Support"}),
        (200, {"status": "synced"}),
    ]
    hook, delays = make_async_hook()

    assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    assert len(local_server.requests) == 2
    assert delays == [0.0]
    for request in local_server.requests:
        assert request["method"] == "GET"
        assert request["path"] == "/portfolio/status?portfolioId=pf-1"
        assert request["headers"]["X-API-KEY"] == API_KEY
        assert request["headers"]["User-Agent"] == f"airflow-provider-coinstats/{__version__}"
    assert hook.credits.spent == 3
    assert hook.credits.retries == 1


async def test_async_sync_status_exhausted(local_server: ScriptedServer) -> None:
    local_server.script = [(503, {"statusCode": 503, "message": "Service Unavailable"})]
    hook, delays = make_async_hook()

    with pytest.raises(CoinStatsServerError) as info:
        await hook.aget_portfolio_sync_status("pf-1")

    assert info.value.retryable is True
    assert len(local_server.requests) == 3
    assert len(delays) == 2


async def test_async_invalid_key_not_retried(local_server: ScriptedServer) -> None:
    local_server.script = [(401, INVALID_KEY_BODY)]
    hook, delays = make_async_hook()

    with pytest.raises(CoinStatsInvalidApiKeyError) as info:
        await hook.aget_portfolio_sync_status("pf-1")

    assert len(local_server.requests) == 1
    assert delays == []
    assert_no_canary(str(info.value))


async def test_async_unknown_status(local_server: ScriptedServer) -> None:
    local_server.script = [(200, {"status": "paused"})]

    with pytest.raises(CoinStatsResponseError, match="unknown status 'paused'"):
        await make_async_hook()[0].aget_portfolio_sync_status("pf-1")

    assert len(local_server.requests) == 1


async def test_async_unknown_status_echoing_the_api_key(local_server: ScriptedServer) -> None:
    local_server.script = [(200, {"status": f"{API_KEY} was not accepted " + "x" * 400})]

    with pytest.raises(CoinStatsResponseError, match="unknown status '\\*\\*\\* was not") as info:
        await make_async_hook()[0].aget_portfolio_sync_status("pf-1")

    assert_no_canary(str(info.value), repr(info.value))


async def test_async_connection_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ScriptedServer()  # bound but never served, then closed: connections are refused
    url = server.url
    server.httpd.server_close()
    set_connection(
        monkeypatch,
        "cs_async",
        conn_type="coinstats",
        password=API_KEY,
        host=url,
        extra={"backoff_base": 0, "backoff_max": 0, "max_retries": 1, "timeout": 2},
    )
    hook, delays = make_async_hook()

    with pytest.raises(CoinStatsTransportError) as info:
        await hook.aget_portfolio_sync_status("pf-1")

    assert len(delays) == 1
    assert str(info.value) == (
        f"CoinStats GET /portfolio/status failed: ConnectError talking to {url} (timeout 2 s). Check that the "
        "host is reachable or raise the connection extra 'timeout'."
    )
    assert_no_canary(str(info.value))


async def test_async_uses_connection_timeout(local_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    local_server.script = [(200, {"status": "synced"}, 0.6)]
    set_connection(
        monkeypatch,
        "cs_async",
        conn_type="coinstats",
        password=API_KEY,
        host=local_server.url,
        extra={"backoff_base": 0, "backoff_max": 0, "max_retries": 0, "timeout": 0.1},
    )
    hook, delays = make_async_hook()

    with pytest.raises(CoinStatsTransportError, match=re.escape("timeout 0.1 s")):
        await hook.aget_portfolio_sync_status("pf-1")

    assert len(local_server.requests) == 1
    assert delays == []


async def test_async_settings_register_the_api_key_with_airflows_masker(
    monkeypatch: pytest.MonkeyPatch, coinstats_conn: Any
) -> None:
    """The triggerer's log masks the key only if the async path registers it, as the sync path does."""
    from coinstats_provider.hooks import coinstats_base

    registered: list[str] = []

    async def record(value: str) -> None:
        registered.append(value)

    monkeypatch.setattr(coinstats_base, "amask_secret", record)
    coinstats_conn()
    hook = CoinStatsHook()
    settings = await hook.asettings()
    assert registered == [settings.api_key]


def count_lookups(monkeypatch: pytest.MonkeyPatch, hook: CoinStatsHook, *, async_found: bool = True) -> list[str]:
    """Record which connection lookups ``hook`` makes (``async:<id>`` / ``sync:<id>``)."""
    calls: list[str] = []
    sync_lookup, async_lookup = hook.get_connection, hook.aget_connection

    async def alookup(conn_id: str) -> Any:
        calls.append(f"async:{conn_id}")
        if not async_found:
            raise AirflowNotFoundException(f"The conn_id `{conn_id}` isn't defined")
        return await async_lookup(conn_id)

    def lookup(conn_id: str) -> Any:
        calls.append(f"sync:{conn_id}")
        return sync_lookup(conn_id)

    monkeypatch.setattr(hook, "aget_connection", alookup)
    monkeypatch.setattr(hook, "get_connection", lookup)
    return calls


async def test_async_settings_resolve_the_connection_once_without_blocking(
    local_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_server.script = [(200, {"status": "synced"})]
    hook, _ = make_async_hook()
    lookups = count_lookups(monkeypatch, hook)

    for _ in range(3):
        assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    assert lookups == ["async:cs_async"]


async def test_async_settings_fall_back_to_the_sync_lookup_where_only_it_reaches_the_connection(
    local_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``airflow dags test`` runs triggers inline, where only the synchronous lookup reaches the DB."""
    local_server.script = [(200, {"status": "synced"})]
    hook, _ = make_async_hook()
    lookups = count_lookups(monkeypatch, hook, async_found=False)

    assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCED
    assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    assert lookups == ["async:cs_async", "sync:cs_async"]
    assert len(local_server.requests) == 2


# -- credit budget of the async path (the same checks as the sync path's, tests/unit/hooks/test_credit_accounting.py)


async def test_async_budget_blocks_the_call_before_sending(local_server: ScriptedServer) -> None:
    local_server.script = [(200, {"status": "synced"})]
    hook, _ = make_async_hook(credit_budget=2)  # a status poll costs 3

    with pytest.raises(CoinStatsCreditBudgetExceeded, match="GET /portfolio/status costs 3") as info:
        await hook.aget_portfolio_sync_status("pf-1")

    assert local_server.requests == []
    assert (hook.credits.spent, hook.credits.remaining) == (0, 2)
    assert info.value.retryable is False


async def test_async_budget_exactly_enough(local_server: ScriptedServer) -> None:
    local_server.script = [(200, {"status": "syncing"})]
    hook, _ = make_async_hook(credit_budget=6)

    assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCING
    assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCING
    with pytest.raises(CoinStatsCreditBudgetExceeded):
        await hook.aget_portfolio_sync_status("pf-1")

    assert len(local_server.requests) == 2
    assert (hook.credits.spent, hook.credits.remaining) == (6, 0)


async def test_async_budget_from_the_connection_extra(
    local_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(
        monkeypatch,
        "cs_async",
        conn_type="coinstats",
        password=API_KEY,
        host=local_server.url,
        extra={"backoff_base": 0, "backoff_max": 0, "max_retries": 2, "timeout": 5, "credit_budget": 1000},
    )
    hook, _ = make_async_hook(credit_budget=0)  # the argument overrides the extra

    with pytest.raises(CoinStatsCreditBudgetExceeded):
        await hook.aget_portfolio_sync_status("pf-1")

    assert local_server.requests == []


async def test_async_failed_attempts_are_not_billed(local_server: ScriptedServer) -> None:
    local_server.script = [(503, {"statusCode": 503, "message": "Service Unavailable"}), (200, {"status": "synced"})]
    hook, _ = make_async_hook(credit_budget=3)  # enough for one charged answer only

    assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    assert len(local_server.requests) == 2
    assert (hook.credits.spent, hook.credits.retries) == (3, 1)


async def test_async_retry_of_a_charged_answer_is_checked_against_the_budget(local_server: ScriptedServer) -> None:
    # A cut 200 is charged; re-asking would be charged again, which a budget of one poll does not allow.
    local_server.script = [(200, b'{"stat'), (200, {"status": "synced"})]
    hook, _ = make_async_hook(credit_budget=3)

    with pytest.raises(CoinStatsCreditBudgetExceeded, match="3 of the budget of 3 are already spent"):
        await hook.aget_portfolio_sync_status("pf-1")

    assert len(local_server.requests) == 1
    assert hook.credits.spent == 3
