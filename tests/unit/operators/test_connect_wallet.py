"""Unit tests of ConnectWalletPortfolioOperator and DeletePortfolioOperator (execute with a fake context)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import responses
from airflow.sdk.exceptions import AirflowFailException

from coinstats_provider.operators.connect import ConnectWalletPortfolioOperator
from coinstats_provider.operators.delete import DeletePortfolioOperator
from tests.conftest import BASE_URL, set_connection
from tests.unit.operators.test_connect import FakeTI

BLOCKCHAINS = [{"connectionId": "ethereum", "name": "Ethereum", "icon": "i", "chain": "ethereum"}]
ADDRESS = "0x" + "ab12cd34ef" * 4
SHORT = f"{ADDRESS[:4]}…{ADDRESS[-4:]}"


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def wallet(monkeypatch: pytest.MonkeyPatch, coinstats_conn: Any) -> Any:
    def make(login: str = ADDRESS, chain: str = "ethereum") -> None:
        extra = {"connection_id": chain, "portfolio_name": "Cold"}
        set_connection(monkeypatch, "wallet_eth", conn_type="coinstats_wallet", login=login, extra=extra)

    make()
    return make


@pytest.mark.parametrize("status", ["connected", "existing"])
def test_connect_wallet(wallet: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture, status: str) -> None:
    rsps.get(BASE_URL + "/wallet/blockchains", json=BLOCKCHAINS)
    rsps.post(
        BASE_URL + "/portfolio/wallet", json={"portfolioId": "pf-w", "connectionId": "ethereum", "status": status}
    )
    ti = FakeTI()
    op = ConnectWalletPortfolioOperator(task_id="connect", wallet_conn_id="wallet_eth")

    assert op.execute({"ti": ti}) == "pf-w"  # type: ignore[arg-type]

    # The same XCom contract as the exchange connect.
    assert ti.pushed == [
        ("portfolio_url", "https://coinstats.app/portfolio"),
        ("connection_id", "ethereum"),
        ("status", status),
        ("credits_spent", 41),
    ]
    assert json.loads(rsps.calls[1].request.body) == {"address": ADDRESS, "connectionId": "ethereum", "name": "Cold"}
    assert f"'wallet_eth' (ethereum {SHORT})" in logs.text
    # The address is personal: never whole in a log line at INFO or above.
    assert not [r for r in logs.records if r.levelno >= 20 and ADDRESS in r.getMessage()]
    assert op.map_index_template == "{{ task.wallet_conn_id }}"


def test_unknown_blockchain_costs_only_the_list(wallet: Any, rsps: responses.RequestsMock) -> None:
    wallet(chain="dogechain")
    rsps.get(BASE_URL + "/wallet/blockchains", json=BLOCKCHAINS)
    ti = FakeTI()
    with pytest.raises(AirflowFailException, match="'dogechain', which GET /wallet/blockchains does not list"):
        ConnectWalletPortfolioOperator(task_id="connect", wallet_conn_id="wallet_eth").execute({"ti": ti})  # type: ignore[arg-type]
    assert [c.request.method for c in rsps.calls] == ["GET"]


def test_empty_address_sends_nothing(wallet: Any, rsps: responses.RequestsMock) -> None:
    wallet(login="")
    with pytest.raises(AirflowFailException, match="has no address"):
        ConnectWalletPortfolioOperator(task_id="connect", wallet_conn_id="wallet_eth").execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert len(rsps.calls) == 0


def test_delete(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.delete(BASE_URL + "/portfolio/pf-1", json={"message": "Portfolio deleted successfully"})
    ti = FakeTI()
    op = DeletePortfolioOperator(task_id="delete", portfolio_id="pf-1", account="wallet_eth")
    assert op.execute({"ti": ti}) == {  # type: ignore[arg-type]
        "portfolio_id": "pf-1",
        "account": "wallet_eth",
        "deleted": True,
        "credits_spent": 10,
    }
    assert ti.pushed == [("credits_spent", 10)]


def test_delete_of_a_portfolio_already_gone(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.delete(BASE_URL + "/portfolio/pf-1", status=404, json={"statusCode": 404, "message": "Portfolio not found"})
    result = DeletePortfolioOperator(task_id="delete", portfolio_id="pf-1").execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert (result["deleted"], result["credits_spent"]) == (False, 0)


def test_delete_budget_spent_by_earlier_tries(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    from tests.unit.test_bad_input_matrix import FakeTaskStateStore

    op = DeletePortfolioOperator(task_id="delete", portfolio_id="pf-1", hook_params={"credit_budget": 10})
    store = FakeTaskStateStore({"coinstats_credits_spent": 10})
    with pytest.raises(AirflowFailException, match="Credit budget used up"):
        op.execute({"ti": FakeTI(), "task_state_store": store})  # type: ignore[arg-type]
    assert len(rsps.calls) == 0


def test_delete_server_error_is_left_to_airflow_retries(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.delete(BASE_URL + "/portfolio/pf-1", status=503, json={"statusCode": 503, "message": "Service Unavailable"})
    from coinstats_provider.exceptions import CoinStatsServerError

    with pytest.raises(CoinStatsServerError):
        DeletePortfolioOperator(task_id="delete", portfolio_id="pf-1").execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert len(rsps.calls) == 4  # the hook's own retries (max_retries 3), then Airflow's
