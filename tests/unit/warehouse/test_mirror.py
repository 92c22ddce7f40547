"""The transactions table mirrors CoinStats; loads stage outside the write lock; numbers stay exact.

Every scenario runs on SQLite and on a real PostgreSQL server (``backend`` fixture of
``tests.unit.warehouse.test_loader``) and compares the whole table with the expected rows afterwards.
"""

from __future__ import annotations

import copy
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pytest
import responses
from airflow.sdk.exceptions import AirflowFailException

import tests.unit.operators.test_load as load_operator_tests
import tests.unit.warehouse.test_loader as warehouse_tests
from coinstats_provider.pipeline import format_summary, summarize
from coinstats_provider.warehouse.loader import CoinStatsWarehouse, ReconcileResult
from coinstats_provider.warehouse.schema import CHART_TABLE, TABLES
from coinstats_provider.warehouse.sync_state import SyncState
from coinstats_provider.warehouse.transform import (
    InvalidItemError,
    TransactionKeyer,
    chart_rows,
    coin_rows,
    transaction_rows,
)
from tests.helpers.warehouse import count_rows, record_locks, staged_batches
from tests.unit.operators.test_load import TXNS_URL, Pages
from tests.unit.operators.test_load import run as run_load
from tests.unit.warehouse.test_loader import Backend, expected

# Fixtures shared with the warehouse and operator tests (SQLite + real PostgreSQL; HTTP mock).
backend = warehouse_tests.backend
wh = warehouse_tests.wh
warehouse = load_operator_tests.warehouse
rsps = load_operator_tests.rsps

pytest_plugins = ["tests.helpers.postgres_server"]

PID = "pf-mirror"
OTHER = "pf-bystander"
DAY = date(2025, 3, 14)
TXNS = "coinstats_portfolio_transactions"
REMOVED = "coinstats_portfolio_transactions_removed"
COINS: Final = "coinstats_portfolio_coins"
CHART: Final = CHART_TABLE
TOKEN = Decimal("1234.123456789012345678")
SECRET_MARKER = "do-not-leak-7f3a"


def txn(i: int, **overrides: Any) -> dict[str, Any]:
    """A ``TransactionItemDto`` as decoded with ``parse_float=Decimal``."""
    item: dict[str, Any] = {
        "transactionType": ("Buy", "Sell", "Received", "Sent")[i % 4],
        "date": f"2024-01-{1 + i // 24:02d}T{i % 24:02d}:00:00.000Z",
        "coinData": {
            "identifier": f"coin-{i % 5}",
            "symbol": f"C{i % 5}",
            "count": Decimal(f"{i}.000000000000000001"),
            "totalWorth": Decimal(f"{i * 3}.25"),
            "currentValue": Decimal("1.5"),
        },
        "profitLoss": {"profit": Decimal("0.5"), "profitPercent": 1, "currentValue": 2},
        "fee": {"coin": {"identifier": "tether"}, "count": Decimal("0.01"), "totalWorth": Decimal("0.01")},
        "portfolioInfo": {"name": "KuCoin Spot", "icon": "https://example.invalid/i.png"},
    }
    item.update(overrides)
    return item


def rows_of(items: Iterable[Mapping[str, Any]], portfolio: str = PID) -> list[dict[str, Any]]:
    return list(transaction_rows(portfolio, items, TransactionKeyer()))


def table(wh: CoinStatsWarehouse, name: str = TXNS) -> list[tuple[Any, ...]]:
    return wh.fetch_table(name, exclude=("loaded_at",))


def load(wh: CoinStatsWarehouse, items: list[dict[str, Any]], portfolio: str = PID) -> ReconcileResult:
    """Reconcile ``items`` and check the table is exactly what they describe, for every portfolio."""
    result = wh.reconcile_transactions(portfolio, transaction_rows(portfolio, items, TransactionKeyer()))
    mine = [row for row in table(wh) if row[0] == portfolio]
    assert mine == expected(TXNS, rows_of(items, portfolio))
    assert count_rows(wh, TXNS, portfolio) == result.total == len(items)
    return result


def changes(result: ReconcileResult) -> tuple[int, int, int]:
    return result.inserted, result.updated, result.removed


def failing(rows: Iterable[Mapping[str, Any]], after: int) -> Iterator[Mapping[str, Any]]:
    for i, row in enumerate(rows):
        if i == after:
            raise RuntimeError("page 3 could not be fetched")
        yield row


