"""Tests of the sandbox's misbehaviour switches, each against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from include.coinstats_sandbox import DEFAULT_API_KEY, FAULT_KINDS, SandboxConfig, SandboxServer
from include.coinstats_sandbox.__main__ import build_parser, config_from_args
from tests.unit.test_sandbox import assert_component, assert_operation

TX = "/portfolio/transactions"
HEADERS = {"X-API-KEY": DEFAULT_API_KEY}


class Api:
    """A ``requests`` session bound to one running sandbox."""

    def __init__(self, server: SandboxServer) -> None:
        self.server = server
        self.app = server.app
        self.url = server.base_url
        self.session = requests.Session()
        self.session.headers.update(HEADERS)

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.url + path, params=params, timeout=10, allow_redirects=False)

    def admin(self, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
        return requests.request(method, self.url + path, json=body, params=params, timeout=10)

    def connect(self, account: str = "1", key: str = "key-1") -> str:
        """Connect a Binance portfolio; ``account`` picks another exchange secret (another portfolio)."""
        fields = {"apiKey": key, "apiSecret": f"sandbox-{account}"}
        body = {"connectionId": "binance", "connectionFields": fields}
        response = self.session.post(self.url + "/portfolio/exchange", json=body, timeout=10)
        assert response.status_code == 200, response.text
        portfolio_id: str = response.json()["portfolioId"]
        return portfolio_id

    def page(self, pid: str, page: int, limit: int) -> list[dict[str, Any]]:
        response = self.get(TX, portfolioId=pid, currency="USD", page=page, limit=limit)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["data"]
        return items

    def read_all(self, pid: str, limit: int) -> list[dict[str, Any]]:
        """Page through the whole list the way the loader does (until a short page)."""
        items: list[dict[str, Any]] = []
        for number in range(1, 10_000):
            page = self.page(pid, number, limit)
            items += page
            if len(page) < limit:
                return items
        raise AssertionError("paging did not end")

    def used(self) -> int:
        used: int = self.get("/usage/credits").json()["usedCredits"]
        return used


Start = Callable[..., Api]


@pytest.fixture
def start() -> Iterator[Start]:
    """Factory: start a quiet sandbox with the given options and return a client for it."""
    apis: list[Api] = []

    def run(**options: Any) -> Api:
        server = SandboxServer(SandboxConfig(quiet=True, **options))
        server.start()
        api = Api(server)
        apis.append(api)
        return api

    yield run
    for api in apis:
        api.session.close()
        api.server.stop()


def raw_request(url: str, target: str, *, close: bool = False, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """Send one GET over a plain socket and read until the server closes; returns (head, body)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", f"X-API-KEY: {DEFAULT_API_KEY}"]
    if close:
        lines.append("Connection: close")
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body


def header(head: bytes, name: str) -> str | None:
    """Value of one header in a raw response head."""
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


# -- defaults -------------------------------------------------------------------------------------


def test_defaults_leave_items_and_stats_unchanged(start: Start) -> None:
    api = start(transactions=30, sync_seconds=0)
    pid = api.connect()
    items = api.read_all(pid, 20)
    assert len(items) == 30
    assert all("note" not in item and "hash" not in item for item in items)
    assert api.app.transactions(pid) == items
    stats = api.server.stats()
    assert set(stats["faults"]) == set(FAULT_KINDS) == {"429", "5xx", "reset", "slow", "truncate"}
    assert stats["switches"] == {"cut": 0, "redirect": 0, "shift": 0, "stall": 0}
    config = api.admin("GET", "/_sandbox/config").json()
    assert config["redirect_to"] is None
    assert (config["limit_cap"], config["cut_count"], config["fault_rate_cut"]) == (None, 0, 0.0)
    assert config["transaction_ids"] is False


# -- redirects ------------------------------------------------------------------------------------


