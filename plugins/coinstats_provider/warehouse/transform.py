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
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
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
    "MS_THRESHOLD",
    "InvalidItemError",
    "TransactionKeyer",
    "canonical_json",
    "chart_rows",
    "chart_timestamp",
    "clean_text",
    "coin_rows",
    "defi_rows",
    "exact_number",
    "snapshot_rows",
    "transaction_identity",
    "transaction_rows",
    "value_row",
]

#: Epoch values at or above this are milliseconds, below it seconds: ``1e11`` seconds is the year 5138,
#: ``1e11`` milliseconds is 1973, so no chart of a CoinStats portfolio is ambiguous (CONTRACT §6).
MS_THRESHOLD = Decimal(100_000_000_000)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 12, 31, tzinfo=UTC)

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


def chart_timestamp(value: Any, field: str = "ts") -> str:
    """An epoch timestamp in seconds or milliseconds (told apart by :data:`MS_THRESHOLD`) as UTC ISO text.

    :param value: The number CoinStats sent (``Decimal``, ``int``, ``float`` or numeric text).
    :param field: Field path, for the error message.
    :return: ``YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00``.
    :raises FieldError: When it is missing, not a number, negative or beyond the year 9999.
    """
    number = exact_number(value, field)
    if number is None:
        raise FieldError(field, "is missing")
    if number < 0:
        raise FieldError(field, "is before 1970")
    seconds = number / 1000 if number >= MS_THRESHOLD else number
    micros = int((seconds * 1_000_000).to_integral_value())
    if micros > (_LATEST - _EPOCH) // timedelta(microseconds=1):
        raise FieldError(field, "is after the year 9999")
    return (_EPOCH + timedelta(microseconds=micros)).isoformat()