# -- mirror semantics ----------------------------------------------------------------------------


def test_rerun_changes_nothing_and_does_not_rewrite_rows(wh: CoinStatsWarehouse) -> None:
    items = [txn(i) for i in range(120)]
    assert changes(load(wh, items)) == (120, 0, 0)
    before = wh.fetch_table(TXNS)  # with loaded_at
    time.sleep(0.01)
    assert changes(load(wh, copy.deepcopy(items))) == (0, 0, 0)
    assert wh.fetch_table(TXNS) == before  # not even loaded_at moved
    assert count_rows(wh, REMOVED) == 0


def test_edited_note_updates_the_row_in_place(wh: CoinStatsWarehouse) -> None:
    items = [txn(i) for i in range(30)]
    load(wh, items)
    keys = [row[1] for row in table(wh)]
    stamps = {row[1]: row[-1] for row in wh.fetch_table(TXNS)}
    edited = copy.deepcopy(items)
    edited[7]["note"] = "moved to cold wallet"
    edited[9]["portfolioInfo"] = {"name": "Renamed"}
    edited[9]["profitLoss"] = {"profit": Decimal("99.5")}  # repriced: same transaction, new profit
    time.sleep(0.01)
    assert changes(load(wh, edited)) == (0, 2, 0)
    assert [row[1] for row in table(wh)] == keys  # no second row, no new key
    new_stamps = {row[1]: row[-1] for row in wh.fetch_table(TXNS)}
    changed = {k for k in keys if new_stamps[k] != stamps[k]}
    assert changed == {rows_of(edited)[7]["transaction_key"], rows_of(edited)[9]["transaction_key"]}
    assert count_rows(wh, REMOVED) == 0


def test_deleted_transaction_is_removed_and_recorded(wh: CoinStatsWarehouse) -> None:
    items = [txn(i) for i in range(40)]
    load(wh, items)
    gone = rows_of(items)[13]
    remaining = items[:13] + items[14:]
    assert changes(load(wh, remaining)) == (0, 0, 1)
    history = wh.fetch_table(REMOVED)
    assert [(r[0], r[1], r[3]) for r in history] == [(PID, gone["transaction_key"], gone["payload_json"])]
    assert history[0][2].startswith("20")  # removed_at, UTC ISO text
    # added back later: inserted again, the history keeps the earlier removal
    assert changes(load(wh, items)) == (1, 0, 0)
    assert count_rows(wh, REMOVED) == 1


def test_new_transactions_are_inserted(wh: CoinStatsWarehouse) -> None:
    items = [txn(i) for i in range(20)]
    load(wh, items)
    assert changes(load(wh, [*items[:10], txn(500), *items[10:], txn(501)])) == (2, 0, 0)


def test_identical_transactions_are_all_kept_and_shrink_one_at_a_time(wh: CoinStatsWarehouse) -> None:
    twin = txn(3)
    items = [txn(1), copy.deepcopy(twin), txn(2), copy.deepcopy(twin), copy.deepcopy(twin)]
    assert changes(load(wh, items)) == (5, 0, 0)
    twin_keys = sorted(r["transaction_key"] for r in rows_of(items) if r["occurred_at"] == twin["date"])
    assert [k[-2:] for k in twin_keys] == ["-0", "-1", "-2"]
    # one of the three identical transactions is deleted in CoinStats: exactly one row goes
    assert changes(load(wh, items[:4])) == (0, 0, 1)
    assert [r[1] for r in wh.fetch_table(REMOVED)] == [twin_keys[2]]
    # and a new identical one appears again
    assert changes(load(wh, items)) == (1, 0, 0)


def test_edits_inside_an_identical_group(wh: CoinStatsWarehouse) -> None:
    twin = txn(3)
    items = [copy.deepcopy(twin), txn(4), copy.deepcopy(twin)]
    load(wh, items)
    # a note on the second twin: not identifying, so the group keeps its keys and one row is updated
    noted = copy.deepcopy(items)
    noted[2]["note"] = "second purchase"
    assert changes(load(wh, noted)) == (0, 1, 0)
    # the amount of the first twin is corrected: it leaves the group (new key), the group shrinks to one
    corrected = copy.deepcopy(noted)
    corrected[0]["coinData"]["count"] = Decimal("3.5")
    assert changes(load(wh, corrected)) == (1, 1, 1)
    assert count_rows(wh, TXNS, PID) == 3


