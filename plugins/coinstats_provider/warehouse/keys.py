"""Stable keys for CoinStats transactions, which carry no id of their own.

CoinStats transactions have no id on ``GET /portfolio/transactions``. ``transaction_key`` is
``<sha256 hex>-<ordinal>``, where the hash covers the portfolio id and the transaction's *identity*,
the first of:

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
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from coinstats_provider.warehouse.values import canonical_json, exact_number, get_path

__all__ = ["TransactionKeyer", "transaction_identity"]


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
            entries = get_path(transfer, "items")
            if not isinstance(entries, list):
                continue
            for entry in entries:
                entry_id = get_path(entry, "id")
                if isinstance(entry_id, str | int) and not isinstance(entry_id, bool) and str(entry_id):
                    ids.append(str(entry_id))
    return sorted(ids)


def _transfer_parts(item: Mapping[str, Any]) -> list[Any]:
    """The identifying fields of every transfer of ``item`` (rule 3 of the module docstring)."""
    transfers: list[Any] = []
    for group, type_field in (("transfers", "transferType"), ("transactions", "action")):
        entries = item.get(group)
        if not isinstance(entries, list):
            continue
        for t_index, transfer in enumerate(entries):
            parts: list[Any] = []
            sub_items = get_path(transfer, "items")
            for i_index, sub in enumerate(sub_items if isinstance(sub_items, list) else []):
                prefix = f"{group}[{t_index}].items[{i_index}]"
                parts.append(
                    [
                        _coin_identifier(get_path(sub, "coin")),
                        _id_number(get_path(sub, "count"), f"{prefix}.count"),
                        get_path(sub, "fromAddress"),
                        get_path(sub, "toAddress"),
                    ]
                )
            transfers.append([group, get_path(transfer, type_field), parts])
    return transfers


def transaction_identity(item: Mapping[str, Any]) -> list[Any]:
    """Return the identity of a transaction: its CoinStats ids, or its whitelisted identifying fields.

    See the module docstring for the rule. The result is a JSON-compatible list whose first element
    names the kind (``"hash"``, ``"items"`` or ``"content"``).

    :param item: A ``TransactionItemDto`` (portfolio) or ``TransactionDto`` (exchange).
    :return: The identity.
    :raises ValueError: If an identifying number is not a finite number (names the field).
    """
    hash_id = get_path(item, "hash", "id")
    if isinstance(hash_id, str | int) and not isinstance(hash_id, bool) and str(hash_id):
        return ["hash", str(hash_id)]
    ids = _item_ids(item)
    if ids:
        return ["items", ids]
    kind = item.get("transactionType")
    if kind is None:
        kind = item.get("type")
    transfers = _transfer_parts(item)
    return [
        "content",
        kind,
        item.get("date"),
        get_path(item, "coinData", "identifier"),
        _id_number(get_path(item, "coinData", "count"), "coinData.count"),
        _coin_identifier(get_path(item, "fee", "coin")),
        _id_number(get_path(item, "fee", "count"), "fee.count"),
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
