"""Unit tests of the transport's credit accounting: meter totals, budget before every attempt, cost table."""

from __future__ import annotations

from typing import Any

import pytest
import responses

from coinstats_provider.credits import CREDIT_COSTS, CreditMeter, credit_cost
from coinstats_provider.exceptions import (
    CoinStatsCreditBudgetExceeded,
)
from tests.conftest import SUPPORT
from tests.unit.hooks.helpers import (
    CONNECT_URL,
    CONNECTED,
    FAST,
    FIELDS,
    STATUS_URL,
    SUPPORT_URL,
    calls_to,
    make_hook,
)

# -- credits ---------------------------------------------------------------------------------------


def test_credit_meter_totals(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=CONNECTED)
    hook, _ = make_hook()

    hook.get_supported_exchanges()
    hook.connect_exchange_portfolio("binance", FIELDS)

    assert hook.credits.spent == 11
    assert hook.credits.calls == {"GET /exchange/support": 1, "POST /portfolio/exchange": 1}
    assert hook.credits.remaining is None


def test_credit_budget_blocks_call_before_sending(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn(extra={**FAST, "credit_budget": 10})
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=CONNECTED)
    hook, _ = make_hook()

    hook.get_supported_exchanges()
    with pytest.raises(CoinStatsCreditBudgetExceeded, match="POST /portfolio/exchange costs 10") as info:
        hook.connect_exchange_portfolio("binance", FIELDS)

    assert len(rsps.calls) == 1
    assert calls_to(rsps, "POST", CONNECT_URL) == []
    assert hook.credits.spent == 1
    assert hook.credits.remaining == 9
    assert info.value.retryable is False


def test_credit_budget_exactly_enough(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn(extra={**FAST, "credit_budget": 11})
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=CONNECTED)
    hook, _ = make_hook()

    hook.get_supported_exchanges()
    hook.connect_exchange_portfolio("binance", FIELDS)

    assert hook.credits.remaining == 0
    assert len(rsps.calls) == 2


def test_credit_budget_argument_overrides_extra(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn(extra={**FAST, "credit_budget": 1000})
    hook, _ = make_hook(credit_budget=0)

    with pytest.raises(CoinStatsCreditBudgetExceeded):
        hook.get_supported_exchanges()

    assert len(rsps.calls) == 0


def test_failed_attempts_are_not_billed(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(STATUS_URL, status=503, json={"statusCode": 503, "message": "Service Unavailable"})
    rsps.get(STATUS_URL, json={"status": "synced"})
    hook, _ = make_hook()

    hook.get_portfolio_sync_status("pf-1")

    assert hook.credits.spent == 3
    assert hook.credits.retries == 1


@pytest.mark.parametrize(
    ("method", "path", "params", "cost"),
    [
        ("GET", "/exchange/support", None, 1),
        ("POST", "/portfolio/exchange", None, 10),
        ("PATCH", "/portfolio/sync", {"portfolioId": "pf-1"}, 30),
        ("patch", "/portfolio/sync", {"portfolioId": "pf-1"}, 30),
        ("PATCH", "/portfolio/sync", None, 300),
        ("PATCH", "/portfolio/sync", {}, 300),
        ("PATCH", "/portfolio/sync", {"portfolioId": ""}, 300),
        ("GET", "/portfolio/status", {"portfolioId": "pf-1"}, 3),
        ("GET", "/portfolio/value", {"portfolioId": "pf-1"}, 10),
        ("GET", "/portfolio/coins", {"portfolioId": "pf-1"}, 8),
        ("GET", "/portfolio/transactions", {"portfolioId": "pf-1"}, 4),
        ("GET", "/usage/credits", None, 0),
    ],
)
def test_credit_cost_table(method: str, path: str, params: dict[str, Any] | None, cost: int) -> None:
    assert credit_cost(method, path, params) == cost


def test_credit_cost_unknown_route() -> None:
    with pytest.raises(ValueError, match="CREDIT_COSTS"):
        credit_cost("PUT", "/portfolio/pf-1")
    with pytest.raises(ValueError, match="CREDIT_COSTS"):
        credit_cost("DELETE", "/portfolio/pf-1/coins")
    assert ("GET", "/usage/credits") in CREDIT_COSTS


def test_credit_meter_unit() -> None:
    meter = CreditMeter(budget=12)
    meter.check("GET", "/portfolio/coins", 8)
    meter.record("GET", "/portfolio/coins", 8)
    with pytest.raises(CoinStatsCreditBudgetExceeded, match="8 of the budget of 12"):
        meter.check("GET", "/portfolio/coins", 8)
    meter.check("GET", "/portfolio/status", 3)
    assert meter.remaining == 4
    with pytest.raises(ValueError):
        CreditMeter(budget=-1)


def test_a_call_over_budget_is_refused_with_the_whole_story() -> None:
    meter = CreditMeter(10)
    meter.record("GET", "/portfolio/value", 5)
    with pytest.raises(CoinStatsCreditBudgetExceeded) as info:
        meter.check("GET", "/portfolio/value", 10)

    assert str(info.value) == (
        "Credit budget exceeded: GET /portfolio/value costs 10 credits, 5 of the budget of 10 are already spent. "
        "The call was not sent. Raise the budget (connection extra 'credit_budget' or the DAG's credit budget "
        "Param) or sync fewer datasets."
    )


def test_calls_are_counted_per_route() -> None:
    meter = CreditMeter()
    for _ in range(3):
        meter.record("GET", "/portfolio/value", 10)
    meter.record("PATCH", "/portfolio/sync", 30)

    assert sorted(meter.calls.values()) == [1, 3]
    assert meter.spent == 60
