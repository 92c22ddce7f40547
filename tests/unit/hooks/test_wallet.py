"""Unit tests of the wallet endpoints of CoinStatsHook, DELETE /portfolio/{id}, and CoinStatsWalletHook."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses

from coinstats_provider.credits import credit_cost, route_key
from coinstats_provider.exceptions import (
    CoinStatsBadRequestError,
    CoinStatsConfigError,
    CoinStatsNotFoundError,
    CoinStatsResponseError,
    CoinStatsTruncatedAnswerError,
    CoinStatsValidationError,
)
from coinstats_provider.hooks import support_cache
from coinstats_provider.hooks.wallet import CoinStatsWalletHook, WalletAccount, short_address
from coinstats_provider.models import ConnectStatus, SupportedBlockchain
from tests.conftest import BASE_URL, set_connection
from tests.unit.hooks.helpers import FAST, calls_to, error_body, make_hook

BLOCKCHAINS_URL = BASE_URL + "/wallet/blockchains"
WALLET_URL = BASE_URL + "/portfolio/wallet"
#: A wallet address: personal, so it must never show whole in a message.
ADDRESS = "0x" + "a1b2c3d4e5" * 4
BLOCKCHAINS = [
    {"connectionId": "ethereum", "name": "Ethereum", "icon": "https://static.coinstats.app/e.png", "chain": "ethereum"},
    {"connectionId": "bitcoin", "name": "Bitcoin", "icon": "https://static.coinstats.app/b.png", "chain": "bitcoin"},
    {"connectionId": "solana", "name": "Solana", "icon": "https://static.coinstats.app/s.png"},
]
CONNECTED = {"portfolioId": "pf-w", "connectionId": "ethereum", "status": "connected"}


def wallet_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str = "wallet_eth", **fields: Any) -> None:
    values: dict[str, Any] = {"conn_type": "coinstats_wallet", "login": ADDRESS, "extra": {"connection_id": "ethereum"}}
    values.update(fields)
    set_connection(monkeypatch, conn_id, **values)


# -- credits -----------------------------------------------------------------------------------------


def test_route_costs() -> None:
    assert credit_cost("GET", "/wallet/blockchains") == 1
    assert credit_cost("POST", "/portfolio/wallet") == 40
    assert credit_cost("DELETE", "/portfolio/66c19c585400000000000000") == 10
    assert route_key("delete", "/portfolio/abc") == ("DELETE", "/portfolio/{portfolioId}")
    # Only the parameterised DELETE is a template: the fixed routes keep their own keys and costs.
    assert route_key("GET", "/portfolio/value") == ("GET", "/portfolio/value")
    with pytest.raises(ValueError, match="No credit cost"):
        credit_cost("DELETE", "/portfolio/a/b")


# -- GET /wallet/blockchains -------------------------------------------------------------------------


def test_supported_blockchains_parsed_and_cached(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(BLOCKCHAINS_URL, json=[*BLOCKCHAINS, {"name": "no id"}, "junk"])
    hook, _ = make_hook()

    first = hook.get_supported_blockchains()
    support_cache.clear()  # the disk copy answers the next hook
    second = make_hook()[0].get_supported_blockchains()

    assert (
        first
        == second
        == [
            SupportedBlockchain("ethereum", "Ethereum", "ethereum"),
            SupportedBlockchain("bitcoin", "Bitcoin", "bitcoin"),
            SupportedBlockchain("solana", "Solana", None),
        ]
    )
    assert len(rsps.calls) == 1
    assert hook.credits.spent == 1
    # A separate file from the exchange list of the same base URL.
    assert support_cache._cache_file(BASE_URL, "wallet-blockchains").exists()
    assert not support_cache._cache_file(BASE_URL).exists()


@pytest.mark.parametrize("body", [{"result": []}, [], [{"name": "Ethereum"}]])
def test_supported_blockchains_rejects_unusable_lists(
    coinstats_conn: Any, rsps: responses.RequestsMock, body: Any
) -> None:
    rsps.get(BLOCKCHAINS_URL, json=body)
    with pytest.raises(CoinStatsResponseError, match="GET /wallet/blockchains answered"):
        make_hook()[0].get_supported_blockchains()


# -- POST /portfolio/wallet --------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["connected", "existing"])
def test_connect_wallet(coinstats_conn: Any, rsps: responses.RequestsMock, status: str) -> None:
    rsps.post(WALLET_URL, json={**CONNECTED, "status": status})
    hook, _ = make_hook()

    result = hook.connect_wallet_portfolio("ethereum", ADDRESS, "My wallet")

    assert (result.portfolio_id, result.connection_id, result.status) == ("pf-w", "ethereum", ConnectStatus(status))
    assert json.loads(rsps.calls[0].request.body) == {
        "address": ADDRESS,
        "connectionId": "ethereum",
        "name": "My wallet",
    }
    assert hook.credits.spent == 40


def test_connect_wallet_error_never_echoes_the_address(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.post(WALLET_URL, status=400, json=error_body(400, f"Invalid address {ADDRESS}", "/portfolio/wallet"))

    with pytest.raises(CoinStatsBadRequestError) as caught:
        make_hook()[0].connect_wallet_portfolio("ethereum", ADDRESS)

    assert ADDRESS not in str(caught.value)
    assert "Invalid address ***" in str(caught.value)
    assert len(rsps.calls) == 1  # a 400 is never retried


def test_connect_wallet_cut_answer_is_not_resent(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.post(WALLET_URL, body='{"portfolioId": "pf-w", "sta')
    hook, _ = make_hook()

    with pytest.raises(CoinStatsTruncatedAnswerError) as caught:
        hook.connect_wallet_portfolio("ethereum", ADDRESS)

    assert caught.value.retryable  # the next task try reconnects on purpose: 'existing', same id
    assert "reconnects for 40 credits" in str(caught.value)
    assert len(rsps.calls) == 1
    assert hook.credits.spent == 40


def test_connect_wallet_without_portfolio_id(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.post(WALLET_URL, json={"connectionId": "ethereum", "status": "connected"})
    with pytest.raises(CoinStatsResponseError, match="POST /portfolio/wallet answered without a portfolioId"):
        make_hook()[0].connect_wallet_portfolio("ethereum", ADDRESS)


def test_connect_wallet_refuses_a_blank_address_locally(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    with pytest.raises(CoinStatsConfigError, match="needs a wallet address"):
        make_hook()[0].connect_wallet_portfolio("ethereum", "  ")
    assert len(rsps.calls) == 0


# -- DELETE /portfolio/{portfolioId} -------------------------------------------------------------------


def test_delete_portfolio(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.delete(BASE_URL + "/portfolio/pf-1", json={"message": "Portfolio deleted successfully"})
    hook, _ = make_hook()

    hook.delete_portfolio("pf-1")

    assert hook.credits.spent == 10
    assert hook.credits.calls == {"DELETE /portfolio/{portfolioId}": 1}


def test_delete_portfolio_answered_without_body(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.delete(BASE_URL + "/portfolio/pf-1", body="")
    hook, _ = make_hook()
    hook.delete_portfolio("pf-1")  # the 2xx proves it; the empty body is not retried (and not paid twice)
    assert len(rsps.calls) == 1


def test_delete_portfolio_quotes_the_id(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.delete(BASE_URL + "/portfolio/a%2Fb%3Fc", json={})
    make_hook()[0].delete_portfolio("a/b?c")
    assert len(calls_to(rsps, "DELETE", BASE_URL + "/portfolio/a%2Fb%3Fc")) == 1


def test_delete_unknown_portfolio(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.delete(BASE_URL + "/portfolio/pf-x", status=404, json=error_body(404, "Portfolio not found", "/x"))
    with pytest.raises(CoinStatsNotFoundError):
        make_hook()[0].delete_portfolio("pf-x")
    assert len(rsps.calls) == 1


def test_delete_needs_an_id(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    with pytest.raises(CoinStatsConfigError, match="needs a portfolio_id"):
        make_hook()[0].delete_portfolio("")
    assert len(rsps.calls) == 0


# -- CoinStatsWalletHook -------------------------------------------------------------------------------


def test_short_address() -> None:
    assert short_address(ADDRESS) == "0xa1…c3d4e5"[:4] + "…" + ADDRESS[-4:]
    assert short_address("  " + ADDRESS + " ") == short_address(ADDRESS)
    assert short_address("abc") == "…"
    assert ADDRESS not in repr(WalletAccount("w", "ethereum", None, ADDRESS))


def test_get_account(monkeypatch: pytest.MonkeyPatch) -> None:
    wallet_conn(monkeypatch, extra={"connection_id": "ethereum", "portfolio_name": "Cold"})
    account = CoinStatsWalletHook("wallet_eth").get_account()
    assert (account.conn_id, account.connection_id, account.portfolio_name) == ("wallet_eth", "ethereum", "Cold")
    assert account.address == ADDRESS
    assert CoinStatsWalletHook("wallet_eth").get_account(connection_id="polygon").connection_id == "polygon"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"login": ""}, "has no address: put the wallet address in its Login field"),
        ({"login": "0xabc def"}, "with spaces or longer than 256 characters"),
        ({"login": "0x1234"}, "is not a 'ethereum' address: expected 0x followed by 40 hexadecimal digits"),
        ({"extra": {"connection_id": "bitcoin"}}, "is not a 'bitcoin' address"),
        ({"extra": {"connection_id": "solana"}}, "is not a 'solana' address: expected 32 to 44 base58"),
        ({"extra": {}}, 'set its extra "connection_id" to a CoinStats blockchain id'),
        ({"conn_type": "coinstats_exchange"}, "expected 'coinstats_wallet'"),
    ],
)
def test_get_account_rejects_bad_input(monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], message: str) -> None:
    wallet_conn(monkeypatch, **fields)
    with pytest.raises(CoinStatsConfigError, match=message) as caught:
        CoinStatsWalletHook("wallet_eth").get_account()
    assert ADDRESS not in str(caught.value)


@pytest.mark.parametrize(
    ("chain", "address"),
    [
        ("bitcoin", "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"),
        ("bitcoin", "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"),
        ("bitcoin", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"),
        ("solana", "4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4T"),
        ("cosmos", "cosmos1xyz"),  # no known format: only non-empty and one word
    ],
)
def test_get_account_accepts_well_formed_addresses(monkeypatch: pytest.MonkeyPatch, chain: str, address: str) -> None:
    wallet_conn(monkeypatch, login=address, extra={"connection_id": chain})
    assert CoinStatsWalletHook("wallet_eth").get_account().address == address


def test_unknown_blockchain_names_the_nearest(monkeypatch: pytest.MonkeyPatch) -> None:
    wallet_conn(monkeypatch, extra={"connection_id": "etherium"})
    account = CoinStatsWalletHook("wallet_eth").get_account()
    chains = [SupportedBlockchain(b["connectionId"], b["name"]) for b in BLOCKCHAINS]
    with pytest.raises(CoinStatsValidationError, match="Nearest supported ids: ethereum") as caught:
        account.blockchain(chains)
    assert "'etherium', which GET /wallet/blockchains does not list" in str(caught.value)
    # Case is forgiven: the id CoinStats lists is the one sent.
    upper = WalletAccount("wallet_eth", "ETHEREUM", None, ADDRESS)
    assert upper.blockchain(chains).connection_id == "ethereum"


def test_test_connection(monkeypatch: pytest.MonkeyPatch, coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    wallet_conn(monkeypatch)
    rsps.get(BLOCKCHAINS_URL, json=BLOCKCHAINS)
    ok, message = CoinStatsWalletHook("wallet_eth").test_connection()
    assert ok, message
    assert "Blockchain 'ethereum' (Ethereum) is supported" in message
    assert short_address(ADDRESS) in message
    assert ADDRESS not in message
    assert not [c for c in rsps.calls if c.request.method == "POST"]


def test_test_connection_reports_problems(
    monkeypatch: pytest.MonkeyPatch, coinstats_conn: Any, rsps: responses.RequestsMock
) -> None:
    set_connection(monkeypatch, "cs_other", conn_type="coinstats", password="k", extra=FAST)
    wallet_conn(monkeypatch, extra={"connection_id": "dogechain", "coinstats_conn_id": "cs_other"})
    rsps.get(BLOCKCHAINS_URL, json=BLOCKCHAINS)
    ok, message = CoinStatsWalletHook("wallet_eth").test_connection()
    assert not ok
    assert "does not list" in message
    assert rsps.calls[0].request.headers["X-API-KEY"] == "k"
