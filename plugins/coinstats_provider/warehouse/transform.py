"""Pure transformations from CoinStats API payloads to warehouse rows.

Nothing here performs I/O. Rows are plain dicts whose keys are the column names of the
warehouse tables (see :mod:`coinstats_provider.warehouse.loader`). The ``loaded_at`` column is not set
here; the warehouse stamps it when the rows are written.

**Numbers** are exact: every money, amount, price and percent column is a :class:`~decimal.Decimal`
(or ``None``), built from the API value without passing through ``float``. The extraction decodes
JSON with ``parse_float=Decimal``, so ``0.123456789012345678`` keeps all 18 decimals; ``int`` values
and numeric strings (``"500.25"``) are accepted too, and a plain ``float`` is taken at its shortest
repr. A value that is not a finite number (``"NaN"``, ``"Infinity"``, ``Decimal("NaN")``, a float
``inf`` such as ``1e400`` decoded as float, ``"lots"``), a boolean where a number is expected, or a
number beyond 1000 integer or 1000 fractional digits raises :class:`InvalidItemError`.

**Text** is sanitised instead of rejected: NUL characters are removed and lone UTF-16 surrogates
(which no database can store as UTF-8) become U+FFFD, in every text column and inside
``payload_json``. Dates are ISO strings and booleans are ``0``/``1``.

**Transaction keys.** CoinStats transactions carry no id of their own on
``GET /portfolio/transactions``. ``transaction_key`` is ``<sha256 hex>-<ordinal>``, where the hash
covers the portfolio id and the transaction's *identity*, the first of:

1. ``hash.id`` when present (the exchange / blockchain transaction id);
2. else the sorted ids of ``transfers[].items[].id`` and ``transactions[].items[].id`` when any
   item carries one;
3. else a content hash over this whitelist of identifying fields only: the type
   (``transactionType``, or ``type``), ``date``, ``coinData.identifier``, ``coinData.count``, the fee's
   coin identifier and ``fee.count``, and for each transfer (``transfers[]`` or ``transactions[]``) its
   ``transferType``/``action`` and, per item, the coin identifier, ``count``, ``fromAddress`` and
   ``toAddress``. Numbers are compared by value (``1.10`` equals ``1.1``).

Everything else, in particular ``note``, labels, ``portfolioInfo``, ``profitLoss``,
``coinData.currentValue`` and every currency-dependent value (``totalWorth``, ``price``), is left out,
so editing a note in CoinStats or a price move updates the row in place under the same key. The
ordinal counts earlier transactions with the same identity in the stream (multiset semantics): two
genuinely identical transactions are both kept, as ``-0`` and ``-1``; a rerun reproduces the keys.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from decimal import Decimal, InvalidOperation, localcontext
from json.encoder import encode_basestring_ascii
from typing import Any

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

#: Largest accepted number of integer digits and of fractional digits (PostgreSQL NUMERIC holds
#: far more; this only stops absurd values such as ``1e999999`` from becoming megabyte strings).
MAX_DIGITS = 1000

_NUMERIC_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SURROGATES = re.compile("[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class InvalidItemError(ValueError):
    """An API item holds a value that cannot be stored exactly; retrying cannot fix it.

    The message names the dataset, the item's position in the stream and the field, never the
    value or any other content of the item.

    :param dataset: ``portfolio value``, ``portfolio coins`` or ``portfolio transactions``.
    :param index: The item's 0-based position in the stream; ``None`` for a single response.
    :param field: Dotted path of the offending field.
    :param reason: What is wrong with it.
    """

    def __init__(self, dataset: str, index: int | None, field: str, reason: str) -> None:
        self.dataset = dataset
        self.index = index
        self.field = field
        self.reason = reason
        where = f"{dataset} item #{index}" if index is not None else f"{dataset} response"
        super().__init__(f"{where}: field {field!r} {reason}")


class _FieldError(ValueError):
    """A field-level problem, turned into :class:`InvalidItemError` once the item position is known."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"field {field!r} {reason}")


def clean_text(value: str) -> str:
    """Remove NUL characters and replace lone surrogates with U+FFFD.

    :param value: Any string.
    :return: A string every UTF-8 database accepts.
    """
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not value.isascii():
        value = _SURROGATES.sub("\ufffd", value)
    return value


