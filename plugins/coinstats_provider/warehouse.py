"""Exactly-once loading of CoinStats data into a SQL warehouse through Airflow's common-sql.

Every write method runs in a single database transaction: either all of its rows become visible
at commit, or (on an exception, a lost connection or a killed process) none do. Snapshot tables are
replaced per ``(portfolio_id, snapshot_date)``; transactions are upserted on their stable key, so
reruns converge on the same table contents.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    # Imported when a task first touches the warehouse, not when a DAG file is parsed.
    from airflow.providers.common.sql.hooks.sql import DbApiHook

__all__ = ["TABLES", "CoinStatsWarehouse", "SnapshotTable", "TableSpec"]

log = logging.getLogger(__name__)

SnapshotTable = Literal["coinstats_portfolio_values", "coinstats_portfolio_coins"]

_TEXT = "TEXT"
_NUM = "DOUBLE PRECISION"


@dataclass(frozen=True)
class TableSpec:
    """Column layout of one warehouse table.

    :param name: Table name.
    :param columns: ``(column, portable SQL type)`` in table order; primary-key columns come first.
    :param primary_key: Primary-key columns.
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in table order."""
        return tuple(name for name, _ in self.columns)

    def ddl(self) -> str:
        """Return the portable ``CREATE TABLE IF NOT EXISTS`` statement."""
        cols = [
            f"{name} {sql_type}{' NOT NULL' if name in self.primary_key else ''}" for name, sql_type in self.columns
        ]
        cols.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(cols)})"


# The names below are the only identifiers ever interpolated into SQL (``table`` arguments are
# validated against them); values always travel as bound parameters.
TABLES: Mapping[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "coinstats_portfolios",
            (
                ("portfolio_id", _TEXT),
                ("connection_id", _TEXT),
                ("exchange_conn_id", _TEXT),
                ("portfolio_name", _TEXT),
                ("last_connect_status", _TEXT),
                ("updated_at", _TEXT),
            ),
            ("portfolio_id",),
        ),
        TableSpec(
            "coinstats_portfolio_values",
            (
                ("portfolio_id", _TEXT),
                ("snapshot_date", "DATE"),
                ("currency", _TEXT),
                ("total_value", _NUM),
                ("defi_value", _NUM),
                ("total_cost", _NUM),
                ("unrealized_profit_loss", _NUM),
                ("unrealized_profit_loss_percent", _NUM),
                ("realized_profit_loss", _NUM),
                ("realized_profit_loss_percent", _NUM),
                ("all_time_profit_loss", _NUM),
                ("all_time_profit_loss_percent", _NUM),
                ("loaded_at", _TEXT),
            ),
            ("portfolio_id", "snapshot_date"),
        ),
        TableSpec(
            "coinstats_portfolio_coins",
            (
                ("portfolio_id", _TEXT),
                ("snapshot_date", "DATE"),
                ("coin_id", _TEXT),
                ("symbol", _TEXT),
                ("name", _TEXT),
                ("is_fiat", "INTEGER"),
                ("amount", _NUM),
                ("price_usd", _NUM),
                ("price_btc", _NUM),
                ("value_usd", _NUM),
                ("profit_all_time_usd", _NUM),
                ("profit_percent_all_time_usd", _NUM),
                ("loaded_at", _TEXT),
            ),
            ("portfolio_id", "snapshot_date", "coin_id"),
        ),
        TableSpec(
            "coinstats_portfolio_transactions",
            (
                ("portfolio_id", _TEXT),
                ("transaction_key", _TEXT),
                ("transaction_type", _TEXT),
                ("occurred_at", _TEXT),
                ("coin_id", _TEXT),
                ("symbol", _TEXT),
                ("amount", _NUM),
                ("total_worth_usd", _NUM),
                ("fee_amount", _NUM),
                ("fee_coin_id", _TEXT),
                ("profit_usd", _NUM),
                ("portfolio_name", _TEXT),
                ("payload_json", _TEXT),
                ("loaded_at", _TEXT),
            ),
            ("portfolio_id", "transaction_key"),
        ),
    )
}

_SNAPSHOT_TABLES: frozenset[str] = frozenset({"coinstats_portfolio_values", "coinstats_portfolio_coins"})
_TRANSACTIONS = TABLES["coinstats_portfolio_transactions"]
_PORTFOLIOS = TABLES["coinstats_portfolios"]
_SUPPORTED_DIALECTS: Mapping[str, str] = {
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
}


def _spec(table: str) -> TableSpec:
    try:
        return TABLES[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; expected one of {sorted(TABLES)}") from None


def _utc_now() -> str:
    return datetime.now(UTC).isoformat()


def _sql_value(value: Any) -> Any:
    """Convert Python values the drivers handle differently into portable ones."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, date):  # datetime is a subclass of date
        return value.isoformat()
    return value


