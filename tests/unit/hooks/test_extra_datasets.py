"""CoinStatsHook's chart, DeFi and snapshot endpoints, and the timestamp rule of the chart rows."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from coinstats_provider.exceptions import CoinStatsConfigError, CoinStatsResponseError
from coinstats_provider.warehouse.transform import InvalidItemError, chart_rows, chart_timestamp, snapshot_rows
from coinstats_provider.warehouse.values import FieldError
from tests.conftest import BASE_URL
from tests.unit.hooks.helpers import make_hook

CHART_URL = BASE_URL + "/portfolio/chart"
DEFI_URL = BASE_URL + "/portfolio/defi"
SNAPSHOT_URL = BASE_URL + "/portfolio/snapshot/items"


def query(call: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(call.request.url).query)


def test_chart_sends_the_type_and_returns_exact_points(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    route = rsps.get(CHART_URL, body='{"result": [[1755864000000, 297711.24614580005, 2.65026183, 69.53175117]]}')
    hook, _ = make_hook()
    points = hook.get_portfolio_chart("pf-1", "all")
    assert query(route.calls[0]) == {"portfolioId": ["pf-1"], "type": ["all"]}
    assert points == [[1755864000000, Decimal("297711.24614580005"), Decimal("2.65026183"), Decimal("69.53175117")]]
    assert hook.credits.spent == 10


@pytest.mark.parametrize("chart_type", ["2y", "", None, "1M", "all "])
def test_chart_type_outside_the_enum_is_refused_unsent(
    coinstats_conn: Any, rsps: responses.RequestsMock, chart_type: Any
) -> None:
    hook, _ = make_hook()
    with pytest.raises(CoinStatsConfigError, match=r"is not one CoinStats serves\. Choose one of 24h, 1w, 1m"):
        hook.get_portfolio_chart("pf-1", chart_type)
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("body", [{"data": []}, [], {"result": {"a": 1}}])
def test_chart_without_a_result_list_is_a_response_error(
    coinstats_conn: Any, rsps: responses.RequestsMock, body: Any
) -> None:
    rsps.get(CHART_URL, json=body)
    hook, _ = make_hook()
    with pytest.raises(CoinStatsResponseError, match="without a list under 'result'"):
        hook.get_portfolio_chart("pf-1", "1m")


def test_defi_costs_400_and_tolerates_a_missing_protocol_list(
    coinstats_conn: Any, rsps: responses.RequestsMock
) -> None:
    rsps.get(DEFI_URL, json={"totalAssets": {"USD": 0}})
    hook, _ = make_hook()
    assert hook.get_portfolio_defi("pf-w")["protocols"] == []
    assert hook.credits.spent == 400
    rsps.replace(responses.GET, DEFI_URL, json={"protocols": "none"})
    with pytest.raises(CoinStatsResponseError, match="'protocols' that is not a list"):
        hook.get_portfolio_defi("pf-w")


def test_snapshots_page_the_window_and_stop_on_a_short_page(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    items = [{"date": f"2026-02-{d:02d}T00:00:00.000Z"} for d in range(1, 4)]

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        page, limit = int(query_of(request)["page"][0]), int(query_of(request)["limit"][0])
        return 200, {}, json.dumps({"result": items[(page - 1) * limit : page * limit]})

    route = rsps.add_callback(responses.GET, SNAPSHOT_URL, callback=answer)
    hook, _ = make_hook()
    window = {"date_from": dt.date(2026, 2, 1), "date_to": dt.date(2026, 2, 3)}
    pages = list(hook.iter_portfolio_snapshots("pf-1", page_size=2, **window))
    assert pages == [items[:2], items[2:]]
    first = query(route.calls[0])
    assert (first["from"], first["to"], first["page"], first["limit"]) == (["2026-02-01"], ["2026-02-03"], ["1"], ["2"])
    assert hook.credits.spent == 2 * 500
    # A server that ignores paging (the same page again) is stopped instead of paid for on and on.
    rsps.replace(responses.GET, SNAPSHOT_URL, json={"result": items[:2]})
    with pytest.raises(CoinStatsResponseError, match="returned the same page twice"):
        list(hook.iter_portfolio_snapshots("pf-1", page_size=2, **window))
    with pytest.raises(CoinStatsConfigError, match="'from' is after 'to'"):
        hook.iter_portfolio_snapshots("pf-1", date_from=dt.date(2026, 2, 3), date_to=dt.date(2026, 2, 1))


def query_of(request: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.url).query)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1755864000000, "2025-08-22T12:00:00+00:00"),  # milliseconds
        (1755864000, "2025-08-22T12:00:00+00:00"),  # seconds
        (Decimal("1755864000.5"), "2025-08-22T12:00:00.500000+00:00"),
        ("1438905600", "2015-08-07T00:00:00+00:00"),  # the coin-chart example, seconds
        (99_999_999_999, "5138-11-16T09:46:39+00:00"),  # the largest value read as seconds
        (100_000_000_000, "1973-03-03T09:46:40+00:00"),  # the smallest read as milliseconds
        (0, "1970-01-01T00:00:00+00:00"),
    ],
)
def test_chart_timestamps_are_seconds_or_milliseconds_by_magnitude(raw: Any, expected: str) -> None:
    assert chart_timestamp(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(-1, "before 1970"), (None, "missing"), ("soon", "not a number"), (10**20, "after the year 9999")],
)
def test_impossible_timestamps_are_refused(raw: Any, reason: str) -> None:
    with pytest.raises(FieldError, match=reason):
        chart_timestamp(raw)


def test_chart_rows_keep_the_last_of_a_repeated_point_and_name_bad_ones_by_position() -> None:
    rows = chart_rows("pf", "1m", [[1755864000, 1], [1755864000000, 2, 3, 4]])
    assert [(r["ts"], r["value_usd"], r["value_eth"]) for r in rows] == [("2025-08-22T12:00:00+00:00", 2, 4)]
    with pytest.raises(InvalidItemError, match=r"portfolio chart item #1: field '\[1\] USD' is not a number"):
        chart_rows("pf", "1m", [[1755864000, 1], [1755864001, "NaN-secret"]])
    with pytest.raises(InvalidItemError, match="item #0: field 'point'"):
        chart_rows("pf", "1m", [{"ts": 1}])


def test_snapshot_rows_read_dates_as_utc() -> None:
    item = {"date": "2026-02-27T10:00:00.000+02:00", "coinBalances": [], "totalBalance": 1}
    (row,) = snapshot_rows("pf", [item])
    assert row["snapshot_at"] == "2026-02-27T08:00:00+00:00"
    assert row["coin_balances_json"] == "[]"
    with pytest.raises(InvalidItemError, match=r"portfolio snapshots item #0: field 'coinBalances\[0\].balance'"):
        snapshot_rows("pf", [{**item, "coinBalances": [{"balance": "lots"}]}])
    with pytest.raises(InvalidItemError, match="field 'date' is not an ISO 8601 date-time"):
        snapshot_rows("pf", [{**item, "date": "yesterday"}])
