"""The run plan over the opt-in datasets: least costs, per-dataset budgets, the cost line and the summary."""

from __future__ import annotations

import pytest

from coinstats_provider.credits import CREDIT_COSTS, POLL_COST, SYNC_COST
from coinstats_provider.exceptions import CoinStatsConfigError
from coinstats_provider.pipeline import (
    DATASET_MIN_CREDITS,
    check_budget_covers,
    cost_plan,
    expected_credits,
    format_summary,
    min_credits_per_portfolio,
    plan_dataset_budgets,
    summarize,
)
from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS

ALL = list(DATASETS)


def test_every_dataset_has_its_contract_cost() -> None:
    assert set(DATASET_MIN_CREDITS) == set(DATASETS)
    assert DATASET_MIN_CREDITS["chart"] == CREDIT_COSTS[("GET", "/portfolio/chart")] == 10
    assert DATASET_MIN_CREDITS["defi"] == CREDIT_COSTS[("GET", "/portfolio/defi")] == 400
    assert DATASET_MIN_CREDITS["snapshot"] == CREDIT_COSTS[("GET", "/portfolio/snapshot/items")] == 500


def test_least_cost_per_portfolio_sums_the_selected_datasets() -> None:
    assert min_credits_per_portfolio(["value", "coins", "transactions"]) == SYNC_COST + POLL_COST + 10 + 8 + 4
    assert min_credits_per_portfolio(ALL) == SYNC_COST + POLL_COST + 10 + 8 + 4 + 10 + 400 + 500
    assert min_credits_per_portfolio([]) == SYNC_COST + POLL_COST
    with pytest.raises(CoinStatsConfigError, match="Unknown dataset 'balances'"):
        min_credits_per_portfolio(["balances"])


def test_budget_check_names_the_expensive_dataset() -> None:
    check_budget_covers(None, 100, ALL)
    check_budget_covers(1 + 10 + 33 + 22 + 500, 1, ["value", "coins", "transactions", "snapshot"])
    with pytest.raises(CoinStatsConfigError) as caught:
        check_budget_covers(1000, 2, ["value", "defi", "snapshot"])
    message = str(caught.value)
    assert "cannot cover 2 account(s)" in message
    assert "defi alone costs 400 per portfolio, snapshot alone costs 500 per portfolio" in message


def test_each_dataset_gets_its_least_cost_plus_an_equal_part() -> None:
    sync_budget, loads = plan_dataset_budgets(5000, 11, 2, ["value", "snapshot"], 1800, 30)
    assert loads is not None
    assert sync_budget is not None
    share = (5000 - 11) // 2
    assert set(loads) == {"value", "snapshot"}
    assert loads["snapshot"] - loads["value"] == 500 - 10
    assert sync_budget + sum(loads.values()) <= share
    assert plan_dataset_budgets(None, 0, 3, ALL, 1800, 30) == (None, None)
    assert plan_dataset_budgets(100, 0, 0, ["value"], 1800, 30) == (0, {"value": 0})


def test_a_budget_below_the_selection_fails_before_loading() -> None:
    minimum = min_credits_per_portfolio(["snapshot"])
    assert plan_dataset_budgets(minimum, 0, 1, ["snapshot"], 1800, 30) == (SYNC_COST + POLL_COST, {"snapshot": 500})
    with pytest.raises(CoinStatsConfigError, match=r"at least 533 for snapshot\). Raise the budget, select fewer"):
        plan_dataset_budgets(minimum - 1, 0, 1, ["snapshot"], 1800, 30)


def test_cost_plan_warns_for_expensive_datasets_without_a_budget() -> None:
    assert expected_credits(100, ["value", "defi", "snapshot"]) == {
        "connect": 1100,
        "sync": 3300,
        "value": 1000,
        "defi": 40_000,
        "snapshot": 50_000,
        "total": 95_400,
    }
    line, warn = cost_plan(100, ["snapshot", "value", "defi"], None)
    assert warn
    assert "100 account(s) x datasets value, defi, snapshot cost at least 95400 credits" in line
    assert "defi and snapshot alone cost at least 90000 credits and no credit budget caps this run" in line
    assert "set the credit_budget Param" in line
    capped, warn = cost_plan(100, ["value", "defi"], 200_000)
    assert not warn
    assert capped.endswith("budget: 200000.")
    assert not cost_plan(2, ["value", "coins", "transactions"], None)[1]
    assert not cost_plan(1, ["snapshot"], None)[1]  # 500 credits: logged, not worth a warning


def test_summary_shows_the_opt_in_datasets_only_when_loaded() -> None:
    accounts = [
        {
            "exchange_conn_id": "wallet_eth",
            "portfolio_id": "pf-1",
            "connection_id": "ethereum",
            "status": "connected",
            "credits_spent": 40,
        }
    ]
    loads = [
        {"portfolio_id": "pf-1", "table": DATASET_TABLES["value"], "rows": 1, "credits_spent": 10},
        {"portfolio_id": "pf-1", "table": DATASET_TABLES["chart"], "rows": 30, "credits_spent": 10},
        {"portfolio_id": "pf-1", "table": DATASET_TABLES["snapshot"], "rows": 2, "credits_spent": 500},
    ]
    summary = summarize(accounts, [], loads)
    assert summary["total_credits"] == 560
    header, row = format_summary(summary).splitlines()[:2]
    assert header.split()[:8] == ["portfolio", "status", "value", "coins", "txns", "chart", "snaps", "credits"]
    assert row.split()[:8] == ["pf-1", "connected", "1", "0", "0", "30", "2", "560"]
    plain = format_summary(summarize(accounts, [], loads[:1])).splitlines()[0]
    assert "chart" not in plain
