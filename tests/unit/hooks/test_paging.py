"""Offset paging that proves a stream whole: shifts between page reads, caps, bounds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from coinstats_provider.exceptions import CoinStatsConfigError, CoinStatsListChangedError, CoinStatsResponseError
from coinstats_provider.hooks import paging
from coinstats_provider.hooks.paging import iter_pages

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def tx(index: int, *, count: float | None = None, minutes: int | None = None) -> dict[str, Any]:
    """Transaction ``index`` (0 = newest), newest first by date."""
    moment = T0 - timedelta(minutes=index if minutes is None else minutes)
    return {
        "transactionType": "Buy",
        "date": moment.isoformat().replace("+00:00", "Z"),
        "coinData": {"identifier": "bitcoin", "count": float(index) if count is None else count},
        "profitLoss": {"profit": index * 1.5},
    }


class FakeServer:
    """An offset-paged list whose content tests can change between page reads."""

    def __init__(
        self,
        items: list[dict[str, Any]],
        *,
        cap: int | None = None,
        meta: bool = True,
        key: str = "data",
        on_read: Callable[[FakeServer, int], None] | None = None,
    ) -> None:
        self.items = items
        self.cap = cap
        self.meta = meta
        self.key = key
        self.on_read = on_read
        self.calls: list[tuple[int, int]] = []

    def fetch(self, page: int, limit: int) -> Any:
        self.calls.append((page, limit))
        served = min(limit, self.cap) if self.cap else limit
        start = (page - 1) * served
        body: dict[str, Any] = {self.key: [dict(i) for i in self.items[start : start + served]]}
        if self.meta:
            body["meta"] = {"page": page, "limit": served}
        if self.on_read is not None:
            self.on_read(self, len(self.calls))
        return body


def read_all(server: FakeServer, route: paging.PagedRoute = paging.TRANSACTIONS, **kwargs: Any) -> list[Any]:
    return [item for page in iter_pages(server.fetch, route, **kwargs) for item in page]


def test_short_last_page_ends_the_stream() -> None:
    server = FakeServer([tx(i) for i in range(7)])
    assert read_all(server, page_size=3) == server.items
    assert server.calls == [(1, 3), (2, 3), (3, 3)]


def test_exact_multiple_ends_on_an_empty_page() -> None:
    server = FakeServer([tx(i) for i in range(6)])
    assert read_all(server, page_size=3) == server.items
    assert server.calls == [(1, 3), (2, 3), (3, 3)]


def test_an_item_added_at_the_head_between_page_reads_abandons_the_stream() -> None:
    """Before: page 2 repeated page 1's last item (a phantom copy) and the new item was never read."""
    new = tx(-1)

    def add_after_first_page(server: FakeServer, reads: int) -> None:
        if reads == 1:
            server.items.insert(0, new)

    server = FakeServer([tx(i) for i in range(7)], on_read=add_after_first_page)
    seen: list[Any] = []
    pages = iter_pages(server.fetch, paging.TRANSACTIONS, page_size=3)
    with pytest.raises(CoinStatsListChangedError, match="changed while it was read"):
        seen.extend(item for page in pages for item in page)
    assert seen == server.items[1:4]  # only page 1 was handed out; no duplicate ever left the generator
    assert server.calls == [(1, 3), (2, 3), (1, 3)]  # the re-read of page 1 proved the shift
    assert CoinStatsListChangedError("x").retryable


def test_restarted_stream_reads_the_new_list_whole() -> None:
    fired: list[int] = []

    def add_once(server: FakeServer, reads: int) -> None:
        if reads == 2 and not fired:
            fired.append(reads)
            server.items.insert(0, tx(-1))

    server = FakeServer([tx(i) for i in range(7)], on_read=add_once)
    with pytest.raises(CoinStatsListChangedError):
        read_all(server, page_size=3)
    assert read_all(server, page_size=3) == server.items
    assert len(server.items) == 8


def test_many_items_added_at_the_head_are_caught_by_date_order() -> None:
    """More new items than a page holds: page 2's first item is from page 1, newer than page 1's last."""

    def add_burst(server: FakeServer, reads: int) -> None:
        if reads == 1:
            server.items[:0] = [tx(-10 + k) for k in range(5)]

    server = FakeServer([tx(i) for i in range(9)], on_read=add_burst)
    with pytest.raises(CoinStatsListChangedError):
        read_all(server, page_size=3)


def test_identical_transactions_across_a_boundary_are_kept_for_one_extra_read() -> None:
    twin = tx(2)
    items = [tx(0), tx(1), twin, dict(twin), tx(4), tx(5)]
    server = FakeServer(items)
    assert read_all(server, page_size=3) == items
    assert server.calls == [(1, 3), (2, 3), (1, 3), (3, 3)]


