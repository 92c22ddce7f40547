"""Tests for the pure CoinStats -> warehouse row transformations."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from itertools import chain, islice
from typing import Any

import pytest

from coinstats_provider.transform import (
    TransactionKeyer,
    canonical_json,
    coin_rows,
    transaction_identity,
    transaction_rows,
    value_row,
)

PORTFOLIO = "pf-1"
DAY = date(2025, 3, 14)
SECRET_MARKER = "do-not-leak-7f3a"


def tx(i: int, *, day_offset: int | None = None, profit: float = 1.5, **overrides: Any) -> dict[str, Any]:
    """A realistic ``TransactionItemDto``; ``i`` drives the content, ``profit`` the market fields."""
    when = datetime(2024, 1, 1) + timedelta(minutes=i if day_offset is None else day_offset)
    item: dict[str, Any] = {
        "transactionType": "Buy" if i % 2 else "Sell",
        "date": when.isoformat() + ".000Z",
        "coinData": {
            "identifier": f"coin-{i % 7}",
            "count": 1.0 + i,
            "symbol": f"C{i % 7}",
            "totalWorth": 10.0 * i,
            "currentValue": 20.0 * i * profit,
        },
        "profitLoss": {"profit": profit * i, "profitPercent": profit, "currentValue": 3.0 * profit},
        "fee": {"coin": {"identifier": "tether", "price": profit}, "count": 0.1, "totalWorth": 0.1},
        "transfers": [],
        "portfolioInfo": {"name": "KuCoin Spot", "icon": "https://x/icon.png"},
    }
    item.update(overrides)
    return item


def keys_of(items: list[dict[str, Any]], keyer: TransactionKeyer | None = None) -> list[str]:
    keyer = keyer or TransactionKeyer()
    return [row["transaction_key"] for row in transaction_rows(PORTFOLIO, items, keyer)]


# -- value_row ---------------------------------------------------------------------------------


def test_value_row_maps_every_field_and_tolerates_missing_ones() -> None:
    full = {
        "totalValue": 12500.75,
        "defiValue": 2500.25,
        "totalCost": 10000.5,
        "unrealizedProfitLoss": 1250.75,
        "unrealizedProfitLossPercent": 12.5,
        "realizedProfitLoss": "500.25",
        "realizedProfitLossPercent": 5,
        "allTimeProfitLoss": 1751,
        "allTimeProfitLossPercent": 17.5,
    }
    row = value_row(PORTFOLIO, DAY, "USD", full)
    assert row == {
        "portfolio_id": PORTFOLIO,
        "snapshot_date": "2025-03-14",
        "currency": "USD",
        "total_value": 12500.75,
        "defi_value": 2500.25,
        "total_cost": 10000.5,
        "unrealized_profit_loss": 1250.75,
        "unrealized_profit_loss_percent": 12.5,
        "realized_profit_loss": 500.25,
        "realized_profit_loss_percent": 5.0,
        "all_time_profit_loss": 1751.0,
        "all_time_profit_loss_percent": 17.5,
    }
    assert all(type(v) is float for k, v in row.items() if k not in {"portfolio_id", "snapshot_date", "currency"})

    sparse = value_row(PORTFOLIO, DAY, "EUR", {"unrealizedProfitLossPercent": 1})
    assert sparse["currency"] == "EUR"
    assert sparse["unrealized_profit_loss_percent"] == 1.0
    assert sparse["total_value"] is None
    assert sparse["all_time_profit_loss"] is None


def test_value_row_rejects_non_numbers_naming_the_field() -> None:
    with pytest.raises(ValueError, match="totalValue") as info:
        value_row(PORTFOLIO, DAY, "USD", {"totalValue": SECRET_MARKER})
    assert SECRET_MARKER not in str(info.value)


# -- coin_rows ---------------------------------------------------------------------------------


def coin_item(i: int) -> dict[str, Any]:
    return {
        "count": 2.0 + i,
        "coin": {"identifier": f"coin-{i}", "symbol": f"C{i}", "name": f"Coin {i}", "isFiat": i == 0},
        "price": {"USD": 3.0 * (i + 1), "BTC": 0.001 * (i + 1), "ETH": 0.01},
        "profit": {"allTime": {"USD": 4.5 * i, "BTC": 0.0}},
        "profitPercent": {"allTime": {"USD": 1.25 * i}},
    }


def test_coin_rows_maps_fields_and_computes_value() -> None:
    rows = list(coin_rows(PORTFOLIO, DAY, [coin_item(0), coin_item(2)]))
    assert rows == [
        {
            "portfolio_id": PORTFOLIO,
            "snapshot_date": "2025-03-14",
            "coin_id": "coin-0",
            "symbol": "C0",
            "name": "Coin 0",
            "is_fiat": 1,
            "amount": 2.0,
            "price_usd": 3.0,
            "price_btc": 0.001,
            "value_usd": 6.0,
            "profit_all_time_usd": 0.0,
            "profit_percent_all_time_usd": 0.0,
        },
        {
            "portfolio_id": PORTFOLIO,
            "snapshot_date": "2025-03-14",
            "coin_id": "coin-2",
            "symbol": "C2",
            "name": "Coin 2",
            "is_fiat": 0,
            "amount": 4.0,
            "price_usd": 9.0,
            "price_btc": 0.003,
            "value_usd": 36.0,
            "profit_all_time_usd": 9.0,
            "profit_percent_all_time_usd": 2.5,
        },
    ]


def test_coin_rows_tolerates_missing_optional_fields() -> None:
    (row,) = coin_rows(PORTFOLIO, DAY, [{"coin": {"identifier": "bitcoin"}, "count": 3}])
    assert row["coin_id"] == "bitcoin"
    assert row["amount"] == 3.0
    missing = ("price_usd", "value_usd", "symbol", "name", "is_fiat", "price_btc", "profit_all_time_usd")
    assert [row[c] for c in missing] == [None] * len(missing)


@pytest.mark.parametrize(
    "bad",
    [
        {"count": 1, "note": SECRET_MARKER},
        {"coin": {"symbol": "BTC", "name": SECRET_MARKER}},
        {"coin": {"identifier": ""}, "note": SECRET_MARKER},
        {"coin": SECRET_MARKER},
    ],
)
def test_coin_rows_malformed_item_raises_without_dumping_it(bad: dict[str, Any]) -> None:
    rows = coin_rows(PORTFOLIO, DAY, [coin_item(1), bad, coin_item(3)])
    assert next(rows)["coin_id"] == "coin-1"  # lazy: earlier items are still produced
    with pytest.raises(ValueError, match=r"item #1 has no coin\.identifier") as info:
        next(rows)
    assert SECRET_MARKER not in str(info.value)


def test_coin_rows_rejects_non_numeric_field_and_duplicate_coins() -> None:
    broken = coin_item(1) | {"count": "lots"}
    with pytest.raises(ValueError, match=r"item #0: field 'count' is not a number"):
        list(coin_rows(PORTFOLIO, DAY, [broken]))
    with pytest.raises(ValueError, match="item #2 repeats coin 'coin-1'"):
        list(coin_rows(PORTFOLIO, DAY, [coin_item(1), coin_item(2), coin_item(1)]))


# -- transaction_rows ------------------------------------------------------------------------


def test_transaction_rows_maps_columns_and_keeps_canonical_payload() -> None:
    item = tx(3)
    (row,) = transaction_rows(PORTFOLIO, [item], TransactionKeyer())
    assert row["portfolio_id"] == PORTFOLIO
    assert row["transaction_type"] == "Buy"
    assert row["occurred_at"] == "2024-01-01T00:03:00.000Z"
    assert (row["coin_id"], row["symbol"], row["amount"], row["total_worth_usd"]) == (
        "coin-3",
        "C3",
        4.0,
        30.0,
    )
    assert (row["fee_amount"], row["fee_coin_id"], row["profit_usd"]) == (0.1, "tether", 4.5)
    assert row["portfolio_name"] == "KuCoin Spot"
    assert row["payload_json"] == json.dumps(item, sort_keys=True, separators=(",", ":"))
    assert json.loads(row["payload_json"]) == item
    assert row["transaction_key"].endswith("-0")
    assert len(row["transaction_key"]) == 66


def test_transaction_rows_tolerates_missing_optional_fields() -> None:
    minimal = {"transactionType": "Received", "date": "2024-05-01T00:00:00.000Z", "profitLoss": {}, "fee": {}}
    (row,) = transaction_rows(PORTFOLIO, [minimal], TransactionKeyer())
    missing = (
        "coin_id",
        "symbol",
        "amount",
        "total_worth_usd",
        "fee_coin_id",
        "profit_usd",
        "portfolio_name",
    )
    assert [row[c] for c in missing] == [None] * len(missing)
    assert row["occurred_at"] == "2024-05-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not-an-object", r"item #1: not an object \(got str\)"),
        ({"date": "2024-01-01", "coinData": {"count": SECRET_MARKER}}, r"item #1: field 'coinData\.count'"),
        (
            {"date": "2024-01-01", "blob": {1, 2}, "note": SECRET_MARKER},
            r"item #1: value is not JSON-serialisable",
        ),
    ],
)
def test_transaction_rows_malformed_item_raises_without_dumping_it(bad: Any, message: str) -> None:
    rows = transaction_rows(PORTFOLIO, [tx(0), bad], TransactionKeyer())
    next(rows)
    with pytest.raises(ValueError, match=message) as info:
        next(rows)
    assert SECRET_MARKER not in str(info.value)


# -- TransactionKeyer --------------------------------------------------------------------------


def stream(n: int) -> list[dict[str, Any]]:
    """``n`` transactions where every 4th is an exact copy of its predecessor."""
    return [tx(i - 1 if i % 4 == 3 else i) for i in range(n)]


def test_keys_are_stable_across_runs() -> None:
    items = stream(60)
    first, second = keys_of(items), keys_of(json.loads(json.dumps(items)))
    assert first == second
    assert len(set(first)) == len(first) == 60


@pytest.mark.parametrize("page_sizes", [[1], [7], [20, 1, 39], [59, 1]])
def test_keys_are_stable_across_page_boundaries(page_sizes: list[int]) -> None:
    items = stream(60)
    expected = keys_of(items)
    keyer = TransactionKeyer()  # one keyer for the run, one transaction_rows call per page
    it = iter(items)
    got: list[str] = []
    sizes = chain(page_sizes, iter(lambda: page_sizes[-1], None))
    while page := list(islice(it, next(sizes))):
        got.extend(row["transaction_key"] for row in transaction_rows(PORTFOLIO, page, keyer))
    assert got == expected


def test_identical_transactions_get_distinct_keys_and_reruns_reproduce_them() -> None:
    twin = tx(5)
    items = [tx(1), dict(twin), tx(2), dict(twin), dict(twin), tx(3)]
    keys = keys_of(items)
    twin_keys = [keys[1], keys[3], keys[4]]
    digest = keys[1].rsplit("-", 1)[0]
    assert twin_keys == [f"{digest}-0", f"{digest}-1", f"{digest}-2"]
    assert len(set(keys)) == 6
    assert keys_of(items) == keys  # rerun
    # one more identical transaction adds exactly one new key; nothing else changes
    more = keys_of([*items, dict(twin)])
    assert more[:6] == keys
    assert more[6] == f"{digest}-3"


def test_reordered_stream_yields_the_same_key_set() -> None:
    items = stream(40)
    assert set(keys_of(list(reversed(items)))) == set(keys_of(items))


def test_market_dependent_fields_do_not_change_the_key() -> None:
    base = keys_of([tx(9, profit=1.0)])[0]
    repriced = tx(9, profit=7.0, portfolioInfo={"name": "Renamed", "icon": "other"})
    assert keys_of([repriced])[0] == base
    assert transaction_identity(repriced) == transaction_identity(tx(9, profit=1.0))
    changed_amount = tx(9, profit=1.0)
    changed_amount["coinData"]["count"] = 999.0
    assert keys_of([changed_amount])[0] != base
    assert (
        keys_of([tx(9)], TransactionKeyer(hash_full_item=True))[0]
        != keys_of([tx(9, profit=2.0)], TransactionKeyer(hash_full_item=True))[0]
    )
    other_portfolio = next(transaction_rows("pf-2", [tx(9, profit=1.0)], TransactionKeyer()))
    assert other_portfolio["transaction_key"] != base


def test_key_is_sha256_of_portfolio_and_canonical_identity() -> None:
    import hashlib

    item = tx(4)
    expected = hashlib.sha256(canonical_json([PORTFOLIO, transaction_identity(item)]).encode()).hexdigest()
    assert TransactionKeyer().key(PORTFOLIO, item) == f"{expected}-0"


def test_keyer_memory_stays_bounded_over_a_long_stream() -> None:
    keyer = TransactionKeyer(max_dates=4096)
    start = datetime(2020, 1, 1)
    seen_keys = 0
    peak_dates = peak_hashes = 0
    for i in range(200_000):
        # two distinct transactions per timestamp plus an identical twin every 50 rows
        n = i - 1 if i % 50 == 49 else i
        item = {"transactionType": "Buy", "date": (start + timedelta(seconds=n // 2)).isoformat(), "n": n}
        key = keyer.key(PORTFOLIO, item)
        seen_keys += 1
        if i % 50 == 49:
            assert key.endswith("-1")
        if i % 1000 == 0:
            peak_dates = max(peak_dates, keyer.tracked_dates)
            peak_hashes = max(peak_hashes, keyer.tracked_hashes)
    assert seen_keys == 200_000
    assert keyer.tracked_dates == 4096
    assert peak_dates <= 4096
    assert peak_hashes <= 2 * 4096


def test_keyer_documented_window_limit() -> None:
    keyer = TransactionKeyer(max_dates=2)
    twin = tx(1, day_offset=0)
    assert keyer.key(PORTFOLIO, twin).endswith("-0")
    assert keyer.key(PORTFOLIO, twin).endswith("-1")
    keyer.key(PORTFOLIO, tx(2, day_offset=1))
    keyer.key(PORTFOLIO, tx(3, day_offset=2))  # evicts the first date
    assert keyer.tracked_dates == 2
    # a date that has left the window restarts its ordinals (see the class docstring)
    assert keyer.key(PORTFOLIO, twin).endswith("-0")


def test_keyer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_dates"):
        TransactionKeyer(max_dates=0)
    with pytest.raises(ValueError, match="not an object"):
        TransactionKeyer().key(PORTFOLIO, ["x"])  # type: ignore[arg-type]
