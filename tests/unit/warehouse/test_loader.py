"""Exactly-once tests for the warehouse layer, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import itertools
import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest

from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from coinstats_provider.warehouse.schema import TABLES
from coinstats_provider.warehouse.transform import TransactionKeyer, coin_rows, transaction_rows, value_row
from tests.helpers.postgres_server import PostgresServer
from tests.helpers.warehouse import count_rows, record_locks, staged_batches

ROOT = Path(__file__).resolve().parents[3]
PORTFOLIO = "pf-main"
OTHER = "pf-other"
DAY = date(2025, 3, 14)
COINS: Final = "coinstats_portfolio_coins"
VALUES: Final = "coinstats_portfolio_values"
TXNS = "coinstats_portfolio_transactions"
PORTFOLIOS = "coinstats_portfolios"
BATCH = 50
_db_counter = itertools.count()

# One PostgreSQL server per test session, shared with every module that lists this plugin.
pytest_plugins = ["tests.helpers.postgres_server"]


# -- synthetic CoinStats data (also used by the child process in the SIGKILL test) -------------


def transaction_items(n: int, version: int = 1) -> Iterator[dict[str, Any]]:
    """``n`` transactions in date order; every 10th is an exact twin of its predecessor.

    ``version`` changes only market-dependent fields (as a later API call would).
    """
    start = datetime(2024, 1, 1)
    for i in range(n):
        b = i - 1 if i % 10 == 9 else i
        yield {
            "transactionType": ("Buy", "Sell", "Received", "Sent")[b % 4],
            "date": (start + timedelta(minutes=b // 3)).isoformat() + ".000Z",
            "coinData": {
                "identifier": f"coin-{b % 13}",
                "count": 0.5 + b,
                "symbol": f"C{b % 13}",
                "totalWorth": 2.25 * b,
                "currentValue": 3.5 * b * version,
            },
            "profitLoss": {"profit": 1.25 * b * version, "profitPercent": 0.5 * version, "currentValue": 1.0},
            "fee": {"coin": {"identifier": "tether"}, "count": 0.01 * (b % 5), "totalWorth": 0.01},
            "portfolioInfo": {"name": "KuCoin Spot", "icon": "https://example.invalid/i.png"},
        }


def coin_items(n: int, version: int = 1) -> Iterator[dict[str, Any]]:
    """``n`` portfolio coins; ``version`` changes amounts and prices."""
    for i in range(n):
        yield {
            "count": 1.0 + i * version,
            "coin": {"identifier": f"coin-{i:05d}", "symbol": f"C{i}", "name": f"Coin {i}", "isFiat": i == 0},
            "price": {"USD": 2.0 * (i + version), "BTC": 0.0001 * i},
            "profit": {"allTime": {"USD": 0.25 * i * version}},
            "profitPercent": {"allTime": {"USD": 0.125 * version}},
        }


def txn_rows(n: int, version: int = 1, portfolio: str = PORTFOLIO) -> Iterator[dict[str, Any]]:
    return transaction_rows(portfolio, transaction_items(n, version), TransactionKeyer())


def snapshot_rows(n: int, version: int = 1, portfolio: str = PORTFOLIO, day: date = DAY) -> Iterator[dict[str, Any]]:
    return coin_rows(portfolio, day, coin_items(n, version))


def expected(table: str, rows: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """The table content ``rows`` should produce (without ``loaded_at``), ordered by primary key."""
    columns = [c for c in TABLES[table].column_names if c != "loaded_at"]
    return sorted(tuple(row.get(c) for c in columns) for row in rows)


def content(wh: CoinStatsWarehouse, table: str) -> list[tuple[Any, ...]]:
    return wh.fetch_table(table, exclude=("loaded_at",))


# -- backends ------------------------------------------------------------------------------------


@dataclass
class Backend:
    kind: str
    conn_json: str
    sqlite_path: Path | None = None
    pg_uri: str | None = None

    def warehouse(self, batch_size: int = BATCH) -> CoinStatsWarehouse:
        return CoinStatsWarehouse(batch_size=batch_size)

    def writer_holds_open_transaction(self) -> bool:
        """True while another session holds the write lock (SQLite) or an open write transaction (PostgreSQL)."""
        if self.sqlite_path is not None:
            probe = sqlite3.connect(self.sqlite_path, timeout=0, isolation_level=None)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError as exc:
                return "locked" in str(exc)
            finally:
                probe.close()
        import psycopg

        assert self.pg_uri is not None
        with psycopg.connect(self.pg_uri, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%' "
                "AND backend_xid IS NOT NULL"
            ).fetchone()
        return row is not None and row[0] == 1


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "warehouse.db"
        result = Backend("sqlite", json.dumps({"conn_type": "sqlite", "host": str(path)}), sqlite_path=path)
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        dbname = server.create_database(f"wh_{os.getpid()}_{next(_db_counter)}")
        uri = f"postgresql://{server.user}@{server.host}:{server.port}/{dbname}"
        result = Backend("postgres", server.conn_json(dbname), pg_uri=uri)
    monkeypatch.setenv("AIRFLOW_CONN_COINSTATS_WAREHOUSE", result.conn_json)
    return result


@pytest.fixture
def wh(backend: Backend) -> CoinStatsWarehouse:
    warehouse = backend.warehouse()
    warehouse.ensure_schema()
    return warehouse


# -- schema ----------------------------------------------------------------------------------------


def test_backend_is_detected_from_the_connection(backend: Backend, wh: CoinStatsWarehouse) -> None:
    assert wh.dialect == backend.kind
    assert wh.placeholder == ("?" if backend.kind == "sqlite" else "%s")


def test_ensure_schema_is_idempotent_and_keeps_data(wh: CoinStatsWarehouse) -> None:
    for table in TABLES:
        assert count_rows(wh, table) == 0
        assert wh.fetch_table(table) == []
    wh.replace_snapshot(COINS, PORTFOLIO, DAY, snapshot_rows(3))
    wh.ensure_schema()
    wh.ensure_schema()
    assert content(wh, COINS) == expected(COINS, snapshot_rows(3))
    full = wh.fetch_table(COINS)
    assert len(full[0]) == len(TABLES[COINS].columns)  # loaded_at included by default
    assert all(isinstance(row[-1], str) and row[-1].startswith("20") for row in full)


# -- snapshots -------------------------------------------------------------------------------------


def test_replace_snapshot_twice_gives_identical_table(wh: CoinStatsWarehouse) -> None:
    n = 3 * BATCH + 7
    untouched = [*snapshot_rows(4, portfolio=OTHER), *snapshot_rows(5, day=DAY - timedelta(days=1))]
    wh.replace_snapshot(COINS, OTHER, DAY, snapshot_rows(4, portfolio=OTHER))
    wh.replace_snapshot(COINS, PORTFOLIO, DAY - timedelta(days=1), snapshot_rows(5, day=DAY - timedelta(days=1)))

    assert wh.replace_snapshot(COINS, PORTFOLIO, DAY, snapshot_rows(n)) == n
    first = content(wh, COINS)
    assert wh.replace_snapshot(COINS, PORTFOLIO, DAY, snapshot_rows(n)) == n
    assert content(wh, COINS) == first == expected(COINS, [*snapshot_rows(n), *untouched])
    assert count_rows(wh, COINS, PORTFOLIO) == n + 5

    # a smaller snapshot really replaces: coins that disappeared are gone, other keys untouched
    assert wh.replace_snapshot(COINS, PORTFOLIO, DAY, snapshot_rows(10, version=2)) == 10
    assert content(wh, COINS) == expected(COINS, [*snapshot_rows(10, version=2), *untouched])


def test_replace_value_snapshot(wh: CoinStatsWarehouse) -> None:
    payload = {"totalValue": 12500.75, "unrealizedProfitLossPercent": 12.5, "allTimeProfitLossPercent": 17.5}
    row = value_row(PORTFOLIO, DAY, "USD", payload)
    for _ in range(2):
        assert wh.replace_snapshot(VALUES, PORTFOLIO, DAY, [row]) == 1
    updated = value_row(PORTFOLIO, DAY, "USD", {**payload, "totalValue": 13000.0})
    wh.replace_snapshot(VALUES, PORTFOLIO, DAY, [updated])
    assert content(wh, VALUES) == expected(VALUES, [updated])
    assert content(wh, VALUES)[0][1] == "2025-03-14"  # dates come back as ISO strings everywhere


# -- transactions ---------------------------------------------------------------------------------


def test_reconcile_transactions_is_exactly_once(wh: CoinStatsWarehouse) -> None:
    n = 4 * BATCH + 3
    assert wh.reconcile_transactions(PORTFOLIO, txn_rows(n)).total == n
    first = content(wh, TXNS)
    assert first == expected(TXNS, txn_rows(n))
    assert len({row[1] for row in first}) == n  # twins kept as distinct rows

    assert wh.reconcile_transactions(PORTFOLIO, txn_rows(n)).total == n  # rerun: no duplicates, nothing lost
    assert content(wh, TXNS) == first

    # a later run sees repriced market fields and 12 new transactions: same keys, refreshed values
    assert wh.reconcile_transactions(PORTFOLIO, txn_rows(n + 12, version=2)).total == n + 12
    later = content(wh, TXNS)
    assert later == expected(TXNS, txn_rows(n + 12, version=2))
    assert {row[1] for row in first} < {row[1] for row in later}
    assert count_rows(wh, TXNS, PORTFOLIO) == n + 12
    assert count_rows(wh, TXNS, OTHER) == 0


def test_upsert_portfolio_updates_only_given_columns(wh: CoinStatsWarehouse) -> None:
    wh.upsert_portfolio(
        {
            "portfolio_id": PORTFOLIO,
            "connection_id": "c1",
            "exchange_conn_id": "kucoin",
            "portfolio_name": "A",
        }
    )
    wh.upsert_portfolio({"portfolio_id": PORTFOLIO, "last_connect_status": "synced", "updated_at": "2025-01-01"})
    assert wh.fetch_table(PORTFOLIOS) == [(PORTFOLIO, "c1", "kucoin", "A", "synced", "2025-01-01", *[None] * 5)]
    with pytest.raises(ValueError, match=r"^portfolio row needs a portfolio_id$"):
        wh.upsert_portfolio({"portfolio_name": "B"})
    with pytest.raises(ValueError, match=r"^coinstats_portfolios row #0 has unknown columns \['colour'\]$"):
        wh.upsert_portfolio({"portfolio_id": PORTFOLIO, "colour": "red"})


def test_upsert_portfolio_stamps_updated_at_when_not_given(wh: CoinStatsWarehouse) -> None:
    before = datetime.now(UTC).isoformat()

    wh.upsert_portfolio({"portfolio_id": PORTFOLIO, "portfolio_name": "A"})

    (row,) = wh.fetch_table(PORTFOLIOS)
    stamped = row[TABLES[PORTFOLIOS].column_names.index("updated_at")]
    assert before <= stamped <= datetime.now(UTC).isoformat()


def test_a_schema_change_takes_the_schema_lock(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tasks creating or migrating the tables at once serialise on one lock (PostgreSQL advisory lock)."""
    warehouse = backend.warehouse()
    taken = record_locks(warehouse, monkeypatch)

    warehouse.ensure_schema()
    warehouse.ensure_schema()  # current: no transaction, no lock

    assert taken == [("coinstats_warehouse_schema",)]