def test_a_capped_limit_reported_in_meta_becomes_the_page_size() -> None:
    """Before: a server capping limit=100 to 20 ended the stream after 20 items."""
    server = FakeServer([tx(i) for i in range(45)], cap=20)
    assert read_all(server, page_size=100) == server.items
    assert server.calls == [(1, 100), (2, 20), (3, 20)]


def test_a_silent_cap_without_meta_is_probed_once() -> None:
    server = FakeServer(
        [{"coin": {"identifier": f"c{i}"}, "count": i} for i in range(45)], cap=20, meta=False, key="result"
    )
    assert read_all(server, paging.COINS, page_size=100) == server.items
    assert server.calls == [(1, 100), (2, 20), (3, 20)]


def test_a_round_short_page_without_meta_costs_one_probe_when_it_really_is_the_end() -> None:
    server = FakeServer([{"coin": {"identifier": f"c{i}"}} for i in range(20)], meta=False, key="result")
    assert read_all(server, paging.COINS, page_size=100) == server.items
    assert server.calls == [(1, 100), (2, 20)]


def test_an_odd_short_page_without_meta_is_the_end() -> None:
    server = FakeServer([{"coin": {"identifier": f"c{i}"}} for i in range(17)], meta=False, key="result")
    assert read_all(server, paging.COINS, page_size=100) == server.items
    assert server.calls == [(1, 100)]


def test_a_smaller_limit_mid_stream_is_refused() -> None:
    server = FakeServer([tx(i) for i in range(10)])

    def shrink(srv: FakeServer, reads: int) -> None:
        if reads == 1:
            srv.cap = 2

    server.on_read = shrink
    with pytest.raises(CoinStatsResponseError, match="changed its page size") as info:
        read_all(server, page_size=3)
    assert info.value.retryable


def test_wrong_meta_page_is_refused() -> None:
    def fetch(page: int, limit: int) -> Any:
        return {"data": [tx(0)] * 0 + [tx(page)], "meta": {"page": 1, "limit": limit}}

    with pytest.raises(CoinStatsResponseError, match="answered page 1 when page 2"):
        list(iter_pages(fetch, paging.TRANSACTIONS, page_size=1))


def test_more_items_than_asked_for_is_refused() -> None:
    def fetch(page: int, limit: int) -> Any:
        return {"data": [tx(i) for i in range(limit + 1)]}

    with pytest.raises(CoinStatsResponseError, match="4 items on page 1 for limit 3"):
        list(iter_pages(fetch, paging.TRANSACTIONS, page_size=3))


def test_the_same_page_twice_is_refused() -> None:
    def fetch(page: int, limit: int) -> Any:
        return {"data": [tx(0), tx(1)]}

    with pytest.raises(CoinStatsResponseError, match="same page twice"):
        list(iter_pages(fetch, paging.TRANSACTIONS, page_size=2))


def test_pages_are_bounded_without_a_credit_budget() -> None:
    calls: list[int] = []

    def endless(page: int, limit: int) -> Any:
        calls.append(page)
        return {"data": [tx(page * limit + k) for k in range(limit)]}

    with pytest.raises(CoinStatsResponseError, match="did not end within 5 pages"):
        list(iter_pages(endless, paging.TRANSACTIONS, page_size=2, max_pages=5))
    assert calls == [1, 2, 3, 4, 5]


def test_a_list_that_is_not_newest_first_turns_the_date_check_off() -> None:
    items = [tx(i, minutes=m) for i, m in enumerate([5, 9, 1, 3, 8, 2, 7])]
    server = FakeServer(items)
    assert read_all(server, page_size=3) == items
    assert server.calls == [(1, 3), (2, 3), (3, 3)]


def test_market_fields_do_not_make_an_item_look_new() -> None:
    item = tx(3)
    moved = {**item, "profitLoss": {"profit": 99.0}, "note": "edited", "portfolioInfo": {"name": "x"}}
    assert paging.transaction_identity(item) == paging.transaction_identity(moved)
    assert paging.transaction_identity(item) != paging.transaction_identity(tx(3, count=3.5))
    coin = {"coin": {"identifier": "bitcoin"}, "price": {"USD": 1}}
    assert paging.coin_identity(coin) == paging.coin_identity({**coin, "price": {"USD": 2}})


@pytest.mark.parametrize(("size", "start", "most"), [(0, 1, 1), (101, 1, 1), (10, 0, 1), (10, 1, 0)])
def test_bad_arguments_are_refused_before_any_call(size: int, start: int, most: int) -> None:
    def fetch(page: int, limit: int) -> Any:
        raise AssertionError("no call may be sent")

    with pytest.raises(CoinStatsConfigError):
        list(iter_pages(fetch, paging.TRANSACTIONS, page_size=size, start_page=start, max_pages=most))
