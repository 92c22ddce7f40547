"""Warehouse probes for tests and benchmarks: row counts, a recorder of staged batches and of locks taken."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from coinstats_provider.warehouse.loader import _STAGE, CoinStatsWarehouse
from coinstats_provider.warehouse.schema import spec


def count_rows(wh: CoinStatsWarehouse, table: str, portfolio_id: str | None = None) -> int:
    """Count the rows of ``table``, optionally for one portfolio.

    :param wh: The warehouse to read.
    :param table: One of the warehouse tables (any other name raises ``ValueError``).
    :param portfolio_id: Restrict to this portfolio.
    """
    sql = f"SELECT COUNT(*) FROM {spec(table).name}"  # noqa: S608
    params: tuple[Any, ...] = ()
    if portfolio_id is not None:
        sql += f" WHERE portfolio_id = {wh.placeholder}"
        params = (portfolio_id,)
    conn = wh.hook.get_conn()
    try:
        cur = conn.cursor()
        cur.execute(sql, params)
        (count,) = cur.fetchone()
        cur.close()
    finally:
        conn.close()
    return int(count)


class _Cursor:
    """A DB-API cursor that reports every batch inserted into the staging table."""

    def __init__(self, cursor: Any, staged: Callable[[int], None]) -> None:
        self._cursor = cursor
        self._staged = staged

    def executemany(self, sql: str, params: list[Any]) -> Any:
        result = self._cursor.executemany(sql, params)
        if sql.startswith("INSERT INTO") and f".{_STAGE} (" in sql:
            self._staged(len(params))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class _Connection:
    """A DB-API connection whose cursors report staged batches; everything else goes to ``conn``."""

    def __init__(self, conn: Any, on_batch: Callable[[int], None]) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_on_batch", on_batch)
        object.__setattr__(self, "_written", 0)

    def cursor(self, *args: Any, **kwargs: Any) -> _Cursor:
        return _Cursor(self._conn.cursor(*args, **kwargs), self._staged)

    def _staged(self, rows: int) -> None:
        object.__setattr__(self, "_written", self._written + rows)
        self._on_batch(self._written)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)


@contextmanager
def staged_batches(wh: CoinStatsWarehouse, on_batch: Callable[[int], None]) -> Iterator[None]:
    """Call ``on_batch`` with the rows staged so far by a write, after each batch it stages.

    Every write method of ``wh`` uses a connection of its own, so the count restarts with each call.

    :param wh: The warehouse whose connections are watched.
    :param on_batch: Receives the cumulative number of rows staged by the current write.
    """
    hook = wh.hook
    original = hook.get_conn
    hook.get_conn = lambda: _Connection(original(), on_batch)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del hook.get_conn


def record_locks(wh: CoinStatsWarehouse, monkeypatch: Any) -> list[tuple[str, ...]]:
    """Record the lock values of every transaction ``wh`` begins (its PostgreSQL advisory lock key).

    :param wh: The warehouse to watch.
    :param monkeypatch: pytest's ``monkeypatch`` fixture (undoes the patch after the test).
    """
    taken: list[tuple[str, ...]] = []
    begin = wh._begin

    def spy(conn: Any, cur: Any, *lock_parts: str) -> Any:
        taken.append(lock_parts)
        return begin(conn, cur, *lock_parts)

    monkeypatch.setattr(wh, "_begin", spy)
    return taken