# -- atomicity -----------------------------------------------------------------------------------


def failing(rows: Iterable[Mapping[str, Any]], after: int) -> Iterator[Mapping[str, Any]]:
    for i, row in enumerate(rows):
        if i == after:
            raise RuntimeError("source failed mid-stream")
        yield row


def test_failure_mid_stream_rolls_back(wh: CoinStatsWarehouse) -> None:
    wh.replace_snapshot(COINS, PORTFOLIO, DAY, snapshot_rows(30))
    wh.reconcile_transactions(PORTFOLIO, txn_rows(30))
    before = {t: wh.fetch_table(t) for t in (COINS, TXNS)}  # loaded_at included: nothing may change

    batches: list[int] = []
    with staged_batches(wh, batches.append):
        with pytest.raises(RuntimeError, match="mid-stream"):
            wh.replace_snapshot(COINS, PORTFOLIO, DAY, failing(snapshot_rows(500, version=2), 3 * BATCH // 2))
        with pytest.raises(RuntimeError, match="mid-stream"):
            wh.reconcile_transactions(PORTFOLIO, failing(txn_rows(500, version=2), 3 * BATCH // 2))
    assert batches == [BATCH, BATCH]  # a batch had been written each time before the failure
    assert {t: wh.fetch_table(t) for t in (COINS, TXNS)} == before


def test_invalid_row_rolls_back_the_whole_load(wh: CoinStatsWarehouse) -> None:
    wh.replace_snapshot(COINS, PORTFOLIO, DAY, snapshot_rows(5))
    before = wh.fetch_table(COINS)
    wrong_portfolio = [*snapshot_rows(BATCH + 1, version=2), *snapshot_rows(1, portfolio=OTHER)]
    with pytest.raises(ValueError, match=rf"row #{BATCH + 1} has a portfolio_id other than"):
        wh.replace_snapshot(COINS, PORTFOLIO, DAY, wrong_portfolio)
    with pytest.raises(ValueError, match=r"unknown columns \['bogus'\]"):
        wh.reconcile_transactions(PORTFOLIO, [{"transaction_key": "k", "bogus": 1}])
    with pytest.raises(ValueError, match="has no transaction_key"):
        wh.reconcile_transactions(PORTFOLIO, [{"transaction_type": "Buy"}])
    assert wh.fetch_table(COINS) == before
    assert count_rows(wh, TXNS) == 0


def test_rows_are_consumed_lazily_one_batch_at_a_time(backend: Backend) -> None:
    wh = backend.warehouse(batch_size=4)
    wh.ensure_schema()
    events: list[tuple[str, int]] = []

    def recorded(rows: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for i, row in enumerate(rows):
            events.append(("pull", i))
            yield row

    def on_batch(written: int) -> None:
        events.append(("written", written))

    want = [
        *[("pull", i) for i in range(4)],
        ("written", 4),
        *[("pull", i) for i in range(4, 8)],
        ("written", 8),
        ("pull", 8),
        ("pull", 9),
        ("written", 10),
    ]
    with staged_batches(wh, on_batch):
        assert wh.reconcile_transactions(PORTFOLIO, recorded(txn_rows(10))).total == 10
        assert events == want
        events.clear()
        assert wh.replace_snapshot(COINS, PORTFOLIO, DAY, recorded(snapshot_rows(10))) == 10
    assert events == want


_CHILD = """
import sys, time
from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from tests.unit.warehouse.test_loader import BATCH, COINS, DAY, PORTFOLIO, snapshot_rows, txn_rows

target, n = sys.argv[1], int(sys.argv[2])

def pause_after_first_batch(rows):
    for i, row in enumerate(rows):
        if i == BATCH:  # asked for row BATCH+1: the first batch has been executed
            print("FIRST_BATCH_WRITTEN", flush=True)
            time.sleep(300)
        yield row

wh = CoinStatsWarehouse(batch_size=BATCH)
if target == "coins":
    wh.replace_snapshot(COINS, PORTFOLIO, DAY, pause_after_first_batch(snapshot_rows(n, version=2)))
else:
    wh.reconcile_transactions(PORTFOLIO, pause_after_first_batch(txn_rows(n, version=2)))
print("COMPLETED", flush=True)
"""


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline().strip()


@pytest.mark.parametrize("target", ["transactions", "coins"])
def test_sigkill_mid_load_leaves_old_state_then_rerun_is_exactly_once(backend: Backend, target: str) -> None:
    wh = backend.warehouse()
    wh.ensure_schema()
    n = 3 * BATCH + 11
    table = TXNS if target == "transactions" else COINS
    load: Callable[[], int]
    if target == "transactions":
        wh.reconcile_transactions(PORTFOLIO, txn_rows(40))

        def load() -> int:
            return wh.reconcile_transactions(PORTFOLIO, txn_rows(n, version=2)).total

        new_state = expected(TXNS, txn_rows(n, version=2))
    else:
        wh.replace_snapshot(COINS, PORTFOLIO, DAY, snapshot_rows(40))

        def load() -> int:
            return wh.replace_snapshot(COINS, PORTFOLIO, DAY, snapshot_rows(n, version=2))

        new_state = expected(COINS, snapshot_rows(n, version=2))
    old_state = wh.fetch_table(table)
    assert len(old_state) == 40

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, target, str(n)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, timeout=60)
        if line != "FIRST_BATCH_WRITTEN":
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"child did not reach the first batch (stdout {line!r}); stderr:\n{err[-3000:]}")
        # the child has staged a batch but holds neither the write lock nor an open transaction ...
        assert not backend.writer_holds_open_transaction()
        assert wh.fetch_table(table) == old_state  # ... and none of its rows are visible
        wh.upsert_portfolio({"portfolio_id": OTHER, "portfolio_name": "meanwhile"})  # others can write meanwhile
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    assert wh.fetch_table(table) == old_state  # killed load left nothing behind
    assert load() == n  # full rerun
    assert content(wh, table) == new_state
    assert load() == n  # and again: exactly once
    assert content(wh, table) == new_state
    assert count_rows(wh, table, PORTFOLIO) == n


# -- configuration and validation -----------------------------------------------------------------


def test_table_names_are_validated(wh: CoinStatsWarehouse) -> None:
    for bad in ("coinstats_portfolios; DROP TABLE coinstats_portfolios", "sqlite_master", "pg_class"):
        with pytest.raises(ValueError, match="unknown table"):
            count_rows(wh, bad)
        with pytest.raises(ValueError, match="unknown table"):
            wh.fetch_table(bad)
    with pytest.raises(ValueError, match="replace_snapshot supports"):
        wh.replace_snapshot(TXNS, PORTFOLIO, DAY, [])
    with pytest.raises(ValueError, match=r"no columns \['nope'\]"):
        wh.fetch_table(COINS, exclude=("nope",))
    assert count_rows(wh, PORTFOLIOS) == 0  # the injection attempt did nothing


def test_non_sql_connection_is_rejected_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NOT_A_DB", json.dumps({"conn_type": "smtp", "host": "mail.invalid"}))
    wh = CoinStatsWarehouse("not_a_db")
    with pytest.raises(ValueError, match=r"'not_a_db' resolves to SmtpHook.*'sqlite' and 'postgres'"):
        wh.ensure_schema()


def test_constructor_does_not_touch_the_connection() -> None:
    wh = CoinStatsWarehouse("does_not_exist_anywhere", batch_size=7)
    assert (wh.warehouse_conn_id, wh.batch_size) == ("does_not_exist_anywhere", 7)
    assert CoinStatsWarehouse.default_conn_name == CoinStatsWarehouse().warehouse_conn_id == "coinstats_warehouse"
    with pytest.raises(ValueError, match="batch_size"):
        CoinStatsWarehouse(batch_size=0)
