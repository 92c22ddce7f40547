"""The DAG ``coinstats_portfolio_report`` on a seeded warehouse: rows against the warehouse, reruns, new days.

Runs the real DAG (``dag.test()``: its SQL files rendered and executed through common-sql) on SQLite and
on the real PostgreSQL server; the expected report is computed in Python from the warehouse tables.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from coinstats_provider.warehouse.schema import COINS_TABLE, VALUES_TABLE, spec
from tests.conftest import ROOT, set_connection
from tests.helpers.postgres_server import PostgresServer
from tests.helpers.report import expected_report, report_rows

pytest_plugins = ["tests.helpers.postgres_server"]
pytestmark = pytest.mark.slow

DAG_ID = "coinstats_portfolio_report"
DAY1, DAY2, DAY3 = dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 4)


@pytest.fixture(scope="module")
def dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "coinstats_portfolio_report.py"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CoinStatsWarehouse:
    if request.param == "sqlite":
        set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(tmp_path / "wh.db"))
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        database = server.create_database(f"report_{tmp_path.name[-12:].lower().replace('-', '_')}")
        monkeypatch.setenv("AIRFLOW_CONN_COINSTATS_WAREHOUSE", server.conn_json(database))
    wh = CoinStatsWarehouse()
    wh.ensure_schema()
    return wh


def _row(table: str, **values: Any) -> dict[str, Any]:
    return {column: values.get(column) for column in spec(table).column_names}


def snapshot(wh: CoinStatsWarehouse, pid: str, day: dt.date, total: str, coins: int) -> None:
    """Write one portfolio's value and coins snapshot of ``day``."""
    when = {"snapshot_date": day.isoformat(), "loaded_at": "2026-03-05T00:00:00+00:00"}
    wh.replace_snapshot(
        VALUES_TABLE,
        pid,
        day,
        [_row(VALUES_TABLE, portfolio_id=pid, currency="USD", total_value=Decimal(total), **when)],
    )
    wh.replace_snapshot(
        COINS_TABLE,
        pid,
        day,
        [_row(COINS_TABLE, portfolio_id=pid, coin_id=f"coin-{i}", amount=Decimal(i), **when) for i in range(coins)],
    )


def transactions(wh: CoinStatsWarehouse, pid: str, days: dict[dt.date, int]) -> None:
    """Make the portfolio's transactions ``count`` per day (UTC ISO 8601 timestamps, as CoinStats sends)."""
    rows = [
        {
            "portfolio_id": pid,
            "transaction_key": f"{pid}-{day}-{i}",
            "transaction_type": "buy",
            "occurred_at": f"{day.isoformat()}T{i % 24:02d}:15:00.000Z",
            "payload_json": "{}",
            "loaded_at": "2026-03-05T00:00:00+00:00",
        }
        for day, count in days.items()
        for i in range(count)
    ]
    wh.reconcile_transactions(pid, rows)


def run(dag: Any) -> None:
    dag_run = dag.test()
    assert dag_run.state == "success", [(ti.task_id, ti.state) for ti in dag_run.get_task_instances()]


def test_report_matches_the_warehouse_reruns_identical_and_adds_new_days(
    airflow_db: Path, dag: Any, warehouse: CoinStatsWarehouse
) -> None:
    snapshot(warehouse, "pf-a", DAY1, "1000.25", coins=3)
    snapshot(warehouse, "pf-a", DAY2, "1234.5", coins=4)
    snapshot(warehouse, "pf-b", DAY2, "99.125", coins=1)
    transactions(warehouse, "pf-a", {DAY1: 2, DAY2: 5, DAY3: 1})
    transactions(warehouse, "pf-b", {DAY2: 3})

    run(dag)
    first = report_rows(warehouse)
    assert first == expected_report(warehouse)
    assert first[1] == (
        "pf-a", "2026-03-02", "USD", Decimal("1234.5"), "2026-03-01", Decimal("1000.25"), Decimal("234.25"), 4, 5
    )  # fmt: skip
    assert first[2][4:] == (None, None, None, 1, 3)  # pf-b's first snapshot: nothing to compare with

    run(dag)
    assert report_rows(warehouse) == first

    # The next sync: today's snapshot of pf-a is replaced and a later day arrives.
    snapshot(warehouse, "pf-a", DAY2, "1300", coins=2)
    snapshot(warehouse, "pf-a", DAY3, "1250.75", coins=2)
    run(dag)
    after = report_rows(warehouse)
    assert after == expected_report(warehouse)
    assert [(r[0], r[1]) for r in after] == [
        ("pf-a", "2026-03-01"), ("pf-a", "2026-03-02"), ("pf-a", "2026-03-04"), ("pf-b", "2026-03-02")
    ]  # fmt: skip
    assert after[2][6] == Decimal("-49.25")
    run(dag)
    assert report_rows(warehouse) == after