def test_incomplete_stream_changes_nothing(wh: CoinStatsWarehouse) -> None:
    items = [txn(i) for i in range(200)]
    load(wh, items)
    before = {name: wh.fetch_table(name) for name in (TXNS, REMOVED)}
    shorter = [*items[:50], txn(900)]  # would delete 150 rows and insert one if it were complete
    batches: list[int] = []
    with staged_batches(wh, batches.append), pytest.raises(RuntimeError, match="could not be fetched"):
        wh.reconcile_transactions(PID, failing(rows_of([*shorter, *items[60:]]), 120))
    assert batches == [50, 100]  # rows had been staged
    assert {name: wh.fetch_table(name) for name in (TXNS, REMOVED)} == before


def test_other_portfolios_are_untouched(wh: CoinStatsWarehouse) -> None:
    load(wh, [txn(i) for i in range(10)], portfolio=OTHER)
    others = [row for row in wh.fetch_table(TXNS) if row[0] == OTHER]
    load(wh, [txn(i) for i in range(5)])
    assert changes(load(wh, [txn(i) for i in range(2)])) == (0, 0, 3)
    assert [row for row in wh.fetch_table(TXNS) if row[0] == OTHER] == others
    assert {row[0] for row in wh.fetch_table(REMOVED)} == {PID}


def test_empty_complete_stream_empties_the_portfolio(wh: CoinStatsWarehouse) -> None:
    load(wh, [txn(i) for i in range(4)])
    assert changes(load(wh, [])) == (0, 0, 4)
    assert count_rows(wh, REMOVED, PID) == 4


def test_repeated_key_is_refused_without_changes(wh: CoinStatsWarehouse) -> None:
    load(wh, [txn(i) for i in range(4)])
    before = wh.fetch_table(TXNS)
    rows = rows_of([txn(7), txn(8)])
    rows[1]["transaction_key"] = rows[0]["transaction_key"]
    with pytest.raises(ValueError) as info:
        wh.reconcile_transactions(PID, rows)
    assert str(info.value) == (
        f"the transaction stream of portfolio {PID} repeats 1 transaction_key value(s); each transaction needs a "
        "unique key (use one TransactionKeyer per stream). Nothing was changed."
    )
    assert wh.fetch_table(TXNS) == before


def test_a_row_with_an_unknown_column_is_named_by_its_position(wh: CoinStatsWarehouse) -> None:
    rows = rows_of([txn(1), txn(2)])
    rows[1]["colour"] = "red"

    with pytest.raises(ValueError, match=rf"^{TXNS} row #1 has unknown columns \['colour'\]$"):
        wh.reconcile_transactions(PID, rows)
    assert table(wh) == []


def test_a_loaded_at_the_row_sets_is_kept_and_a_missing_one_is_stamped(wh: CoinStatsWarehouse) -> None:
    rows = rows_of([txn(1), txn(2)])
    rows[0]["loaded_at"] = "2020-01-01T00:00:00+00:00"

    wh.reconcile_transactions(PID, rows)

    stamps = {row[1]: row[-1] for row in wh.fetch_table(TXNS)}
    assert stamps[rows[0]["transaction_key"]] == "2020-01-01T00:00:00+00:00"
    assert stamps[rows[1]["transaction_key"]].startswith("20")
    assert stamps[rows[1]["transaction_key"]] > "2025"


