"""Pure transformations from CoinStats API payloads to warehouse rows.

Nothing here performs I/O. Rows are plain dicts whose keys are the column names of the warehouse
tables (see :mod:`coinstats_provider.warehouse.schema`). The ``loaded_at`` column is not set here; the
warehouse stamps it when the rows are written.

Numbers are exact :class:`~decimal.Decimal` values and text is sanitised, by the rules of
:mod:`coinstats_provider.warehouse.values`; an item that breaks them raises :class:`InvalidItemError`
naming its position and field, never its content. Text is cleaned in every text column and inside
``payload_json``. Dates are ISO strings and booleans are ``0``/``1``. Transaction keys are derived by
:mod:`coinstats_provider.warehouse.keys`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from typing import Any

from coinstats_provider.warehouse.keys import TransactionKeyer, transaction_identity
from coinstats_provider.warehouse.values import (
    FieldError,
    InvalidItemError,
    canonical_json,
    clean_text,
    exact_number,
    get_path,
    product,
)

__all__ = [
    "InvalidItemError",
    "TransactionKeyer",
    "canonical_json",
    "clean_text",
    "coin_rows",
    "exact_number",
    "transaction_identity",
    "transaction_rows",
    "value_row",
]

#: ``GET /portfolio/value`` field -> ``coinstats_portfolio_values`` column.
_VALUE_FIELDS: tuple[tuple[str, str], ...] = (
    ("totalValue", "total_value"),
    ("defiValue", "defi_value"),
    ("totalCost", "total_cost"),
    ("unrealizedProfitLoss", "unrealized_profit_loss"),
    ("unrealizedProfitLossPercent", "unrealized_profit_loss_percent"),
    ("realizedProfitLoss", "realized_profit_loss"),
    ("realizedProfitLossPercent", "realized_profit_loss_percent"),
    ("allTimeProfitLoss", "all_time_profit_loss"),
    ("allTimeProfitLossPercent", "all_time_profit_loss_percent"),
)


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return clean_text(value)
    raise FieldError(field, f"is not a string (got {type(value).__name__})")


def _flag(value: Any) -> int | None:
    return None if value is None else int(bool(value))


def value_row(portfolio_id: str, snapshot_date: date, currency: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """Build the ``coinstats_portfolio_values`` row for one ``GET /portfolio/value`` response.

    :param portfolio_id: The CoinStats portfolio id.
    :param snapshot_date: The day the snapshot represents.
    :param currency: The currency the values are expressed in (the request's ``currency``).
    :param value: The response body (``PortfolioValueResponseDto``); missing fields become ``None``.
    :return: The row; numbers are ``Decimal``.
    :raises InvalidItemError: If ``value`` is not a mapping or a field is not a finite number.
    """
    dataset = "portfolio value"
    if not isinstance(value, Mapping):
        raise InvalidItemError(dataset, None, "response", f"is not an object (got {type(value).__name__})")
    row: dict[str, Any] = {
        "portfolio_id": portfolio_id,
        "snapshot_date": snapshot_date.isoformat(),
        "currency": currency,
    }
    try:
        for field, column in _VALUE_FIELDS:
            row[column] = exact_number(value.get(field), field)
    except FieldError as exc:
        raise InvalidItemError(dataset, None, exc.field, exc.reason) from None
    return row


def coin_rows(portfolio_id: str, snapshot_date: date, items: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Lazily build ``coinstats_portfolio_coins`` rows from ``GET /portfolio/coins`` items.

    ``value_usd`` is ``amount * price_usd``, computed exactly.

    :param portfolio_id: The CoinStats portfolio id.
    :param snapshot_date: The day the snapshot represents.
    :param items: ``PortfolioItemDto`` objects, possibly spanning several pages.
    :return: An iterator of rows, one per item.
    :raises InvalidItemError: On a malformed item (no ``coin.identifier``, a bad number) or a coin
        seen twice; the message names the item's position and field, never its content.
    """
    dataset = "portfolio coins"
    day = snapshot_date.isoformat()
    seen: set[str] = set()
    for index, item in enumerate(items):
        coin_id = get_path(item, "coin", "identifier")
        if not isinstance(coin_id, str) or not coin_id:
            raise InvalidItemError(dataset, index, "coin.identifier", "is missing")
        coin_id = clean_text(coin_id)
        if coin_id in seen:
            raise InvalidItemError(dataset, index, "coin.identifier", "repeats a coin already in this snapshot")
        seen.add(coin_id)
        try:
            amount = exact_number(item.get("count"), "count")
            price_usd = exact_number(get_path(item, "price", "USD"), "price.USD")
            row = {
                "portfolio_id": portfolio_id,
                "snapshot_date": day,
                "coin_id": coin_id,
                "symbol": _text(get_path(item, "coin", "symbol"), "coin.symbol"),
                "name": _text(get_path(item, "coin", "name"), "coin.name"),
                "is_fiat": _flag(get_path(item, "coin", "isFiat")),
                "amount": amount,
                "price_usd": price_usd,
                "price_btc": exact_number(get_path(item, "price", "BTC"), "price.BTC"),
                "value_usd": product(amount, price_usd),
                "profit_all_time_usd": exact_number(get_path(item, "profit", "allTime", "USD"), "profit.allTime.USD"),
                "profit_percent_all_time_usd": exact_number(
                    get_path(item, "profitPercent", "allTime", "USD"), "profitPercent.allTime.USD"
                ),
            }
        except FieldError as exc:
            raise InvalidItemError(dataset, index, exc.field, exc.reason) from None
        yield row


def transaction_rows(
    portfolio_id: str, items: Iterable[Mapping[str, Any]], keyer: TransactionKeyer | None = None
) -> Iterator[dict[str, Any]]:
    """Lazily build ``coinstats_portfolio_transactions`` rows from ``GET /portfolio/transactions``.

    ``total_worth_usd`` and ``profit_usd`` are in the currency the transactions were requested in
    (the extractor requests USD).

    :param portfolio_id: The CoinStats portfolio id.
    :param items: ``TransactionItemDto`` objects in API order, possibly spanning several pages.
    :param keyer: The stream's :class:`TransactionKeyer`; a new one when omitted.
    :return: An iterator of rows, one per item.
    :raises InvalidItemError: On a malformed item; the message names the item's position and the
        field, never its content.
    """
    dataset = "portfolio transactions"
    keyer = keyer or TransactionKeyer()
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidItemError(dataset, index, "item", f"is not an object (got {type(item).__name__})")
        try:
            row = {
                "portfolio_id": portfolio_id,
                "transaction_key": keyer.key(portfolio_id, item),
                "transaction_type": _text(item.get("transactionType"), "transactionType"),
                "occurred_at": _text(item.get("date"), "date"),
                "coin_id": _text(get_path(item, "coinData", "identifier"), "coinData.identifier"),
                "symbol": _text(get_path(item, "coinData", "symbol"), "coinData.symbol"),
                "amount": exact_number(get_path(item, "coinData", "count"), "coinData.count"),
                "total_worth_usd": exact_number(get_path(item, "coinData", "totalWorth"), "coinData.totalWorth"),
                "fee_amount": exact_number(get_path(item, "fee", "count"), "fee.count"),
                "fee_coin_id": _text(get_path(item, "fee", "coin", "identifier"), "fee.coin.identifier"),
                "profit_usd": exact_number(get_path(item, "profitLoss", "profit"), "profitLoss.profit"),
                "portfolio_name": _text(get_path(item, "portfolioInfo", "name"), "portfolioInfo.name"),
            }
            try:
                row["payload_json"] = canonical_json(item)
            except FieldError as exc:
                raise FieldError("payload" if exc.field == "value" else f"payload.{exc.field}", exc.reason) from None
        except FieldError as exc:
            raise InvalidItemError(dataset, index, exc.field, exc.reason) from None
        yield row
