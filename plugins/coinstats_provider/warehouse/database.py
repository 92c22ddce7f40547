"""Connection handling of the warehouse: the common-sql hook, its dialect, transactions, and reads.

:class:`WarehouseDatabase` resolves an Airflow connection (SQLite or PostgreSQL) on first use, opens
one DB-API connection per operation in autocommit mode and runs explicit, short transactions on it
(SQLite ``BEGIN IMMEDIATE``; PostgreSQL optionally with a transaction-scoped advisory lock).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from coinstats_provider.warehouse.schema import WAREHOUSE_CONN_NAME, Dialect, spec
from coinstats_provider.warehouse.values import clean_text

if TYPE_CHECKING:
    # Imported when a task first touches the warehouse, not when a DAG file is parsed.
    from airflow.providers.common.sql.hooks.sql import DbApiHook

__all__ = ["WarehouseDatabase", "read_decimal", "sql_value", "utc_now"]

log = logging.getLogger(__name__)

_SUPPORTED_DIALECTS: Mapping[str, Dialect] = {
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
}


def utc_now() -> str:
    """The current UTC time as ISO 8601 text."""
    return datetime.now(UTC).isoformat()


def sql_value(value: Any) -> Any:
    """Convert Python values the drivers handle differently into portable ones.

    :param value: A column value: booleans become ``0``/``1``, dates ISO text (aware times in UTC),
        strings clean text.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).isoformat()  # a TIMESTAMPTZ read in another session time zone
    if isinstance(value, date):  # datetime is a subclass of date
        return value.isoformat()
    if isinstance(value, str):
        return clean_text(value)
    return value


def read_decimal(value: Any) -> Decimal | None:
    """A stored ``DECIMAL`` value (``NUMERIC`` or exact text) as :class:`~decimal.Decimal`.

    :param value: What the driver returned.
    """
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def _lock_id(*parts: str) -> int:
    """Map ``parts`` to a signed 64-bit PostgreSQL advisory-lock id."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class WarehouseDatabase:
    """The warehouse connection: dialect detection, per-operation connections, transactions, reads.

    Works on any Airflow connection whose hook is a common-sql ``DbApiHook`` for SQLite
    (``conn_type`` ``sqlite``) or PostgreSQL (``conn_type`` ``postgres``). The connection is only
    resolved on first use, never in the constructor.

    :param warehouse_conn_id: Airflow connection id of the warehouse database.
    :param batch_size: Rows per ``executemany`` call.
    """

    default_conn_name = WAREHOUSE_CONN_NAME

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
                return _SUPPORTED_DIALECTS[name.lower()]
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

        :param conn: A connection from :meth:`_connection`.
        :param cur: A cursor of ``conn``.
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
        """Yield a cursor inside one transaction on a new connection (see :meth:`_begin`).

        :param lock_parts: Advisory-lock values on PostgreSQL.
        """
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                with self._begin(conn, cur, *lock_parts):
                    yield cur
            finally:
                cur.close()

    # -- reads ---------------------------------------------------------------------------------

    def fetch_table(self, table: str, *, exclude: Iterable[str] = ()) -> list[tuple[Any, ...]]:
        """Return all rows of ``table`` ordered by primary key (for run checks such as the demo's).

        Dates come back as ISO strings and ``DECIMAL`` columns as :class:`~decimal.Decimal` on every
        backend.

        :param table: One of :data:`~coinstats_provider.warehouse.schema.TABLES`.
        :param exclude: Columns to leave out, e.g. ``("loaded_at",)`` to compare runs.
        :return: Row tuples in table column order, minus ``exclude``.
        """
        layout = spec(table)
        skip = set(exclude)
        unknown = skip - set(layout.column_names)
        if unknown:
            raise ValueError(f"{layout.name} has no columns {sorted(unknown)}")
        columns = [c for c in layout.column_names if c not in skip]
        if not columns:
            raise ValueError("exclude leaves no columns to fetch")
        decimals = [c in layout.decimal_columns for c in columns]
        sql = f"SELECT {', '.join(columns)} FROM {layout.name} ORDER BY {', '.join(layout.primary_key)}"  # noqa: S608
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql)
                result = [
                    tuple(
                        read_decimal(v) if is_decimal else sql_value(v)
                        for v, is_decimal in zip(row, decimals, strict=True)
                    )
                    for row in cur.fetchall()
                ]
            finally:
                cur.close()
        return result
