"""Pure transformations from CoinStats API payloads to warehouse rows.

Nothing here performs I/O. Rows are plain dicts whose keys are the column names of the
warehouse tables (see :mod:`coinstats_provider.warehouse`): numbers are ``float`` or ``None``,
dates are ISO strings and booleans are ``0``/``1``. The ``loaded_at`` column is not set here; the
warehouse stamps it when the rows are written.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from typing import Any

__all__ = [
    "TransactionKeyer",
    "canonical_json",
    "coin_rows",
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

#: Transaction fields that reflect today's market price rather than the transaction itself.
_VOLATILE_TOP_LEVEL: frozenset[str] = frozenset({"profitLoss", "portfolioInfo"})


def canonical_json(value: Any) -> str:
    """Serialise ``value`` deterministically (sorted keys, no whitespace).

    :param value: A JSON-compatible value.
    :return: The canonical JSON text.
    :raises ValueError: If ``value`` is not JSON-serialisable.
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"value is not JSON-serialisable: {type(exc).__name__}") from None


def _num(value: Any, field: str) -> float | None:
    """Coerce an API number (or numeric string) to ``float``; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"field {field!r} is not a number (got {type(value).__name__})")


def _text(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"field {field!r} is not a string (got {type(value).__name__})")


def _flag(value: Any) -> int | None:
    return None if value is None else int(bool(value))


def _get(obj: Any, *path: str) -> Any:
    """Follow ``path`` through nested mappings; ``None`` when any step is missing."""
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def value_row(portfolio_id: str, snapshot_date: date, currency: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """Build the ``coinstats_portfolio_values`` row for one ``GET /portfolio/value`` response.

    :param portfolio_id: The CoinStats portfolio id.
    :param snapshot_date: The day the snapshot represents.
    :param currency: The currency the values are expressed in (the request's ``currency``).
    :param value: The response body (``PortfolioValueResponseDto``); missing fields become ``None``.
    :return: The row.
    :raises ValueError: If ``value`` is not a mapping or a field is not numeric.
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"portfolio value response is not an object (got {type(value).__name__})")
    row: dict[str, Any] = {
        "portfolio_id": portfolio_id,
        "snapshot_date": snapshot_date.isoformat(),
        "currency": currency,
    }
    for field, column in _VALUE_FIELDS:
        row[column] = _num(value.get(field), field)
    return row