def test_redirect_answers_status_and_location_and_does_nothing_else(start: Start) -> None:
    target = start(transactions=5, sync_seconds=0)
    api = start(redirect_to=target.url + "/", redirect_status=308, redirect_routes=[TX])
    query = "portfolioId=abc&currency=USD&page=2&limit=5"
    response = api.session.get(f"{api.url}{TX}?{query}", timeout=10, allow_redirects=False)
    assert response.status_code == 308
    assert response.headers["Location"] == f"{target.url}{TX}?{query}"
    assert response.json() == {"statusCode": 308, "message": "Permanent Redirect"}
    anonymous = requests.get(f"{api.url}{TX}?{query}", timeout=10, allow_redirects=False)
    assert anonymous.status_code == 308  # before authentication, like a front proxy

    assert api.get("/usage/credits").status_code == 200  # not a redirected route
    assert api.admin("GET", "/_sandbox/stats").status_code == 200  # admin routes never redirect
    stats = api.server.stats()
    assert stats["switches"]["redirect"] == 2
    assert stats["requests"][f"GET {TX}"] == 2
    assert stats["responses"] == {"308": 2, "200": 1}
    assert (stats["credits_used"], stats["portfolios"], stats["faults"]["429"]) == (0, 0, 0)

    # Every API route redirects when redirect_routes is null; statuses change at runtime.
    changed = api.admin("POST", "/_sandbox/config", {"redirect_routes": None, "redirect_status": 302})
    assert changed.status_code == 200
    for status in (301, 302, 303, 307):
        api.server.update(redirect_status=status)
        moved = api.session.patch(f"{api.url}/portfolio/sync", timeout=10, allow_redirects=False)
        assert moved.status_code == status
        assert moved.headers["Location"] == f"{target.url}/portfolio/sync"
    assert api.server.stats()["credits_used"] == 0
    # A client that follows the redirect lands on the target server.
    followed = api.session.get(api.url + "/exchange/support", timeout=10)
    assert followed.status_code == 200
    assert target.server.stats()["requests"] == {"GET /exchange/support": 1}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"redirect_to": "ftp://127.0.0.1:1"}, "absolute http"),
        ({"redirect_to": "127.0.0.1:8766"}, "absolute http"),
        ({"redirect_to": "http://127.0.0.1:8766/?a=1"}, "without query"),
        ({"redirect_status": 300}, "redirect_status must be one of"),
        ({"redirect_routes": ["/portfolio/nope"]}, "unknown API path"),
        ({"redirect_routes": "/portfolio/coins"}, "list of API paths"),
        ({"stall_routes": [1]}, "list of API paths"),
        ({"shift_after_page": 0}, "shift_after_page must be at least 1"),
        ({"shift_insert": -1}, "shift_insert must not be negative"),
        ({"limit_cap": 0}, "limit_cap must be at least 1"),
        ({"stall_seconds": -1}, "stall_seconds must not be negative"),
        ({"stall_on_page": 0}, "stall_on_page must be at least 1"),
        ({"cut_count": -1}, "cut_count must not be negative"),
        ({"cut_mode": "half"}, "cut_mode must be one of length, chunked"),
        ({"fault_rate_cut": 1.5}, "fault_rate_cut must be within 0..1"),
        ({"fault_rate_cut": 0.6, "fault_rate_429": 0.6}, "at most 1"),
        ({"transaction_ids": "yes"}, "transaction_ids must be a boolean"),
    ],
)
def test_switch_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SandboxConfig().updated(changes)


def test_switch_validation_over_the_admin_route(start: Start) -> None:
    api = start()
    bad = api.admin("POST", "/_sandbox/config", {"redirect_status": 399})
    assert bad.status_code == 400
    assert "redirect_status" in bad.json()["message"]
    good = api.admin("POST", "/_sandbox/config", {"cut_routes": [TX], "stall_routes": ["/portfolio/coins"]})
    assert good.status_code == 200
    assert (good.json()["cut_routes"], api.server.config.stall_routes) == ([TX], ("/portfolio/coins",))


# -- a list that shifts between page reads --------------------------------------------------------


