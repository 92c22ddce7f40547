"""Tests for the pure CoinStats -> warehouse row transformations."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import chain, islice
from typing import Any

import pytest

from coinstats_provider.warehouse.transform import (
    InvalidItemError,
    TransactionKeyer,
    canonical_json,
    clean_text,
    coin_rows,
    exact_number,
    transaction_identity,
    transaction_rows,
    value_row,
)

PORTFOLIO = "pf-1"
DAY = date(2025, 3, 14)
SECRET_MARKER = "do-not-leak-7f3a"
#: 18 decimals: a float keeps only ~17 significant digits of it.
TOKEN_AMOUNT = Decimal("1234.123456789012345678")


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


def swap(**overrides: Any) -> dict[str, Any]:
    """A transaction with transfers (no CoinStats ids)."""
    item = tx(
        3,
        transactionType="Swap",
        transfers=[
            {
                "transferType": "Sent",
                "items": [
                    {
                        "coin": {"identifier": "ethereum", "price": 3000},
                        "count": Decimal("-1.5"),
                        "fromAddress": "0xaaa",
                        "toAddress": "0xbbb",
                        "totalWorth": 4500,
                        "price": 3000,
                    }
                ],
            },
            {
                "transferType": "Received",
                "items": [{"coin": {"identifier": "tether"}, "count": Decimal("4500.25"), "totalWorth": 4500.25}],
            },
        ],
    )
    item.update(overrides)
    return item


def keys_of(items: list[dict[str, Any]], keyer: TransactionKeyer | None = None) -> list[str]:
    keyer = keyer or TransactionKeyer()
    return [row["transaction_key"] for row in transaction_rows(PORTFOLIO, items, keyer)]


def key_of(item: dict[str, Any]) -> str:
    return keys_of([item])[0]


# -- exact numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TOKEN_AMOUNT, TOKEN_AMOUNT),
        (Decimal("1.10"), Decimal("1.10")),
        (5, Decimal(5)),
        (10**30, Decimal(10**30)),
        (0.1, Decimal("0.1")),  # a float is taken at its shortest repr, not its binary expansion
        (" 500.25 ", Decimal("500.25")),
        ("-1e-7", Decimal("-1E-7")),
        (None, None),
    ],
)
def test_exact_number_keeps_every_digit(value: Any, expected: Decimal | None) -> None:
    got = exact_number(value, "f")
    assert got == expected
    if expected is not None:
        assert str(got) == str(expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("NaN", "is not a number"),
        ("Infinity", "is not a number"),
        ("inf", "is not a number"),
        ("1_000", "is not a number"),
        ("", "is not a number"),
        (SECRET_MARKER, "is not a number"),
        (Decimal("NaN"), "is not a finite number"),
        (Decimal("-Infinity"), "is not a finite number"),
        (float("inf"), "is not a finite number"),  # e.g. 1e400 decoded as float
        (float("nan"), "is not a finite number"),
        (True, "is a boolean"),
        (False, "is a boolean"),
        ([1], "is not a number"),
        (Decimal("1e1000"), "is out of range"),
        (Decimal("1e-1001"), "is out of range"),
    ],
)
def test_exact_number_rejects_bad_numbers_naming_only_the_field(value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=rf"field 'coinData\.count' {reason}") as info:
        exact_number(value, "coinData.count")
    assert SECRET_MARKER not in str(info.value)


def test_clean_text_strips_nul_and_replaces_lone_surrogates() -> None:
    assert clean_text("a\x00b") == "ab"
    assert clean_text("x\ud800y\udfffz") == "x\ufffdy\ufffdz"
    assert clean_text("ok 😀 ü") == "ok 😀 ü"
    clean_text("x\ud800").encode("utf-8")  # encodable now


# -- canonical_json ----------------------------------------------------------------------------


def test_canonical_json_is_deterministic_and_exact() -> None:
    value = {"b": [1, Decimal("0.123456789012345678"), Decimal("1E+2"), 2.5, None, True], "a": {"y": "é", "x": "-"}}
    reordered = {"a": {"x": "-", "y": "é"}, "b": value["b"]}
    text = canonical_json(value)
    assert text == canonical_json(reordered)
    assert text == '{"a":{"x":"-","y":"\\u00e9"},"b":[1,0.123456789012345678,1E+2,2.5,null,true]}'
    assert json.loads(text, parse_float=Decimal)["b"][1] == Decimal("0.123456789012345678")
    plain = {"k": [1.5, "s", {"z": 0, "a": False}]}
    assert canonical_json(plain) == json.dumps(plain, sort_keys=True, separators=(",", ":"))


def test_canonical_json_sanitises_text_and_keys() -> None:
    text = canonical_json({"no\x00te": "a\x00b\ud83d"})
    assert text == '{"note":"ab\\ufffd"}'
    assert "\\u0000" not in text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": {"b": [1, Decimal("NaN")]}}, r"'a\.b\[1\]' is not a finite number"),
        ({"a": float("inf")}, r"'a' is not a finite number"),
        ({"a": {1, 2}}, r"'a' is not JSON-serialisable \(got set\)"),
        ({1: "x"}, r"'value' has a int key"),
    ],
)
def test_canonical_json_rejects_non_json_naming_the_path(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        canonical_json(value)


# -- value_row ---------------------------------------------------------------------------------


def test_value_row_maps_every_field_exactly_and_tolerates_missing_ones() -> None:
    full = {
        "totalValue": Decimal("12500.750000000000000001"),
        "defiValue": Decimal("2500.25"),
        "totalCost": 10000.5,
        "unrealizedProfitLoss": Decimal("1250.75"),
        "unrealizedProfitLossPercent": Decimal("12.5"),
        "realizedProfitLoss": "500.25",
        "realizedProfitLossPercent": 5,
        "allTimeProfitLoss": 1751,
        "allTimeProfitLossPercent": Decimal("17.5"),
    }
    row = value_row(PORTFOLIO, DAY, "USD", full)
    assert row == {
        "portfolio_id": PORTFOLIO,
        "snapshot_date": "2025-03-14",
        "currency": "USD",
        "total_value": Decimal("12500.750000000000000001"),
        "defi_value": Decimal("2500.25"),
        "total_cost": Decimal("10000.5"),
        "unrealized_profit_loss": Decimal("1250.75"),
        "unrealized_profit_loss_percent": Decimal("12.5"),
        "realized_profit_loss": Decimal("500.25"),
        "realized_profit_loss_percent": Decimal(5),
        "all_time_profit_loss": Decimal(1751),
        "all_time_profit_loss_percent": Decimal("17.5"),
    }
    assert all(type(v) is Decimal for k, v in row.items() if k not in {"portfolio_id", "snapshot_date", "currency"})

    sparse = value_row(PORTFOLIO, DAY, "EUR", {"unrealizedProfitLossPercent": 1})
    assert sparse["currency"] == "EUR"
    assert sparse["unrealized_profit_loss_percent"] == 1
    assert sparse["total_value"] is None
    assert sparse["all_time_profit_loss"] is None


@pytest.mark.parametrize("bad", [SECRET_MARKER, "NaN", Decimal("Infinity"), float("inf"), True])
def test_value_row_rejects_bad_numbers_naming_the_field(bad: Any) -> None:
    with pytest.raises(InvalidItemError, match=r"portfolio value response: field 'totalValue'") as info:
        value_row(PORTFOLIO, DAY, "USD", {"totalValue": bad})
    assert SECRET_MARKER not in str(info.value)
    assert (info.value.dataset, info.value.index, info.value.field) == ("portfolio value", None, "totalValue")
    with pytest.raises(InvalidItemError, match="response: field 'response' is not an object"):
        value_row(PORTFOLIO, DAY, "USD", [SECRET_MARKER])  # type: ignore[arg-type]


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
            "amount": Decimal("2.0"),
            "price_usd": Decimal("3.0"),
            "price_btc": Decimal("0.001"),
            "value_usd": Decimal("6.0"),
            "profit_all_time_usd": Decimal("0.0"),
            "profit_percent_all_time_usd": Decimal("0.0"),
        },
        {
            "portfolio_id": PORTFOLIO,
            "snapshot_date": "2025-03-14",
            "coin_id": "coin-2",
            "symbol": "C2",
            "name": "Coin 2",
            "is_fiat": 0,
            "amount": Decimal("4.0"),
            "price_usd": Decimal("9.0"),
            "price_btc": Decimal("0.003"),
            "value_usd": Decimal("36.0"),
            "profit_all_time_usd": Decimal("9.0"),
            "profit_percent_all_time_usd": Decimal("2.5"),
        },
    ]


def test_coin_value_is_the_exact_product_of_long_decimals() -> None:
    price = Decimal("0.000012345678901234567891")
    item = {"coin": {"identifier": "pepe"}, "count": TOKEN_AMOUNT, "price": {"USD": price}}
    (row,) = coin_rows(PORTFOLIO, DAY, [item])
    assert row["amount"] == TOKEN_AMOUNT
    # 22 + 24 significant digits: the default 28-digit context would round this product
    assert row["value_usd"] == Decimal("0.015236091921998780661158031397776651425098")
    assert row["value_usd"] != TOKEN_AMOUNT * price


def test_coin_rows_tolerates_missing_optional_fields() -> None:
    (row,) = coin_rows(PORTFOLIO, DAY, [{"coin": {"identifier": "bitcoin"}, "count": 3}])
    assert row["coin_id"] == "bitcoin"
    assert row["amount"] == Decimal(3)
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
    with pytest.raises(InvalidItemError, match=r"portfolio coins item #1: field 'coin\.identifier' is missing") as info:
        next(rows)
    assert SECRET_MARKER not in str(info.value)


def test_coin_rows_rejects_bad_numbers_and_duplicate_coins() -> None:
    for broken in (coin_item(1) | {"count": "lots"}, coin_item(1) | {"count": Decimal("NaN")}):
        with pytest.raises(InvalidItemError, match=r"coins item #0: field 'count' is not a"):
            list(coin_rows(PORTFOLIO, DAY, [broken]))
    with pytest.raises(InvalidItemError, match=r"item #0: field 'price\.USD' is a boolean"):
        list(coin_rows(PORTFOLIO, DAY, [coin_item(1) | {"price": {"USD": True}}]))
    with pytest.raises(InvalidItemError, match=r"item #2: field 'coin\.identifier' repeats a coin") as info:
        list(coin_rows(PORTFOLIO, DAY, [coin_item(1), coin_item(2), coin_item(1)]))
    assert "coin-1" not in str(info.value)


def test_coin_rows_sanitise_text() -> None:
    item = coin_item(1)
    item["coin"] |= {"identifier": "co\x00in", "name": "Bad\ud800Name", "symbol": "S\x00"}
    (row,) = coin_rows(PORTFOLIO, DAY, [item])
    assert (row["coin_id"], row["name"], row["symbol"]) == ("coin", "Bad\ufffdName", "S")


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
        Decimal("4.0"),
        Decimal("30.0"),
    )
    assert (row["fee_amount"], row["fee_coin_id"], row["profit_usd"]) == (Decimal("0.1"), "tether", Decimal("4.5"))
    assert row["portfolio_name"] == "KuCoin Spot"
    assert row["payload_json"] == json.dumps(item, sort_keys=True, separators=(",", ":"))
    assert json.loads(row["payload_json"]) == item
    assert row["transaction_key"].endswith("-0")
    assert len(row["transaction_key"]) == 66


def test_transaction_rows_keep_18_decimal_amounts_exactly() -> None:
    item = tx(3, coinData={"identifier": "pepe", "count": TOKEN_AMOUNT, "totalWorth": Decimal("0.000000000000000001")})
    (row,) = transaction_rows(PORTFOLIO, [item])
    assert str(row["amount"]) == "1234.123456789012345678"
    assert row["total_worth_usd"] == Decimal("1E-18")
    assert '"count":1234.123456789012345678' in row["payload_json"]
    assert json.loads(row["payload_json"], parse_float=Decimal)["coinData"]["count"] == TOKEN_AMOUNT


def test_transaction_rows_sanitise_text_columns_and_payload() -> None:
    item = tx(3, note="line\x00two \ud83d", portfolioInfo={"name": "Kraken\x00 \udc00"})
    (row,) = transaction_rows(PORTFOLIO, [item])
    assert row["portfolio_name"] == "Kraken \ufffd"
    payload = json.loads(row["payload_json"])
    assert payload["note"] == "linetwo \ufffd"
    assert "\\u0000" not in row["payload_json"]
    row["payload_json"].encode("utf-8")


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
        ("not-an-object", r"item #1: field 'item' is not an object \(got str\)"),
        (
            {"date": "2024-01-01", "coinData": {"count": SECRET_MARKER}},
            r"item #1: field 'coinData\.count' is not a number",
        ),
        ({"date": "2024-01-01", "coinData": {"count": "NaN"}}, r"item #1: field 'coinData\.count' is not a number"),
        (
            {"date": "2024-01-01", "coinData": {"totalWorth": Decimal("Infinity")}},
            r"item #1: field 'coinData\.totalWorth' is not a finite",
        ),
        ({"date": "2024-01-01", "fee": {"count": float("inf")}}, r"item #1: field 'fee\.count' is not a finite number"),
        ({"date": "2024-01-01", "profitLoss": {"profit": True}}, r"item #1: field 'profitLoss\.profit' is a boolean"),
        (
            {"date": "2024-01-01", "transfers": [{"items": [{"count": "NaN"}]}], "note": SECRET_MARKER},
            r"item #1: field 'transfers\[0\]\.items\[0\]\.count' is not a number",
        ),
        (
            {"date": "2024-01-01", "blob": {1, 2}, "note": SECRET_MARKER},
            r"item #1: field 'payload\.blob' is not JSON-serialisable",
        ),
        (
            {"date": "2024-01-01", "profitLoss": {"profitPercent": float("nan")}},
            r"item #1: field 'payload\.profitLoss\.profitPercent' is not a finite number",
        ),
        ({"date": "2024-01-01", "coinData": {"symbol": 7}}, r"item #1: field 'coinData\.symbol' is not a string"),
    ],
)
def test_transaction_rows_malformed_item_raises_without_dumping_it(bad: Any, message: str) -> None:
    rows = transaction_rows(PORTFOLIO, [tx(0), bad], TransactionKeyer())
    next(rows)
    with pytest.raises(InvalidItemError, match=rf"^portfolio transactions {message}") as info:
        next(rows)
    assert SECRET_MARKER not in str(info.value)
    assert info.value.index == 1


# -- keys ----------------------------------------------------------------------------------------


def stream(n: int) -> list[dict[str, Any]]:
    """``n`` transactions where every 4th is an exact copy of its predecessor."""
    return [tx(i - 1 if i % 4 == 3 else i) for i in range(n)]


def test_keys_are_stable_across_runs() -> None:
    items = stream(60)
    first, second = keys_of(items), keys_of(json.loads(json.dumps(items), parse_float=Decimal))
    assert first == second  # floats and their Decimal decoding give the same keys
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


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda t: t.update(note="bought the dip"), id="note"),
        pytest.param(lambda t: t.update(labels=["tax", "2024"]), id="labels"),
        pytest.param(lambda t: t.update(portfolioInfo={"name": "Renamed", "icon": "other"}), id="portfolioInfo"),
        pytest.param(lambda t: t.update(profitLoss={"profit": 99, "profitPercent": 7, "currentValue": 1}), id="pnl"),
        pytest.param(lambda t: t["coinData"].update(currentValue=123456, totalWorth=1, symbol="NEW"), id="coinData"),
        pytest.param(lambda t: t["fee"].update(totalWorth=5, price=9, coin={"identifier": "tether", "x": 1}), id="fee"),
        pytest.param(lambda t: t["transfers"][0]["items"][0].update(totalWorth=1, price=2), id="transfer-worth"),
        pytest.param(lambda t: t["transfers"][0]["items"][0]["coin"].update(price=1, name="Ether"), id="coin-obj"),
        pytest.param(lambda t: t["coinData"].update(count=Decimal("4.00")), id="same-number-other-text"),
        pytest.param(lambda t: t.update(unknownNewField={"anything": 1}), id="unknown-field"),
    ],
)
def test_non_identifying_edits_keep_the_key(edit: Any) -> None:
    base = swap()
    edited = copy.deepcopy(base)
    edit(edited)
    assert key_of(edited) == key_of(base)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda t: t.update(transactionType="Buy"), id="type"),
        pytest.param(lambda t: t.update(date="2024-02-02T00:00:00.000Z"), id="date"),
        pytest.param(lambda t: t["coinData"].update(identifier="other"), id="coin"),
        pytest.param(lambda t: t["coinData"].update(count=999), id="count"),
        pytest.param(lambda t: t["fee"].update(count=0.2), id="fee-count"),
        pytest.param(lambda t: t["fee"].update(coin={"identifier": "bnb"}), id="fee-coin"),
        pytest.param(lambda t: t["transfers"][0].update(transferType="Received"), id="transfer-type"),
        pytest.param(lambda t: t["transfers"][0]["items"][0].update(count=Decimal("-1.6")), id="transfer-count"),
        pytest.param(lambda t: t["transfers"][0]["items"][0].update(toAddress="0xccc"), id="to-address"),
        pytest.param(lambda t: t["transfers"][0]["items"][0].update(fromAddress="0xddd"), id="from-address"),
        pytest.param(lambda t: t["transfers"][1]["items"][0].update(coin={"identifier": "usdc"}), id="transfer-coin"),
    ],
)
def test_identifying_edits_change_the_key(edit: Any) -> None:
    base = swap()
    edited = copy.deepcopy(base)
    edit(edited)
    assert key_of(edited) != key_of(base)


def test_coinstats_ids_win_over_content() -> None:
    with_hash = swap(hash={"id": "0xfeed", "explorerUrl": "https://x"})
    # the same hash id identifies the transaction even when its content changes
    moved = swap(hash={"id": "0xfeed"}, date="2030-01-01T00:00:00.000Z", coinData={"count": 1})
    assert key_of(moved) == key_of(with_hash) != key_of(swap())
    assert transaction_identity(with_hash) == ["hash", "0xfeed"]

    exchange_tx: dict[str, Any] = {
        "type": "Sent",
        "date": "2024-01-01T00:00:00.000Z",
        "transactions": [
            {"action": "Sent", "items": [{"id": "b-2", "count": 1}, {"id": "a-1", "count": 2}]},
        ],
    }
    assert transaction_identity(exchange_tx) == ["items", ["a-1", "b-2"]]
    relabelled = copy.deepcopy(exchange_tx)
    relabelled["transactions"][0]["items"].reverse()
    relabelled["transactions"][0]["items"][0]["count"] = 5
    assert key_of(relabelled) == key_of(exchange_tx)
    assert key_of(exchange_tx | {"hash": {"id": None}}) == key_of(exchange_tx)


def test_key_is_sha256_of_portfolio_and_identity() -> None:
    item = tx(4)
    expected = hashlib.sha256(canonical_json([PORTFOLIO, transaction_identity(item)]).encode()).hexdigest()
    assert TransactionKeyer().key(PORTFOLIO, item) == f"{expected}-0"
    other_portfolio = next(transaction_rows("pf-2", [item]))
    assert other_portfolio["transaction_key"] != f"{expected}-0"


def test_keyer_memory_stays_bounded_over_a_long_stream() -> None:
    keyer = TransactionKeyer(max_dates=100)
    start = datetime(2020, 1, 1)
    for i in range(20_000):
        # two distinct transactions per timestamp plus an identical twin every 50 rows
        n = i - 1 if i % 50 == 49 else i
        item = {
            "transactionType": "Buy",
            "date": (start + timedelta(seconds=n // 2)).isoformat(),
            "coinData": {"count": n},
        }
        key = keyer.key(PORTFOLIO, item)
        assert key.endswith("-1" if i % 50 == 49 else "-0")
        assert len(keyer._counts) <= 100
    assert sum(len(counts) for counts in keyer._counts.values()) <= 2 * 100


def test_keyer_documented_window_limit() -> None:
    keyer = TransactionKeyer(max_dates=2)
    twin = tx(1, day_offset=0)
    assert keyer.key(PORTFOLIO, twin).endswith("-0")
    assert keyer.key(PORTFOLIO, twin).endswith("-1")
    keyer.key(PORTFOLIO, tx(2, day_offset=1))
    keyer.key(PORTFOLIO, tx(3, day_offset=2))  # evicts the first date
    # a date that has left the window restarts its ordinals (see the class docstring)
    assert keyer.key(PORTFOLIO, twin).endswith("-0")


def test_keyer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_dates"):
        TransactionKeyer(max_dates=0)
    with pytest.raises(ValueError, match="not an object"):
        TransactionKeyer().key(PORTFOLIO, ["x"])  # type: ignore[arg-type]


def test_item_ids_under_transfers_identify_a_portfolio_transaction() -> None:
    # Portfolio transactions list their movements under "transfers", exchange ones under "transactions".
    portfolio_tx: dict[str, Any] = {
        "transactionType": "Sent",
        "date": "2024-01-01T00:00:00.000Z",
        "transfers": [{"transferType": "Sent", "items": [{"id": "t-2", "count": 1}, {"id": "t-1", "count": 2}]}],
    }
    assert transaction_identity(portfolio_tx) == ["items", ["t-1", "t-2"]]


def test_identity_fields_are_exact_and_stable() -> None:
    # Keys are stored in the warehouse: their identity must not change between releases, or a rerun after an
    # upgrade would see every stored transaction as new. A coin known only by "id" is named by it; numbers
    # are plain decimals (zero as "0", 1E+2 as "100", 1.10 as "1.1").
    item: dict[str, Any] = {
        "transactionType": "Buy",
        "date": "2024-01-01T00:00:00.000Z",
        "coinData": {"identifier": "bitcoin", "count": "1.10"},
        "fee": {"coin": {"id": "ethereum"}, "count": "0.000"},
        "transfers": [{"transferType": "Received", "items": [{"coin": {"id": "bitcoin"}, "count": "1E+2"}]}],
    }
    assert transaction_identity(item) == [
        "content",
        "Buy",
        "2024-01-01T00:00:00.000Z",
        "bitcoin",
        "1.1",
        "ethereum",
        "0",
        [["transfers", "Received", [["bitcoin", "100", None, None]]]],
    ]
    by_identifier = copy.deepcopy(item)
    by_identifier["fee"]["coin"] = {"identifier": "ethereum", "id": "other"}  # "identifier" wins over "id"
    assert transaction_identity(by_identifier) == transaction_identity(item)


def test_exchange_transfers_without_item_ids_are_identified_by_their_content() -> None:
    # An exchange transaction lists its movements under "transactions" (typed by "action"); without item
    # ids, each movement's coin, count and addresses identify it. A movement without items has no parts.
    exchange_tx: dict[str, Any] = {
        "type": "Sent",
        "date": "2024-01-01T00:00:00.000Z",
        "transactions": [
            {"action": "Sent", "items": [{"coin": {"identifier": "bitcoin"}, "count": "2", "toAddress": "x"}]},
            {"action": "Fee"},
        ],
    }
    identity = transaction_identity(exchange_tx)
    assert identity[:3] == ["content", "Sent", "2024-01-01T00:00:00.000Z"]  # "type" when no "transactionType"
    assert identity[-1] == [
        ["transactions", "Sent", [["bitcoin", "2", None, "x"]]],
        ["transactions", "Fee", []],
    ]


def test_empty_ids_do_not_identify_and_a_movement_without_items_is_passed_over() -> None:
    item: dict[str, Any] = {
        "hash": {"id": ""},
        "transactionType": "Sent",
        "transfers": [{"transferType": "Fee"}, {"items": [{"id": ""}, {"id": "t-1"}]}],
    }
    assert transaction_identity(item) == ["items", ["t-1"]]


def test_a_transaction_that_is_not_an_object_is_refused_naming_its_type() -> None:
    with pytest.raises(ValueError, match=r"^transaction is not an object \(got list\)$"):
        TransactionKeyer().key(PORTFOLIO, ["not", "an", "object"])


def test_the_keyer_window_keeps_exactly_max_dates_dates() -> None:
    with pytest.raises(ValueError, match=r"^max_dates must be at least 1$"):
        TransactionKeyer(max_dates=0)
    twin = {"transactionType": "Buy", "coinData": {"identifier": "bitcoin", "count": 1}}
    keyer = TransactionKeyer(max_dates=1)  # one date is enough for twins that follow each other
    first, second = (keyer.key(PORTFOLIO, twin | {"date": "d1"}) for _ in range(2))
    assert (first[-2:], second[-2:]) == ("-0", "-1")

    keyer = TransactionKeyer(max_dates=2)
    ordinals = [keyer.key(PORTFOLIO, twin | {"date": date})[-2:] for date in ("d1", "d2", "d1", "d3", "d2")]
    # d1 and d2 both fit the window, so d1's twin is "-1"; d3 then evicts d2 (the least recently used).
    assert ordinals == ["-0", "-0", "-1", "-0", "-0"]


def test_a_date_that_is_not_text_still_buckets_its_twins() -> None:
    keyer = TransactionKeyer()
    twin = {"transactionType": "Buy", "date": {"unexpected": ["shape"]}, "coinData": {"count": 1}}
    assert [keyer.key(PORTFOLIO, twin)[-2:] for _ in range(2)] == ["-0", "-1"]
