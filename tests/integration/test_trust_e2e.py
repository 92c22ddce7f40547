"""The provider against a CoinStats that misbehaves like a real API: the sandbox's switches, end to end.

Each test drives the real operators and hook against the local sandbox server (real HTTP) and a real
warehouse (SQLite, and the real PostgreSQL server for the ``postgres`` variants), and compares the
warehouse with the sandbox's own list of transactions: after every successful load they are equal.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

import tests.unit.warehouse.test_loader as warehouse_tests
from coinstats_provider.exceptions import CoinStatsRedirectError
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.operators.load import LoadPortfolioOperator
from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from coinstats_provider.warehouse.transform import TransactionKeyer, transaction_rows
from include.coinstats_sandbox import DEFAULT_API_KEY, SandboxConfig, SandboxServer
from tests.conftest import CANARIES, assert_no_canary, set_connection
from tests.unit.operators.test_load import FakeTI, context
from tests.unit.warehouse.test_loader import Backend

backend = warehouse_tests.backend
pytest_plugins = ["tests.helpers.postgres_server"]

TXNS = "coinstats_portfolio_transactions"
FAST = {"backoff_base": 0, "backoff_max": 0, "max_retries": 2, "timeout": 30}


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(sync_seconds=0, transactions=23, coins=4, quiet=True)) as server:
        yield server


@pytest.fixture
def api(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> SandboxServer:
    """``coinstats_default`` pointing at the sandbox."""
    set_connection(
        monkeypatch,
        "coinstats_default",
        conn_type="coinstats",
        host=sandbox.base_url,
        password=DEFAULT_API_KEY,
        extra=FAST,
    )
    return sandbox


def connect(name: str = "a") -> str:
    """Connect and sync one exchange portfolio in the sandbox; return its id."""
    hook = CoinStatsHook()
    pid = hook.connect_exchange_portfolio("binance", {"apiKey": f"key-{name}", "apiSecret": f"secret-{name}"})
    hook.trigger_portfolio_sync(pid.portfolio_id)
    return pid.portfolio_id


def load(pid: str, page_size: int = 5, **kwargs: Any) -> dict[str, Any]:
    op = LoadPortfolioOperator(
        task_id="load_transactions", portfolio_id=pid, dataset="transactions", page_size=page_size, **kwargs
    )
    result: dict[str, Any] = op.execute(context(FakeTI()))
    return result


def truth(server: SandboxServer, pid: str) -> list[tuple[Any, ...]]:
    """What the warehouse must hold: the sandbox's current list, keyed as the loader keys it."""
    items = json.loads(json.dumps(server.app.transactions(pid)), parse_float=Decimal)
    rows = transaction_rows(pid, items, TransactionKeyer())
    return sorted((row["transaction_key"], row["payload_json"]) for row in rows)


def stored(pid: str) -> list[tuple[Any, ...]]:
    wh = CoinStatsWarehouse()
    rows = wh.fetch_table(TXNS, exclude=("loaded_at",))
    names = wh_columns()
    key, payload = names.index("transaction_key"), names.index("payload_json")
    return sorted((row[key], row[payload]) for row in rows if row[0] == pid)


def wh_columns() -> list[str]:
    from coinstats_provider.warehouse.schema import TABLES

    return [c for c in TABLES[TXNS].column_names if c != "loaded_at"]


def changes(result: dict[str, Any]) -> tuple[int, int, int]:
    return result["inserted"], result["updated"], result["removed"]


def test_transactions_mirror_coinstats_through_shifts_edits_deletes_and_a_capped_limit(
    api: SandboxServer, backend: Backend
) -> None:
    """Before: a shift between page reads stored a phantom ``-1`` copy and missed the new transaction, an
    edited note added a second row, a deleted transaction stayed, and a capped ``limit`` ended the stream
    after its first page."""
    pid = connect()
    first = load(pid)
    assert changes(first) == (23, 0, 0)
    assert stored(pid) == truth(api, pid)

    # A transaction arrives between page 1 and page 2 of the next read.
    api.update(shift_after_page=1, shift_insert=1)
    shifted = load(pid)
    assert len(truth(api, pid)) == 24
    assert stored(pid) == truth(api, pid)  # no phantom, the new one is there
    assert changes(shifted) == (1, 0, 0)
    api.update(shift_after_page=None)

    api.app.edit_note(pid, 3, "moved to cold storage")
    api.app.edit_labels(pid, 5, name="Renamed account")
    edited = load(pid)
    assert stored(pid) == truth(api, pid)
    assert changes(edited) == (0, 2, 0)  # updated in place, same keys

    api.app.delete_transaction(pid, 7)
    api.app.add_transactions(pid, 2)
    churned = load(pid)
    assert stored(pid) == truth(api, pid)
    assert changes(churned) == (2, 0, 1)

    api.update(limit_cap=2)
    capped = load(pid, page_size=5)
    assert stored(pid) == truth(api, pid)
    assert changes(capped) == (0, 0, 0)
    assert capped["rows"] == 25