def test_shift_inserts_at_the_head_once_per_arming(start: Start) -> None:
    api = start(transactions=50, sync_seconds=0, shift_after_page=1, shift_insert=2)
    pid = api.connect()
    truth = api.app.transactions(pid)
    first = api.page(pid, 1, 10)
    assert first == truth[:10]
    second = api.page(pid, 2, 10)  # the list grew by two at the head after page 1
    assert second == truth[8:18]
    assert second[:2] == first[-2:]

    now = api.app.transactions(pid)
    assert len(now) == 52
    assert now[2:] == truth
    assert now[0]["date"] > now[1]["date"] > truth[0]["date"]
    assert api.server.stats()["switches"]["shift"] == 1

    # Disarmed: a full load now sees a stable list.
    assert api.read_all(pid, 10) == now
    assert api.app.transaction_count(pid) == 52

    # An admin update naming a shift_* field re-arms it; other updates do not.
    api.admin("POST", "/_sandbox/config", {"fault_rate_429": 0.0})
    api.page(pid, 1, 10)
    assert api.app.transaction_count(pid) == 52
    api.admin("POST", "/_sandbox/config", {"shift_insert": 1})
    api.page(pid, 1, 10)
    assert api.app.transaction_count(pid) == 53
    assert api.admin("POST", "/_sandbox/shift/arm").json() == {"success": True}
    api.page(pid, 1, 10)
    api.page(pid, 1, 10)
    assert api.app.transaction_count(pid) == 54
    assert api.server.stats()["switches"]["shift"] == 3


def test_shift_delete_makes_a_reader_skip_items(start: Start) -> None:
    api = start(transactions=40, sync_seconds=0, shift_after_page=2, shift_insert=0, shift_delete=3)
    pid, other = api.connect(), api.connect("2")
    truth = api.app.transactions(pid)
    seen = api.read_all(pid, 10)
    assert seen == truth[:20] + truth[23:]  # items 20..22 moved onto the page already read
    assert api.app.transactions(pid) == truth[3:]
    # Once per portfolio: the other portfolio still shifts in the same arming.
    assert len(api.read_all(other, 10)) == 37
    assert api.app.transaction_count(other) == 37


# -- edits between runs ---------------------------------------------------------------------------


def test_edits_in_process_are_what_a_client_pages_through(start: Start) -> None:
    api = start(transactions=60, sync_seconds=0)
    pid = api.connect()
    truth = api.app.transactions(pid)

    assert api.app.add_transactions(pid, 3) == 63
    added = api.app.transactions(pid)[:3]
    assert added[0]["date"] > added[1]["date"] > added[2]["date"] > truth[0]["date"]
    assert_component(added[0], "TransactionItemDto")

    noted = api.app.edit_note(pid, 5, "moved to cold storage")
    assert noted["note"] == "moved to cold storage"
    assert {key: value for key, value in noted.items() if key != "note"} == truth[2]
    relabelled = api.app.edit_labels(pid, 0, name="Binance Spot")
    assert relabelled["portfolioInfo"] == {"name": "Binance Spot", "icon": added[0]["portfolioInfo"]["icon"]}
    deleted = api.app.delete_transaction(pid, 3)
    assert deleted == truth[0]
    api.app.delete_transaction(pid, 40)  # a generated one further down

    expected = [relabelled, added[1], added[2], *truth[1:2], noted, *truth[3:38], *truth[39:]]
    assert api.app.transactions(pid) == expected
    for limit in (7, 20, 100):
        assert api.read_all(pid, limit) == expected
    assert sum("note" in item for item in expected) == 1
    eur = api.app.transactions(pid, "eur")
    assert eur[4]["note"] == "moved to cold storage"
    assert eur[0]["portfolioInfo"]["name"] == "Binance Spot"

    assert "note" not in api.app.edit_note(pid, 4, None)  # null removes the note again
    assert api.app.transactions(pid)[4] == truth[2]
    with pytest.raises(ValueError, match="out of range"):
        api.app.delete_transaction(pid, 61)
    with pytest.raises(ValueError, match="index must be an integer"):
        api.app.edit_note(pid, True, "x")
    with pytest.raises(ValueError, match="name and/or icon"):
        api.app.edit_labels(pid, 0)
    with pytest.raises(ValueError, match="count must be a positive integer"):
        api.app.add_transactions(pid, 0)
    with pytest.raises(ValueError, match="unsupported currency"):
        api.app.transactions(pid, "XYZ")
    with pytest.raises(LookupError, match="connect it first"):
        api.app.transactions("0" * 24)


