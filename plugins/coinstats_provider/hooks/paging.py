"""Offset pagination over CoinStats' paged routes, as a generator that proves each stream whole.

CoinStats pages with ``page`` (1-based) and ``limit`` and sends no totals (CONTRACT §3), so a stream
ends at a short or empty page. A live list can change while it is read: a transaction that arrives
between two page reads shifts every later page by one, so the next page starts with the item that
ended the previous one (a phantom duplicate) and the new item is missed. This module checks every
page boundary and raises :class:`~coinstats_provider.exceptions.CoinStatsListChangedError` instead
of yielding an inconsistent stream; the caller restarts the stream (its rows were only staged).

Checks, in order, for each page:

* ``meta.page`` (when sent) must be the page asked for, ``meta.limit`` (when sent) must not exceed
  the ``limit`` asked for; a smaller ``meta.limit`` on the first page is a server cap and becomes the
  page size (later pages are asked with it, so a short page still means the end).
* A first page shorter than ``limit`` on a route without ``meta`` whose length is a round number
  (a multiple of 10 or 25) may be a silent cap: the next page is read once with that length as
  ``limit`` to settle it (an empty answer proves the end).
* A page may not hold more items than asked for, nor repeat the previous page.
* At each boundary, when the new page's first item also occurs on the previous page, or is dated
  after the previous page's last item in a list that has been newest-first so far, the previous page
  is read again: if it changed, the list shifted and the stream is abandoned. Genuinely identical
  transactions that straddle a boundary cost that one extra read and nothing else.
* At most ``max_pages`` pages are read per stream, with or without a credit budget.

A transaction deleted upstream *during* a read, below the first page, cannot be seen by any of
these checks (offset paging gives no handle on it); that read misses the item after it and the next
run puts it back. README "Table semantics" documents this.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coinstats_provider.exceptions import CoinStatsConfigError, CoinStatsListChangedError, CoinStatsResponseError

__all__ = [
    "COINS",
    "DEFAULT_MAX_PAGES",
    "SNAPSHOTS",
    "TRANSACTIONS",
    "PagedRoute",
    "item_date",
    "iter_pages",
]

log = logging.getLogger(__name__)

#: Upper bound of pages per stream (1,000,000 items at 100 per page).
DEFAULT_MAX_PAGES = 10_000
#: CoinStats serves at most this many items per page on the portfolio routes (CONTRACT §3, INFERRED).
MAX_PAGE_SIZE = 100

Fetch = Callable[[int, int], Any]
"""``fetch(page, limit)`` sends one paged request and returns the decoded JSON body."""


def _json_key(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def coin_identity(item: Mapping[str, Any]) -> str:
    """A coin holding is identified by its coin (prices and amounts move between reads).

    :param item: A ``PortfolioItemDto``.
    """
    return _json_key(["coin", _get(item, "coin", "identifier")])


def transaction_identity(item: Mapping[str, Any]) -> str:
    """What identifies a transaction between two reads seconds apart.

    Only fields that neither market prices nor user edits (note, labels) change: CoinStats' own
    ``hash.id`` when sent, the type, the date, the coin and the amount. Distinct transactions that
    share all of these only cost an extra page read at a boundary, never data.

    :param item: A ``TransactionItemDto``.
    """
    return _json_key(
        [
            _get(item, "hash", "id"),
            item.get("transactionType"),
            item.get("date"),
            _get(item, "coinData", "identifier"),
            _get(item, "coinData", "count"),
        ]
    )


@dataclass(frozen=True)
class PagedRoute:
    """How to read one paged CoinStats route.

    :param path: API path, e.g. ``/portfolio/transactions``.
    :param keys: Envelope keys that may hold the item list, in order of preference.
    :param identity: Maps an item to a value that stays the same for the same item between reads.
    :param date_field: Item field holding an ISO date when the list is newest-first, else ``None``.
    """

    path: str
    keys: tuple[str, ...]
    identity: Callable[[Mapping[str, Any]], str]
    date_field: str | None = None


COINS = PagedRoute("/portfolio/coins", ("result", "data"), coin_identity)
TRANSACTIONS = PagedRoute("/portfolio/transactions", ("data", "result"), transaction_identity, "date")


def snapshot_identity(item: Mapping[str, Any]) -> str:
    """A snapshot item is identified by its ``date`` (its balances are what it says about that moment).

    :param item: A ``PortfolioSnapshotItemDto``.
    """
    return _json_key(["snapshot", item.get("date")])


#: Chronological (oldest first), so no newest-first date check; ``{"result": [...]}`` with no meta.
SNAPSHOTS = PagedRoute("/portfolio/snapshot/items", ("result", "data"), snapshot_identity)


def _envelope(data: Any, route: PagedRoute) -> tuple[list[dict[str, Any]], Mapping[str, Any] | None]:
    if isinstance(data, dict):
        for key in route.keys:
            value = data.get(key)
            if isinstance(value, list):
                meta = data.get("meta")
                return value, meta if isinstance(meta, Mapping) else None
    raise CoinStatsResponseError(
        f"CoinStats {route.path} answered without a list under {' or '.join(repr(k) for k in route.keys)}."
    )


def _meta_int(meta: Mapping[str, Any] | None, key: str) -> int | None:
    value = meta.get(key) if meta is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def item_date(item: Mapping[str, Any], field: str | None) -> datetime | None:
    """The timezone-aware date in ``item[field]``, or ``None`` when it is missing, naive or unreadable.

    :param item: A list item.
    :param field: The date field (``None``: no date).
    """
    raw = item.get(field) if field else None
    if not isinstance(raw, str):
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _newest_first(items: Sequence[Mapping[str, Any]], field: str | None) -> bool:
    """Whether every item's date parses and no item is newer than the one before it."""
    dates = [item_date(item, field) for item in items]
    known = [d for d in dates if d is not None]
    return len(known) == len(dates) and all(a >= b for a, b in itertools.pairwise(known))


