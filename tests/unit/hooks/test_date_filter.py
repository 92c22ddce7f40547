"""The transactions ``from`` filter: how it is sent, and the pages that prove it was not applied."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from coinstats_provider.exceptions import CoinStatsConfigError, CoinStatsFilterIgnoredError
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.date_filter import filtered_pages, from_param
from tests.conftest import BASE_URL, CANARIES, set_connection

SINCE = datetime(2026, 2, 26, 11, 5, 33, 635_999, tzinfo=UTC)


def item(date: Any) -> dict[str, Any]:
    return {"transactionType": "Buy", "date": date, "coinData": {"identifier": "bitcoin", "count": 1}}


def test_from_is_iso_8601_utc_with_milliseconds() -> None:
    assert from_param(SINCE) == "2026-02-26T11:05:33.635Z"
    assert from_param(SINCE.astimezone(timezone(timedelta(hours=5)))) == "2026-02-26T11:05:33.635Z"
    with pytest.raises(CoinStatsConfigError, match="timezone-aware"):
        from_param(datetime(2026, 2, 26))


def test_pages_at_or_after_from_pass_through() -> None:
    pages = [[item("2026-02-27T00:00:00.000Z"), item("2026-02-26T11:05:33.635Z")], []]
    assert list(filtered_pages(iter(pages), SINCE, path="/portfolio/transactions")) == pages


@pytest.mark.parametrize(
    ("date", "seen"),
    [
        ("2026-02-26T11:05:33.634Z", "an item dated 2026-02-26T11:05:33.634Z"),
        ("garbage", "an item without a readable date"),
    ],
)
def test_an_item_before_from_proves_the_filter_was_ignored(date: str, seen: str) -> None:
    pages = iter([[item("2026-02-27T00:00:00.000Z")], [item(date)]])
    stream = filtered_pages(pages, SINCE, path="/portfolio/transactions")
    assert next(stream) == [item("2026-02-27T00:00:00.000Z")]
    with pytest.raises(CoinStatsFilterIgnoredError) as info:
        next(stream)
    assert f"answered {seen} on page 2 of a read with from=2026-02-26T11:05:33.635Z" in str(info.value)
    assert not info.value.retryable


@responses.activate
def test_the_hook_sends_from_and_checks_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "coinstats_default", conn_type="coinstats", password=CANARIES["api_key"])
    url = BASE_URL + "/portfolio/transactions"
    responses.get(url, json={"data": [item("2026-02-26T00:00:00.000Z")], "meta": {"page": 1, "limit": 100}})
    pages = CoinStatsHook().iter_portfolio_transactions("pf", since=SINCE)
    with pytest.raises(CoinStatsFilterIgnoredError, match="the date filter was not applied"):
        list(pages)
    query = parse_qs(urlsplit(responses.calls[0].request.url).query)
    assert query["from"] == ["2026-02-26T11:05:33.635Z"]
    assert len(responses.calls) == 1  # abandoned after the first page
