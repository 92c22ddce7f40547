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

**Snapshots** (:data:`~coinstats_provider.warehouse.schema.SNAPSHOT_TABLES`) are replaced per
``(portfolio_id, snapshot_date)``.

**Histories** (:data:`~coinstats_provider.warehouse.schema.UPSERT_TABLES`: chart points, snapshot
items) are upserted by primary key: a rerun rewrites the rows it fetched whose values changed (unchanged
rows keep ``loaded_at``) and keeps every other row.

**Transactions mirror CoinStats.** :meth:`CoinStatsWarehouse.reconcile_transactions` makes a
portfolio's rows equal the set seen in a completed stream: new keys are inserted, rows whose
columns changed are updated in place (unchanged rows are not rewritten and keep ``loaded_at``), and
rows whose key vanished are deleted and recorded, with their payload, in the removed-transactions
table. The main table is the current truth.

**Exact numbers.** Money, amount, price and percent columns (type ``DECIMAL`` in
:mod:`coinstats_provider.warehouse.schema`) are stored without rounding: ``NUMERIC`` on PostgreSQL
(bound as :class:`~decimal.Decimal`), and on SQLite a ``TEXT`` column holding the exact decimal string
in plain notation (``'0.123456789012345678'``). SQLite has no exact decimal type: a ``NUMERIC`` or
``REAL`` column converts such a string to an 8-byte float and keeps about 15-17 significant digits.
To compute with them in SQLite, cast: ``CAST(amount AS REAL)`` (approximate) or compare as text; on
PostgreSQL they are ordinary ``NUMERIC``. :meth:`CoinStatsWarehouse.fetch_table` returns them as
``Decimal`` on both backends. :meth:`CoinStatsWarehouse.ensure_schema` migrates warehouses created
with ``DOUBLE PRECISION`` columns in place (see :mod:`coinstats_provider.warehouse.migrations`).

**Text** values are written with NUL characters removed and lone surrogates replaced by U+FFFD
(see :func:`coinstats_provider.warehouse.values.clean_text`), so no driver rejects them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from typing import Any

from coinstats_provider.warehouse.database import WarehouseDatabase, sql_value, utc_now
from coinstats_provider.warehouse.migrations import create_and_migrate, schema_is_current
from coinstats_provider.warehouse.schema import (
    PORTFOLIOS_TABLE,
    REMOVED_TABLE,
    SNAPSHOT_TABLES,
    SYNC_STATE_TABLE,
    TABLES,
    TRANSACTIONS_TABLE,
    UPSERT_TABLES,
    Dialect,
    TableSpec,
)
from coinstats_provider.warehouse.sync_state import SyncState, parse_moment
from coinstats_provider.warehouse.values import decimal_text, exact_number

__all__ = ["CoinStatsWarehouse", "ReconcileResult"]

log = logging.getLogger(__name__)

_STAGE = "coinstats_stage_rows"
_TEMP_SCHEMA: Mapping[Dialect, str] = {"sqlite": "temp", "postgres": "pg_temp"}
_TRANSACTIONS = TABLES[TRANSACTIONS_TABLE]
_PORTFOLIOS = TABLES[PORTFOLIOS_TABLE]
_SYNC_STATE = TABLES[SYNC_STATE_TABLE]
#: Called once a transactions stream is exhausted: the state row to commit with its rows.
StateAfter = Callable[[], SyncState]


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