def coin_rows(portfolio_id: str, snapshot_date: date, items: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Lazily build ``coinstats_portfolio_coins`` rows from ``GET /portfolio/coins`` items.

    :param portfolio_id: The CoinStats portfolio id.
    :param snapshot_date: The day the snapshot represents.
    :param items: ``PortfolioItemDto`` objects, possibly spanning several pages.
    :return: An iterator of rows, one per item.
    :raises ValueError: On a malformed item (no ``coin.identifier``) or a coin seen twice; the
        message names the item's position, never its content.
    """
    day = snapshot_date.isoformat()
    seen: set[str] = set()
    for index, item in enumerate(items):
        coin_id = _get(item, "coin", "identifier")
        if not isinstance(coin_id, str) or not coin_id:
            raise ValueError(f"portfolio coin item #{index} has no coin.identifier")
        if coin_id in seen:
            raise ValueError(f"portfolio coin item #{index} repeats coin {coin_id!r} in the same snapshot")
        seen.add(coin_id)
        try:
            amount = _num(item.get("count"), "count")
            price_usd = _num(_get(item, "price", "USD"), "price.USD")
            row = {
                "portfolio_id": portfolio_id,
                "snapshot_date": day,
                "coin_id": coin_id,
                "symbol": _text(_get(item, "coin", "symbol"), "coin.symbol"),
                "name": _text(_get(item, "coin", "name"), "coin.name"),
                "is_fiat": _flag(_get(item, "coin", "isFiat")),
                "amount": amount,
                "price_usd": price_usd,
                "price_btc": _num(_get(item, "price", "BTC"), "price.BTC"),
                "value_usd": None if amount is None or price_usd is None else amount * price_usd,
                "profit_all_time_usd": _num(_get(item, "profit", "allTime", "USD"), "profit.allTime.USD"),
                "profit_percent_all_time_usd": _num(
                    _get(item, "profitPercent", "allTime", "USD"), "profitPercent.allTime.USD"
                ),
            }
        except ValueError as exc:
            raise ValueError(f"portfolio coin item #{index}: {exc}") from None
        yield row


def transaction_identity(item: Mapping[str, Any]) -> dict[str, Any]:
    """Return the part of a transaction that identifies it, without market-dependent fields.

    ``GET /portfolio/transactions`` returns, next to the transaction itself, values computed from
    today's prices: ``profitLoss`` and ``coinData.currentValue``, and embedded coin objects
    (``fee.coin``, ``transfers[].items[].coin``) that may carry live market data. The portfolio's
    display data (``portfolioInfo``) can be renamed. Hashing those would give the same transaction a
    new key every day, so they are dropped: ``profitLoss``, ``portfolioInfo`` and
    ``coinData.currentValue`` are removed and every nested ``coin`` object is reduced to its
    ``identifier``. Every other field, including unknown ones, is kept.

    :param item: A ``TransactionItemDto``.
    :return: The identity projection (a new dict; ``item`` is not modified).
    """
    identity = {k: _strip_coins(v) for k, v in item.items() if k not in _VOLATILE_TOP_LEVEL}
    coin_data = identity.get("coinData")
    if isinstance(coin_data, dict):
        coin_data.pop("currentValue", None)
    return identity


def _strip_coins(value: Any) -> Any:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            if key == "coin" and isinstance(sub, Mapping) and "identifier" in sub:
                out[key] = {"identifier": sub["identifier"]}
            else:
                out[key] = _strip_coins(sub)
        return out
    if isinstance(value, list | tuple):
        return [_strip_coins(v) for v in value]
    return value


class TransactionKeyer:
    """Derive stable, unique keys for CoinStats transactions, which have no id of their own.

    The key is ``<sha256>-<ordinal>``. The hash covers the portfolio id and the canonical JSON of
    the transaction's identity (:func:`transaction_identity`; the whole item when
    ``hash_full_item=True``), so it does not depend on paging, run or market prices. Two
    transactions with the same content are both kept: the ordinal counts identical transactions
    seen so far in the stream (multiset semantics), so they get ``-0``, ``-1``, ... A rerun over the
    same stream reproduces the same keys, and one new identical transaction adds exactly one key.

    Use one keyer per stream, call :meth:`key` exactly once per item, in stream order.

    Memory is bounded by keeping ordinal counters only for the ``max_dates`` most recently seen
    ``date`` values (LRU). This relies on two properties of the API: identical transactions carry
    the same ``date``, and ``GET /portfolio/transactions`` returns transactions ordered by date, so a
    date that has fallen out of the window does not come back. If it did, its ordinals would restart
    at ``-0`` and a repeated identical transaction would overwrite the earlier row instead of being
    counted twice.

    :param max_dates: How many distinct dates to keep counters for.
    :param hash_full_item: Hash the complete item instead of its identity projection.
    """

    def __init__(self, max_dates: int = 4096, *, hash_full_item: bool = False) -> None:
        if max_dates < 1:
            raise ValueError("max_dates must be at least 1")
        self.max_dates = max_dates
        self.hash_full_item = hash_full_item
        self._counts: OrderedDict[str, dict[str, int]] = OrderedDict()

    @property
    def tracked_dates(self) -> int:
        """Number of dates whose ordinal counters are currently held."""
        return len(self._counts)

    @property
    def tracked_hashes(self) -> int:
        """Number of ordinal counters currently held, over all dates."""
        return sum(len(counts) for counts in self._counts.values())

    def key(self, portfolio_id: str, item: Mapping[str, Any]) -> str:
        """Return the key of the next transaction in the stream.

        :param portfolio_id: The portfolio the transaction belongs to.
        :param item: The ``TransactionItemDto``.
        :return: ``<64 hex chars>-<ordinal>``.
        :raises ValueError: If ``item`` is not a JSON object.
        """
        if not isinstance(item, Mapping):
            raise ValueError(f"transaction is not an object (got {type(item).__name__})")
        identity: Any = dict(item) if self.hash_full_item else transaction_identity(item)
        digest = hashlib.sha256(canonical_json([portfolio_id, identity]).encode("utf-8")).hexdigest()
        raw_date = item.get("date")
        bucket = raw_date if isinstance(raw_date, str) else canonical_json(raw_date)
        counts = self._counts.get(bucket)
        if counts is None:
            counts = self._counts[bucket] = {}
            if len(self._counts) > self.max_dates:
                self._counts.popitem(last=False)
        else:
            self._counts.move_to_end(bucket)
        ordinal = counts.get(digest, 0)
        counts[digest] = ordinal + 1
        return f"{digest}-{ordinal}"


def transaction_rows(
    portfolio_id: str, items: Iterable[Mapping[str, Any]], keyer: TransactionKeyer
) -> Iterator[dict[str, Any]]:
    """Lazily build ``coinstats_portfolio_transactions`` rows from ``GET /portfolio/transactions``.

    ``total_worth_usd`` and ``profit_usd`` are in the currency the transactions were requested in
    (the extractor requests USD).

    :param portfolio_id: The CoinStats portfolio id.
    :param items: ``TransactionItemDto`` objects in API order, possibly spanning several pages.
    :param keyer: The stream's :class:`TransactionKeyer`.
    :return: An iterator of rows, one per item.
    :raises ValueError: On a malformed item; the message names the item's position, not its content.
    """
    for index, item in enumerate(items):
        try:
            if not isinstance(item, Mapping):
                raise ValueError(f"not an object (got {type(item).__name__})")
            row = {
                "portfolio_id": portfolio_id,
                "transaction_key": "",
                "transaction_type": _text(item.get("transactionType"), "transactionType"),
                "occurred_at": _text(item.get("date"), "date"),
                "coin_id": _text(_get(item, "coinData", "identifier"), "coinData.identifier"),
                "symbol": _text(_get(item, "coinData", "symbol"), "coinData.symbol"),
                "amount": _num(_get(item, "coinData", "count"), "coinData.count"),
                "total_worth_usd": _num(_get(item, "coinData", "totalWorth"), "coinData.totalWorth"),
                "fee_amount": _num(_get(item, "fee", "count"), "fee.count"),
                "fee_coin_id": _text(_get(item, "fee", "coin", "identifier"), "fee.coin.identifier"),
                "profit_usd": _num(_get(item, "profitLoss", "profit"), "profitLoss.profit"),
                "portfolio_name": _text(_get(item, "portfolioInfo", "name"), "portfolioInfo.name"),
                "payload_json": canonical_json(item),
            }
            row["transaction_key"] = keyer.key(portfolio_id, item)
        except ValueError as exc:
            raise ValueError(f"portfolio transaction item #{index}: {exc}") from None
        yield row