def test_a_list_that_keeps_changing_fails_the_try_and_writes_nothing(api: SandboxServer, backend: Backend) -> None:
    pid = connect()
    load(pid)
    before = stored(pid)
    api.update(shift_after_page=1, shift_insert=1)
    op = LoadPortfolioOperator(
        task_id="load_transactions", portfolio_id=pid, dataset="transactions", page_size=5, max_stream_restarts=1
    )
    reads: list[int] = []
    read_once = op._load

    def read_with_a_new_arrival(*args: Any) -> int:
        reads.append(len(reads))
        api.app.arm_shift()  # a transaction arrives after page 1 of every read
        return read_once(*args)

    op._load = read_with_a_new_arrival  # type: ignore[method-assign]
    with pytest.raises(AirflowException, match="changed while it was read") as info:
        op.execute(context(FakeTI()))
    assert not isinstance(info.value, AirflowFailException)  # Airflow's retry may read it again
    assert reads == [0, 1]  # the first read and one restart within the try
    assert stored(pid) == before  # the abandoned streams wrote nothing


def test_a_cut_sync_answer_is_paid_once(api: SandboxServer) -> None:
    """Before: the cut 2xx raised ChunkedEncodingError, was retried, and paid for two syncs."""
    pid = connect()
    before = api.app.stats()
    api.update(cut_routes=["/portfolio/sync"], cut_count=1)
    hook = CoinStatsHook()
    hook.trigger_portfolio_sync(pid)
    after = api.app.stats()
    assert after["requests"]["PATCH /portfolio/sync"] - before["requests"]["PATCH /portfolio/sync"] == 1
    assert after["credits_used"] - before["credits_used"] == 30 == hook.credits.spent
    assert after["switches"]["cut"] == 1


def test_a_redirect_sends_nothing_to_the_other_host(api: SandboxServer) -> None:
    with SandboxServer(SandboxConfig(quiet=True)) as elsewhere:
        api.update(redirect_to=elsewhere.base_url, redirect_status=308)
        hook = CoinStatsHook()
        with pytest.raises(CoinStatsRedirectError) as info:
            hook.connect_exchange_portfolio(
                "binance", {"apiKey": CANARIES["exchange_key"], "apiSecret": CANARIES["exchange_secret"]}
            )
        assert sum(elsewhere.app.stats()["requests"].values()) == 0
        assert api.app.stats()["switches"]["redirect"] == 1
        assert hook.credits.spent == 0
        assert_no_canary(str(info.value))


@pytest.mark.slow
def test_four_parallel_loads_with_a_ten_second_stall_all_succeed(api: SandboxServer, backend: Backend) -> None:
    """Before (SQLite): the write lock was held while a stalled page arrived; other loads failed with
    'database is locked' after 5 s and Airflow re-paid every page on retry."""
    pids = [connect(name) for name in "abcd"]
    CoinStatsWarehouse().ensure_schema()
    api.update(stall_seconds=10, stall_routes=["/portfolio/transactions"], stall_on_page=2)
    results: dict[str, Any] = {}

    def run(pid: str) -> None:
        try:
            results[pid] = load(pid)
        except Exception as err:  # reported below
            results[pid] = err

    threads = [threading.Thread(target=run, args=(pid,)) for pid in pids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(isinstance(results.get(pid), dict) for pid in pids), results
    assert api.app.stats()["switches"]["stall"] >= 4
    for pid in pids:
        assert stored(pid) == truth(api, pid)
