"""Tests of the local CoinStats sandbox server (in-process on a free port, plus the CLI)."""

from __future__ import annotations

import functools
import hashlib
import http.client
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from include.coinstats_sandbox import DEFAULT_API_KEY, SandboxConfig, SandboxServer
from include.coinstats_sandbox.__main__ import build_parser, config_from_args

REPO_ROOT = Path(__file__).resolve().parents[2]
_SPEC = "shared/coinstats-api/coinstats-portfolio-subset.openapi.json"
# The contract sits beside the checkout (parents[3]); a worktree one folder deeper finds it at parents[4].
SPEC_PATH = next(
    (p / _SPEC for p in Path(__file__).resolve().parents[3:5] if (p / _SPEC).is_file()),
    Path(__file__).resolve().parents[3] / _SPEC,
)
SPEC_URI = "urn:coinstats-portfolio-subset"
INVALID_KEY_BODY = {
    "statusCode": 401,
    "message": "Your API Key is invalid. Please login to https://openapi.coinstats.app and generate your API Key.",
}


# -- OpenAPI validation ---------------------------------------------------------------------------


@functools.cache
def _document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return document


@functools.cache
def _registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(_document(), default_specification=DRAFT7)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    return registry


def _pointer_escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def assert_component(instance: object, name: str) -> None:
    """Validate against ``#/components/schemas/<name>``."""
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}
    Draft7Validator(schema, registry=_registry()).validate(instance)


def assert_operation(response: requests.Response, method: str, path: str) -> Any:
    """Validate a response body against the schema its operation declares for the status."""
    declared = _document()["paths"][path][method.lower()]["responses"][str(response.status_code)]
    pointer = "/".join(["paths", _pointer_escape(path), method.lower(), "responses"])
    pointer += f"/{response.status_code}"
    if "$ref" in declared:
        pointer = declared["$ref"].removeprefix("#/")
    elif "schema" not in declared["content"]["application/json"]:  # inline example only
        pointer = "components/responses/BadRequest"
    schema = {"$ref": f"{SPEC_URI}#/{pointer}/content/application~1json/schema"}
    body = response.json()
    Draft7Validator(schema, registry=_registry()).validate(body)
    assert response.headers["Content-Type"].startswith("application/json")
    return body


# -- fixtures -------------------------------------------------------------------------------------


