"""The sandbox's chart, DeFi and snapshot routes: contract shapes, determinism, paging, errors and credits."""

from __future__ import annotations

import datetime as dt

from include.coinstats_sandbox.datasets import CHART_STEPS
from tests.unit.test_sandbox import StartSandbox, assert_operation, sandbox  # noqa: F401  (fixture)
from tests.unit.test_sandbox import assert_component as assert_schema


def test_chart_every_type_answers_the_contract_shape_deterministically(sandbox: StartSandbox) -> None:  # noqa: F811
    client = sandbox(sync_seconds=0, coins=4)
    pid = client.connect_id()
    units = set()
    for chart_type, (count, step, millis) in CHART_STEPS.items():
        body = assert_operation(
            client.get("/portfolio/chart", portfolioId=pid, type=chart_type), "GET", "/portfolio/chart"
        )
        points = body["result"]
        assert len(points) == count
        assert all(len(point) == 4 and point[1] > 0 for point in points)
        stamps = [point[0] for point in points]
        assert stamps == sorted(stamps)
        scale = 1000 if millis else 1
        assert stamps[1] - stamps[0] == step * scale
        units.add(stamps[0] >= 100_000_000_000)
        # The same portfolio always answers the same points.
        assert client.get("/portfolio/chart", portfolioId=pid, type=chart_type).json() == body
    assert units == {True, False}  # milliseconds and seconds both occur
    assert client.get("/portfolio/chart", portfolioId=pid, type="2y").status_code == 400
    assert client.get("/portfolio/chart", portfolioId=pid).status_code == 400
    assert client.get("/portfolio/chart", portfolioId="0" * 24, type="1m").status_code == 404


def test_defi_positions_follow_the_contract_and_differ_per_portfolio(sandbox: StartSandbox) -> None:  # noqa: F811
    client = sandbox(sync_seconds=0)
    first = client.connect_id()
    second = client.connect_id(apiKey="key-2")
    bodies = []
    for pid in (first, second):
        body = assert_operation(client.get("/portfolio/defi", portfolioId=pid), "GET", "/portfolio/defi")
        assert_schema(body, "DefiResponseDto")
        assert 1 <= len(body["protocols"]) <= 3
        assets = [a for p in body["protocols"] for i in p["investments"] for a in i["assets"]]
        assert assets
        assert all(a["amount"] > 0 for a in assets)
        assert client.get("/portfolio/defi", portfolioId=pid).json() == body
        bodies.append(body)
    assert bodies[0] != bodies[1]
    empty = client.connect_id(apiKey="empty-account")
    assert client.get("/portfolio/defi", portfolioId=empty).json()["protocols"] == []


def test_snapshots_one_per_day_chronological_and_paged(sandbox: StartSandbox) -> None:  # noqa: F811
    client = sandbox(sync_seconds=0, coins=7)
    pid = client.connect_id()
    window = {"portfolioId": pid, "from": "2026-02-01", "to": "2026-02-10"}
    body = assert_operation(client.get("/portfolio/snapshot/items", **window), "GET", "/portfolio/snapshot/items")
    items = body["result"]
    assert [item["date"] for item in items] == [f"2026-02-{day:02d}T00:00:00.000Z" for day in range(1, 11)]
    assert all(len(item["coinBalances"]) == 5 for item in items)
    pages = client.all_pages("/portfolio/snapshot/items", "result", 4, **window)
    assert [len(page) for page in pages] == [4, 4, 2]
    assert [item for page in pages for item in page] == items
    for bad in ({"from": "2026-02-10", "to": "2026-02-01"}, {"from": "yesterday", "to": "2026-02-01"}, {}):
        assert client.get("/portfolio/snapshot/items", portfolioId=pid, **bad).status_code == 400
    assert dt.date.fromisoformat(items[-1]["date"][:10]) == dt.date(2026, 2, 10)


def test_the_new_routes_charge_their_contract_credits(sandbox: StartSandbox) -> None:  # noqa: F811
    client = sandbox(sync_seconds=0, credits=11 + 10 + 400 + 500 + 499)
    pid = client.connect_id()  # 10
    assert client.get("/exchange/support").status_code == 200  # 1
    assert client.get("/portfolio/chart", portfolioId=pid, type="24h").status_code == 200
    assert client.get("/portfolio/chart", portfolioId=pid, type="bad").status_code == 400  # not charged
    assert client.get("/portfolio/defi", portfolioId=pid).status_code == 200
    window = {"portfolioId": pid, "from": "2026-02-01", "to": "2026-02-02"}
    assert client.get("/portfolio/snapshot/items", **window).status_code == 200
    # 499 left: a second snapshot page is refused with 406 and not charged.
    assert client.get("/portfolio/snapshot/items", **window).status_code == 406
    assert client.server.stats()["credits_by_path"] == {
        "POST /portfolio/exchange": 10,
        "GET /exchange/support": 1,
        "GET /portfolio/chart": 10,
        "GET /portfolio/defi": 400,
        "GET /portfolio/snapshot/items": 500,
    }
