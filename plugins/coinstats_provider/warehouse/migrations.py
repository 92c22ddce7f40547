"""DDL and in-place migrations of the warehouse tables.

:func:`create_and_migrate` creates every table of :data:`~coinstats_provider.warehouse.schema.TABLES`
that does not exist and converts tables created by earlier versions with floating-point money columns
(``DOUBLE PRECISION``) to exact decimals, keeping every row: PostgreSQL ``ALTER COLUMN ... TYPE
NUMERIC``, SQLite a table rebuild (each float becomes its shortest exact decimal text). Columns added to a
table after its first release are added in place (``ALTER TABLE ... ADD COLUMN``) and, for
``coinstats_portfolios``, filled for the rows earlier versions wrote (``kind`` = ``exchange``,
``account_conn_id`` = ``exchange_conn_id``: only exchange accounts existed then). It runs on a cursor inside
the caller's transaction, so a failed migration changes nothing.

:func:`schema_is_current` answers, with one catalogue query, whether :func:`create_and_migrate` would
change anything; a warehouse that is already current then needs no DDL, no lock and no transaction.
"""

from __future__ import annotations

import logging
import math
from decimal import Decimal
from typing import Any

from coinstats_provider.warehouse.schema import PORTFOLIOS_TABLE, TABLES, Dialect, TableSpec
from coinstats_provider.warehouse.values import decimal_text, exact_number

__all__ = ["create_and_migrate", "schema_is_current"]

log = logging.getLogger(__name__)

#: Column types that earlier versions used for what is now ``DECIMAL``.
_LEGACY_FLOAT_TYPES = frozenset({"DOUBLE PRECISION", "DOUBLE", "REAL", "FLOAT", "FLOAT8", "NUMERIC"})
#: PostgreSQL ``information_schema`` data types of legacy float columns.
_LEGACY_POSTGRES_TYPES = frozenset({"DOUBLE PRECISION", "REAL"})


def create_and_migrate(cur: Any, dialect: Dialect, batch_size: int) -> None:
    """Create the missing tables and migrate legacy float columns (idempotent).

    :param cur: A DB-API cursor inside an open transaction.
    :param dialect: ``sqlite`` or ``postgres``.
    :param batch_size: Rows copied per ``executemany`` when SQLite rebuilds a table.
    """
    for table in TABLES.values():
        cur.execute(table.ddl(dialect))
    for table in TABLES.values():
        added = _add_missing_columns(cur, table, dialect)
        if table.name == PORTFOLIOS_TABLE and added:
            _fill_portfolio_columns(cur)
    for table in TABLES.values():
        if not table.decimal_columns:
            continue
        if dialect == "sqlite":
            _migrate_sqlite(cur, table, batch_size)
        else:
            _migrate_postgres(cur, table)


def schema_is_current(cur: Any, dialect: Dialect) -> bool:
    """Whether every table exists with every column and no legacy float column (one catalogue query).

    True exactly when :func:`create_and_migrate` would be a no-op: it creates no table, adds no column
    and converts no column.

    :param cur: A DB-API cursor (no transaction needed: it only reads the catalogue).
    :param dialect: ``sqlite`` or ``postgres``.
    """
    names = tuple(TABLES)
    if dialect == "sqlite":
        marks = ", ".join("?" for _ in names)
        cur.execute(
            "SELECT m.name, p.name, p.type FROM sqlite_master AS m JOIN pragma_table_info(m.name) AS p "  # noqa: S608
            f"WHERE m.type = 'table' AND m.name IN ({marks})",
            names,
        )
    else:
        marks = ", ".join("%s" for _ in names)
        # pg_catalog, not information_schema: the same answer without the views' privilege joins.
        cur.execute(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "  # noqa: S608
            "FROM pg_catalog.pg_attribute AS a JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid "
            "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') "
            f"AND a.attnum > 0 AND NOT a.attisdropped AND c.relname IN ({marks})",
            names,
        )
    found: dict[str, dict[str, str]] = {}
    for table, column, kind in cur.fetchall():
        found.setdefault(str(table), {})[str(column)] = str(kind or "").upper()
    return all(_table_is_current(table, found.get(table.name, {}), dialect) for table in TABLES.values())


def _table_is_current(table: TableSpec, types: dict[str, str], dialect: Dialect) -> bool:
    """Whether ``table``'s catalogue entry (column -> upper-case type) has every column, none legacy."""
    if any(name not in types for name in table.column_names):
        return False
    legacy = _LEGACY_FLOAT_TYPES if dialect == "sqlite" else _LEGACY_POSTGRES_TYPES
    return not any(types[c] in legacy for c in table.decimal_columns)


