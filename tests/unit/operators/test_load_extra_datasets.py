"""LoadPortfolioOperator on the opt-in datasets (chart, defi, snapshot), HTTP mocked, real SQLite warehouse."""
# ruff: noqa: F811  (pytest fixtures imported from test_load)

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from airflow.sdk.exceptions import AirflowFailException

from coinstats_provider.operators.load import LoadPortfolioOperator, snapshot_window
from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from coinstats_provider.warehouse.schema import CHART_TABLE, DEFI_TABLE, SNAPSHOTS_TABLE
from tests.conftest import BASE_URL
from tests.unit.operators.test_load import PID, FakeTI, context, rsps, warehouse  # noqa: F401  (fixtures)

START = dt.datetime(2026, 2, 26, tzinfo=dt.UTC)
END = dt.datetime(2026, 2, 27, tzinfo=dt.UTC)
#: 2025-08-22T12:00:00Z in milliseconds and 2025-08-23T12:00:00Z in seconds: both units in one answer.
CHART = {
    "result": [
        [1755864000000, "297711.24614580005", 2.65026183, 69.53175117],
        [1755950400, 300000.5, 2.7, 70],
    ]
}
DEFI = {
    "totalAssets": {"USD": 1500, "BTC": 0.02, "ETH": 0.5},
    "protocols": [
        {
            "id": "aave-v3",
            "name": "Aave V3",
            "logo": "x",
            "totalValue": {"USD": 1500, "BTC": 0.02, "ETH": 0.5},
            "blockchain": {"name": "Ethereum", "icon": "y"},
            "chain": "ethereum",
            "walletAddress": "0xabc",
            "investments": [
                {
                    "id": "lending",
                    "name": "Lending",
                    "value": {"USD": 1500, "BTC": 0.02, "ETH": 0.5},
                    "symbols": "USDC + WETH",
                    "healthRate": 1.75,
                    "assets": [
                        {
                            "address": "0x1",
                            "title": "Supplied",
                            "coinId": "usd-coin",
                            "amount": "1000.000000000000000001",
                            "symbol": "USDC",
                            "price": {"USD": 1, "BTC": 0.0000154, "ETH": 0.0003},
                        },
                        {
                            "address": "0x2",
                            "title": "Supplied",
                            "amount": 0.15,
                            "symbol": "WETH",
                            "price": {"USD": 3200, "BTC": 0.05, "ETH": 1},
                        },
                    ],
                }
            ],
        }
    ],
}


def snapshot_item(day: int, balance: float) -> dict[str, Any]:
    return {
        "date": f"2026-02-{day:02d}T00:00:00.000Z",
        "coinBalances": [
            {
                "symbol": "BTC",
                "icon": "i",
                "quantity": 0.1,
                "balance": balance,
                "quantityChange": 0,
                "balanceChange": 1.5,
                "pricePerUnit": 65000,
                "pricePercentChange": 0.5,
            }
        ],
        "totalBalance": balance,
        "totalBalanceChange": 1.5,
        "totalBalancePercentChange": 0.02,
    }


def run(dataset: str, **kwargs: Any) -> dict[str, Any]:
    op = LoadPortfolioOperator(task_id=f"load_{dataset}", portfolio_id=PID, dataset=dataset, **kwargs)
    result: dict[str, Any] = op.execute(context(FakeTI(), data_interval_start=START, data_interval_end=END))
    return result


def table(name: str) -> list[tuple[Any, ...]]:
    return CoinStatsWarehouse().fetch_table(name, exclude=("loaded_at",))