def _utc_instant(value: Any, field: str) -> str:
    """An ISO 8601 date-time with a zone (``...Z`` or an offset), as UTC ISO text."""
    if not isinstance(value, str) or not value.strip():
        raise FieldError(field, "is missing")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise FieldError(field, "is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        # INFERRED: CoinStats writes UTC ("2025-08-29T10:00:00.000Z"); a bare time is read as UTC.
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def chart_rows(portfolio_id: str, chart_type: str, points: Iterable[Any]) -> list[dict[str, Any]]:
    """Build ``coinstats_portfolio_chart`` rows from ``GET /portfolio/chart`` points ``[ts, USD, BTC, ETH]``.

    Timestamps become UTC (seconds or milliseconds, by magnitude: :func:`chart_timestamp`); a point
    repeated in one answer keeps its last values, so the rows' keys are unique.

    :param portfolio_id: The CoinStats portfolio id.
    :param chart_type: The chart type the points were requested with.
    :param points: The ``result`` list.
    :return: One row per distinct timestamp, in answer order.
    :raises InvalidItemError: On a point that is not a list of numbers; names its position, not its content.
    """
    dataset = "portfolio chart"
    rows: dict[str, dict[str, Any]] = {}
    for index, point in enumerate(points):
        if not isinstance(point, list | tuple) or len(point) < 2:
            raise InvalidItemError(dataset, index, "point", "is not a list [timestamp, USD, BTC, ETH]")
        values = [*point[1:4], None, None][:3]
        try:
            ts = chart_timestamp(point[0], "[0] timestamp")
            row = {
                "portfolio_id": portfolio_id,
                "chart_type": chart_type,
                "ts": ts,
                "value_usd": exact_number(values[0], "[1] USD"),
                "value_btc": exact_number(values[1], "[2] BTC"),
                "value_eth": exact_number(values[2], "[3] ETH"),
            }
        except FieldError as exc:
            raise InvalidItemError(dataset, index, exc.field, exc.reason) from None
        rows.pop(ts, None)
        rows[ts] = row
    return list(rows.values())


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError(field, f"is not a list (got {type(value).__name__})")
    return value


def defi_rows(portfolio_id: str, snapshot_date: date, defi: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Lazily build ``coinstats_portfolio_defi`` rows: one per asset of each investment of each protocol.

    Rows are keyed by their position in the answer (``protocol_index``, ``investment_index``,
    ``asset_index``): CoinStats gives assets no id of their own, and the table is replaced per
    ``(portfolio_id, snapshot_date)``, so positions never mix two answers. ``value_usd`` is
    ``amount * price.USD``, computed exactly.

    :param portfolio_id: The CoinStats portfolio id.
    :param snapshot_date: The day the snapshot represents.
    :param defi: The ``GET /portfolio/defi`` body (``DefiResponseDto``).
    :raises InvalidItemError: On a malformed protocol, investment or asset (names its position and field).
    """
    dataset = "portfolio defi"
    day = snapshot_date.isoformat()
    if not isinstance(defi, Mapping):
        raise InvalidItemError(dataset, None, "response", f"is not an object (got {type(defi).__name__})")
    try:
        protocols = _list(defi.get("protocols"), "protocols")
    except FieldError as exc:
        raise InvalidItemError(dataset, None, exc.field, exc.reason) from None
    for p_index, protocol in enumerate(protocols):
        if not isinstance(protocol, Mapping):
            raise InvalidItemError(dataset, p_index, "protocol", "is not an object")
        try:
            common = {
                "portfolio_id": portfolio_id,
                "snapshot_date": day,
                "protocol_index": p_index,
                "protocol_id": _text(protocol.get("id"), "id"),
                "protocol_name": _text(protocol.get("name"), "name"),
                "chain": _text(protocol.get("chain"), "chain"),
                "blockchain_name": _text(get_path(protocol, "blockchain", "name"), "blockchain.name"),
                "wallet_address": _text(protocol.get("walletAddress"), "walletAddress"),
            }
            investments = _list(protocol.get("investments"), "investments")
        except FieldError as exc:
            raise InvalidItemError(dataset, p_index, exc.field, exc.reason) from None
        for i_index, investment in enumerate(investments):
            yield from _investment_rows(dataset, common, p_index, i_index, investment)


def _investment_rows(
    dataset: str, common: Mapping[str, Any], p_index: int, i_index: int, investment: Any
) -> Iterator[dict[str, Any]]:
    where = f"investments[{i_index}]"
    try:
        if not isinstance(investment, Mapping):
            raise FieldError(where, "is not an object")
        head = {
            **common,
            "investment_index": i_index,
            "investment_id": _text(investment.get("id"), f"{where}.id"),
            "investment_name": _text(investment.get("name"), f"{where}.name"),
            "pool_address": _text(investment.get("poolAddress"), f"{where}.poolAddress"),
            "health_rate": exact_number(investment.get("healthRate"), f"{where}.healthRate"),
            "investment_value_usd": exact_number(get_path(investment, "value", "USD"), f"{where}.value.USD"),
        }
        assets = _list(investment.get("assets"), f"{where}.assets")
        for a_index, asset in enumerate(assets):
            at = f"{where}.assets[{a_index}]"
            if not isinstance(asset, Mapping):
                raise FieldError(at, "is not an object")
            amount = exact_number(asset.get("amount"), f"{at}.amount")
            price_usd = exact_number(get_path(asset, "price", "USD"), f"{at}.price.USD")
            yield {
                **head,
                "asset_index": a_index,
                "asset_address": _text(asset.get("address"), f"{at}.address"),
                "asset_title": _text(asset.get("title"), f"{at}.title"),
                "coin_id": _text(asset.get("coinId"), f"{at}.coinId"),
                "symbol": _text(asset.get("symbol"), f"{at}.symbol"),
                "amount": amount,
                "price_usd": price_usd,
                "value_usd": product(amount, price_usd),
            }
    except FieldError as exc:
        raise InvalidItemError(dataset, p_index, exc.field, exc.reason) from None


#: Numbers of a ``SnapshotCoinBalanceDto`` that must be exact (kept as sent inside ``coin_balances_json``).
_BALANCE_NUMBERS = (
    "quantity",
    "balance",
    "quantityChange",
    "balanceChange",
    "pricePerUnit",
    "pricePercentChange",
)


def snapshot_rows(portfolio_id: str, items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Build ``coinstats_portfolio_snapshots`` rows from ``GET /portfolio/snapshot/items`` items.

    ``snapshot_at`` is the item's ``date`` in UTC; the coin balances go, as sent, into
    ``coin_balances_json`` (canonical JSON, exact numbers, sanitised text). A snapshot repeated in
    one stream keeps its last version, so the rows' keys are unique.

    :param portfolio_id: The CoinStats portfolio id.
    :param items: ``PortfolioSnapshotItemDto`` objects, possibly spanning several pages.
    :return: One row per distinct ``date``, in stream order.
    :raises InvalidItemError: On a malformed item (names its position and field, never its content).
    """
    dataset = "portfolio snapshots"
    rows: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidItemError(dataset, index, "item", f"is not an object (got {type(item).__name__})")
        try:
            balances = _list(item.get("coinBalances"), "coinBalances")
            for b_index, balance in enumerate(balances):
                if not isinstance(balance, Mapping):
                    raise FieldError(f"coinBalances[{b_index}]", "is not an object")
                for name in _BALANCE_NUMBERS:
                    exact_number(balance.get(name), f"coinBalances[{b_index}].{name}")
            at = _utc_instant(item.get("date"), "date")
            row = {
                "portfolio_id": portfolio_id,
                "snapshot_at": at,
                "total_balance": exact_number(item.get("totalBalance"), "totalBalance"),
                "total_balance_change": exact_number(item.get("totalBalanceChange"), "totalBalanceChange"),
                "total_balance_percent_change": exact_number(
                    item.get("totalBalancePercentChange"), "totalBalancePercentChange"
                ),
                "coin_count": len(balances),
                "coin_balances_json": canonical_json(balances),
            }
        except FieldError as exc:
            raise InvalidItemError(dataset, index, exc.field, exc.reason) from None
        rows.pop(at, None)
        rows[at] = row
    return list(rows.values())