def test_transactions_since_returns_the_keys_and_dates_from_that_moment_on(wh: CoinStatsWarehouse) -> None:
    items = [txn(i) for i in range(30)]  # hourly from 2024-01-01T00:00Z
    load(wh, items)
    keys = [row["transaction_key"] for row in rows_of(items)]
    since = datetime(2024, 1, 1, 20, tzinfo=UTC)

    found = wh.transactions_since(PID, since)

    # 20:00 itself is included; each value is the parsed, aware date.
    assert found == {keys[i]: datetime(2024, 1, 1 + i // 24, i % 24, tzinfo=UTC) for i in range(20, 30)}
    assert wh.transactions_since(OTHER, since) == {}


# -- exact numbers ---------------------------------------------------------------------------------


def test_long_decimals_round_trip_exactly(backend: Backend, wh: CoinStatsWarehouse) -> None:
    item = txn(1, coinData={"identifier": "pepe", "count": TOKEN, "totalWorth": Decimal("1E-18")})
    item["fee"]["count"] = Decimal("123456789012345678901234567890.123456789012345678")
    load(wh, [item])
    ((amount, worth, fee),) = [(r[6], r[7], r[8]) for r in table(wh)]
    assert (str(amount), worth, str(fee)) == (str(TOKEN), Decimal("1E-18"), str(item["fee"]["count"]))
    assert float(amount) != amount  # would not survive a float
    coins = [{"coin": {"identifier": "pepe"}, "count": TOKEN, "price": {"USD": Decimal("0.000012345678901234567891")}}]
    wh.replace_snapshot(COINS, PID, DAY, coin_rows(PID, DAY, coins))
    ((coin_amount, value),) = [(r[6], r[9]) for r in wh.fetch_table(COINS)]
    assert coin_amount == TOKEN
    assert value == Decimal("0.015236091921998780661158031397776651425098")
    if backend.sqlite_path is not None:
        raw = sqlite3.connect(backend.sqlite_path)
        try:
            stored = raw.execute(f"SELECT amount, typeof(amount), CAST(amount AS REAL) FROM {TXNS}").fetchone()  # noqa: S608
        finally:
            raw.close()
        assert stored == ("1234.123456789012345678", "text", pytest.approx(1234.1234567890124))
    else:
        import psycopg

        assert backend.pg_uri is not None
        with psycopg.connect(backend.pg_uri) as conn:
            kinds: dict[str, str] = dict(
                conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                    (TXNS,),
                ).fetchall()
            )
            total = conn.execute(f"SELECT SUM(amount) + 1 FROM {TXNS}").fetchone()  # noqa: S608
        assert kinds["amount"] == kinds["total_worth_usd"] == "numeric"
        assert total == (TOKEN + 1,)


_LEGACY_ROWS = [
    (
        "pf-old",
        "k-0",
        "Buy",
        "2024-01-01",
        "bitcoin",
        "BTC",
        0.1,
        1234.5678901234567,
        None,
        "tether",
        -2.5,
        "P",
        "{}",
        "t",
    ),
    ("pf-old", "k-1", "Sell", "2024-01-02", "eth", "ETH", 1e-07, 3.0, 0.30000000000000004, None, 7.0, None, "{}", "t"),
]


def _legacy_ddl(name: str) -> str:
    spec = TABLES[name]
    cols = [f"{c} {'DOUBLE PRECISION' if t == 'DECIMAL' else t}" for c, t in spec.columns]
    return f"CREATE TABLE {name} ({', '.join(cols)}, PRIMARY KEY ({', '.join(spec.primary_key)}))"


def test_double_precision_warehouse_is_migrated_in_place(backend: Backend) -> None:
    """A warehouse created by the float version keeps every row, now as exact decimals."""
    marks = ", ".join("?" if backend.sqlite_path else "%s" for _ in _LEGACY_ROWS[0])
    insert = f"INSERT INTO {TXNS} VALUES ({marks})"  # noqa: S608
    if backend.sqlite_path is not None:
        raw = sqlite3.connect(backend.sqlite_path)
        with raw:
            raw.execute(_legacy_ddl(TXNS))
            raw.executemany(insert, _LEGACY_ROWS)
        raw.close()
    else:
        import psycopg

        assert backend.pg_uri is not None
        with psycopg.connect(backend.pg_uri) as conn:
            conn.execute(_legacy_ddl(TXNS))
            conn.cursor().executemany(insert, _LEGACY_ROWS)
    wh = backend.warehouse()
    wh.ensure_schema()
    wh.ensure_schema()  # idempotent
    got = table(wh)
    assert [row[:6] for row in got] == [row[:6] for row in _LEGACY_ROWS]
    assert [row[6:11] for row in got] == [
        (Decimal("0.1"), Decimal("1234.5678901234567"), None, "tether", Decimal("-2.5")),
        (Decimal("1E-7"), Decimal("3.0"), Decimal("0.30000000000000004"), None, Decimal("7.0")),
    ]
    # the migrated table takes exact values and reconciles like a new one
    assert changes(wh.reconcile_transactions("pf-old", rows_of([txn(1)], "pf-old"))) == (1, 0, 2)
    assert count_rows(wh, REMOVED, "pf-old") == 2
    ((amount,),) = [(r[6],) for r in table(wh)]
    assert str(amount) == "1.000000000000000001"


# -- bad data ----------------------------------------------------------------------------------------


def test_bad_text_is_sanitised_on_every_backend(wh: CoinStatsWarehouse) -> None:
    item = txn(2, note="lone \ud83d surrogate and NUL \x00 here", portfolioInfo={"name": "Kra\x00ken \udc00"})
    item["coinData"]["symbol"] = "B\x00TC"
    result = load(wh, [item])
    assert result.inserted == 1
    ((symbol, name, payload),) = [(r[5], r[11], r[12]) for r in table(wh)]
    assert (symbol, name) == ("BTC", "Kraken \ufffd")
    assert "\\u0000" not in payload
    assert "\\ud83d" not in payload
    assert "\\ufffd" in payload
    # rows built by hand are cleaned by the warehouse too
    wh.upsert_portfolio({"portfolio_id": PID, "portfolio_name": "a\x00b\ud800"})
    assert wh.fetch_table("coinstats_portfolios")[0][3] == "ab\ufffd"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("count", "NaN", r"item #3: field 'coinData\.count' is not a number"),
        ("count", "Infinity", r"item #3: field 'coinData\.count' is not a number"),
        ("count", Decimal("NaN"), r"item #3: field 'coinData\.count' is not a finite number"),
        ("count", float("inf"), r"item #3: field 'coinData\.count' is not a finite number"),
        ("totalWorth", True, r"item #3: field 'coinData\.totalWorth' is a boolean"),
        ("totalWorth", SECRET_MARKER, r"item #3: field 'coinData\.totalWorth' is not a number"),
    ],
)
def test_bad_number_fails_the_load_without_changes(
    wh: CoinStatsWarehouse, field: str, value: Any, message: str
) -> None:
    items = [txn(i) for i in range(6)]
    load(wh, items)
    before = wh.fetch_table(TXNS)
    broken = copy.deepcopy(items)
    broken[3]["coinData"][field] = value
    with pytest.raises(InvalidItemError, match=message) as info:
        wh.reconcile_transactions(PID, transaction_rows(PID, broken))
    assert SECRET_MARKER not in str(info.value)
    assert wh.fetch_table(TXNS) == before
    with pytest.raises(ValueError, match=r"row #0: field 'amount' is not a number"):
        wh.reconcile_transactions(PID, [{"transaction_key": "k", "amount": "NaN"}])
    assert wh.fetch_table(TXNS) == before


