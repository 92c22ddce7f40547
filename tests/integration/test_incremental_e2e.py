"""Incremental transactions loads against the sandbox (real HTTP) on SQLite and the real PostgreSQL.

Between reconciles an incremental load inserts and updates what its window holds and deletes nothing; a
reconcile (scheduled, or forced by an untrustworthy read) makes the table equal to the sandbox's list again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

import tests.unit.warehouse.test_loader as warehouse_tests
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.operators.load import LoadPortfolioOperator
from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from coinstats_provider.warehouse.sync_state import parse_moment
from coinstats_provider.warehouse.transform import TransactionKeyer, transaction_rows
from include.coinstats_sandbox import DEFAULT_API_KEY, SandboxConfig, SandboxServer
from tests.conftest import set_connection
from tests.unit.operators.test_load import FakeTI, context
from tests.unit.warehouse.test_loader import Backend

backend = warehouse_tests.backend
pytest_plugins = ["tests.helpers.postgres_server"]

TXNS = "coinstats_portfolio_transactions"
FAST = {"backoff_base": 0, "backoff_max": 0, "max_retries": 2, "timeout": 30}
#: A full reconcile on every load (the smallest positive interval).
RECONCILE_NOW = 1e-9


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxServer]:
    """A sandbox with 40 transactions and ``coinstats_default`` pointing at it."""
    with SandboxServer(SandboxConfig(sync_seconds=0, transactions=40, coins=4, quiet=True)) as server:
        set_connection(
            monkeypatch,
            "coinstats_default",
            conn_type="coinstats",
            host=server.base_url,
            password=DEFAULT_API_KEY,
            extra=FAST,
        )
        yield server


def connect() -> str:
    hook = CoinStatsHook()
    pid = hook.connect_exchange_portfolio("binance", {"apiKey": "key-i", "apiSecret": "secret-i"}).portfolio_id
    hook.trigger_portfolio_sync(pid)
    return pid


def load(pid: str, **kwargs: Any) -> dict[str, Any]:
    """One transactions load in incremental mode (5 per page) unless ``kwargs`` say otherwise."""
    options: dict[str, Any] = {"page_size": 5, "transactions_mode": "incremental", **kwargs}
    op = LoadPortfolioOperator(task_id="load_transactions", portfolio_id=pid, dataset="transactions", **options)
    result: dict[str, Any] = op.execute(context(FakeTI()))
    return result


def truth(server: SandboxServer, pid: str, currency: str = "USD") -> list[tuple[str, str]]:
    """The sandbox's current list as (key, payload) pairs, keyed as the loader keys a full stream."""
    items = json.loads(json.dumps(server.app.transactions(pid, currency)), parse_float=Decimal)
    return sorted(
        (row["transaction_key"], row["payload_json"]) for row in transaction_rows(pid, items, TransactionKeyer())
    )


def stored(pid: str) -> list[tuple[str, str]]:
    from coinstats_provider.warehouse.schema import TABLES

    names = [c for c in TABLES[TXNS].column_names if c != "loaded_at"]
    key, payload = names.index("transaction_key"), names.index("payload_json")
    rows = CoinStatsWarehouse().fetch_table(TXNS, exclude=("loaded_at",))
    return sorted((row[key], row[payload]) for row in rows if row[0] == pid)


def changes(result: dict[str, Any]) -> tuple[int, int, int]:
    return result["inserted"], result["updated"], result["removed"]


def dates(server: SandboxServer, pid: str) -> list[datetime]:
    moments = [parse_moment(item["date"]) for item in server.app.transactions(pid)]
    assert all(moment is not None for moment in moments)
    return [moment for moment in moments if moment is not None]


def hours_between(newer: datetime, older: datetime) -> float:
    return (newer - older).total_seconds() / 3600


def test_incremental_reads_one_page_for_new_transactions_and_reconciles_on_schedule(
    api: SandboxServer, backend: Backend
) -> None:
    pid = connect()
    first = load(pid)
    assert (first["mode"], first["mode_reason"]) == ("full", "first load of this portfolio (no sync state)")
    assert changes(first) == (40, 0, 0)
    assert stored(pid) == truth(api, pid)
    charged = api.stats()["credits_by_path"]["GET /portfolio/transactions"]

    api.app.add_transactions(pid, 5)
    second = load(pid)
    assert (second["mode"], changes(second), second["rows"]) == ("incremental", (5, 0, 0), 45)
    assert stored(pid) == truth(api, pid)
    # one page of 5 + the short page that ends it, instead of 45 // 5 + 1 = 10 pages
    assert api.stats()["credits_by_path"]["GET /portfolio/transactions"] - charged == 8
    assert (second["full_read_credits"], second["credits_saved"]) == (40, 32)

    reconcile = load(pid, full_every_days=RECONCILE_NOW)
    assert (reconcile["mode"], changes(reconcile), reconcile["credits_saved"]) == ("full", (0, 0, 0), 0)
    assert reconcile["mode_reason"].startswith("scheduled reconcile")
    assert stored(pid) == truth(api, pid)