def exact_number(value: Any, field: str) -> Decimal | None:
    """Convert an API number to an exact :class:`~decimal.Decimal`; ``None`` stays ``None``.

    :param value: ``Decimal``, ``int``, ``float`` or a numeric string.
    :param field: Field path, for the error message.
    :return: The value, digit for digit.
    :raises ValueError: If ``value`` is a boolean, not numeric, not finite or out of range; the
        message names ``field`` only.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise _FieldError(field, "is a boolean, expected a number")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _FieldError(field, "is not a finite number")
        number = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if not _NUMERIC_TEXT.fullmatch(text):
            raise _FieldError(field, "is not a number")
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise _FieldError(field, "is not a number") from None
    else:
        raise _FieldError(field, f"is not a number (got {type(value).__name__})")
    if not number.is_finite():
        raise _FieldError(field, "is not a finite number")
    exponent = number.as_tuple().exponent
    if number.adjusted() >= MAX_DIGITS or (isinstance(exponent, int) and exponent < -MAX_DIGITS):
        raise _FieldError(field, f"is out of range (more than {MAX_DIGITS} integer or fractional digits)")
    return number


def _product(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    """``a * b`` without rounding."""
    if a is None or b is None:
        return None
    with localcontext() as ctx:
        ctx.prec = len(a.as_tuple().digits) + len(b.as_tuple().digits) + 2
        return a * b


def canonical_json(value: Any) -> str:
    """Serialise ``value`` deterministically: sorted keys, no whitespace, ASCII, exact numbers.

    ``Decimal`` values are written as their own text, so no digit is lost; strings are passed
    through :func:`clean_text`.

    :param value: A JSON-compatible value (``Decimal`` allowed).
    :return: The canonical JSON text.
    :raises ValueError: If ``value`` holds something that is not JSON (a set, a non-string key, a
        non-finite number); the message names the path of the offending value, never its content.
    """
    out: list[str] = []
    _encode(value, out, "")
    return "".join(out)


def _path_key(path: str, key: str) -> str:
    part = key if _PLAIN_KEY.fullmatch(key) else "?"
    return f"{path}.{part}" if path else part


def _encode(value: Any, out: list[str], path: str) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(encode_basestring_ascii(clean_text(value)))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _FieldError(path or "value", "is not a finite number")
        out.append(float.__repr__(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise _FieldError(path or "value", "is not a finite number")
        out.append(str(value))
    elif isinstance(value, Mapping):
        items: list[tuple[str, Any, str]] = []
        for key, sub in value.items():
            if not isinstance(key, str):
                raise _FieldError(path or "value", f"has a {type(key).__name__} key; JSON keys are strings")
            items.append((clean_text(key), sub, key))
        items.sort(key=lambda entry: entry[0])
        out.append("{")
        for position, (key, sub, raw) in enumerate(items):
            if position:
                out.append(",")
            out.append(encode_basestring_ascii(key))
            out.append(":")
            _encode(sub, out, _path_key(path, raw))
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for position, sub in enumerate(value):
            if position:
                out.append(",")
            _encode(sub, out, f"{path}[{position}]")
        out.append("]")
    else:
        raise _FieldError(path or "value", f"is not JSON-serialisable (got {type(value).__name__})")


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return clean_text(value)
    raise _FieldError(field, f"is not a string (got {type(value).__name__})")


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
    except _FieldError as exc:
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
        coin_id = _get(item, "coin", "identifier")
        if not isinstance(coin_id, str) or not coin_id:
            raise InvalidItemError(dataset, index, "coin.identifier", "is missing")
        coin_id = clean_text(coin_id)
        if coin_id in seen:
            raise InvalidItemError(dataset, index, "coin.identifier", "repeats a coin already in this snapshot")
        seen.add(coin_id)
        try:
            amount = exact_number(item.get("count"), "count")
            price_usd = exact_number(_get(item, "price", "USD"), "price.USD")
            row = {
                "portfolio_id": portfolio_id,
                "snapshot_date": day,
                "coin_id": coin_id,
                "symbol": _text(_get(item, "coin", "symbol"), "coin.symbol"),
                "name": _text(_get(item, "coin", "name"), "coin.name"),
                "is_fiat": _flag(_get(item, "coin", "isFiat")),
                "amount": amount,
                "price_usd": price_usd,
                "price_btc": exact_number(_get(item, "price", "BTC"), "price.BTC"),
                "value_usd": _product(amount, price_usd),
                "profit_all_time_usd": exact_number(_get(item, "profit", "allTime", "USD"), "profit.allTime.USD"),
                "profit_percent_all_time_usd": exact_number(
                    _get(item, "profitPercent", "allTime", "USD"), "profitPercent.allTime.USD"
                ),
            }
        except _FieldError as exc:
            raise InvalidItemError(dataset, index, exc.field, exc.reason) from None
        yield row


# -- transaction identity ------------------------------------------------------------------------


def _coin_identifier(coin: Any) -> Any:
    if not isinstance(coin, Mapping):
        return None
    found = coin.get("identifier")
    return coin.get("id") if found is None else found


def _id_number(value: Any, field: str) -> str | None:
    """A number in a form where equal values compare equal (``1.10`` == ``1.1``)."""
    number = exact_number(value, field)
    if number is None:
        return None
    if number.is_zero():
        return "0"
    return format(number.normalize(), "f")


def _item_ids(item: Mapping[str, Any]) -> list[str]:
    ids: list[str] = []
    for group in ("transfers", "transactions"):
        transfers = item.get(group)
        if not isinstance(transfers, list):
            continue
        for transfer in transfers:
            entries = _get(transfer, "items")
            if not isinstance(entries, list):
                continue
            for entry in entries:
                entry_id = _get(entry, "id")
                if isinstance(entry_id, str | int) and not isinstance(entry_id, bool) and str(entry_id):
                    ids.append(str(entry_id))
    return sorted(ids)


def transaction_identity(item: Mapping[str, Any]) -> list[Any]:
    """Return the identity of a transaction: its CoinStats ids, or its whitelisted identifying fields.

    See the module docstring for the rule. The result is a JSON-compatible list whose first element
    names the kind (``"hash"``, ``"items"`` or ``"content"``).

    :param item: A ``TransactionItemDto`` (portfolio) or ``TransactionDto`` (exchange).
    :return: The identity.
    :raises ValueError: If an identifying number is not a finite number (names the field).
    """
    hash_id = _get(item, "hash", "id")
    if isinstance(hash_id, str | int) and not isinstance(hash_id, bool) and str(hash_id):
        return ["hash", str(hash_id)]
    ids = _item_ids(item)
    if ids:
        return ["items", ids]
    kind = item.get("transactionType")
    if kind is None:
        kind = item.get("type")
    transfers: list[Any] = []
    for group, type_field in (("transfers", "transferType"), ("transactions", "action")):
        entries = item.get(group)
        if not isinstance(entries, list):
            continue
        for t_index, transfer in enumerate(entries):
            parts: list[Any] = []
            sub_items = _get(transfer, "items")
            for i_index, sub in enumerate(sub_items if isinstance(sub_items, list) else []):
                prefix = f"{group}[{t_index}].items[{i_index}]"
                parts.append(
                    [
                        _coin_identifier(_get(sub, "coin")),
                        _id_number(_get(sub, "count"), f"{prefix}.count"),
                        _get(sub, "fromAddress"),
                        _get(sub, "toAddress"),
                    ]
                )
            transfers.append([group, _get(transfer, type_field), parts])
    return [
        "content",
        kind,
        item.get("date"),
        _get(item, "coinData", "identifier"),
        _id_number(_get(item, "coinData", "count"), "coinData.count"),
        _coin_identifier(_get(item, "fee", "coin")),
        _id_number(_get(item, "fee", "count"), "fee.count"),
        transfers,
    ]


class TransactionKeyer:
    """Derive stable, unique keys for a stream of CoinStats transactions (see the module docstring).

    The key is ``<sha256 of portfolio id and identity>-<ordinal>``. Use one keyer per stream and call
    :meth:`key` exactly once per item, in stream order.

    Memory is bounded by keeping ordinal counters only for the ``max_dates`` most recently seen
    ``date`` values (LRU). This relies on two properties of the API: identical transactions carry
    the same ``date``, and ``GET /portfolio/transactions`` returns transactions ordered by date, so a
    date that has fallen out of the window does not come back. If it did, its ordinals would restart
    at ``-0``; the warehouse then refuses the stream (repeated key) instead of merging two rows.

    :param max_dates: How many distinct dates to keep counters for.
    """

    def __init__(self, max_dates: int = 4096) -> None:
        if max_dates < 1:
            raise ValueError("max_dates must be at least 1")
        self.max_dates = max_dates
        self._counts: OrderedDict[str, dict[str, int]] = OrderedDict()

    def key(self, portfolio_id: str, item: Mapping[str, Any]) -> str:
        """Return the key of the next transaction in the stream.

        :param portfolio_id: The portfolio the transaction belongs to.
        :param item: The transaction.
        :return: ``<64 hex chars>-<ordinal>``.
        :raises ValueError: If ``item`` is not a JSON object or an identifying number is invalid.
        """
        if not isinstance(item, Mapping):
            raise ValueError(f"transaction is not an object (got {type(item).__name__})")
        identity = transaction_identity(item)
        digest = hashlib.sha256(canonical_json([portfolio_id, identity]).encode("ascii")).hexdigest()
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
                "coin_id": _text(_get(item, "coinData", "identifier"), "coinData.identifier"),
                "symbol": _text(_get(item, "coinData", "symbol"), "coinData.symbol"),
                "amount": exact_number(_get(item, "coinData", "count"), "coinData.count"),
                "total_worth_usd": exact_number(_get(item, "coinData", "totalWorth"), "coinData.totalWorth"),
                "fee_amount": exact_number(_get(item, "fee", "count"), "fee.count"),
                "fee_coin_id": _text(_get(item, "fee", "coin", "identifier"), "fee.coin.identifier"),
                "profit_usd": exact_number(_get(item, "profitLoss", "profit"), "profitLoss.profit"),
                "portfolio_name": _text(_get(item, "portfolioInfo", "name"), "portfolioInfo.name"),
            }
            try:
                row["payload_json"] = canonical_json(item)
            except _FieldError as exc:
                raise _FieldError("payload" if exc.field == "value" else f"payload.{exc.field}", exc.reason) from None
        except _FieldError as exc:
            raise InvalidItemError(dataset, index, exc.field, exc.reason) from None
        yield row