def test_operator_fails_without_retry_on_a_bad_number(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    items = [txn(i) for i in range(3)]
    items[1]["coinData"]["count"] = "NaN"
    rsps.add_callback(responses.GET, TXNS_URL, callback=Pages("data", _jsonable(items)))
    with pytest.raises(
        AirflowFailException, match=r"retrying cannot help: portfolio transactions item #1: field 'coinData\.count'"
    ):
        run_load(dataset="transactions")
    assert len(rsps.calls) == 1  # one page, no retried requests


def test_operator_returns_and_logs_the_mirror_changes(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    pages = Pages("data", _jsonable([txn(i) for i in range(5)]))
    rsps.add_callback(responses.GET, TXNS_URL, callback=pages)

    def run() -> dict[str, Any]:
        return run_load(dataset="transactions")

    first = run()
    assert (first["rows"], first["inserted"], first["updated"], first["removed"]) == (5, 5, 0, 0)
    pages.items = [*pages.items[:2], {**pages.items[2], "note": "edited"}, *pages.items[4:], _jsonable([txn(9)])[0]]
    second = run()
    assert {k: second[k] for k in ("rows", "inserted", "updated", "removed")} == {
        "rows": 5,
        "inserted": 1,
        "updated": 1,
        "removed": 1,
    }
    assert set(second) == {
        "portfolio_id",
        "dataset",
        "table",
        "rows",
        "pages",
        "credits_spent",
        "inserted",
        "updated",
        "removed",
        "mode",
        "mode_requested",
        "mode_reason",
        "read",
        "credits_saved",
        "full_read_credits",
    }
    assert (second["mode"], second["mode_requested"], second["credits_saved"]) == ("full", "full", 0)
    assert "now mirror CoinStats: 1 inserted, 1 updated, 1 removed, 3 unchanged" in logs.text


def _jsonable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decimals as floats, for an HTTP mock body."""

    def convert(value: Any) -> Any:
        if isinstance(value, Decimal):
            return float(value)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return [convert(item) for item in items]


def test_run_summary_reports_mirror_changes_per_portfolio() -> None:
    accounts = [
        {"exchange_conn_id": "ex_a", "portfolio_id": "pf-a", "connection_id": "kraken", "status": "existing"},
        {"exchange_conn_id": "ex_b", "portfolio_id": "pf-b", "connection_id": "okx", "status": "connected"},
    ]
    loads = [
        {"portfolio_id": "pf-a", "table": TXNS, "rows": 10, "inserted": 2, "updated": 3, "removed": 1},
        {"portfolio_id": "pf-b", "table": COINS, "rows": 4},
    ]
    summary = summarize(accounts, [], loads)
    entries = {e["portfolio_id"]: e for e in summary["portfolios"]}
    assert entries["pf-a"]["transactions"] == {"inserted": 2, "updated": 3, "removed": 1}
    assert "transactions" not in entries["pf-b"]
    lines = format_summary(summary).splitlines()
    assert lines[-2].split() == ["pf-a", "transactions:", "2", "inserted,", "3", "updated,", "1", "removed"]
    assert len(lines) == 1 + 2 + 1 + 1


# -- staging outside the write lock ------------------------------------------------------------------


class Stall:
    """Row iterator wrapper that pauses after ``after`` rows until ``release`` is set (or ``seconds`` pass)."""

    def __init__(self, after: int, seconds: float | None = None) -> None:
        self.after = after
        self.seconds = seconds
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for i, row in enumerate(rows):
            if i == self.after:
                self.reached.set()
                if self.seconds is not None:
                    time.sleep(self.seconds)
                else:
                    assert self.release.wait(60)
            yield row


def test_other_loads_commit_while_a_stream_waits_on_the_network(backend: Backend, wh: CoinStatsWarehouse) -> None:
    """A stalled stream holds no lock: loads of other portfolios (snapshot and transactions) finish meanwhile."""
    for target in ("transactions", "coins"):
        stall = Stall(after=120)
        errors: list[BaseException] = []

        def slow_load(target: str = target, stall: Stall = stall, errors: list[BaseException] = errors) -> None:
            try:
                mine = backend.warehouse()
                if target == "transactions":
                    mine.reconcile_transactions(PID, stall(rows_of([txn(i) for i in range(300)])))
                else:
                    items = [{"coin": {"identifier": f"c{i}"}, "count": i} for i in range(300)]
                    mine.replace_snapshot(COINS, PID, DAY, stall(coin_rows(PID, DAY, items)))
            except BaseException as exc:  # surfaced by the main thread
                errors.append(exc)

        worker = threading.Thread(target=slow_load)
        worker.start()
        try:
            assert stall.reached.wait(30)
            assert not backend.writer_holds_open_transaction()
            started = time.monotonic()
            load(wh, [txn(i) for i in range(50)], portfolio=OTHER)
            wh.replace_snapshot(COINS, OTHER, DAY, coin_rows(OTHER, DAY, [{"coin": {"identifier": "btc"}, "count": 1}]))
            assert time.monotonic() - started < 4  # not queued behind the stalled load (SQLite waits 5 s)
        finally:
            stall.release.set()
            worker.join(60)
        assert not errors
    assert count_rows(wh, TXNS, PID) == 300
    assert count_rows(wh, COINS, PID) == 300


@pytest.mark.slow
def test_four_parallel_loads_with_ten_second_stalls_all_succeed(backend: Backend, wh: CoinStatsWarehouse) -> None:
    portfolios = [f"pf-par-{n}" for n in range(4)]
    streams = {pid: [txn(i + 7 * n) for i in range(400)] for n, pid in enumerate(portfolios)}
    for pid in portfolios:  # existing content, part of which vanishes in the parallel run
        load(wh, [*streams[pid][:300], txn(999)], portfolio=pid)
    results: dict[str, ReconcileResult] = {}
    errors: list[BaseException] = []

    def run(pid: str) -> None:
        try:
            mine = backend.warehouse()
            rows = Stall(after=200, seconds=10)(rows_of(streams[pid], pid))
            results[pid] = mine.reconcile_transactions(pid, rows)
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(pid,)) for pid in portfolios]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.monotonic() - started
    assert not errors, errors
    assert elapsed < 30  # the stalls overlapped instead of queueing behind a lock
    for pid in portfolios:
        assert changes(results[pid]) == (100, 0, 1)
        assert [row for row in table(wh) if row[0] == pid] == expected(TXNS, rows_of(streams[pid], pid))


# -- merge: an incremental read inserts and updates, never deletes ---------------------------------


def test_merge_inserts_new_updates_changed_and_keeps_rows_absent_from_the_stream(wh: CoinStatsWarehouse) -> None:
    items = [txn(i) for i in range(10)]
    load(wh, items)
    edited = copy.deepcopy(items[3])
    edited["note"] = "moved to cold wallet"
    recent = [edited, txn(10), txn(11)]
    state = SyncState(PID, last_mode="incremental", currency="USD", newest_key="k-11", last_run_at="2026-01-02")

    result = wh.merge_transactions(PID, transaction_rows(PID, recent, TransactionKeyer()), state=lambda: state)

    assert (changes(result), result.total) == ((2, 1, 0), 3)
    assert table(wh) == expected(TXNS, rows_of([*items[:3], edited, *items[4:], txn(10), txn(11)]))
    assert count_rows(wh, REMOVED) == 0
    # Committed with the rows; columns the state leaves empty read back as None, not as text.
    assert wh.sync_state(PID) == state
    assert wh.sync_state(OTHER) is None


def test_merge_with_another_portfolios_state_or_a_broken_stream_changes_nothing(wh: CoinStatsWarehouse) -> None:
    load(wh, [txn(i) for i in range(5)])
    before = table(wh)
    rows = rows_of([txn(i) for i in range(5, 8)])

    with pytest.raises(ValueError, match=r"^the sync state belongs to another portfolio than the rows$"):
        wh.merge_transactions(PID, rows, state=lambda: SyncState(OTHER, last_mode="incremental"))
    with pytest.raises(RuntimeError, match="page 3"):
        wh.merge_transactions(PID, failing(rows, after=2), state=lambda: SyncState(PID, last_mode="incremental"))

    assert table(wh) == before
    assert wh.sync_state(PID) is None


@pytest.mark.parametrize(
    ("write", "lock", "line"),
    [
        pytest.param(
            lambda wh: wh.reconcile_transactions(PID, rows_of([txn(1), txn(2)])),
            (TXNS, PID),
            f"Transactions of portfolio {PID} (full reconcile): 2 in stream, 2 inserted, 0 updated, 0 removed",
            id="reconcile",
        ),
        pytest.param(
            lambda wh: wh.merge_transactions(PID, rows_of([txn(1), txn(2)])),
            (TXNS, PID),
            f"Transactions of portfolio {PID} (merge, no deletes): 2 in stream, 2 inserted, 0 updated, 0 removed",
            id="merge",
        ),
        pytest.param(
            lambda wh: wh.replace_snapshot(COINS, PID, DAY, warehouse_tests.snapshot_rows(3, portfolio=PID, day=DAY)),
            (COINS, PID, DAY.isoformat()),
            f"Replaced {COINS} snapshot {DAY.isoformat()} of portfolio {PID}: 3 rows",
            id="snapshot",
        ),
        pytest.param(
            lambda wh: wh.upsert_history(CHART, PID, chart_rows(PID, "all", [[1755864000, 1, 2, 3]])),
            (CHART, PID),
            f"Upserted 1 {CHART} rows of portfolio {PID}",
            id="history",
        ),
    ],
)
def test_each_write_locks_only_its_own_target_and_says_what_it_wrote(
    wh: CoinStatsWarehouse,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    write: Any,
    lock: tuple[str, ...],
    line: str,
) -> None:
    """Concurrent loads of other portfolios, tables or days must not wait on each other (PostgreSQL
    advisory lock on exactly these values); the log line is the load's record in the task log."""
    taken = record_locks(wh, monkeypatch)
    caplog.set_level(logging.INFO, logger="coinstats_provider.warehouse.loader")

    write(wh)

    assert taken == [lock]
    assert line in [r.getMessage() for r in caplog.records if r.name == "coinstats_provider.warehouse.loader"]