def test_overlap_boundary_and_edits_inside_and_outside_the_window(api: SandboxServer, backend: Backend) -> None:
    pid = connect()
    load(pid)
    moments = dates(api, pid)
    # cut-off exactly at the 3rd newest transaction: it is in the window (``from`` is inclusive), the 4th is not
    overlap = hours_between(moments[0], moments[2])
    api.app.edit_note(pid, 2, "at the cut-off")
    api.app.edit_note(pid, 3, "just outside the window")
    api.app.edit_labels(pid, 1, name="Renamed inside the window")

    incremental = load(pid, transactions_overlap_hours=overlap)
    assert (incremental["mode"], changes(incremental), incremental["read"]) == ("incremental", (0, 2, 0), 3)
    wrong = {key for key, _ in set(truth(api, pid)) ^ set(stored(pid))}
    assert len(wrong) == 1  # only the edit outside the window waits for the reconcile
    assert next(payload for key, payload in stored(pid) if key in wrong).find("just outside") == -1

    reconcile = load(pid, transactions_overlap_hours=overlap, full_every_days=RECONCILE_NOW)
    assert (reconcile["mode"], changes(reconcile)) == ("full", (0, 1, 0))
    assert stored(pid) == truth(api, pid)


def test_deletions_wait_for_the_reconcile_unless_inside_the_window(api: SandboxServer, backend: Backend) -> None:
    pid = connect()
    load(pid)
    api.app.delete_transaction(pid, 10)  # far outside a one-day window
    kept = load(pid)
    assert (kept["mode"], changes(kept), kept["rows"]) == ("incremental", (0, 0, 0), 40)  # never deletes

    reconcile = load(pid, full_every_days=RECONCILE_NOW)
    assert (reconcile["mode"], changes(reconcile), reconcile["rows"]) == ("full", (0, 0, 1), 39)
    assert stored(pid) == truth(api, pid)

    # A stored transaction inside the window is gone: the window cannot stand, the load reconciles at once.
    api.app.add_transactions(pid, 2)
    load(pid)
    api.app.delete_transaction(pid, 1)
    gone = load(pid)
    assert (gone["mode"], gone["mode_requested"], changes(gone)) == ("full", "incremental", (0, 0, 1))
    assert gone["mode_reason"].startswith("fallback from incremental: 1 stored transaction(s) of the window")
    assert stored(pid) == truth(api, pid)


def test_ignored_from_filter_falls_back_to_a_full_read(
    api: SandboxServer, backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = connect()
    load(pid)
    api.app.add_transactions(pid, 3)
    api.app.delete_transaction(pid, 20)
    api.update(ignore_from=True)
    before = api.stats()["credits_by_path"]["GET /portfolio/transactions"]
    capsys.readouterr()
    result = load(pid)
    assert (result["mode"], result["mode_requested"], changes(result)) == ("full", "incremental", (3, 0, 1))
    assert "the date filter was not applied" in result["mode_reason"]
    assert "the incremental read cannot stand" in capsys.readouterr().out
    assert stored(pid) == truth(api, pid)
    # the first page gave it away (4 credits), then the full read: 42 // 5 + 1 = 9 pages
    assert api.stats()["credits_by_path"]["GET /portfolio/transactions"] - before == 4 + 36
    assert result["credits_saved"] == -4


def test_empty_table_and_changed_currency_load_in_full(api: SandboxServer, backend: Backend) -> None:
    pid = connect()
    load(pid)
    wh = CoinStatsWarehouse()
    with wh._transaction() as cur:
        cur.execute(f"DELETE FROM {TXNS}")  # noqa: S608
    refill = load(pid)
    assert (refill["mode"], refill["mode_reason"], changes(refill)) == ("full", "no transactions stored", (40, 0, 0))

    euro = load(pid, currency="EUR")
    assert (euro["mode"], euro["mode_reason"], changes(euro)) == (
        "full",
        "currency changed from USD to EUR",
        (0, 40, 0),
    )
    assert stored(pid) == truth(api, pid, "EUR")
    again = load(pid, currency="EUR")
    assert (again["mode"], changes(again)) == ("incremental", (0, 0, 0))
    assert stored(pid) == truth(api, pid, "EUR")