def test_delete_everything_and_edit_an_empty_portfolio(start: Start) -> None:
    api = start(transactions=5, sync_seconds=0)
    pid = api.connect()
    for _ in range(5):
        api.app.delete_transaction(pid, 0)
    assert api.app.transactions(pid) == []
    assert api.page(pid, 1, 20) == []
    api.server.update(transactions=8)  # the generated list grows under the deletions
    assert [item["date"] for item in api.app.transactions(pid)] == [item["date"] for item in api.read_all(pid, 3)]
    assert api.app.transaction_count(pid) == 3

    empty = api.connect(key="empty-account")
    assert api.app.transactions(empty) == []
    assert api.app.add_transactions(empty, 2) == 2
    added = api.read_all(empty, 20)
    assert added == api.app.transactions(empty)
    assert [item["portfolioInfo"]["name"] for item in added] == ["Binance", "Binance"]


def test_edit_routes_over_http(start: Start) -> None:
    api = start(transactions=12, sync_seconds=0)
    pid = api.connect()
    truth = api.admin("GET", "/_sandbox/transactions", portfolioId=pid).json()
    assert truth["count"] == 12
    assert truth["data"] == api.read_all(pid, 5)

    added = api.admin("POST", "/_sandbox/transactions/add", {"portfolioId": pid, "count": 2})
    assert added.json() == {"count": 14}
    note = api.admin("POST", "/_sandbox/transactions/note", {"portfolioId": pid, "index": 2, "note": {"a": 1}})
    assert note.json()["transaction"]["note"] == {"a": 1}
    labels = api.admin("POST", "/_sandbox/transactions/labels", {"portfolioId": pid, "index": 2, "icon": "i.png"})
    assert labels.json()["transaction"]["portfolioInfo"]["icon"] == "i.png"
    assert labels.json()["transaction"]["note"] == {"a": 1}
    gone = api.admin("POST", "/_sandbox/transactions/delete", {"portfolioId": pid, "index": 0})
    assert gone.status_code == 200
    now = api.admin("GET", "/_sandbox/transactions", portfolioId=pid, currency="GBP").json()
    assert now["count"] == 13
    assert now["data"] == api.app.transactions(pid, "GBP")
    assert now["data"][1]["note"] == {"a": 1}
    assert api.page(pid, 1, 2)[1]["portfolioInfo"]["icon"] == "i.png"

    for path, body, status, words in (
        ("/_sandbox/transactions/add", {"portfolioId": "f" * 24}, 404, "connect it first"),
        ("/_sandbox/transactions/add", {"count": 1}, 400, "portfolioId is required"),
        ("/_sandbox/transactions/add", {"portfolioId": pid, "count": "2"}, 400, "count must be"),
        ("/_sandbox/transactions/note", {"portfolioId": pid, "index": 1}, 400, "note is required"),
        ("/_sandbox/transactions/note", {"portfolioId": pid, "note": "x"}, 400, "index is required"),
        ("/_sandbox/transactions/delete", {"portfolioId": pid, "index": 13}, 400, "out of range"),
        ("/_sandbox/transactions/labels", {"portfolioId": pid, "index": 0, "name": 3}, 400, "as strings"),
        ("/_sandbox/transactions/undo", {"portfolioId": pid}, 404, "Cannot POST"),
    ):
        answer = api.admin("POST", path, body)
        assert answer.status_code == status, (path, answer.text)
        assert words in answer.json()["message"]
    assert api.admin("GET", "/_sandbox/transactions", portfolioId=pid, currency="XYZ").status_code == 400
    not_json = requests.post(api.url + "/_sandbox/transactions/add", data=b"[1", timeout=10)
    assert not_json.status_code == 400
    charged = api.server.stats()["credits_by_path"]
    assert set(charged) == {"POST /portfolio/exchange", f"GET {TX}"}  # admin calls are free


