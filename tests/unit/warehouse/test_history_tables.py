"""The chart, DeFi and snapshot tables on SQLite and the real PostgreSQL: exact numbers, UTC times, upserts."""
# ruff: noqa: F811  (pytest fixtures imported from test_loader)

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from coinstats_provider.warehouse import transform
from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from coinstats_provider.warehouse.schema import CHART_TABLE, DEFI_TABLE, SNAPSHOTS_TABLE
from tests.unit.warehouse.test_loader import Backend, backend, wh  # noqa: F401  (fixtures)

pytest_plugins = ["tests.helpers.postgres_server"]

PID = "pf-history"
DAY = dt.date(2026, 2, 27)
TINY = "0.000000000000000000000001"


def test_chart_points_upsert_with_utc_times_and_exact_values(wh: CoinStatsWarehouse) -> None:
    points = [[1755864000000, TINY, 1, 2], [1755950400, "12345678901234567890.123456789", 3, 4]]
    assert wh.upsert_history(CHART_TABLE, PID, transform.chart_rows(PID, "all", points)) == 2
    wh.ensure_schema()
    first = wh.fetch_table(CHART_TABLE, exclude=("loaded_at",))
    assert first == [
        (PID, "all", "2025-08-22T12:00:00+00:00", Decimal(TINY), Decimal(1), Decimal(2)),
        (PID, "all", "2025-08-23T12:00:00+00:00", Decimal("12345678901234567890.123456789"), Decimal(3), Decimal(4)),
    ]
    loaded = {row[2]: row[-1] for row in wh.fetch_table(CHART_TABLE)}
    # Rerun: one point unchanged (keeps loaded_at), one changed, one new; another chart type is separate.
    rerun = [[1755864000, TINY, 1, 2], [1755950400000, 9, 9, 9], [1756036800000, 5, 6, 7]]
    assert wh.upsert_history(CHART_TABLE, PID, transform.chart_rows(PID, "all", rerun)) == 3
    wh.upsert_history(CHART_TABLE, PID, transform.chart_rows(PID, "24h", rerun[:1]))
    after = wh.fetch_table(CHART_TABLE)
    assert [(row[1], row[2], row[3]) for row in after] == [
        ("24h", "2025-08-22T12:00:00+00:00", Decimal(TINY)),
        ("all", "2025-08-22T12:00:00+00:00", Decimal(TINY)),
        ("all", "2025-08-23T12:00:00+00:00", Decimal(9)),
        ("all", "2025-08-24T12:00:00+00:00", Decimal(5)),
    ]
    assert after[1][-1] == loaded["2025-08-22T12:00:00+00:00"]


def test_a_failing_stream_or_a_repeated_key_changes_nothing(wh: CoinStatsWarehouse) -> None:
    wh.upsert_history(CHART_TABLE, PID, transform.chart_rows(PID, "1m", [[1755864000, 1, 1, 1]]))

    def broken() -> Any:
        yield from transform.chart_rows(PID, "1m", [[1755950400, 2, 2, 2]])
        raise RuntimeError("network gone")

    with pytest.raises(RuntimeError):
        wh.upsert_history(CHART_TABLE, PID, broken())
    row = {"portfolio_id": PID, "chart_type": "1m", "ts": "2025-08-22T12:00:00+00:00", "value_usd": 3}
    with pytest.raises(ValueError) as info:
        wh.upsert_history(CHART_TABLE, PID, [row, row])
    assert str(info.value) == (
        f"the {CHART_TABLE} rows of portfolio {PID} repeat 1 key(s) (portfolio_id, chart_type, ts); each key may "
        "appear once per load. Nothing was changed."
    )
    assert [r[3] for r in wh.fetch_table(CHART_TABLE)] == [Decimal(1)]
    with pytest.raises(ValueError, match="upsert_history supports"):
        wh.upsert_history(DEFI_TABLE, PID, [])


def test_defi_positions_are_replaced_per_day(wh: CoinStatsWarehouse) -> None:
    asset = {"address": "0x1", "title": "Deposit\x00", "amount": TINY, "symbol": "U\ud800SDC", "price": {"USD": 2}}
    defi = {
        "protocols": [{"id": "lido", "chain": "ethereum", "investments": [{"id": "staked", "assets": [asset] * 2}]}]
    }
    assert wh.replace_snapshot(DEFI_TABLE, PID, DAY, transform.defi_rows(PID, DAY, defi)) == 2
    stored = wh.fetch_table(DEFI_TABLE, exclude=("loaded_at",))
    assert [row[4] for row in stored] == [0, 1]  # asset_index
    assert stored[0][15] == "Deposit"  # NUL removed
    assert stored[0][17] == "U\ufffdSDC"  # lone surrogate replaced
    assert stored[0][-2] == Decimal(TINY) * 2
    assert wh.replace_snapshot(DEFI_TABLE, PID, DAY, transform.defi_rows(PID, DAY, {"protocols": []})) == 0
    assert wh.fetch_table(DEFI_TABLE) == []


def test_snapshots_upsert_by_instant_with_balances_as_json(wh: CoinStatsWarehouse, backend: Backend) -> None:
    balances = [
        {
            "symbol": "BTC",
            "icon": "i",
            "quantity": TINY,
            "balance": 1,
            "quantityChange": 0,
            "balanceChange": 0,
            "pricePerUnit": 0,
            "pricePercentChange": 0,
        }
    ]
    item = {
        "date": "2026-02-27T10:00:00.000Z",
        "coinBalances": balances,
        "totalBalance": TINY,
        "totalBalanceChange": 0,
        "totalBalancePercentChange": 0,
    }
    wh.upsert_history(SNAPSHOTS_TABLE, PID, transform.snapshot_rows(PID, [item]))
    wh.upsert_history(SNAPSHOTS_TABLE, PID, transform.snapshot_rows(PID, [{**item, "totalBalance": 5}]))
    (row,) = wh.fetch_table(SNAPSHOTS_TABLE, exclude=("loaded_at",))
    assert row[:3] == (PID, "2026-02-27T10:00:00+00:00", Decimal(5))
    assert row[5] == 1
    assert TINY in row[6]  # the balances keep every digit
    # The JSON column is queryable with the database's own JSON functions.
    with wh._connection() as conn:
        cur = conn.cursor()
        if backend.kind == "sqlite":
            cur.execute(f"SELECT j.value ->> 'symbol' FROM {SNAPSHOTS_TABLE}, json_each(coin_balances_json) AS j")  # noqa: S608
        else:
            cur.execute(
                f"SELECT j ->> 'symbol' FROM {SNAPSHOTS_TABLE}, jsonb_array_elements(coin_balances_json::jsonb) AS j"  # noqa: S608
            )
        assert cur.fetchall() == [("BTC",)]
        cur.close()