def _lock_id(*parts: str) -> int:
    """Map ``parts`` to a signed 64-bit PostgreSQL advisory-lock id."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class CoinStatsWarehouse:
    """Transactional loader for the CoinStats warehouse tables.

    Works on any Airflow connection whose hook is a common-sql ``DbApiHook`` for SQLite
    (``conn_type`` ``sqlite``) or PostgreSQL (``conn_type`` ``postgres``). The connection is only
    resolved on first use, never in the constructor. Each write method opens its own DB-API
    connection, runs one transaction and closes the connection.

    Iterables of rows are consumed lazily, ``batch_size`` rows at a time, so streams of any length
    can be loaded with bounded memory. Rows are mappings of column name to value; missing columns are
    stored as NULL and ``loaded_at`` is stamped with the load's start time (UTC, ISO 8601) unless the
    row sets it.

    :param warehouse_conn_id: Airflow connection id of the warehouse database.
    :param batch_size: Rows per ``executemany`` call.
    """

    default_conn_name = "coinstats_warehouse"

    def __init__(self, warehouse_conn_id: str = default_conn_name, *, batch_size: int = 500) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.warehouse_conn_id = warehouse_conn_id
        self.batch_size = batch_size

    @cached_property
    def hook(self) -> DbApiHook:
        """The common-sql hook of the warehouse connection."""
        from airflow.providers.common.sql.hooks.sql import DbApiHook

        connection = BaseHook.get_connection(self.warehouse_conn_id)
        hook = connection.get_hook()  # type: ignore[no-untyped-call]
        if not isinstance(hook, DbApiHook):
            raise ValueError(
                f"connection {self.warehouse_conn_id!r} resolves to {type(hook).__name__}, which is not a "
                "common-sql DbApiHook; the CoinStats warehouse supports conn_type 'sqlite' and 'postgres'"
            )
        return hook

    @cached_property
    def dialect(self) -> Literal["sqlite", "postgres"]:
        """``"sqlite"`` or ``"postgres"``, from the hook's dialect (or, failing that, its conn_type)."""
        hook = self.hook
        names = [str(getattr(hook, "dialect_name", "") or ""), str(getattr(hook, "conn_type", "") or "")]
        for name in names:
            if name.lower() in _SUPPORTED_DIALECTS:
                return "sqlite" if _SUPPORTED_DIALECTS[name.lower()] == "sqlite" else "postgres"
        raise ValueError(
            f"connection {self.warehouse_conn_id!r} uses {type(hook).__name__} (dialect {names[0]!r}, "
            f"conn_type {names[1]!r}); the CoinStats warehouse supports conn_type 'sqlite' and 'postgres'"
        )

    @property
    def placeholder(self) -> str:
        """The DB-API parameter placeholder of the hook (``?`` or ``%s``)."""
        return self.hook.placeholder

    # -- connection handling -------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        dialect = self.dialect
        conn = self.hook.get_conn()
        try:
            if dialect == "sqlite":
                # Manual transaction control: BEGIN IMMEDIATE takes the write lock up front.
                conn.isolation_level = None
            elif getattr(conn, "autocommit", False):
                conn.autocommit = False
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _transaction(self, *lock_parts: str) -> Iterator[Any]:
        """Yield a cursor inside one transaction; commit on success, roll back on any exception.

        :param lock_parts: On PostgreSQL, take a transaction-scoped advisory lock on these values so
            concurrent loads of the same target serialise instead of failing.
        """
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                if self.dialect == "sqlite":
                    cur.execute("BEGIN IMMEDIATE")
                elif lock_parts:
                    cur.execute(f"SELECT pg_advisory_xact_lock({self.placeholder})", (_lock_id(*lock_parts),))
                yield cur
                conn.commit()
            except BaseException:
                try:
                    conn.rollback()
                except Exception:
                    log.warning("Rollback on %s failed; the server discards the transaction", self.dialect)
                raise
            finally:
                cur.close()

    # -- schema --------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the warehouse tables if they do not exist (idempotent)."""
        with self._transaction("coinstats_warehouse_schema") as cur:
            for spec in TABLES.values():
                cur.execute(spec.ddl())

    # -- writes --------------------------------------------------------------------------------

    def upsert_portfolio(self, row: Mapping[str, Any]) -> None:
        """Insert or update one ``coinstats_portfolios`` row.

        Only the columns present in ``row`` are written, so a partial row keeps the other columns'
        stored values. ``updated_at`` is set to now unless given.

        :param row: Column values; ``portfolio_id`` is required.
        :raises ValueError: On a missing ``portfolio_id`` or an unknown column.
        """
        self._check_columns(_PORTFOLIOS, row, 0)
        if not row.get("portfolio_id"):
            raise ValueError("portfolio row needs a portfolio_id")
        values = {k: _sql_value(v) for k, v in row.items()}
        values.setdefault("updated_at", _utc_now())
        columns = [c for c in _PORTFOLIOS.column_names if c in values]
        sql = self._insert_sql(_PORTFOLIOS, columns, upsert=True)
        with self._transaction() as cur:
            cur.execute(sql, tuple(values[c] for c in columns))

    def replace_snapshot(
        self,
        table: SnapshotTable,
        portfolio_id: str,
        snapshot_date: date,
        rows: Iterable[Mapping[str, Any]],
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Atomically replace one portfolio's rows for one snapshot date.

        Deletes the existing rows for ``(portfolio_id, snapshot_date)`` and inserts ``rows`` in one
        transaction; readers see either the old or the new snapshot, never a mix.

        :param table: ``coinstats_portfolio_values`` or ``coinstats_portfolio_coins``.
        :param portfolio_id: The portfolio being replaced; rows may omit it, but must not differ.
        :param snapshot_date: The snapshot date being replaced; rows may omit it, but must not differ.
        :param rows: The new rows, consumed lazily in batches of ``batch_size``.
        :param on_batch: Called with the number of rows written so far after each batch.
        :return: Rows written.
        """
        if table not in _SNAPSHOT_TABLES:
            raise ValueError(f"replace_snapshot supports {sorted(_SNAPSHOT_TABLES)}, not {table!r}")
        spec = TABLES[table]
        day = snapshot_date.isoformat()
        fixed = {"portfolio_id": portfolio_id, "snapshot_date": day}
        ph = self.placeholder
        with self._transaction(table, portfolio_id, day) as cur:
            cur.execute(
                f"DELETE FROM {spec.name} WHERE portfolio_id = {ph} AND snapshot_date = {ph}",  # noqa: S608
                (portfolio_id, day),
            )
            written = self._write_batches(cur, spec, rows, fixed, upsert=False, on_batch=on_batch)
        log.info("Replaced %s snapshot %s of portfolio %s: %d rows", table, day, portfolio_id, written)
        return written

    def upsert_transactions(
        self,
        portfolio_id: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Insert or update transactions on ``(portfolio_id, transaction_key)`` in one transaction.

        :param portfolio_id: The portfolio being loaded; rows may omit it, but must not differ.
        :param rows: Transaction rows with a ``transaction_key``, consumed lazily in batches.
        :param on_batch: Called with the number of rows written so far after each batch.
        :return: Rows written (inserted or updated).
        """
        fixed = {"portfolio_id": portfolio_id}
        with self._transaction(_TRANSACTIONS.name, portfolio_id) as cur:
            written = self._write_batches(cur, _TRANSACTIONS, rows, fixed, upsert=True, on_batch=on_batch)
        log.info("Upserted %d transactions of portfolio %s", written, portfolio_id)
        return written

    def _write_batches(
        self,
        cur: Any,
        spec: TableSpec,
        rows: Iterable[Mapping[str, Any]],
        fixed: Mapping[str, str],
        *,
        upsert: bool,
        on_batch: Callable[[int], None] | None,
    ) -> int:
        columns = spec.column_names
        sql = self._insert_sql(spec, columns, upsert=upsert)
        loaded_at = _utc_now()
        iterator = iter(rows)
        written = 0
        while batch := list(islice(iterator, self.batch_size)):
            params = [
                self._row_params(spec, row, fixed, loaded_at, written + offset) for offset, row in enumerate(batch)
            ]
            cur.executemany(sql, params)
            written += len(params)
            if on_batch is not None:
                on_batch(written)
        return written

    def _insert_sql(self, spec: TableSpec, columns: Sequence[str], *, upsert: bool) -> str:
        ph = self.placeholder
        sql = f"INSERT INTO {spec.name} ({', '.join(columns)}) VALUES ({', '.join(ph for _ in columns)})"  # noqa: S608
        if upsert:
            updates = [f"{c} = excluded.{c}" for c in columns if c not in spec.primary_key]
            action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
            sql += f" ON CONFLICT ({', '.join(spec.primary_key)}) {action}"
        return sql

    @staticmethod
    def _check_columns(spec: TableSpec, row: Mapping[str, Any], index: int) -> None:
        unknown = row.keys() - spec.column_names
        if unknown:
            raise ValueError(f"{spec.name} row #{index} has unknown columns {sorted(unknown)}")

    def _row_params(
        self,
        spec: TableSpec,
        row: Mapping[str, Any],
        fixed: Mapping[str, str],
        loaded_at: str,
        index: int,
    ) -> tuple[Any, ...]:
        self._check_columns(spec, row, index)
        values = {c: _sql_value(row.get(c)) for c in spec.column_names}
        for column, expected in fixed.items():
            if values[column] is None:
                values[column] = expected
            elif values[column] != expected:
                raise ValueError(f"{spec.name} row #{index} has a {column} other than the one being loaded")
        for column in spec.primary_key:
            if values[column] is None:
                raise ValueError(f"{spec.name} row #{index} has no {column}")
        if "loaded_at" in values and values["loaded_at"] is None:
            values["loaded_at"] = loaded_at
        return tuple(values[c] for c in spec.column_names)

    # -- reads ---------------------------------------------------------------------------------

    def count_rows(self, table: str, portfolio_id: str | None = None) -> int:
        """Count the rows of ``table``, optionally for one portfolio.

        :param table: One of :data:`TABLES`.
        :param portfolio_id: Restrict to this portfolio.
        :return: The row count.
        """
        spec = _spec(table)
        sql = f"SELECT COUNT(*) FROM {spec.name}"  # noqa: S608
        params: tuple[Any, ...] = ()
        if portfolio_id is not None:
            sql += f" WHERE portfolio_id = {self.placeholder}"
            params = (portfolio_id,)
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql, params)
                (count,) = cur.fetchone()
            finally:
                cur.close()
            conn.rollback()
        return int(count)

    def fetch_table(self, table: str, *, exclude: Iterable[str] = ()) -> list[tuple[Any, ...]]:
        """Return all rows of ``table`` ordered by primary key (for tests and run summaries).

        Dates come back as ISO strings on every backend.

        :param table: One of :data:`TABLES`.
        :param exclude: Columns to leave out, e.g. ``("loaded_at",)`` to compare runs.
        :return: Row tuples in table column order, minus ``exclude``.
        """
        spec = _spec(table)
        skip = set(exclude)
        unknown = skip - set(spec.column_names)
        if unknown:
            raise ValueError(f"{spec.name} has no columns {sorted(unknown)}")
        columns = [c for c in spec.column_names if c not in skip]
        if not columns:
            raise ValueError("exclude leaves no columns to fetch")
        sql = f"SELECT {', '.join(columns)} FROM {spec.name} ORDER BY {', '.join(spec.primary_key)}"  # noqa: S608
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql)
                result = [tuple(_sql_value(v) for v in row) for row in cur.fetchall()]
            finally:
                cur.close()
            conn.rollback()
        return result