# -- transaction ids ------------------------------------------------------------------------------


def test_transaction_ids_are_unique_and_survive_edits(start: Start) -> None:
    api = start(transactions=120, sync_seconds=0, transaction_ids=True)
    pid = api.connect()
    items = api.read_all(pid, 50)
    ids = [item["hash"]["id"] for item in items]
    assert len(set(ids)) == 120  # identical-looking duplicates still have their own id
    without = [{key: value for key, value in item.items() if key != "hash"} for item in items]
    assert len({json.dumps(item, sort_keys=True) for item in without}) < 120
    for item in items[:3]:
        assert_component(item["hash"], "TransactionHash")
        assert item["hash"]["id"].startswith("0x")
        assert len(item["hash"]["id"]) == 66
        assert item["hash"]["explorerUrl"].endswith(item["hash"]["id"])
    body = api.get(TX, portfolioId=pid, currency="USD", limit=3)
    assert_operation(body, "GET", TX)

    api.app.edit_note(pid, 4, "n")
    api.app.edit_labels(pid, 5, name="renamed")
    api.app.add_transactions(pid, 1)
    api.app.delete_transaction(pid, 11)
    after = api.app.transactions(pid)
    assert [item["hash"]["id"] for item in after[1:]] == ids[:10] + ids[11:]
    assert after[0]["hash"]["id"] not in ids

    again = start(transactions=120, sync_seconds=0, transaction_ids=True)  # deterministic
    assert [item["hash"]["id"] for item in again.read_all(again.connect(), 100)] == ids
    api.server.update(transaction_ids=False)
    assert "hash" not in api.page(pid, 1, 1)[0]


# -- capped limit ---------------------------------------------------------------------------------


def test_limit_cap_serves_fewer_items_and_reports_the_cap(start: Start) -> None:
    api = start(transactions=30, coins=25, sync_seconds=0, limit_cap=7)
    pid = api.connect()
    truth = api.app.transactions(pid)
    response = api.get(TX, portfolioId=pid, currency="USD", page=2, limit=20)
    body = assert_operation(response, "GET", TX)
    assert body["meta"] == {"page": 2, "limit": 7}
    assert body["data"] == truth[7:14]
    small = api.get(TX, portfolioId=pid, currency="USD", page=2, limit=5).json()
    assert (small["meta"], small["data"]) == ({"page": 2, "limit": 5}, truth[5:10])
    assert api.get(TX, portfolioId=pid, currency="USD", limit=101).status_code == 400  # still validated

    coins = [api.get("/portfolio/coins", portfolioId=pid, page=page, limit=20).json() for page in (1, 4, 5)]
    assert [len(page["result"]) for page in coins] == [7, 4, 0]
    assert set(coins[0]) == {"result"}
    api.server.update(limit_cap=None)
    full = api.get("/portfolio/coins", portfolioId=pid, limit=25).json()["result"]
    assert coins[0]["result"] == full[:7]
    assert coins[1]["result"] == full[21:25]


# -- stall mid-stream -----------------------------------------------------------------------------


