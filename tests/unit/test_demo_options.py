"""`make demo`'s options: the datasets flag keeps the default cost unless asked, and the closing query runs."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import pytest

from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from coinstats_provider.warehouse.schema import VALUES_TABLE
from include import demo
from tests.conftest import ROOT, set_connection


def test_without_the_flag_the_run_keeps_the_dag_default_datasets() -> None:
    assert demo.demo_conf(None) == {"sync_poll_seconds": 1}


def test_the_flag_adds_opt_in_datasets_in_load_order() -> None:
    assert demo.demo_conf("snapshot, chart")["datasets"] == ["value", "coins", "transactions", "chart", "snapshot"]
    assert demo.demo_conf("all")["datasets"] == ["value", "coins", "transactions", "chart", "defi", "snapshot"]
    with pytest.raises(SystemExit, match="unknown dataset 'balances'"):
        demo.demo_conf("chart,balances")


def test_the_demo_names_its_warehouse_file_and_a_query_that_runs_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert demo.warehouse_file() == ROOT / "include" / "coinstats_warehouse.db"
    path = tmp_path / "warehouse.db"
    set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(path))
    warehouse = CoinStatsWarehouse()
    warehouse.ensure_schema()
    for pid, account in (("pf-1", "coinstats_exchange_binance"), ("pf-2", "coinstats_exchange_okx")):
        warehouse.upsert_portfolio(
            {"portfolio_id": pid, "exchange_conn_id": account, "account_conn_id": account, "kind": "exchange"}
        )
    for pid, value in (("pf-1", "9.5"), ("pf-2", "10.25")):
        warehouse.replace_snapshot(VALUES_TABLE, pid, date(2026, 3, 1), [{"currency": "USD", "total_value": value}])
    db = sqlite3.connect(path)
    try:
        rows = db.execute(demo.try_query()).fetchall()
    finally:
        db.close()
    assert rows == [
        ("exchange", "coinstats_exchange_okx", "2026-03-01", "10.25"),
        ("exchange", "coinstats_exchange_binance", "2026-03-01", "9.5"),
    ]