def _may_be_cap(length: int) -> bool:
    return length > 0 and (length % 10 == 0 or length % 25 == 0)


class _Stream:
    """State of one stream: the previous page, the page size in force, the order signal."""

    def __init__(self, fetch: Fetch, route: PagedRoute, page_size: int) -> None:
        self.fetch = fetch
        self.route = route
        self.limit = page_size
        self.ordered = route.date_field is not None
        self.prev_ids: list[str] | None = None
        self.prev_last: Mapping[str, Any] | None = None

    def read(self, page: int, *, first: bool) -> tuple[list[dict[str, Any]], bool]:
        """Read one page; return its items and whether the answer carried ``meta``."""
        route = self.route
        items, meta = _envelope(self.fetch(page, self.limit), route)
        answered_page = _meta_int(meta, "page")
        if answered_page is not None and answered_page != page:
            raise CoinStatsResponseError(
                f"CoinStats {route.path} answered page {answered_page} when page {page} was asked for; "
                "stopping so a pagination bug cannot burn credits."
            )
        answered_limit = _meta_int(meta, "limit")
        if answered_limit is not None and 0 < answered_limit < self.limit:
            if not first:
                raise CoinStatsResponseError(
                    f"CoinStats {route.path} changed its page size to {answered_limit} in the middle of a "
                    "stream; the pages no longer line up, so the stream is abandoned.",
                    retryable=True,
                )
            log.warning(
                "CoinStats %s serves at most %d items per page (asked for %d); paging with %d",
                route.path,
                answered_limit,
                self.limit,
                answered_limit,
            )
            self.limit = answered_limit
        if len(items) > self.limit:
            raise CoinStatsResponseError(
                f"CoinStats {route.path} answered {len(items)} items on page {page} for limit {self.limit}; "
                "pages cannot be lined up, so the stream is abandoned."
            )
        return items, meta is not None

    def check_boundary(self, page: int, items: list[dict[str, Any]], ids: list[str]) -> None:
        """Raise when ``items`` (page ``page``) do not continue the previous page."""
        if self.prev_ids is None or self.prev_last is None or not items:
            return
        route = self.route
        if ids == self.prev_ids:
            raise CoinStatsResponseError(
                f"CoinStats {route.path} returned the same page twice (page {page}); stopping so a "
                "pagination bug cannot burn credits."
            )
        suspicious = ids[0] in set(self.prev_ids)
        if not suspicious and self.ordered:
            newer, older = item_date(items[0], route.date_field), item_date(self.prev_last, route.date_field)
            suspicious = newer is not None and older is not None and newer > older
        if not suspicious:
            return
        again, _ = _envelope(self.fetch(page - 1, self.limit), route)
        if [route.identity(item) for item in again] != self.prev_ids:
            raise CoinStatsListChangedError(
                f"CoinStats {route.path} changed while it was read (page {page - 1} is no longer what it "
                "was): items were added or removed upstream between page reads."
            )
        log.info(
            "CoinStats %s page %d starts like page %d ends; page %d is unchanged, so these are identical items",
            route.path,
            page,
            page - 1,
            page - 1,
        )

    def accept(self, items: list[dict[str, Any]], ids: list[str]) -> None:
        """Remember ``items`` as the previous page."""
        if self.ordered and not _newest_first(items, self.route.date_field):
            self.ordered = False
            log.debug("CoinStats %s is not newest-first; the date check is off", self.route.path)
        self.prev_ids = ids
        self.prev_last = items[-1] if items else None


def iter_pages(
    fetch: Fetch,
    route: PagedRoute,
    *,
    page_size: int = MAX_PAGE_SIZE,
    start_page: int = 1,
    max_pages: int = DEFAULT_MAX_PAGES,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the non-empty pages of one stream; return only after its end is proven.

    :param fetch: ``fetch(page, limit)``: one paged request, returning the decoded body.
    :param route: The route's envelope keys, item identity and order field.
    :param page_size: Items per page asked for (``limit``), 1 to 100.
    :param start_page: First page to read (1-based).
    :param max_pages: Most pages this stream may read (a boundary's one re-read not counted).
    :raises CoinStatsListChangedError: The list changed between page reads; restart the stream.
    :raises CoinStatsResponseError: The server's paging cannot be trusted (see the module docstring).
    """
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise CoinStatsConfigError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}.")
    if start_page < 1 or max_pages < 1:
        raise CoinStatsConfigError("start_page and max_pages must be at least 1.")
    stream = _Stream(fetch, route, page_size)
    page = start_page
    for read in range(max_pages):
        items, has_meta = stream.read(page, first=read == 0)
        ids = [route.identity(item) for item in items]
        stream.check_boundary(page, items, ids)
        if not items:
            return
        yield items
        if len(items) < stream.limit:
            if read > 0 or has_meta or not _may_be_cap(len(items)):
                return
            log.info(
                "CoinStats %s sent %d of %d items without paging meta; reading page %d with limit %d "
                "to rule out a server cap",
                route.path,
                len(items),
                stream.limit,
                page + 1,
                len(items),
            )
            stream.limit = len(items)
        stream.accept(items, ids)
        page += 1
    raise CoinStatsResponseError(
        f"CoinStats {route.path} did not end within {max_pages} pages; stopping so a pagination bug cannot "
        "burn credits. Raise max_pages if the portfolio really is that large.",
    )