def _existing_columns(cur: Any, table: TableSpec, dialect: Dialect) -> set[str]:
    if dialect == "sqlite":
        cur.execute(f"PRAGMA table_info({table.name})")
        return {str(row[1]) for row in cur.fetchall()}
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s",
        (table.name,),
    )
    return {str(row[0]) for row in cur.fetchall()}


def _add_missing_columns(cur: Any, table: TableSpec, dialect: Dialect) -> list[str]:
    """Add the columns of ``table`` that an earlier version's table lacks (never a primary-key column).

    :param cur: A cursor inside the migration's transaction.
    :param table: The table's current layout.
    :param dialect: ``sqlite`` or ``postgres``.
    :return: The columns added.
    """
    existing = _existing_columns(cur, table, dialect)
    missing = [(name, kind) for name, kind in table.columns if name not in existing]
    for name, kind in missing:
        cur.execute(f"ALTER TABLE {table.name} ADD COLUMN {name} {table.sql_type(kind, dialect)}")
    if missing:
        log.info("Added columns %s to %s", ", ".join(name for name, _ in missing), table.name)
    return [name for name, _ in missing]


def _fill_portfolio_columns(cur: Any) -> None:
    """Fill the new ``coinstats_portfolios`` columns of rows written when only exchanges existed.

    ``created_by`` stays NULL: an old row cannot tell whether this DAG created its portfolio, so pruning
    never deletes it (see :func:`coinstats_provider.pipeline.prune_candidates`).
    """
    cur.execute(f"UPDATE {PORTFOLIOS_TABLE} SET kind = 'exchange' WHERE kind IS NULL")  # noqa: S608
    cur.execute(
        f"UPDATE {PORTFOLIOS_TABLE} SET account_conn_id = exchange_conn_id WHERE account_conn_id IS NULL"  # noqa: S608
    )


def _legacy_decimal(value: Any) -> str | None:
    """Exact text for a value read from a legacy float column (SQLite migration)."""
    if value is None:
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return decimal_text(Decimal(repr(value)))
    if isinstance(value, int):
        return str(value)
    try:
        number = exact_number(value, "legacy")
    except ValueError:
        return str(value)
    return None if number is None else decimal_text(number)


def _migrate_postgres(cur: Any, table: TableSpec) -> None:
    cur.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s",
        (table.name,),
    )
    types = {str(name): str(kind).upper() for name, kind in cur.fetchall()}
    legacy = sorted(c for c in table.decimal_columns if types.get(c) in _LEGACY_POSTGRES_TYPES)
    if not legacy:
        return
    # Shortest exact text of each float (extra_float_digits > 0), then NUMERIC: no digit is invented or lost.
    cur.execute("SET LOCAL extra_float_digits = 3")
    changes = ", ".join(f"ALTER COLUMN {c} TYPE NUMERIC USING {c}::text::numeric" for c in legacy)
    cur.execute(f"ALTER TABLE {table.name} {changes}")
    log.info("Migrated %s columns %s from floating point to NUMERIC", table.name, ", ".join(legacy))


def _migrate_sqlite(cur: Any, table: TableSpec, batch_size: int) -> None:
    cur.execute(f"PRAGMA table_info({table.name})")
    types = {str(row[1]): str(row[2]).upper() for row in cur.fetchall()}
    legacy = sorted(c for c in table.decimal_columns if types.get(c, "TEXT") in _LEGACY_FLOAT_TYPES)
    if not legacy:
        return
    rebuilt = f"{table.name}__rebuild"
    cur.execute(f"DROP TABLE IF EXISTS {rebuilt}")
    cur.execute(table.ddl("sqlite", name=rebuilt))
    columns = table.column_names
    selected = [c if c in types else "NULL" for c in columns]
    reader = cur.connection.cursor()
    copied = 0
    try:
        reader.execute(f"SELECT {', '.join(selected)} FROM {table.name}")  # noqa: S608
        insert = f"INSERT INTO {rebuilt} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"  # noqa: S608
        while batch := reader.fetchmany(batch_size):
            cur.executemany(
                insert,
                [
                    tuple(
                        _legacy_decimal(v) if c in table.decimal_columns else v
                        for c, v in zip(columns, row, strict=True)
                    )
                    for row in batch
                ],
            )
            copied += len(batch)
    finally:
        reader.close()
    cur.execute(f"DROP TABLE {table.name}")
    cur.execute(f"ALTER TABLE {rebuilt} RENAME TO {table.name}")
    log.info("Rebuilt %s with exact decimal text columns %s (%d rows kept)", table.name, ", ".join(legacy), copied)