def test_chart_detects_seconds_and_milliseconds_and_a_rerun_upserts(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    call = rsps.get(BASE_URL + "/portfolio/chart", json=CHART)

    result = run("chart", chart_type="1w")

    assert parse_qs(urlsplit(call.calls[0].request.url).query) == {"portfolioId": [PID], "type": ["1w"]}
    assert (result["rows"], result["credits_spent"], result["table"]) == (2, 10, CHART_TABLE)
    assert table(CHART_TABLE) == [
        (
            PID,
            "1w",
            "2025-08-22T12:00:00+00:00",
            Decimal("297711.24614580005"),
            Decimal("2.65026183"),
            Decimal("69.53175117"),
        ),
        (PID, "1w", "2025-08-23T12:00:00+00:00", Decimal("300000.5"), Decimal("2.7"), Decimal("70")),
    ]
    # A rerun with a moved last point and a new one: the old points stay, changed ones are rewritten.
    rsps.replace(
        responses.GET, BASE_URL + "/portfolio/chart", json={"result": [[1755950400000, 1, 2, 3], [1756036800, 4, 5, 6]]}
    )
    assert run("chart", chart_type="1w")["rows"] == 2
    stored = table(CHART_TABLE)
    assert [row[2] for row in stored] == [
        "2025-08-22T12:00:00+00:00",
        "2025-08-23T12:00:00+00:00",
        "2025-08-24T12:00:00+00:00",
    ]
    assert stored[1][3:] == (Decimal(1), Decimal(2), Decimal(3))


def test_chart_type_outside_the_enum_fails_before_any_call(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    with pytest.raises(AirflowFailException, match=r"Chart type '2y' is not one CoinStats serves.*24h, 1w, 1m"):
        run("chart", chart_type="2y")
    assert len(rsps.calls) == 0


def test_defi_loads_one_row_per_asset_for_a_wallet_and_replaces_the_day(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    rsps.get(BASE_URL + "/portfolio/defi", json=DEFI)

    result = run("defi", portfolio_kind="wallet")
    assert (result["rows"], result["credits_spent"]) == (2, 400)
    stored = CoinStatsWarehouse().fetch_table(DEFI_TABLE, exclude=("loaded_at", "snapshot_date"))
    usdc, weth = stored
    assert usdc[:5] == (PID, 0, 0, 0, "aave-v3")
    assert usdc[-4:] == (
        Decimal("1000.000000000000000001"),
        Decimal(1),
        Decimal("1000.000000000000000001"),
        Decimal(1500),
    )
    assert weth[3] == 1
    assert weth[-2] == Decimal("480.00")  # 0.15 * 3200, exact
    # The next answer of the day replaces the positions (an exited position disappears).
    rsps.replace(responses.GET, BASE_URL + "/portfolio/defi", json={"totalAssets": {}, "protocols": []})
    assert run("defi", portfolio_kind="wallet")["rows"] == 0
    assert table(DEFI_TABLE) == []


def test_defi_on_an_exchange_portfolio_sends_nothing_and_succeeds(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    ti = FakeTI()
    op = LoadPortfolioOperator(task_id="load_defi", portfolio_id=PID, dataset="defi")
    result = op.execute(context(ti, data_interval_end=END))

    assert (result["rows"], result["credits_spent"]) == (0, 0)
    assert "wallet portfolios only" in result["not_served"]
    assert ("credits_spent", 0) in ti.pushed
    assert len(rsps.calls) == 0


def test_unknown_portfolio_kind_is_refused(coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock) -> None:
    with pytest.raises(AirflowFailException, match="portfolio_kind 'vault' is unknown; use exchange or wallet"):
        run("value", portfolio_kind="vault")
    assert len(rsps.calls) == 0


def test_snapshot_asks_the_data_interval_and_upserts_by_day(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    call = rsps.get(
        BASE_URL + "/portfolio/snapshot/items", json={"result": [snapshot_item(26, 100), snapshot_item(27, 110)]}
    )

    result = run("snapshot")

    query = parse_qs(urlsplit(call.calls[0].request.url).query)
    assert (query["from"], query["to"], query["page"]) == (["2026-02-26"], ["2026-02-27"], ["1"])
    assert (result["rows"], result["credits_spent"]) == (2, 500)
    stored = table(SNAPSHOTS_TABLE)
    assert [row[1] for row in stored] == ["2026-02-26T00:00:00+00:00", "2026-02-27T00:00:00+00:00"]
    assert stored[0][2] == Decimal(100)
    assert stored[0][5] == 1
    assert '"balance":100' in stored[0][6]
    # A rerun rewrites the days it fetched and keeps the others.
    rsps.replace(responses.GET, BASE_URL + "/portfolio/snapshot/items", json={"result": [snapshot_item(27, 120)]})
    assert run("snapshot")["rows"] == 1
    assert [row[2] for row in table(SNAPSHOTS_TABLE)] == [Decimal(100), Decimal(120)]


def test_a_budget_mapping_gives_each_dataset_its_entry(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    rsps.get(BASE_URL + "/portfolio/snapshot/items", json={"result": []})
    with pytest.raises(AirflowFailException, match="costs 500 credits"):
        run("snapshot", credit_budget={"value": 10_000, "snapshot": 499})
    assert len(rsps.calls) == 0
    assert run("snapshot", credit_budget={"snapshot": 500})["credits_spent"] == 500


def test_snapshot_window_without_a_data_interval_is_the_run_date() -> None:
    assert snapshot_window({"data_interval_start": START, "data_interval_end": END}) == (START.date(), END.date())
    assert snapshot_window({"logical_date": END}) == (END.date(), END.date())
    now = dt.datetime(2026, 3, 1, 5, tzinfo=dt.UTC)
    assert snapshot_window({}, now=now) == (now.date(), now.date())