class Client:
    """A pooled ``requests`` session bound to one sandbox and API key."""

    def __init__(self, server: SandboxServer, api_key: str = DEFAULT_API_KEY) -> None:
        self.server = server
        self.url = server.base_url
        self.session = requests.Session()
        self.session.headers["X-API-KEY"] = api_key

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.url + path, params=params, timeout=10)

    def patch(self, path: str, **params: Any) -> requests.Response:
        return self.session.patch(self.url + path, params=params, timeout=10)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.session.post(self.url + path, json=body, timeout=10)

    def connect(self, connection_id: str = "binance", **fields: str) -> requests.Response:
        fields = {"apiKey": "key-1", "apiSecret": "secret-1", **fields}
        return self.post("/portfolio/exchange", {"connectionId": connection_id, "connectionFields": fields})

    def connect_id(self, **fields: str) -> str:
        response = self.connect(**fields)
        assert response.status_code == 200, response.text
        portfolio_id: str = response.json()["portfolioId"]
        return portfolio_id

    def used(self) -> int:
        used: int = self.get("/usage/credits").json()["usedCredits"]
        return used

    def wait_synced(self, portfolio_id: str, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while self.get("/portfolio/status", portfolioId=portfolio_id).json()["status"] != "synced":
            assert time.monotonic() < deadline, "sync did not finish"
            time.sleep(0.02)

    def all_pages(self, path: str, key: str, limit: int, **params: Any) -> list[list[dict[str, Any]]]:
        pages: list[list[dict[str, Any]]] = []
        for page in range(1, 10_000):
            response = self.get(path, page=page, limit=limit, **params)
            assert response.status_code == 200, response.text
            items: list[dict[str, Any]] = response.json()[key]
            pages.append(items)
            if len(items) < limit:
                return pages
        raise AssertionError("paging did not end")


StartSandbox = Callable[..., Client]


@pytest.fixture
def sandbox() -> Iterator[StartSandbox]:
    """Factory: start a quiet sandbox with the given config options and return a client."""
    servers: list[SandboxServer] = []
    clients: list[Client] = []

    def start(api_key: str = DEFAULT_API_KEY, **options: Any) -> Client:
        server = SandboxServer(SandboxConfig(quiet=True, **options))
        server.start()
        servers.append(server)
        client = Client(server, api_key)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.session.close()
    for server in servers:
        server.stop()


# -- auth, support, connect -----------------------------------------------------------------------


def test_invalid_or_missing_api_key_gets_the_exact_401_body(sandbox: StartSandbox) -> None:
    client = sandbox(api_key="wrong-key")
    response = client.get("/usage/credits")
    assert response.status_code == 401
    assert response.json() == INVALID_KEY_BODY
    assert_operation(response, "GET", "/usage/credits")
    anonymous = requests.get(client.url + "/exchange/support", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json() == INVALID_KEY_BODY


def test_extra_api_keys_are_accepted_and_have_separate_budgets(sandbox: StartSandbox) -> None:
    client = sandbox(api_keys=("key-a", "key-b"), api_key="key-a")
    other = Client(client.server, "key-b")
    assert client.get("/exchange/support").status_code == 200
    assert client.used() == 1
    assert other.used() == 0
    pid = client.connect_id()
    assert other.get("/portfolio/status", portfolioId=pid).status_code == 404
    other.session.close()


def test_exchange_support_lists_exchanges_and_their_fields(sandbox: StartSandbox) -> None:
    client = sandbox()
    body = assert_operation(client.get("/exchange/support"), "GET", "/exchange/support")
    fields = {item["connectionId"]: [field["key"] for field in item["connectionFields"]] for item in body}
    for exchange in ("binance", "coinbase", "kraken"):
        assert fields[exchange] == ["apiKey", "apiSecret"]
    for exchange in ("okx", "kucoin", "bitget"):
        assert fields[exchange] == ["apiKey", "apiSecret", "passphrase"]
    assert client.used() == 1


def test_connect_is_connected_then_existing_with_a_deterministic_id(sandbox: StartSandbox) -> None:
    client = sandbox()
    first = client.connect()
    body = assert_operation(first, "POST", "/portfolio/exchange")
    expected = hashlib.sha256(f"{DEFAULT_API_KEY}binancekey-1secret-1".encode()).hexdigest()[:24]
    assert body == {"portfolioId": expected, "connectionId": "binance", "status": "connected"}
    again = client.connect().json()
    assert again == {"portfolioId": expected, "connectionId": "binance", "status": "existing"}
    assert client.connect(apiSecret="secret-2").json()["portfolioId"] != expected
    assert client.server.stats()["portfolios"] == 2

    restarted = sandbox()  # a new server process state: same id, "connected" again
    assert restarted.connect().json() == body
    assert client.used() == 30


def test_connect_validation_errors_are_not_charged(sandbox: StartSandbox) -> None:
    client = sandbox()
    url = client.url + "/portfolio/exchange"
    bad_json = client.session.post(url, data=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    assert_component(bad_json.json(), "ErrorResponseDto")

    missing_id = client.post("/portfolio/exchange", {"connectionFields": {"apiKey": "a", "apiSecret": "b"}})
    assert missing_id.status_code == 400

    unknown = client.connect("mtgox")
    assert unknown.status_code == 400
    assert unknown.json()["message"] == "Invalid parameter: connectionId"

    no_passphrase = client.connect("okx")
    assert no_passphrase.status_code == 400
    assert "passphrase" in no_passphrase.json()["message"]
    empty_secret = client.connect(apiSecret="")
    assert empty_secret.status_code == 400
    assert "apiSecret" in empty_secret.json()["message"]

    rejected = client.connect(apiSecret="rejected-by-exchange")
    assert rejected.status_code == 401
    body = rejected.json()
    assert body["message"] == "Exchange credentials expired"
    assert body["path"] == "/portfolio/exchange"
    assert len(body["requestId"]) == 36
    assert client.used() == 0
    assert client.server.stats()["portfolios"] == 0


# -- sync -----------------------------------------------------------------------------------------


def test_sync_lifecycle_and_unsynced_transactions(sandbox: StartSandbox) -> None:
    client = sandbox(sync_seconds=0.2, transactions=10)
    pid = client.connect_id()
    status = client.get("/portfolio/status", portfolioId=pid)
    assert assert_operation(status, "GET", "/portfolio/status") == {"status": "syncing"}
    not_synced = client.get("/portfolio/transactions", portfolioId=pid, currency="USD")
    assert not_synced.status_code == 409
    assert not_synced.json()["message"] == "Transactions not synced. Please call PATCH /transactions"
    assert_operation(not_synced, "GET", "/portfolio/transactions")

    client.wait_synced(pid)
    assert client.get("/exchange/status", portfolioId=pid).json() == {"status": "synced"}
    assert client.get("/portfolio/transactions", portfolioId=pid, currency="USD").status_code == 200

    sync = client.patch("/portfolio/sync", portfolioId=pid)
    assert assert_operation(sync, "PATCH", "/portfolio/sync") == {"success": True}
    assert client.get("/portfolio/status", portfolioId=pid).json() == {"status": "syncing"}
    # A portfolio that completed a sync once keeps serving transactions during a re-sync.
    assert client.get("/portfolio/transactions", portfolioId=pid, currency="USD").status_code == 200
    client.wait_synced(pid)

    exchange_sync = client.patch("/exchange/sync", portfolioId=pid)
    assert assert_operation(exchange_sync, "PATCH", "/exchange/sync") == {"success": True}
    assert client.get("/exchange/status", portfolioId=pid).json() == {"status": "syncing"}


def test_sync_and_status_errors(sandbox: StartSandbox) -> None:
    client = sandbox()
    assert client.patch("/portfolio/sync", portfolioId="0" * 24).status_code == 404
    assert client.patch("/exchange/sync").status_code == 400
    missing = client.get("/portfolio/status")
    assert missing.status_code == 400
    assert_operation(missing, "GET", "/portfolio/status")
    unknown = client.get("/portfolio/status", portfolioId="0" * 24)
    assert unknown.status_code == 404
    assert unknown.json()["message"] == "Portfolio not found"
    assert_operation(unknown, "GET", "/portfolio/status")
    assert client.used() == 0


def test_sync_without_id_syncs_every_portfolio_for_300_credits(sandbox: StartSandbox) -> None:
    client = sandbox(sync_seconds=0.05)
    first, second = client.connect_id(), client.connect_id(apiSecret="secret-2")
    client.wait_synced(first)
    client.wait_synced(second)
    before = client.used()
    assert client.patch("/portfolio/sync").json() == {"success": True}
    assert client.used() - before == 300
    assert client.server.stats()["credits_by_path"]["PATCH /portfolio/sync"] == 300


def test_stuck_credentials_and_negative_sync_seconds_never_finish(sandbox: StartSandbox) -> None:
    client = sandbox(sync_seconds=0.05)
    stuck = client.connect_id(apiSecret="stuck-forever")
    normal = client.connect_id()
    client.wait_synced(normal)
    client.server.update(sync_seconds=-1.0)
    client.patch("/portfolio/sync", portfolioId=normal)
    time.sleep(0.15)
    assert client.get("/portfolio/status", portfolioId=stuck).json() == {"status": "syncing"}
    assert client.get("/portfolio/status", portfolioId=normal).json() == {"status": "syncing"}
    assert client.get("/portfolio/transactions", portfolioId=stuck, currency="USD").status_code == 409


# -- data -----------------------------------------------------------------------------------------


def test_coins_paging_is_unique_and_ends_with_a_short_page(sandbox: StartSandbox) -> None:
    client = sandbox(coins=45)
    pid = client.connect_id()
    first = client.get("/portfolio/coins", portfolioId=pid, page=1, limit=20)
    assert_operation(first, "GET", "/portfolio/coins")
    pages = client.all_pages("/portfolio/coins", "result", 20, portfolioId=pid)
    assert [len(page) for page in pages] == [20, 20, 5]
    identifiers = [item["coin"]["identifier"] for page in pages for item in page]
    assert len(set(identifiers)) == 45
    assert pages[0] == first.json()["result"]
    assert client.get("/portfolio/coins", portfolioId=pid).json()["result"] == pages[0]  # default limit 20

    client.server.update(coins=40)  # exact multiple: the last page is empty
    assert [len(page) for page in client.all_pages("/portfolio/coins", "result", 20, portfolioId=pid)] == [
        20,
        20,
        0,
    ]
    for limit in (0, 101, "x"):
        bad = client.get("/portfolio/coins", portfolioId=pid, limit=limit)
        assert bad.status_code == 400
        assert bad.json()["message"] == "Invalid parameter: limit"
    assert client.get("/portfolio/coins").status_code == 400
    assert client.get("/portfolio/coins", portfolioId="f" * 24).status_code == 404


def test_default_coin_count_is_between_3_and_40(sandbox: StartSandbox) -> None:
    client = sandbox()
    for secret in ("a", "b", "c", "d"):
        pid = client.connect_id(apiSecret=secret)
        count = len(client.get("/portfolio/coins", portfolioId=pid, limit=100).json()["result"])
        assert 3 <= count <= 40


def test_value_is_consistent_with_the_holdings(sandbox: StartSandbox) -> None:
    client = sandbox(coins=30)
    pid = client.connect_id()
    usd = assert_operation(client.get("/portfolio/value", portfolioId=pid), "GET", "/portfolio/value")
    coins = client.get("/portfolio/coins", portfolioId=pid, limit=100).json()["result"]
    assert usd["totalValue"] == pytest.approx(sum(c["count"] * c["price"]["USD"] for c in coins), rel=1e-6)
    unrealized = sum(c["profit"]["unrealized"]["USD"] for c in coins)
    assert usd["unrealizedProfitLoss"] == pytest.approx(unrealized, rel=1e-6)
    assert usd["allTimeProfitLoss"] == pytest.approx(usd["unrealizedProfitLoss"] + usd["realizedProfitLoss"], rel=1e-6)
    eur = client.get("/portfolio/value", portfolioId=pid, currency="EUR").json()
    assert eur["totalValue"] == pytest.approx(usd["totalValue"] * 0.92, rel=1e-6)
    assert client.get("/portfolio/value", portfolioId=pid, currency="XYZ").status_code == 400


def test_transactions_paging_order_and_identical_duplicates(sandbox: StartSandbox) -> None:
    client = sandbox(transactions=120, sync_seconds=0)
    pid = client.connect_id()
    first = client.get("/portfolio/transactions", portfolioId=pid, currency="USD", page=2, limit=40)
    body = assert_operation(first, "GET", "/portfolio/transactions")
    assert body["meta"] == {"page": 2, "limit": 40}

    pages = client.all_pages("/portfolio/transactions", "data", 40, portfolioId=pid, currency="USD")
    assert [len(page) for page in pages] == [40, 40, 40, 0]
    items = [item for page in pages for item in page]
    assert pages[1] == body["data"]
    # Independent of page size and request order.
    other = client.all_pages("/portfolio/transactions", "data", 70, portfolioId=pid, currency="USD")
    assert [item for page in other for item in page] == items

    dates = [item["date"] for item in items]
    assert dates == sorted(dates, reverse=True)
    identical_neighbours = sum(1 for a, b in itertools.pairwise(items) if a == b)
    assert identical_neighbours >= 2
    assert len({json.dumps(item, sort_keys=True) for item in items}) < len(items)

    missing = client.get("/portfolio/transactions", portfolioId=pid)
    assert missing.status_code == 400
    assert missing.json()["message"] == "Invalid parameter: currency"
    assert client.get("/portfolio/transactions", currency="USD").status_code == 400
    eur = client.get("/portfolio/transactions", portfolioId=pid, currency="eur", limit=1).json()["data"][0]
    assert eur["date"] == items[0]["date"]
    assert eur["coinData"]["totalWorth"] == pytest.approx(items[0]["coinData"]["totalWorth"] * 0.92, rel=1e-6)


def test_huge_portfolio_pages_are_generated_on_demand(sandbox: StartSandbox) -> None:
    client = sandbox(transactions=1_000_000, sync_seconds=0)
    pid = client.connect_id()
    started = time.monotonic()
    last = client.get("/portfolio/transactions", portfolioId=pid, currency="USD", page=10_000, limit=100)
    beyond = client.get("/portfolio/transactions", portfolioId=pid, currency="USD", page=10_001, limit=100)
    assert time.monotonic() - started < 2.0
    assert len(last.json()["data"]) == 100
    assert beyond.json()["data"] == []

    again = sandbox(transactions=1_000_000, sync_seconds=0)  # another server: same data
    assert again.connect_id() == pid
    repeat = again.get("/portfolio/transactions", portfolioId=pid, currency="USD", page=10_000, limit=100)
    assert repeat.json() == last.json()


def test_empty_portfolio(sandbox: StartSandbox) -> None:
    client = sandbox(sync_seconds=0)
    pid = client.connect_id(apiKey="empty-account")
    assert client.get("/portfolio/coins", portfolioId=pid).json() == {"result": []}
    transactions = client.get("/portfolio/transactions", portfolioId=pid, currency="USD").json()
    assert transactions == {"data": [], "meta": {"page": 1, "limit": 20}}
    value = client.get("/portfolio/value", portfolioId=pid).json()
    assert set(value.values()) == {0}


# -- credits --------------------------------------------------------------------------------------


def test_credits_are_charged_per_call_and_exhaustion_gives_406(sandbox: StartSandbox) -> None:
    client = sandbox(credits=40, coins=5)
    assert client.get("/exchange/support").status_code == 200  # 1
    pid = client.connect_id()  # 10
    assert client.get("/portfolio/coins", portfolioId=pid).status_code == 200  # 8
    assert client.get("/portfolio/coins", portfolioId=pid, limit=0).status_code == 400  # not charged
    assert client.get("/portfolio/value", portfolioId=pid).status_code == 200  # 10
    assert client.get("/portfolio/value", portfolioId=pid).status_code == 200  # 10
    assert client.used() == 39

    exhausted = client.get("/portfolio/status", portfolioId=pid)  # costs 3, 1 left
    assert exhausted.status_code == 406
    body = exhausted.json()
    assert body["message"] == "Credits limit reached. Please upgrade your plan or wait for renewal."
    assert body["path"] == "/portfolio/status"
    assert_component(body, "ErrorResponseDto")

    usage = assert_operation(client.get("/usage/credits"), "GET", "/usage/credits")
    assert usage == {"totalCredits": 40, "usedCredits": 39, "remainingCredits": 1, "subscription": "SANDBOX"}
    assert client.get("/exchange/support").status_code == 200  # the last credit still works
    assert client.get("/exchange/support").status_code == 406

    stats = client.server.stats()
    assert stats["credits_used"] == 40
    assert stats["credits_by_path"] == {
        "GET /exchange/support": 2,
        "POST /portfolio/exchange": 10,
        "GET /portfolio/coins": 8,
        "GET /portfolio/value": 20,
    }
    assert stats["responses"]["406"] == 2


# -- faults ---------------------------------------------------------------------------------------


def test_fault_429_without_and_with_retry_after(sandbox: StartSandbox) -> None:
    client = sandbox(fault_rate_429=1.0)
    response = client.get("/exchange/support")
    assert response.status_code == 429
    assert response.json()["message"] == "Rate limit exceeded"
    assert "Retry-After" not in response.headers
    assert_operation(response, "GET", "/exchange/support")
    client.server.update(retry_after=3)
    assert client.get("/exchange/support").headers["Retry-After"] == "3"
    client.server.update(fault_rate_429=0.0)
    assert client.used() == 0
    assert client.server.stats()["faults"]["429"] == 2


def test_fault_5xx_statuses_and_bodies(sandbox: StartSandbox) -> None:
    client = sandbox(fault_rate_5xx=1.0)
    statuses = set()
    for _ in range(16):
        response = client.get("/exchange/support")
        statuses.add(response.status_code)
        body = response.json()
        assert body["statusCode"] == response.status_code
        if response.status_code == 503:
            assert body == {"statusCode": 503, "message": "Service Unavailable. Please Contact Support"}
            assert_operation(response, "GET", "/exchange/support")
        else:
            assert body["path"] == "/exchange/support"
            assert_component(body, "ErrorResponseDto")
    assert statuses <= {500, 502, 503, 504}
    assert len(statuses) >= 2
    client.server.update(fault_rate_5xx=0.0)
    assert client.used() == 0


def test_fault_reset_drops_the_connection_without_a_response(sandbox: StartSandbox) -> None:
    client = sandbox(fault_rate_reset=1.0)
    with pytest.raises(requests.ConnectionError):
        client.get("/exchange/support")
    assert requests.get(client.url + "/_sandbox/stats", timeout=10).status_code == 200  # admin: no faults
    client.server.update(fault_rate_reset=0.0)
    assert client.get("/exchange/support").status_code == 200  # the pooled session recovers
    stats = client.server.stats()
    assert stats["faults"]["reset"] == 1
    assert stats["responses"] == {"200": 1}
    assert stats["credits_used"] == 1


def test_fault_slow_and_latency_delay_the_response(sandbox: StartSandbox) -> None:
    client = sandbox(fault_rate_slow=1.0, slow_seconds=0.3)
    started = time.monotonic()
    response = client.get("/exchange/support")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200
    assert len(response.json()) >= 6

    client.server.update(fault_rate_slow=0.0, latency_ms=150)
    started = time.monotonic()
    assert client.get("/usage/credits").status_code == 200
    assert time.monotonic() - started >= 0.15
    assert client.used() == 1  # slow answers are charged


def test_fault_truncate_sends_half_a_body_and_is_charged(sandbox: StartSandbox) -> None:
    client = sandbox(fault_rate_truncate=1.0)
    response = client.get("/exchange/support")
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    with pytest.raises(ValueError):
        json.loads(response.content)
    client.server.update(fault_rate_truncate=0.0)
    full = client.get("/exchange/support").content
    assert response.content == full[: len(full) // 2]
    assert client.used() == 2


def test_fault_sequence_is_reproducible_from_the_seed(sandbox: StartSandbox) -> None:
    def statuses(client: Client) -> list[int]:
        return [client.get("/usage/credits").status_code for _ in range(30)]

    first = statuses(sandbox(fault_rate_429=0.5, fault_seed=7))
    second_client = sandbox(fault_rate_429=0.5, fault_seed=7)
    assert statuses(second_client) == first
    assert set(first) == {200, 429}
    second_client.server.reset()  # reset restarts the sequence
    assert statuses(second_client) == first


# -- transport, admin, config ---------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(sandbox: StartSandbox) -> None:
    client = sandbox(fault_rate_truncate=0.5, fault_seed=1)
    host, port = client.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        sock = None
        truncated = 0
        for _ in range(8):
            connection.request("GET", "/exchange/support", headers={"X-API-KEY": DEFAULT_API_KEY})
            response = connection.getresponse()
            payload = response.read()
            assert response.status == 200
            assert len(payload) == int(response.headers["Content-Length"])
            assert response.headers.get("Connection") != "close"
            try:
                json.loads(payload)
            except ValueError:
                truncated += 1
            sock = sock or connection.sock
            assert connection.sock is sock
        assert truncated > 0
    finally:
        connection.close()


def test_admin_endpoints_over_http(sandbox: StartSandbox) -> None:
    client = sandbox(sync_seconds=0)
    pid = client.connect_id()
    admin = requests.Session()
    stats = admin.get(client.url + "/_sandbox/stats", timeout=10).json()
    assert stats["requests"] == {"POST /portfolio/exchange": 1}
    assert stats["responses"] == {"200": 1}
    assert stats["faults"] == {"429": 0, "5xx": 0, "reset": 0, "slow": 0, "truncate": 0}
    assert (stats["credits_used"], stats["portfolios"]) == (10, 1)

    changed = admin.post(client.url + "/_sandbox/config", json={"fault_rate_429": 1.0}, timeout=10)
    assert changed.status_code == 200
    assert changed.json()["fault_rate_429"] == 1.0
    assert "api_keys" not in changed.json()
    assert client.get("/usage/credits").status_code == 429
    for invalid in ({"fault_rate_429": 2}, {"no_such_option": 1}, {"port": 1}, {"credits": "many"}):
        assert admin.post(client.url + "/_sandbox/config", json=invalid, timeout=10).status_code == 400
    spread = admin.post(client.url + "/_sandbox/config", json={"faults": 0}, timeout=10).json()
    assert spread["fault_rate_429"] == 0.0

    assert admin.post(client.url + "/_sandbox/reset", timeout=10).json() == {"success": True}
    stats = client.server.stats()
    assert (stats["credits_used"], stats["portfolios"], stats["requests"]) == (0, 0, {})
    assert client.get("/portfolio/status", portfolioId=pid).status_code == 404
    admin.close()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SandboxConfig(host="192.0.2.10")
    with pytest.raises(ValueError, match="at most 1"):
        SandboxConfig(fault_rate_429=0.6, fault_rate_5xx=0.6)
    with pytest.raises(ValueError):
        SandboxConfig(api_keys=())
    assert SandboxConfig(host="::1").host == "::1"
    args = build_parser().parse_args(["--faults", "0.5", "--fault-rate-429", "0.2", "--api-key", "k"])
    config = config_from_args(args)
    assert (config.fault_rate_429, config.fault_rate_5xx, config.fault_rate_truncate) == (0.2, 0.1, 0.1)
    assert (config.api_keys, config.port) == (("k",), 8765)


def test_server_lifecycle_and_unknown_routes() -> None:
    with SandboxServer(SandboxConfig(quiet=True)) as server:
        url = server.base_url
        assert url.startswith("http://127.0.0.1:")
        headers = {"X-API-KEY": DEFAULT_API_KEY}
        unknown = requests.get(url + "/portfolio/nope", headers=headers, timeout=10)
        assert unknown.status_code == 404
        assert unknown.json()["path"] == "/portfolio/nope"
        with pytest.raises(RuntimeError):
            server.start()
    with pytest.raises(RuntimeError):
        _ = server.base_url
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/usage/credits", timeout=2)


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_serves_until_sigterm_and_logs_no_secrets(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    secret_key = "cli-secret-key-123"
    command = [sys.executable, "-m", "include.coinstats_sandbox", "--port", "0"]
    command += ["--ready-file", str(ready), "--api-key", secret_key, "--credits", "77"]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the sandbox did not become ready"
            time.sleep(0.02)
        url = ready.read_text(encoding="utf-8").strip()
        assert url.startswith("http://127.0.0.1:")
        headers = {"X-API-KEY": secret_key}
        usage = requests.get(url + "/usage/credits", headers=headers, timeout=10).json()
        assert usage["totalCredits"] == 77
        status = requests.get(url + "/portfolio/status?portfolioId=query-value-xyz", headers=headers, timeout=10)
        assert status.status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert f"CoinStats sandbox listening on {url}" in stdout
    assert "GET /usage/credits 200" in stderr
    assert "GET /portfolio/status 404" in stderr
    assert secret_key not in stderr + stdout
    assert "query-value-xyz" not in stderr
    assert not ready.exists()


def test_cli_refuses_non_loopback_hosts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "include.coinstats_sandbox", "--host", "192.0.2.10", "--port", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert "loopback" in result.stderr
