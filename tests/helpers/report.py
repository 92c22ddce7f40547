"""The daily report table: read it, and compute what it must hold straight from the warehouse tables."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from coinstats_provider.warehouse.database import read_decimal
from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from coinstats_provider.warehouse.schema import COINS_TABLE, REPORT_TABLE, TRANSACTIONS_TABLE, VALUES_TABLE, spec

COLUMNS = (
    "portfolio_id",
    "report_date",
    "currency",
    "total_value",
    "previous_snapshot_date",
    "previous_total_value",
    "value_change",
    "coin_count",
    "transaction_count",
)
_MONEY = {"total_value", "previous_total_value", "value_change"}
_DATES = {"report_date", "previous_snapshot_date"}


def _normal(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _MONEY:
        return read_decimal(value)
    if column in _DATES:
        return str(value)[:10]
    if column.endswith("_count"):
        return int(value)
    return value


def report_rows(wh: CoinStatsWarehouse) -> list[tuple[Any, ...]]:
    """Every report row, ordered by portfolio and date; dates as ISO text, money as :class:`Decimal`.

    :param wh: The warehouse holding the report.
    """
    conn = wh.hook.get_conn()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM {REPORT_TABLE} ORDER BY portfolio_id, report_date")  # noqa: S608
        rows = [tuple(_normal(c, v) for c, v in zip(COLUMNS, row, strict=True)) for row in cur.fetchall()]
        cur.close()
    finally:
        conn.close()
    return rows


def expected_report(wh: CoinStatsWarehouse) -> list[tuple[Any, ...]]:
    """What the report must hold, computed in Python (exact decimals) from the warehouse tables.

    :param wh: The warehouse the report is built from.
    """

    def table(name: str, *columns: str) -> list[dict[str, Any]]:
        names = spec(name).column_names
        return [{c: v for c, v in zip(names, row, strict=True) if c in columns} for row in wh.fetch_table(name)]

    values = table(VALUES_TABLE, "portfolio_id", "snapshot_date", "currency", "total_value")
    coins = table(COINS_TABLE, "portfolio_id", "snapshot_date")
    transactions = table(TRANSACTIONS_TABLE, "portfolio_id", "occurred_at")
    rows = []
    for value in values:
        pid, day = value["portfolio_id"], str(value["snapshot_date"])[:10]
        earlier = [v for v in values if v["portfolio_id"] == pid and str(v["snapshot_date"])[:10] < day]
        previous = max(earlier, key=lambda v: str(v["snapshot_date"])) if earlier else None
        total: Decimal | None = value["total_value"]
        previous_total = previous["total_value"] if previous else None
        change = total - previous_total if total is not None and previous_total is not None else None
        rows.append(
            (
                pid,
                day,
                value["currency"],
                total,
                str(previous["snapshot_date"])[:10] if previous else None,
                previous_total,
                change,
                sum(1 for c in coins if c["portfolio_id"] == pid and str(c["snapshot_date"])[:10] == day),
                sum(1 for t in transactions if t["portfolio_id"] == pid and (t["occurred_at"] or "")[:10] == day),
            )
        )
    return sorted(rows, key=lambda r: (r[0], r[1]))
