"""coinstats_portfolios of an earlier version gains kind, account and off-boarding columns in place."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from coinstats_provider.warehouse.schema import PORTFOLIOS_TABLE, TABLES
from tests.conftest import set_connection
from tests.helpers.postgres_server import PostgresServer

pytest_plugins = ["tests.helpers.postgres_server"]

#: The table as the first release created it.
OLD_DDL = (
    "CREATE TABLE coinstats_portfolios (portfolio_id TEXT NOT NULL, connection_id TEXT, exchange_conn_id TEXT, "
    "portfolio_name TEXT, last_connect_status TEXT, updated_at TEXT, PRIMARY KEY (portfolio_id))"
)


def test_old_portfolios_table_is_migrated_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(OLD_DDL)
    db.execute("INSERT INTO coinstats_portfolios VALUES ('pf-1', 'binance', 'ex_b', NULL, 'existing', '2026-01-01')")
    db.commit()
    db.close()
    set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(path))
    warehouse = CoinStatsWarehouse()

    warehouse.ensure_schema()
    warehouse.ensure_schema()  # idempotent

    assert warehouse.fetch_table(PORTFOLIOS_TABLE) == [
        # kind and account filled (only exchanges existed); created_by unknown, so pruning never deletes it.
        ("pf-1", "binance", "ex_b", None, "existing", "2026-01-01", "exchange", "ex_b", None, None, None)
    ]
    db = sqlite3.connect(path)
    columns = [row[1] for row in db.execute("PRAGMA table_info(coinstats_portfolios)")]
    db.close()
    assert tuple(columns) == TABLES[PORTFOLIOS_TABLE].column_names


@pytest.mark.slow
def test_old_portfolios_table_is_migrated_in_place_on_postgres(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dbname = postgres_server.create_database(f"wh_cols_{os.getpid()}")
    monkeypatch.setenv("AIRFLOW_CONN_COINSTATS_WAREHOUSE", postgres_server.conn_json(dbname))
    warehouse = CoinStatsWarehouse()
    with warehouse.hook.get_conn() as conn, conn.cursor() as cur:
        cur.execute(OLD_DDL)
        cur.execute("INSERT INTO coinstats_portfolios VALUES ('pf-1', 'okx', 'ex_o', NULL, 'connected', 'x')")
        conn.commit()

    warehouse.ensure_schema()
    warehouse.ensure_schema()

    assert warehouse.fetch_table(PORTFOLIOS_TABLE) == [
        ("pf-1", "okx", "ex_o", None, "connected", "x", "exchange", "ex_o", None, None, None)
    ]