class CoinStatsWarehouse(WarehouseDatabase):
    """Transactional loader for the CoinStats warehouse tables.

    Each write method opens its own DB-API connection (see :class:`WarehouseDatabase`), stages
    streamed rows in a TEMP table, merges them in one short transaction and closes the connection.

    Iterables of rows are consumed lazily, ``batch_size`` rows at a time, so streams of any length
    can be loaded with bounded memory. Rows are mappings of column name to value; missing columns are
    stored as NULL and ``loaded_at`` is stamped with the load's start time (UTC, ISO 8601) unless the
    row sets it. ``DECIMAL`` columns accept ``Decimal``, ``int``, ``float`` or numeric text.

    :param warehouse_conn_id: Airflow connection id of the warehouse database.
    :param batch_size: Rows per ``executemany`` call.
    """

    def ensure_schema(self) -> None:
        """Create the warehouse tables if they do not exist and migrate older layouts (idempotent).

        Tables created by earlier versions with ``DOUBLE PRECISION`` money columns are converted to
        exact decimals in the same transaction, keeping every row. A warehouse that is already current
        costs one catalogue query: no DDL, no lock, no transaction (every load task calls this).
        """
        dialect = self.dialect
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                if schema_is_current(cur, dialect):
                    return
                with self._begin(conn, cur, "coinstats_warehouse_schema"):
                    create_and_migrate(cur, dialect, self.batch_size)
            finally:
                cur.close()

    # -- writes --------------------------------------------------------------------------------

    def upsert_portfolio(self, row: Mapping[str, Any]) -> None:
        """Insert or update one portfolio row.

        Only the columns present in ``row`` are written, so a partial row keeps the other columns'
        stored values. ``updated_at`` is set to now unless given.

        :param row: Column values; ``portfolio_id`` is required.
        :raises ValueError: On a missing ``portfolio_id`` or an unknown column.
        """
        _check_columns(_PORTFOLIOS, row, 0)
        if not row.get("portfolio_id"):
            raise ValueError("portfolio row needs a portfolio_id")
        values = {k: sql_value(v) for k, v in row.items()}
        values.setdefault("updated_at", utc_now())
        with self._transaction() as cur:
            self._upsert(cur, _PORTFOLIOS, values)

    def _upsert(self, cur: Any, spec: TableSpec, values: Mapping[str, Any]) -> None:
        """Insert or update one row of ``spec`` keyed by its primary key; only ``values``' columns are written.

        ``values`` holds at least one column besides the key (callers stamp ``updated_at`` or write a whole row).
        """
        columns = [c for c in spec.column_names if c in values]
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in spec.primary_key)
        sql = (
            f"INSERT INTO {spec.name} ({', '.join(columns)}) "  # noqa: S608
            f"VALUES ({', '.join(self.placeholder for _ in columns)}) "
            f"ON CONFLICT ({', '.join(spec.primary_key)}) DO UPDATE SET {updates}"
        )
        cur.execute(sql, tuple(values[c] for c in columns))

    def replace_snapshot(
        self, table: str, portfolio_id: str, snapshot_date: date, rows: Iterable[Mapping[str, Any]]
    ) -> int:
        """Atomically replace one portfolio's rows for one snapshot date.

        ``rows`` are staged first (no lock held); then the existing rows for
        ``(portfolio_id, snapshot_date)`` are deleted and the staged ones inserted in one short
        transaction. Readers see either the old or the new snapshot, never a mix; a stream that
        raises changes nothing.

        :param table: One of :data:`~coinstats_provider.warehouse.schema.SNAPSHOT_TABLES`.
        :param portfolio_id: The portfolio being replaced; rows may omit it, but must not differ.
        :param snapshot_date: The snapshot date being replaced; rows may omit it, but must not differ.
        :param rows: The new rows, consumed lazily in batches of ``batch_size``.
        :return: Rows written.
        """
        if table not in SNAPSHOT_TABLES:
            raise ValueError(f"replace_snapshot supports {sorted(SNAPSHOT_TABLES)}, not {table!r}")
        spec = TABLES[table]
        day = snapshot_date.isoformat()
        fixed = {"portfolio_id": portfolio_id, "snapshot_date": day}
        ph = self.placeholder
        columns = ", ".join(spec.column_names)
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                stage = self._create_stage(cur, spec)
                written = self._write_batches(cur, stage, spec, rows, fixed)
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

    def upsert_history(self, table: str, portfolio_id: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert or update one portfolio's history rows by primary key, atomically.

        ``rows`` are staged first (no lock held); then one short transaction inserts new keys and
        rewrites existing rows whose values differ (unchanged rows keep ``loaded_at``). Rows of the
        portfolio that are not in ``rows`` stay. A stream that raises changes nothing.

        :param table: One of :data:`~coinstats_provider.warehouse.schema.UPSERT_TABLES`.
        :param portfolio_id: The portfolio being loaded; rows may omit it, but must not differ.
        :param rows: The rows, consumed lazily in batches of ``batch_size``; each key at most once.
        :return: Rows written (inserted or already stored).
        :raises ValueError: On an invalid row or a key repeated in ``rows`` (nothing changes).
        """
        if table not in UPSERT_TABLES:
            raise ValueError(f"upsert_history supports {sorted(UPSERT_TABLES)}, not {table!r}")
        spec = TABLES[table]
        columns = ", ".join(spec.column_names)
        keys = ", ".join(spec.primary_key)
        compared = [c for c in spec.column_names if c not in spec.primary_key and c != "loaded_at"]
        differs = "IS NOT" if self.dialect == "sqlite" else "IS DISTINCT FROM"
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                stage = self._create_stage(cur, spec)
                written = self._write_batches(cur, stage, spec, rows, {"portfolio_id": portfolio_id})
                if repeated := self._repeated_keys(cur, stage, keys):
                    raise ValueError(
                        f"the {table} rows of portfolio {portfolio_id} repeat {repeated} key(s) ({keys}); "
                        "each key may appear once per load. Nothing was changed."
                    )
                with self._begin(conn, cur, table, portfolio_id):
                    # "WHERE true" lets SQLite tell the upsert clause from a join condition.
                    cur.execute(
                        f"INSERT INTO {spec.name} ({columns}) SELECT {columns} FROM {stage} WHERE true "  # noqa: S608
                        f"ON CONFLICT ({keys}) DO UPDATE SET "
                        f"{', '.join(f'{c} = excluded.{c}' for c in [*compared, 'loaded_at'])} "
                        f"WHERE {' OR '.join(f'{spec.name}.{c} {differs} excluded.{c}' for c in compared)}"
                    )
            finally:
                cur.close()
        log.info("Upserted %d %s rows of portfolio %s", written, table, portfolio_id)
        return written

    def reconcile_transactions(
        self, portfolio_id: str, rows: Iterable[Mapping[str, Any]], *, state: StateAfter | None = None
    ) -> ReconcileResult:
        """Make the portfolio's transactions exactly the rows of a completed stream.

        The rows are staged (no lock held while the iterator waits on the network). Only once the
        iterator is exhausted without an exception, one short transaction inserts new keys, updates
        rows whose columns differ (unchanged rows are not rewritten), deletes rows whose key is
        absent from the stream and records them in the removed-transactions table. If the iterator
        raises, nothing changes.

        :param portfolio_id: The portfolio being loaded; rows may omit it, but must not differ.
        :param rows: Every transaction row of the portfolio, with a unique ``transaction_key``.
        :param state: Called once the stream is exhausted; its sync-state row is written in the same
            transaction (see :mod:`coinstats_provider.warehouse.sync_state`).
        :return: Counts of inserted, updated and removed rows and the stream's total.
        :raises ValueError: On an invalid row or a key repeated in the stream (nothing changes).
        """
        return self._load_transactions(portfolio_id, rows, delete=True, state=state)

    def merge_transactions(
        self, portfolio_id: str, rows: Iterable[Mapping[str, Any]], *, state: StateAfter | None = None
    ) -> ReconcileResult:
        """Insert the new and update the changed transactions of a partial stream; never delete.

        For an incremental read (only the transactions since some date): staged like
        :meth:`reconcile_transactions` and merged in one short transaction, but rows absent from the
        stream are kept (``removed`` is always 0). If the iterator raises, nothing changes.

        :param portfolio_id: The portfolio being loaded; rows may omit it, but must not differ.
        :param rows: Transaction rows, each with the key a full stream would give it (unique in the stream).
        :param state: Called once the stream is exhausted; its sync-state row is written in the same transaction.
        :return: Counts of inserted and updated rows and the stream's total.
        :raises ValueError: On an invalid row or a key repeated in the stream (nothing changes).
        """
        return self._load_transactions(portfolio_id, rows, delete=False, state=state)

    def _load_transactions(
        self, portfolio_id: str, rows: Iterable[Mapping[str, Any]], *, delete: bool, state: StateAfter | None
    ) -> ReconcileResult:
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                stage = self._create_stage(cur, _TRANSACTIONS)
                total = self._write_batches(cur, stage, _TRANSACTIONS, rows, {"portfolio_id": portfolio_id})
                self._check_unique_keys(cur, stage, portfolio_id)
                after = state() if state is not None else None
                if after is not None and after.portfolio_id != portfolio_id:
                    raise ValueError("the sync state belongs to another portfolio than the rows")
                with self._begin(conn, cur, _TRANSACTIONS.name, portfolio_id):
                    inserted, updated, removed = self._merge_staged_transactions(cur, stage, portfolio_id, delete)
                    if after is not None:
                        self._upsert(cur, _SYNC_STATE, {k: sql_value(v) for k, v in after.as_row().items()})
            finally:
                cur.close()
        log.info(
            "Transactions of portfolio %s (%s): %d in stream, %d inserted, %d updated, %d removed",
            portfolio_id,
            "full reconcile" if delete else "merge, no deletes",
            total,
            inserted,
            updated,
            removed,
        )
        return ReconcileResult(inserted=inserted, updated=updated, removed=removed, total=total)

    # -- reads of the transactions sync state --------------------------------------------------

    def sync_state(self, portfolio_id: str) -> SyncState | None:
        """The portfolio's row of the sync-state table, or ``None``.

        :param portfolio_id: The portfolio.
        """
        columns = _SYNC_STATE.column_names
        sql = f"SELECT {', '.join(columns)} FROM {_SYNC_STATE.name} WHERE portfolio_id = {self.placeholder}"  # noqa: S608
        found = self._select(sql, (portfolio_id,))
        if not found:
            return None
        values = {c: (None if v is None else str(v)) for c, v in zip(columns, found[0], strict=True)}
        return SyncState(
            portfolio_id,
            last_mode=values["last_mode"],
            currency=values["currency"],
            newest_occurred_at=values["newest_occurred_at"],
            newest_key=values["newest_key"],
            last_full_at=values["last_full_at"],
            last_run_at=values["last_run_at"],
        )

    def count_transactions(self, portfolio_id: str) -> int:
        """How many transactions are stored for the portfolio.

        :param portfolio_id: The portfolio.
        """
        sql = f"SELECT COUNT(*) FROM {_TRANSACTIONS.name} WHERE portfolio_id = {self.placeholder}"  # noqa: S608
        return int(self._select(sql, (portfolio_id,))[0][0])

    def transactions_since(self, portfolio_id: str, since: datetime) -> dict[str, datetime]:
        """Keys and dates of the portfolio's stored transactions dated at or after ``since``.

        The SQL filter is a coarse text bound (two days earlier, so any ISO spelling or offset passes);
        the exact comparison is made on the parsed dates. Rows without a readable date are left out.

        :param portfolio_id: The portfolio.
        :param since: An aware moment.
        """
        lower = (since.astimezone(UTC) - timedelta(days=2)).date().isoformat()
        sql = (
            f"SELECT transaction_key, occurred_at FROM {_TRANSACTIONS.name} "  # noqa: S608
            f"WHERE portfolio_id = {self.placeholder} AND occurred_at >= {self.placeholder}"
        )
        found: dict[str, datetime] = {}
        for key, occurred in self._select(sql, (portfolio_id, lower)):
            moment = parse_moment(occurred)
            if moment is not None and moment >= since:
                found[str(key)] = moment
        return found

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql, params)
                return [tuple(row) for row in cur.fetchall()]
            finally:
                cur.close()

    # -- staging and merging -------------------------------------------------------------------

    def _create_stage(self, cur: Any, spec: TableSpec) -> str:
        """Create the connection-private staging table for ``spec``; return its qualified name."""
        qualified = f"{_TEMP_SCHEMA[self.dialect]}.{_STAGE}"
        cur.execute(f"DROP TABLE IF EXISTS {qualified}")
        cur.execute(spec.ddl(self.dialect, name=_STAGE, temporary=True))
        return qualified

    def _write_batches(
        self, cur: Any, target: str, spec: TableSpec, rows: Iterable[Mapping[str, Any]], fixed: Mapping[str, str]
    ) -> int:
        """Validate ``rows`` and insert them into ``target`` in batches of ``batch_size``; return the count."""
        columns = spec.column_names
        ph = self.placeholder
        sql = f"INSERT INTO {target} ({', '.join(columns)}) VALUES ({', '.join(ph for _ in columns)})"  # noqa: S608
        loaded_at = utc_now()
        iterator = iter(rows)
        written = 0
        while batch := list(islice(iterator, self.batch_size)):
            params = [
                self._row_params(spec, row, fixed, loaded_at, written + offset) for offset, row in enumerate(batch)
            ]
            cur.executemany(sql, params)
            written += len(params)
        return written

    def _check_unique_keys(self, cur: Any, stage: str, portfolio_id: str) -> None:
        """Index the staged transactions by key and refuse a stream that repeats a key."""
        if self.dialect == "sqlite":
            cur.execute(f"CREATE INDEX temp.{_STAGE}_key ON {_STAGE} (transaction_key)")
        else:
            cur.execute(f"CREATE INDEX ON {stage} (transaction_key)")
        if repeated := self._repeated_keys(cur, stage, "transaction_key"):
            raise ValueError(
                f"the transaction stream of portfolio {portfolio_id} repeats {repeated} transaction_key "
                "value(s); each transaction needs a unique key (use one TransactionKeyer per stream). "
                "Nothing was changed."
            )

    @staticmethod
    def _repeated_keys(cur: Any, stage: str, keys: str) -> int:
        """How many values of the key columns ``keys`` occur more than once in the staged rows."""
        cur.execute(
            f"SELECT COUNT(*) FROM (SELECT {keys} FROM {stage} GROUP BY {keys} HAVING COUNT(*) > 1) AS repeated"  # noqa: S608
        )
        (repeated,) = cur.fetchone()
        return int(repeated)

    def _merge_staged_transactions(self, cur: Any, stage: str, portfolio_id: str, delete: bool) -> tuple[int, int, int]:
        """Update changed rows, insert new keys, move vanished keys to the history (``delete``); return the counts."""
        ph = self.placeholder
        table = _TRANSACTIONS.name
        columns = ", ".join(_TRANSACTIONS.column_names)
        compared = [c for c in _TRANSACTIONS.column_names if c not in _TRANSACTIONS.primary_key and c != "loaded_at"]
        differs = "IS NOT" if self.dialect == "sqlite" else "IS DISTINCT FROM"
        cur.execute(
            f"UPDATE {table} SET {', '.join(f'{c} = s.{c}' for c in [*compared, 'loaded_at'])} "  # noqa: S608
            f"FROM {stage} AS s WHERE {table}.portfolio_id = {ph} "
            f"AND {table}.transaction_key = s.transaction_key "
            f"AND ({' OR '.join(f'{table}.{c} {differs} s.{c}' for c in compared)})",
            (portfolio_id,),
        )
        updated = max(cur.rowcount, 0)
        cur.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} AS s "  # noqa: S608
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS m "
            f"WHERE m.portfolio_id = {ph} AND m.transaction_key = s.transaction_key)",
            (portfolio_id,),
        )
        inserted = max(cur.rowcount, 0)
        if not delete:
            return inserted, updated, 0
        cur.execute(
            f"INSERT INTO {REMOVED_TABLE} (portfolio_id, transaction_key, removed_at, payload_json) "  # noqa: S608
            f"SELECT m.portfolio_id, m.transaction_key, {ph}, m.payload_json FROM {table} AS m "
            f"WHERE m.portfolio_id = {ph} AND NOT EXISTS "
            f"(SELECT 1 FROM {stage} AS s WHERE s.transaction_key = m.transaction_key)",
            (utc_now(), portfolio_id),
        )
        cur.execute(
            f"DELETE FROM {table} WHERE portfolio_id = {ph} AND NOT EXISTS "  # noqa: S608
            f"(SELECT 1 FROM {stage} AS s WHERE s.transaction_key = {table}.transaction_key)",
            (portfolio_id,),
        )
        return inserted, updated, max(cur.rowcount, 0)

    def _row_params(
        self, spec: TableSpec, row: Mapping[str, Any], fixed: Mapping[str, str], loaded_at: str, index: int
    ) -> tuple[Any, ...]:
        """One row's bound values in column order: validated, defaults filled, decimals exact."""
        _check_columns(spec, row, index)
        values = {c: sql_value(row.get(c)) for c in spec.column_names}
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
            values[column] = decimal_text(number) if sqlite and number is not None else number
        return tuple(values[c] for c in spec.column_names)


def _check_columns(spec: TableSpec, row: Mapping[str, Any], index: int) -> None:
    unknown = row.keys() - spec.column_names
    if unknown:
        raise ValueError(f"{spec.name} row #{index} has unknown columns {sorted(unknown)}")