def test_stall_sends_head_and_part_of_the_body_then_the_rest(start: Start) -> None:
    api = start(transactions=40, sync_seconds=0, stall_seconds=0.6, stall_routes=[TX], stall_on_page=2)
    pid = api.connect()
    url = urlsplit(api.url)
    assert url.hostname is not None
    assert url.port is not None
    target = f"{TX}?portfolioId={pid}&currency=USD&page=2&limit=10"
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\nX-API-KEY: {DEFAULT_API_KEY}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        first = sock.recv(65536)
        while b"\r\n\r\n" not in first or first.endswith(b"\r\n\r\n"):
            first += sock.recv(65536)
        early = time.monotonic() - started
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    total = time.monotonic() - started
    head, _, body_start = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert early < 0.5
    assert total >= 0.6
    body = body_start + rest
    assert int(header(head, "Content-Length") or 0) == len(body)
    assert 0 < len(body_start) < len(body)
    assert json.loads(body)["data"] == api.app.transactions(pid)[10:20]

    started = time.monotonic()
    assert len(api.page(pid, 1, 10)) == 10  # other pages and routes are not stalled
    api.get("/portfolio/coins", portfolioId=pid, page=2)
    assert time.monotonic() - started < 0.5
    slow = time.monotonic()
    assert api.page(pid, 2, 10) == json.loads(body)["data"]  # requests reads the complete answer
    assert time.monotonic() - slow >= 0.6
    assert api.server.stats()["switches"]["stall"] == 2


# -- 2xx cut on the wire --------------------------------------------------------------------------


def test_targeted_cut_performs_the_call_then_cuts_the_answer(start: Start) -> None:
    api = start(transactions=30, sync_seconds=0, cut_routes=[TX], cut_count=2)
    pid = api.connect()
    used = api.used()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        api.get(TX, portfolioId=pid, currency="USD", limit=10)
    head, body = raw_request(api.url, f"{TX}?portfolioId={pid}&currency=USD&limit=10")  # keep-alive asked
    assert head.startswith(b"HTTP/1.1 200")
    announced = int(header(head, "Content-Length") or 0)
    full = json.dumps(api.get(TX, portfolioId=pid, currency="USD", limit=10).json(), separators=(",", ":"))
    assert announced == len(full.encode()) > len(body) > 0
    assert full.encode().startswith(body)
    assert header(head, "Connection") is None  # the close is not announced

    assert api.used() - used == 3 * 4  # every call was performed and charged
    stats = api.server.stats()
    assert stats["switches"]["cut"] == 2
    assert stats["credits_by_path"][f"GET {TX}"] == 12
    assert stats["faults"] == dict.fromkeys(FAULT_KINDS, 0)
    assert api.server.config.cut_count == 0  # consumed
    assert api.admin("GET", "/_sandbox/config").json()["cut_count"] == 0

    # A cut sync still starts the sync.
    api.server.update(cut_routes=["/portfolio/sync"], cut_count=1, sync_seconds=30)
    with pytest.raises(requests.exceptions.RequestException):
        api.session.patch(api.url + "/portfolio/sync", params={"portfolioId": pid}, timeout=10)
    assert api.get("/portfolio/status", portfolioId=pid).json() == {"status": "syncing"}
    assert api.server.stats()["credits_by_path"]["PATCH /portfolio/sync"] == 30


def test_chunked_cut_stops_mid_chunk(start: Start) -> None:
    api = start(cut_count=1, cut_mode="chunked")
    head, body = raw_request(api.url, "/exchange/support")
    assert head.startswith(b"HTTP/1.1 200")
    assert header(head, "Transfer-Encoding") == "chunked"
    assert header(head, "Content-Length") is None
    size_line, _, data = body.partition(b"\r\n")
    assert int(size_line, 16) > len(data) > 0
    assert not data.endswith(b"0\r\n\r\n")
    assert api.get("/exchange/support").status_code == 200  # the next answer is whole
    assert api.used() == 2


def test_cut_rate_is_drawn_with_the_faults_but_not_spread(start: Start) -> None:
    api = start(fault_rate_cut=1.0)
    for _ in range(3):
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            api.get("/exchange/support")
    assert api.server.stats()["switches"]["cut"] == 3
    assert api.server.stats()["responses"] == {"200": 3}

    spread = api.server.update(fault_rate_cut=0.0, faults=0.5)
    assert spread.fault_rate_cut == 0.0
    assert spread.fault_rates() == dict.fromkeys(FAULT_KINDS, 0.1)

    def statuses(server_api: Api) -> list[int]:
        return [server_api.get("/usage/credits").status_code for _ in range(30)]

    # A zero cut rate leaves the fault sequence exactly as before the cut kind existed.
    plain = statuses(start(fault_rate_429=0.5, fault_seed=7))
    assert statuses(start(fault_rate_429=0.5, fault_seed=7, fault_rate_cut=0.0)) == plain
    mixed = start(fault_rate_429=0.5, fault_rate_cut=0.5, fault_seed=7)
    outcomes = []
    for _ in range(30):
        try:
            outcomes.append(mixed.get("/usage/credits").status_code)
        except requests.exceptions.ChunkedEncodingError:
            outcomes.append(0)
    assert outcomes == [0 if status == 200 else status for status in plain]
    assert outcomes.count(0) == mixed.server.stats()["switches"]["cut"] > 0


