"""ensure_schema on a current warehouse is one catalogue query; an older warehouse is still migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from coinstats_provider.warehouse import loader
from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from coinstats_provider.warehouse.migrations import create_and_migrate, schema_is_current
from coinstats_provider.warehouse.schema import PORTFOLIOS_TABLE, TABLES, VALUES_TABLE
from tests.conftest import set_connection
from tests.helpers.postgres_server import PostgresServer

pytest_plugins = ["tests.helpers.postgres_server"]


def _sqlite(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def _current(path: Path) -> bool:
    db = sqlite3.connect(path)
    try:
        return schema_is_current(db.cursor(), "sqlite")
    finally:
        db.close()


def _refuse(*args: Any) -> None:
    raise AssertionError("create_and_migrate ran on a current warehouse")


def test_catalogue_check_tells_current_from_missing_and_legacy(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    _sqlite(empty)
    assert not _current(empty)

    current = tmp_path / "current.db"
    db = sqlite3.connect(current)
    create_and_migrate(db.cursor(), "sqlite", 100)
    db.commit()
    db.close()
    assert _current(current)

    _sqlite(current, f"DROP TABLE {VALUES_TABLE}")  # one table missing
    assert not _current(current)

    legacy = tmp_path / "legacy.db"  # every table, but one money column still a float
    ddl = TABLES[VALUES_TABLE].ddl("sqlite")
    money = sorted(TABLES[VALUES_TABLE].decimal_columns)[0]
    _sqlite(
        legacy,
        *(t.ddl("sqlite") for t in TABLES.values() if t.name != VALUES_TABLE),
        ddl.replace(f"{money} TEXT", f"{money} DOUBLE PRECISION"),
    )
    assert not _current(legacy)


def test_ensure_schema_on_a_current_warehouse_runs_no_ddl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(tmp_path / "wh.db"))
    CoinStatsWarehouse().ensure_schema()  # creates the tables
    monkeypatch.setattr(loader, "create_and_migrate", _refuse)

    CoinStatsWarehouse().ensure_schema()  # a later task: catalogue check only

    assert _current(tmp_path / "wh.db")


def test_ensure_schema_still_migrates_an_old_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    _sqlite(path, *(t.ddl("sqlite") for t in TABLES.values()), f"ALTER TABLE {PORTFOLIOS_TABLE} DROP COLUMN kind")
    set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(path))
    assert not _current(path)

    CoinStatsWarehouse().ensure_schema()

    assert _current(path)
    db = sqlite3.connect(path)
    columns = tuple(row[1] for row in db.execute(f"PRAGMA table_info({PORTFOLIOS_TABLE})"))
    db.close()
    assert columns[-1] == "kind"
    assert set(columns) == set(TABLES[PORTFOLIOS_TABLE].column_names)


@pytest.mark.slow
def test_catalogue_check_on_postgres(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    dbname = postgres_server.create_database("schema_check")
    uri = f"postgresql://{postgres_server.user}@{postgres_server.host}:{postgres_server.port}/{dbname}"
    monkeypatch.setenv("AIRFLOW_CONN_COINSTATS_WAREHOUSE", postgres_server.conn_json(dbname))
    money = sorted(TABLES[VALUES_TABLE].decimal_columns)[0]
    with psycopg.connect(uri, autocommit=True) as conn:
        assert not schema_is_current(conn.cursor(), "postgres")
        CoinStatsWarehouse().ensure_schema()
        assert schema_is_current(conn.cursor(), "postgres")
        conn.execute(f"ALTER TABLE {VALUES_TABLE} ALTER COLUMN {money} TYPE DOUBLE PRECISION")
        assert not schema_is_current(conn.cursor(), "postgres")
        CoinStatsWarehouse().ensure_schema()  # migrates it back to NUMERIC
        assert schema_is_current(conn.cursor(), "postgres")
        monkeypatch.setattr(loader, "create_and_migrate", _refuse)
        CoinStatsWarehouse().ensure_schema()
