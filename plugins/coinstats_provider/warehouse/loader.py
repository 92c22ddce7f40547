"""Exactly-once loading of CoinStats data into a SQL warehouse through Airflow's common-sql.

**Atomicity.** Every write method ends in a single, short database transaction: either all of its
rows become visible at commit, or (on an exception, a lost connection or a killed process) none do.

**No lock while the API is slow.** Streamed rows are first *staged* in a TEMP table on the
method's own connection, in batches of ``batch_size`` (memory stays bounded). Temp tables are
private to the connection and take no lock on the shared database, so while the CoinStats
generator waits for a page (backoffs can last a minute) other loads proceed. Only when the stream
is exhausted does the method take the write lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a
transaction-scoped advisory lock on the target) and merge the staged rows in one transaction. A
stream that raises leaves every permanent table untouched.

**Snapshots** (``coinstats_portfolio_values``, ``coinstats_portfolio_coins``) are replaced per
``(portfolio_id, snapshot_date)``.

**Transactions mirror CoinStats.** :meth:`CoinStatsWarehouse.reconcile_transactions` makes a
portfolio's rows equal the set seen in a completed stream: new keys are inserted, rows whose
columns changed are updated in place (unchanged rows are not rewritten and keep ``loaded_at``), and
rows whose key vanished are deleted and recorded, with their payload, in
``coinstats_portfolio_transactions_removed``. The main table is the current truth.

**Exact numbers.** Money, amount, price and percent columns (type ``DECIMAL`` below) are stored
without rounding: ``NUMERIC`` on PostgreSQL (bound as :class:`~decimal.Decimal`), and on SQLite a
``TEXT`` column holding the exact decimal string in plain notation (``'0.123456789012345678'``).
SQLite has no exact decimal type: a ``NUMERIC`` or ``REAL`` column converts such a string to an
8-byte float and keeps about 15-17 significant digits. To compute with them in SQLite, cast:
``CAST(amount AS REAL)`` (approximate) or compare as text; on PostgreSQL they are ordinary
``NUMERIC``. :meth:`CoinStatsWarehouse.fetch_table` returns them as ``Decimal`` on both backends.
:meth:`CoinStatsWarehouse.ensure_schema` migrates warehouses created with ``DOUBLE PRECISION``
columns in place, keeping every row (PostgreSQL ``ALTER COLUMN ... TYPE NUMERIC``, SQLite a table
rebuild in one transaction; each float becomes its shortest exact decimal text).

**Text** values are written with NUL characters removed and lone surrogates replaced by U+FFFD
(see :func:`coinstats_provider.transform.clean_text`), so no driver rejects them.

Column types (``DECIMAL``: PostgreSQL ``NUMERIC``, SQLite ``TEXT``; ``DATE``: PostgreSQL ``DATE``,
SQLite ISO text; primary-key columns in bold):

============================================  ==================================================================
Table                                         Columns
============================================  ==================================================================
``coinstats_portfolios``                      **portfolio_id** TEXT, connection_id TEXT, exchange_conn_id TEXT,
                                              portfolio_name TEXT, last_connect_status TEXT, updated_at TEXT
``coinstats_portfolio_values``                **portfolio_id** TEXT, **snapshot_date** DATE, currency TEXT,
                                              total_value, defi_value, total_cost, unrealized_profit_loss,
                                              unrealized_profit_loss_percent, realized_profit_loss,
                                              realized_profit_loss_percent, all_time_profit_loss,
                                              all_time_profit_loss_percent (all DECIMAL), loaded_at TEXT
``coinstats_portfolio_coins``                 **portfolio_id** TEXT, **snapshot_date** DATE, **coin_id** TEXT,
                                              symbol TEXT, name TEXT, is_fiat INTEGER (0/1), amount, price_usd,
                                              price_btc, value_usd, profit_all_time_usd,
                                              profit_percent_all_time_usd (all DECIMAL), loaded_at TEXT
``coinstats_portfolio_transactions``          **portfolio_id** TEXT, **transaction_key** TEXT, transaction_type TEXT,
                                              occurred_at TEXT, coin_id TEXT, symbol TEXT, amount DECIMAL,
                                              total_worth_usd DECIMAL, fee_amount DECIMAL, fee_coin_id TEXT,
                                              profit_usd DECIMAL, portfolio_name TEXT, payload_json TEXT,
                                              loaded_at TEXT
``coinstats_portfolio_transactions_removed``  **portfolio_id** TEXT, **transaction_key** TEXT, **removed_at** TEXT,
                                              payload_json TEXT
============================================  ==================================================================

Timestamps (``loaded_at``, ``updated_at``, ``removed_at``) are UTC ISO 8601 text.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cached_property
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseHook

from coinstats_provider.warehouse.transform import clean_text, exact_number

if TYPE_CHECKING:
    # Imported when a task first touches the warehouse, not when a DAG file is parsed.
    from airflow.providers.common.sql.hooks.sql import DbApiHook

__all__ = ["TABLES", "CoinStatsWarehouse", "ReconcileResult", "SnapshotTable", "TableSpec"]

log = logging.getLogger(__name__)

SnapshotTable = Literal["coinstats_portfolio_values", "coinstats_portfolio_coins"]
Dialect = Literal["sqlite", "postgres"]

_TEXT = "TEXT"
#: Exact decimal: ``NUMERIC`` on PostgreSQL, exact decimal text on SQLite.
_DEC = "DECIMAL"
_SQL_TYPES: Mapping[Dialect, Mapping[str, str]] = {
    "sqlite": {_DEC: "TEXT"},
    "postgres": {_DEC: "NUMERIC"},
}
#: Column types that earlier versions used for what is now ``DECIMAL``; migrated by ``ensure_schema``.
_LEGACY_FLOAT_TYPES = frozenset({"DOUBLE PRECISION", "DOUBLE", "REAL", "FLOAT", "FLOAT8", "NUMERIC"})
_STAGE = "coinstats_stage_rows"
_TEMP_SCHEMA: Mapping[Dialect, str] = {"sqlite": "temp", "postgres": "pg_temp"}


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

    @property
    def decimal_columns(self) -> frozenset[str]:
        """Columns holding exact decimals."""
        return frozenset(name for name, sql_type in self.columns if sql_type == _DEC)

    def sql_type(self, column_type: str, dialect: Dialect) -> str:
        """The dialect's SQL type for a portable column type.

        :param column_type: A type from :attr:`columns`.
        :param dialect: ``sqlite`` or ``postgres``.
        """
        return _SQL_TYPES[dialect].get(column_type, column_type)

    def ddl(self, dialect: Dialect = "postgres", *, name: str | None = None, temporary: bool = False) -> str:
        """Return the ``CREATE TABLE`` statement for ``dialect``.

        :param dialect: ``sqlite`` or ``postgres``.
        :param name: Create the table under this name instead of :attr:`name`.
        :param temporary: A TEMP staging table: no constraints, no ``IF NOT EXISTS``.
        """
        cols = [
            f"{column} {self.sql_type(sql_type, dialect)}"
            f"{' NOT NULL' if column in self.primary_key and not temporary else ''}"
            for column, sql_type in self.columns
        ]
        if temporary:
            return f"CREATE TEMP TABLE {name or self.name} ({', '.join(cols)})"
        cols.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        return f"CREATE TABLE IF NOT EXISTS {name or self.name} ({', '.join(cols)})"


@dataclass(frozen=True)
class ReconcileResult:
    """What :meth:`CoinStatsWarehouse.reconcile_transactions` changed.

    :param inserted: Rows with a new key.
    :param updated: Existing rows whose columns changed (rewritten in place).
    :param removed: Rows whose key was not in the stream (deleted, kept in the history table).
    :param total: Rows in the stream (the portfolio's row count afterwards).
    """

    inserted: int
    updated: int
    removed: int
    total: int

    @property
    def unchanged(self) -> int:
        """Rows of the stream that were already stored as they are."""
        return self.total - self.inserted - self.updated


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
                ("total_value", _DEC),
                ("defi_value", _DEC),
                ("total_cost", _DEC),
                ("unrealized_profit_loss", _DEC),
                ("unrealized_profit_loss_percent", _DEC),
                ("realized_profit_loss", _DEC),
                ("realized_profit_loss_percent", _DEC),
                ("all_time_profit_loss", _DEC),
                ("all_time_profit_loss_percent", _DEC),
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
                ("amount", _DEC),
                ("price_usd", _DEC),
                ("price_btc", _DEC),
                ("value_usd", _DEC),
                ("profit_all_time_usd", _DEC),
                ("profit_percent_all_time_usd", _DEC),
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
                ("amount", _DEC),
                ("total_worth_usd", _DEC),
                ("fee_amount", _DEC),
                ("fee_coin_id", _TEXT),
                ("profit_usd", _DEC),
                ("portfolio_name", _TEXT),
                ("payload_json", _TEXT),
                ("loaded_at", _TEXT),
            ),
            ("portfolio_id", "transaction_key"),
        ),
        TableSpec(
            "coinstats_portfolio_transactions_removed",
            (
                ("portfolio_id", _TEXT),
                ("transaction_key", _TEXT),
                ("removed_at", _TEXT),
                ("payload_json", _TEXT),
            ),
            ("portfolio_id", "transaction_key", "removed_at"),
        ),
    )
}

_SNAPSHOT_TABLES: frozenset[str] = frozenset({"coinstats_portfolio_values", "coinstats_portfolio_coins"})
_TRANSACTIONS = TABLES["coinstats_portfolio_transactions"]
_REMOVED = TABLES["coinstats_portfolio_transactions_removed"]
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
    if isinstance(value, str):
        return clean_text(value)
    return value


def _decimal_text(value: Decimal) -> str:
    """Plain (non-exponent) exact text of a finite decimal, as stored on SQLite."""
    return format(value, "f")


def _legacy_decimal(value: Any) -> str | None:
    """Exact text for a value read from a legacy float column (SQLite migration)."""
    if value is None:
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return _decimal_text(Decimal(repr(value)))
    if isinstance(value, int):
        return str(value)
    try:
        number = exact_number(value, "legacy")
    except ValueError:
        return str(value)
    return None if number is None else _decimal_text(number)


def _lock_id(*parts: str) -> int:
    """Map ``parts`` to a signed 64-bit PostgreSQL advisory-lock id."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class CoinStatsWarehouse:
    """Transactional loader for the CoinStats warehouse tables.

    Works on any Airflow connection whose hook is a common-sql ``DbApiHook`` for SQLite
    (``conn_type`` ``sqlite``) or PostgreSQL (``conn_type`` ``postgres``). The connection is only
    resolved on first use, never in the constructor. Each write method opens its own DB-API
    connection, stages streamed rows in a TEMP table, merges them in one short transaction and
    closes the connection.

    Iterables of rows are consumed lazily, ``batch_size`` rows at a time, so streams of any length
    can be loaded with bounded memory. Rows are mappings of column name to value; missing columns are
    stored as NULL and ``loaded_at`` is stamped with the load's start time (UTC, ISO 8601) unless the
    row sets it. ``DECIMAL`` columns accept ``Decimal``, ``int``, ``float`` or numeric text.

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
    def dialect(self) -> Dialect:
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
        """Yield a connection in autocommit mode; :meth:`_begin` opens explicit transactions."""
        dialect = self.dialect
        conn = self.hook.get_conn()
        try:
            if dialect == "sqlite":
                # Manual transaction control: BEGIN IMMEDIATE takes the write lock up front.
                conn.isolation_level = None
            else:
                conn.autocommit = True
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _begin(self, conn: Any, cur: Any, *lock_parts: str) -> Iterator[None]:
        """Run the body in one transaction on ``conn``; commit on success, roll back on any exception.

        :param lock_parts: On PostgreSQL, take a transaction-scoped advisory lock on these values so
            concurrent loads of the same target serialise instead of failing. SQLite takes its
            database write lock (``BEGIN IMMEDIATE``).
        """
        if self.dialect == "sqlite":
            cur.execute("BEGIN IMMEDIATE")
        else:
            conn.autocommit = False
            if lock_parts:
                cur.execute(f"SELECT pg_advisory_xact_lock({self.placeholder})", (_lock_id(*lock_parts),))
        try:
            yield
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except Exception:
                log.warning("Rollback on %s failed; the server discards the transaction", self.dialect)
            raise
        finally:
            if self.dialect == "postgres":
                try:
                    conn.autocommit = True
                except Exception:  # a broken connection is closed right after
                    log.debug("Could not restore autocommit on a failed PostgreSQL connection")

    @contextmanager
    def _transaction(self, *lock_parts: str) -> Iterator[Any]:
        """Yield a cursor inside one transaction on a new connection (see :meth:`_begin`)."""
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                with self._begin(conn, cur, *lock_parts):
                    yield cur
            finally:
                cur.close()

    # -- schema --------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the warehouse tables if they do not exist and migrate older layouts (idempotent).

        Tables created by earlier versions with ``DOUBLE PRECISION`` money columns are converted to
        exact decimals in the same transaction, keeping every row.
        """
        dialect = self.dialect
        with self._transaction("coinstats_warehouse_schema") as cur:
            for spec in TABLES.values():
                cur.execute(spec.ddl(dialect))
            for spec in TABLES.values():
                if spec.decimal_columns:
                    if dialect == "sqlite":
                        self._migrate_sqlite(cur, spec)
                    else:
                        self._migrate_postgres(cur, spec)

    def _migrate_postgres(self, cur: Any, spec: TableSpec) -> None:
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (spec.name,),
        )
        types = {str(name): str(kind).upper() for name, kind in cur.fetchall()}
        legacy = sorted(c for c in spec.decimal_columns if types.get(c) in {"DOUBLE PRECISION", "REAL"})
        if not legacy:
            return
        # Shortest exact text of each float (extra_float_digits > 0), then NUMERIC: no digit is invented or lost.
        cur.execute("SET LOCAL extra_float_digits = 3")
        changes = ", ".join(f"ALTER COLUMN {c} TYPE NUMERIC USING {c}::text::numeric" for c in legacy)
        cur.execute(f"ALTER TABLE {spec.name} {changes}")
        log.info("Migrated %s columns %s from floating point to NUMERIC", spec.name, ", ".join(legacy))

    def _migrate_sqlite(self, cur: Any, spec: TableSpec) -> None:
        cur.execute(f"PRAGMA table_info({spec.name})")
        types = {str(row[1]): str(row[2]).upper() for row in cur.fetchall()}
        legacy = sorted(c for c in spec.decimal_columns if types.get(c, "TEXT") in _LEGACY_FLOAT_TYPES)
        if not legacy:
            return
        rebuilt = f"{spec.name}__rebuild"
        cur.execute(f"DROP TABLE IF EXISTS {rebuilt}")
        cur.execute(spec.ddl("sqlite", name=rebuilt))
        columns = spec.column_names
        selected = [c if c in types else "NULL" for c in columns]
        reader = cur.connection.cursor()
        copied = 0
        try:
            reader.execute(f"SELECT {', '.join(selected)} FROM {spec.name}")  # noqa: S608
            insert = f"INSERT INTO {rebuilt} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"  # noqa: S608
            while batch := reader.fetchmany(self.batch_size):
                cur.executemany(
                    insert,
                    [
                        tuple(
                            _legacy_decimal(v) if c in spec.decimal_columns else v
                            for c, v in zip(columns, row, strict=True)
                        )
                        for row in batch
                    ],
                )
                copied += len(batch)
        finally:
            reader.close()
        cur.execute(f"DROP TABLE {spec.name}")
        cur.execute(f"ALTER TABLE {rebuilt} RENAME TO {spec.name}")
        log.info("Rebuilt %s with exact decimal text columns %s (%d rows kept)", spec.name, ", ".join(legacy), copied)

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

        ``rows`` are staged first (no lock held); then the existing rows for
        ``(portfolio_id, snapshot_date)`` are deleted and the staged ones inserted in one short
        transaction. Readers see either the old or the new snapshot, never a mix; a stream that
        raises changes nothing.

        :param table: ``coinstats_portfolio_values`` or ``coinstats_portfolio_coins``.
        :param portfolio_id: The portfolio being replaced; rows may omit it, but must not differ.
        :param snapshot_date: The snapshot date being replaced; rows may omit it, but must not differ.
        :param rows: The new rows, consumed lazily in batches of ``batch_size``.
        :param on_batch: Called with the number of rows staged so far after each batch.
        :return: Rows written.
        """
        if table not in _SNAPSHOT_TABLES:
            raise ValueError(f"replace_snapshot supports {sorted(_SNAPSHOT_TABLES)}, not {table!r}")
        spec = TABLES[table]
        day = snapshot_date.isoformat()
        fixed = {"portfolio_id": portfolio_id, "snapshot_date": day}
        ph = self.placeholder
        columns = ", ".join(spec.column_names)
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                stage = self._create_stage(cur, spec)
                written = self._write_batches(cur, stage, spec, rows, fixed, on_batch=on_batch)
                with self._begin(conn, cur, table, portfolio_id, day):
                    cur.execute(
                        f"DELETE FROM {spec.name} WHERE portfolio_id = {ph} AND snapshot_date = {ph}",  # noqa: S608
                        (portfolio_id, day),
                    )
                    cur.execute(f"INSERT INTO {spec.name} ({columns}) SELECT {columns} FROM {stage}")  # noqa: S608
            finally:
                cur.close()
        log.info("Replaced %s snapshot %s of portfolio %s: %d rows", table, day, portfolio_id, written)
        return written

    def reconcile_transactions(
        self,
        portfolio_id: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> ReconcileResult:
        """Make the portfolio's transactions exactly the rows of a completed stream.

        The rows are staged (no lock held while the iterator waits on the network). Only once the
        iterator is exhausted without an exception, one short transaction inserts new keys, updates
        rows whose columns differ (unchanged rows are not rewritten), deletes rows whose key is
        absent from the stream and records them in ``coinstats_portfolio_transactions_removed``. If
        the iterator raises, nothing changes.

        :param portfolio_id: The portfolio being loaded; rows may omit it, but must not differ.
        :param rows: Every transaction row of the portfolio, with a unique ``transaction_key``.
        :param on_batch: Called with the number of rows staged so far after each batch.
        :return: Counts of inserted, updated and removed rows and the stream's total.
        :raises ValueError: On an invalid row or a key repeated in the stream (nothing changes).
        """
        return self._merge_transactions(portfolio_id, rows, on_batch=on_batch, remove_missing=True)

    def upsert_transactions(
        self,
        portfolio_id: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Insert or update transactions on ``(portfolio_id, transaction_key)``; never delete.

        Like :meth:`reconcile_transactions` (staged, one short transaction) but rows absent from
        ``rows`` are kept, e.g. to load a partial range.

        :param portfolio_id: The portfolio being loaded; rows may omit it, but must not differ.
        :param rows: Transaction rows with a ``transaction_key``, consumed lazily in batches.
        :param on_batch: Called with the number of rows staged so far after each batch.
        :return: Rows in ``rows``.
        """
        return self._merge_transactions(portfolio_id, rows, on_batch=on_batch, remove_missing=False).total

    def _merge_transactions(
        self,
        portfolio_id: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        on_batch: Callable[[int], None] | None,
        remove_missing: bool,
    ) -> ReconcileResult:
        spec = _TRANSACTIONS
        ph = self.placeholder
        table = spec.name
        columns = spec.column_names
        compared = [c for c in columns if c not in spec.primary_key and c != "loaded_at"]
        differs = "IS NOT" if self.dialect == "sqlite" else "IS DISTINCT FROM"
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                stage = self._create_stage(cur, spec)
                total = self._write_batches(cur, stage, spec, rows, {"portfolio_id": portfolio_id}, on_batch=on_batch)
                if self.dialect == "sqlite":
                    cur.execute(f"CREATE INDEX temp.{_STAGE}_key ON {_STAGE} (transaction_key)")
                else:
                    cur.execute(f"CREATE INDEX ON {stage} (transaction_key)")
                cur.execute(
                    f"SELECT COUNT(*) FROM (SELECT transaction_key FROM {stage} "  # noqa: S608
                    "GROUP BY transaction_key HAVING COUNT(*) > 1) AS repeated"
                )
                (repeated,) = cur.fetchone()
                if repeated:
                    raise ValueError(
                        f"the transaction stream of portfolio {portfolio_id} repeats {repeated} transaction_key "
                        "value(s); each transaction needs a unique key (use one TransactionKeyer per stream). "
                        "Nothing was changed."
                    )
                removed_at = _utc_now()
                with self._begin(conn, cur, table, portfolio_id):
                    cur.execute(
                        f"UPDATE {table} SET {', '.join(f'{c} = s.{c}' for c in [*compared, 'loaded_at'])} "  # noqa: S608
                        f"FROM {stage} AS s WHERE {table}.portfolio_id = {ph} "
                        f"AND {table}.transaction_key = s.transaction_key "
                        f"AND ({' OR '.join(f'{table}.{c} {differs} s.{c}' for c in compared)})",
                        (portfolio_id,),
                    )
                    updated = max(cur.rowcount, 0)
                    cur.execute(
                        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM {stage} AS s "  # noqa: S608
                        f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS m "
                        f"WHERE m.portfolio_id = {ph} AND m.transaction_key = s.transaction_key)",
                        (portfolio_id,),
                    )
                    inserted = max(cur.rowcount, 0)
                    removed = 0
                    if remove_missing:
                        missing = (
                            f"NOT EXISTS (SELECT 1 FROM {stage} AS s "  # noqa: S608
                            "WHERE s.transaction_key = m.transaction_key)"
                        )
                        cur.execute(
                            f"INSERT INTO {_REMOVED.name} (portfolio_id, transaction_key, removed_at, payload_json) "  # noqa: S608
                            f"SELECT m.portfolio_id, m.transaction_key, {ph}, m.payload_json FROM {table} AS m "
                            f"WHERE m.portfolio_id = {ph} AND {missing}",
                            (removed_at, portfolio_id),
                        )
                        cur.execute(
                            f"DELETE FROM {table} WHERE portfolio_id = {ph} AND NOT EXISTS "  # noqa: S608
                            f"(SELECT 1 FROM {stage} AS s WHERE s.transaction_key = {table}.transaction_key)",
                            (portfolio_id,),
                        )
                        removed = max(cur.rowcount, 0)
            finally:
                cur.close()
        result = ReconcileResult(inserted=inserted, updated=updated, removed=removed, total=total)
        log.info(
            "Transactions of portfolio %s: %d in stream, %d inserted, %d updated, %d removed",
            portfolio_id,
            total,
            inserted,
            updated,
            removed,
        )
        return result

    def _create_stage(self, cur: Any, spec: TableSpec) -> str:
        """Create the connection-private staging table for ``spec``; return its qualified name."""
        qualified = f"{_TEMP_SCHEMA[self.dialect]}.{_STAGE}"
        cur.execute(f"DROP TABLE IF EXISTS {qualified}")
        cur.execute(spec.ddl(self.dialect, name=_STAGE, temporary=True))
        return qualified

    def _write_batches(
        self,
        cur: Any,
        target: str,
        spec: TableSpec,
        rows: Iterable[Mapping[str, Any]],
        fixed: Mapping[str, str],
        *,
        on_batch: Callable[[int], None] | None,
    ) -> int:
        columns = spec.column_names
        ph = self.placeholder
        sql = f"INSERT INTO {target} ({', '.join(columns)}) VALUES ({', '.join(ph for _ in columns)})"  # noqa: S608
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
        sqlite = self.dialect == "sqlite"
        for column in spec.decimal_columns:
            try:
                number = exact_number(values[column], column)
            except ValueError as exc:
                raise ValueError(f"{spec.name} row #{index}: {exc}") from None
            values[column] = _decimal_text(number) if sqlite and number is not None else number
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
        return int(count)

    def fetch_table(self, table: str, *, exclude: Iterable[str] = ()) -> list[tuple[Any, ...]]:
        """Return all rows of ``table`` ordered by primary key (for tests and run summaries).

        Dates come back as ISO strings and ``DECIMAL`` columns as :class:`~decimal.Decimal` on every
        backend.

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
        decimals = [c in spec.decimal_columns for c in columns]
        sql = f"SELECT {', '.join(columns)} FROM {spec.name} ORDER BY {', '.join(spec.primary_key)}"  # noqa: S608
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql)
                result = [
                    tuple(
                        _read_decimal(v) if is_decimal else _sql_value(v)
                        for v, is_decimal in zip(row, decimals, strict=True)
                    )
                    for row in cur.fetchall()
                ]
            finally:
                cur.close()
        return result


def _read_decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))