# -- the transactions date filter -----------------------------------------------------------------


def test_from_filters_the_transactions_and_ignore_from_switches_it_off(start: Start) -> None:
    api = start(transactions=30, sync_seconds=0)
    pid = api.connect()
    everything = api.read_all(pid, 10)
    cut = everything[7]["date"]  # inclusive: the 8 newest (7 with the same date or newer, plus itself)
    newer = [item for item in everything if item["date"] >= cut]

    def read(**params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for number in range(1, 100):
            response = api.get(TX, portfolioId=pid, currency="USD", page=number, limit=3, **params)
            assert response.status_code == 200, response.text
            page = response.json()["data"]
            items += page
            if len(page) < 3:
                return items
        raise AssertionError("paging did not end")

    assert read(**{"from": cut}) == newer
    assert read(**{"from": "2000-01-01"}) == everything  # a date alone means midnight UTC
    assert read(**{"from": "2100-01-01T00:00:00+02:00"}) == []
    api.app.add_transactions(pid, 2)
    assert len(read(**{"from": cut})) == len(newer) + 2
    bad = api.get(TX, portfolioId=pid, currency="USD", **{"from": "last tuesday"})
    assert (bad.status_code, bad.json()["message"]) == (400, "Invalid parameter: from")

    api.server.update(ignore_from=True)
    assert read(**{"from": cut}) == api.app.transactions(pid)  # accepted, not applied
    assert api.admin("GET", "/_sandbox/config").json()["ignore_from"] is True


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_flags_set_every_switch() -> None:
    args = build_parser().parse_args(
        [
            "--redirect-to",
            "http://127.0.0.1:9",
            "--redirect-status",
            "301",
            "--redirect-route",
            TX,
            "--shift-after-page",
            "2",
            "--shift-insert",
            "3",
            "--shift-delete",
            "1",
            "--limit-cap",
            "50",
            "--stall-seconds",
            "1.5",
            "--stall-route",
            "/portfolio/coins",
            "--stall-on-page",
            "3",
            "--fault-rate-cut",
            "0.1",
            "--cut-route",
            TX,
            "--cut-route",
            "/portfolio/sync",
            "--cut-count",
            "4",
            "--cut-mode",
            "chunked",
            "--transaction-ids",
            "--ignore-from",
        ]
    )
    config = config_from_args(args)
    assert (config.redirect_to, config.redirect_status, config.redirect_routes) == ("http://127.0.0.1:9", 301, (TX,))
    assert (config.shift_after_page, config.shift_insert, config.shift_delete) == (2, 3, 1)
    assert (config.limit_cap, config.stall_seconds, config.stall_routes, config.stall_on_page) == (
        50,
        1.5,
        ("/portfolio/coins",),
        3,
    )
    assert (config.fault_rate_cut, config.cut_routes, config.cut_count, config.cut_mode) == (
        0.1,
        (TX, "/portfolio/sync"),
        4,
        "chunked",
    )
    assert config.transaction_ids is True
    assert config.ignore_from is True
    defaults = config_from_args(build_parser().parse_args([]))
    assert dict(defaults.public_dict(), port=0) == SandboxConfig(quiet=False).public_dict()
    with pytest.raises(ValueError, match="unknown API path"):
        config_from_args(build_parser().parse_args(["--cut-route", "/nope"]))
