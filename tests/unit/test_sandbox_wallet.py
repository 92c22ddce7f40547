"""The sandbox's wallet routes and DELETE /portfolio/{id}: answers, credits, faults, and the hook against them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from coinstats_provider.exceptions import CoinStatsBadRequestError, CoinStatsNotFoundError
from coinstats_provider.hooks.coinstats import CoinStatsHook
from include.coinstats_sandbox import DEFAULT_API_KEY, SandboxConfig, SandboxServer
from include.coinstats_sandbox.data import wallet_portfolio_id
from tests.helpers.sandbox import sandboxes

ADDRESS = "0x" + "5a" * 20
HEADERS = {"X-API-KEY": DEFAULT_API_KEY}


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(quiet=True, sync_seconds=0.2)) as server:
        yield server


def call(server: SandboxServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, server.base_url + path, headers=HEADERS, timeout=5, **kwargs)


def test_blockchains(sandbox: SandboxServer) -> None:
    answer = call(sandbox, "GET", "/wallet/blockchains")
    assert answer.status_code == 200
    chains = {entry["connectionId"]: entry for entry in answer.json()}
    assert {"ethereum", "bitcoin", "solana"} <= set(chains)
    assert set(chains["ethereum"]) == {"connectionId", "name", "icon", "chain"}
    assert sandbox.stats()["credits_by_path"] == {"GET /wallet/blockchains": 1}


def test_wallet_connect_is_idempotent_and_deterministic(sandbox: SandboxServer) -> None:
    body = {"address": ADDRESS, "connectionId": "ethereum", "name": "Cold wallet"}
    first = call(sandbox, "POST", "/portfolio/wallet", json=body).json()
    again = call(sandbox, "POST", "/portfolio/wallet", json={**body, "address": ADDRESS.upper().replace("0X", "0x")})

    pid = wallet_portfolio_id(DEFAULT_API_KEY, "ethereum", ADDRESS)
    assert first == {"portfolioId": pid, "connectionId": "ethereum", "status": "connected"}
    assert again.json() == {**first, "status": "existing"}
    # The same address on another chain is another portfolio.
    assert wallet_portfolio_id(DEFAULT_API_KEY, "polygon", ADDRESS) != pid
    assert sandbox.stats()["credits_by_path"] == {"POST /portfolio/wallet": 80}
    # Its data is served like an exchange portfolio's, deterministically per portfolio.
    coins = call(sandbox, "GET", "/portfolio/coins", params={"portfolioId": pid, "limit": 100}).json()
    assert coins == call(sandbox, "GET", "/portfolio/coins", params={"portfolioId": pid, "limit": 100}).json()
    assert coins["result"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"address": ADDRESS, "connectionId": "dogechain"}, "Invalid parameter: connectionId"),
        ({"address": " ", "connectionId": "ethereum"}, "address is required"),
        ({"connectionId": "ethereum"}, "address is required"),
        ({"address": ADDRESS}, "connectionId is required"),
    ],
)
def test_wallet_connect_rejects_bad_bodies(sandbox: SandboxServer, body: dict[str, Any], message: str) -> None:
    answer = call(sandbox, "POST", "/portfolio/wallet", json=body)
    assert answer.status_code == 400
    assert answer.json()["message"] == message
    assert sandbox.stats()["credits_used"] == 0


def test_delete(sandbox: SandboxServer) -> None:
    pid = call(sandbox, "POST", "/portfolio/wallet", json={"address": ADDRESS, "connectionId": "ethereum"}).json()[
        "portfolioId"
    ]
    assert sandbox.app.has_portfolio(pid)

    answer = call(sandbox, "DELETE", f"/portfolio/{pid}")
    gone = call(sandbox, "DELETE", f"/portfolio/{pid}")
    status = call(sandbox, "GET", "/portfolio/status", params={"portfolioId": pid})

    assert answer.json() == {"message": "Portfolio deleted successfully"}
    assert not sandbox.app.has_portfolio(pid)
    assert (gone.status_code, status.status_code) == (404, 404)
    stats = sandbox.stats()
    assert stats["credits_by_path"] == {"POST /portfolio/wallet": 40, "DELETE /portfolio/{portfolioId}": 10}
    assert stats["requests"]["DELETE /portfolio/{portfolioId}"] == 2


def test_delete_is_scoped_to_the_api_key() -> None:
    with SandboxServer(SandboxConfig(quiet=True, api_keys=("key-a", "key-b"))) as server:
        url = server.base_url
        pid = requests.post(
            f"{url}/portfolio/wallet",
            json={"address": ADDRESS, "connectionId": "ethereum"},
            headers={"X-API-KEY": "key-a"},
            timeout=5,
        ).json()["portfolioId"]
        other = requests.delete(f"{url}/portfolio/{pid}", headers={"X-API-KEY": "key-b"}, timeout=5)
        assert other.status_code == 404
        assert server.app.has_portfolio(pid)


def test_faults_and_switches_reach_the_new_routes() -> None:
    config = SandboxConfig(quiet=True, cut_routes=("/portfolio/wallet", "/portfolio/{portfolioId}"), cut_count=1)
    with SandboxServer(config) as server:
        with pytest.raises(requests.exceptions.RequestException):
            requests.post(
                f"{server.base_url}/portfolio/wallet",
                json={"address": ADDRESS, "connectionId": "ethereum"},
                headers=HEADERS,
                timeout=5,
            ).json()
        # The cut answer was a performed (and charged) connect, like the exchange connect's.
        assert server.stats()["credits_by_path"] == {"POST /portfolio/wallet": 40}
        server.update(fault_rate_5xx=1.0)
        assert call(server, "GET", "/wallet/blockchains").status_code >= 500


def test_hook_against_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    with sandboxes(monkeypatch, "coinstats_default", max_retries=0) as start:
        server = start(sync_seconds=0.1)
        hook = CoinStatsHook()
        chains = hook.get_supported_blockchains()
        result = hook.connect_wallet_portfolio("solana", "4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4T")
        with pytest.raises(CoinStatsBadRequestError, match="Invalid parameter: connectionId"):
            hook.connect_wallet_portfolio("dogechain", ADDRESS)
        hook.delete_portfolio(result.portfolio_id)
        with pytest.raises(CoinStatsNotFoundError):
            hook.delete_portfolio(result.portfolio_id)

        assert "solana" in {c.connection_id for c in chains}
        assert hook.credits.spent == server.stats()["credits_used"] == 1 + 40 + 10
