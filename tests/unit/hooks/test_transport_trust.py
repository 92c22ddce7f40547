"""Transport trust of CoinStatsHook: no redirects, https only, no second paid call, exact numbers,
redaction of escaped secrets, strict parsing of headers and extras, and a safe on-disk cache."""

from __future__ import annotations

import decimal
import inspect
import json
import math
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import responses

from coinstats_provider.exceptions import (
    CoinStatsAPIError,
    CoinStatsBadRequestError,
    CoinStatsConfigError,
    CoinStatsRedirectError,
    CoinStatsResponseError,
    CoinStatsTruncatedAnswerError,
)
from coinstats_provider.hooks import coinstats as hooks
from coinstats_provider.hooks.coinstats import (
    MAX_RETRY_AFTER,
    CoinStatsHook,
    build_base_url,
    error_from_response,
    parse_retry_after,
    redact,
)
from coinstats_provider.models import SyncStatus
from tests.conftest import BASE_URL, CANARIES, SUPPORT, assert_no_canary, set_connection

API_KEY = CANARIES["api_key"]
FIELDS = {
    "apiKey": CANARIES["exchange_key"],
    "apiSecret": CANARIES["exchange_secret"],
    "passphrase": CANARIES["passphrase"],
}
CONN_ID = "cs_trust"
FAST = {"backoff_base": 0, "backoff_max": 0, "max_retries": 2, "timeout": 5}
SUPPORT_URL = BASE_URL + "/exchange/support"
STATUS_URL = BASE_URL + "/portfolio/status"
CONNECT_URL = BASE_URL + "/portfolio/exchange"


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """Mock every HTTP call made through ``requests``."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


class RecordingServer:
    """A threaded HTTP server on 127.0.0.1 that records every request and answers with ``reply``.

    :param reply: ``(status, headers, body)`` for every request.
    """

    def __init__(self, reply: tuple[int, dict[str, str], bytes]) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with server._lock:
                    server.requests.append(
                        {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                    )
                status, headers, payload = server.reply
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = _handle

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class RawServer:
    """A socket server on 127.0.0.1 that answers each connection with scripted raw bytes, then closes.

    The last script entry repeats. Records each request line.
    """

    def __init__(self, script: list[bytes]) -> None:
        self.script = list(script)
        self.requests: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next(
                    (int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0
                )
                while len(rest) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                self.requests.append(lines[0])
                answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
                conn.sendall(answer)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self._sock.close()


def answer(status: int, body: bytes) -> bytes:
    """A complete HTTP/1.1 answer with a JSON body."""
    head = f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


#: 200 announcing 100 bytes but sending 10, then closing.
SHORT_CONTENT_LENGTH = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"success"'
)
#: 200 with a chunked body whose first chunk (0x40 bytes announced) is cut off.
CUT_CHUNKED = (
    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n{"success": tr'
)
CUT_ANSWERS = [pytest.param(SHORT_CONTENT_LENGTH, id="content-length"), pytest.param(CUT_CHUNKED, id="chunked")]


def use_server(monkeypatch: pytest.MonkeyPatch, url: str, **extra: Any) -> None:
    set_connection(monkeypatch, CONN_ID, conn_type="coinstats", password=API_KEY, host=url, extra={**FAST, **extra})


def make_hook(conn_id: str = CONN_ID) -> tuple[CoinStatsHook, list[float]]:
    hook = CoinStatsHook(conn_id)
    delays: list[float] = []
    hook._sleep = delays.append

    async def record(delay: float) -> None:
        delays.append(delay)

    hook._asleep = record
    return hook, delays


def secret_forms(secret: str) -> list[str]:
    """Every way a secret may be written into text: raw, JSON-escaped and repr/ascii-escaped."""
    return [
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
    ]


# -- 1. redirects are never followed ---------------------------------------------------------------


@pytest.fixture
def redirect_pair(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[int], tuple[RecordingServer, RecordingServer]]]:
    servers: list[RecordingServer] = []

    def make(status: int) -> tuple[RecordingServer, RecordingServer]:
        second = RecordingServer((200, {"Content-Type": "application/json"}, b'{"status": "synced"}'))
        location = f"{second.url}/steal/{CANARIES['api_key']}?token=leak-me"
        first = RecordingServer((status, {"Location": location}, b""))
        servers.extend([first, second])
        use_server(monkeypatch, first.url)
        return first, second

    yield make
    for server in servers:
        server.close()


def _connect(hook: CoinStatsHook) -> Any:
    return hook.connect_exchange_portfolio("okx", FIELDS)


def _sync(hook: CoinStatsHook) -> Any:
    return hook.trigger_portfolio_sync("pf-1")


def _status(hook: CoinStatsHook) -> Any:
    return hook.get_portfolio_sync_status("pf-1")


def _first_transactions_page(hook: CoinStatsHook) -> Any:
    return next(iter(hook.iter_portfolio_transactions("pf-1")))


SYNC_CALLS = [
    pytest.param(_connect, "POST", "/portfolio/exchange", id="connect"),
    pytest.param(_sync, "PATCH", "/portfolio/sync", id="sync"),
    pytest.param(_status, "GET", "/portfolio/status", id="status"),
    pytest.param(_first_transactions_page, "GET", "/portfolio/transactions", id="transactions-page"),
]


def assert_redirect_refused(
    err: CoinStatsRedirectError,
    first: RecordingServer,
    second: RecordingServer,
    status: int,
    method: str,
    path: str,
    hook: CoinStatsHook,
    delays: list[float],
) -> None:
    assert second.requests == []
    assert len(first.requests) == 1
    assert first.requests[0]["method"] == method
    assert delays == []
    assert err.retryable is False
    assert err.http_status == status
    assert hook.credits.spent == 0
    text = str(err)
    assert str(status) in text
    assert f"{method} {path}" in text
    assert f"redirected to {second.url};" in text
    assert "/steal" not in text
    assert "leak-me" not in text
    assert f"Set the host of connection '{CONN_ID}'" in text
    assert_no_canary(text, repr(err), err.__cause__, err.__context__)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize(("call", "method", "path"), SYNC_CALLS)
def test_redirect_is_never_followed(
    redirect_pair: Callable[[int], tuple[RecordingServer, RecordingServer]],
    status: int,
    call: Callable[[CoinStatsHook], Any],
    method: str,
    path: str,
) -> None:
    first, second = redirect_pair(status)
    hook, delays = make_hook()

    with pytest.raises(CoinStatsRedirectError) as info:
        call(hook)

    assert_redirect_refused(info.value, first, second, status, method, path, hook, delays)
    if method == "POST":
        # The exchange credentials went to the configured host only, once.
        assert json.loads(first.requests[0]["body"])["connectionFields"] == FIELDS


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_async_redirect_is_never_followed(
    redirect_pair: Callable[[int], tuple[RecordingServer, RecordingServer]], status: int
) -> None:
    first, second = redirect_pair(status)
    hook, delays = make_hook()

    with pytest.raises(CoinStatsRedirectError) as info:
        await hook.aget_portfolio_sync_status("pf-1")

    assert_redirect_refused(info.value, first, second, status, "GET", "/portfolio/status", hook, delays)


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        pytest.param("https://user:pw@evil.example:8443/a/b?key=1#f", "https://evil.example:8443", id="userinfo"),
        pytest.param("/other/path?x=1", "https://openapiv1.coinstats.app", id="relative"),
        pytest.param("https://[::1]:9/x", "https://[::1]:9", id="ipv6"),
        pytest.param(None, "no Location header", id="missing"),
        pytest.param("javascript:alert(1)", "an unreadable Location", id="not-http"),
        pytest.param("https://evil.example:notaport/", "an unreadable Location", id="bad-port"),
    ],
)
def test_redirect_target_shows_only_scheme_host_port(location: str | None, shown: str) -> None:
    target = hooks._redirect_target(location, BASE_URL + "/portfolio/status")

    assert shown in target
    for part in ("pw", "/a/b", "key=1", "/other", "alert"):
        assert part not in target


def test_redirect_error_from_responses_mock(rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch) -> None:
    use_server(monkeypatch, BASE_URL)
    rsps.get(STATUS_URL, status=308, headers={"Location": "https://api.example.test/portfolio/status"})
    rsps.get("https://api.example.test/portfolio/status", json={"status": "synced"})
    hook, _ = make_hook()

    with pytest.raises(CoinStatsRedirectError, match=r"redirected to https://api\.example\.test;"):
        hook.get_portfolio_sync_status("pf-1")

    assert len(rsps.calls) == 1
    # The status line is read before the body (stream), so a cut 2xx body is known to be served.
    assert rsps.calls[0].request.req_kwargs["stream"] is True


# -- 2. plain http only for loopback ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("http://localhost:8765/", "http://localhost:8765"),
        ("http://LOCALHOST", "http://LOCALHOST"),
        ("http://127.9.8.7:1", "http://127.9.8.7:1"),
        ("http://[::1]:8765", "http://[::1]:8765"),
        ("https://api.example.test", "https://api.example.test"),
    ],
)
def test_http_accepted_for_loopback(host: str, expected: str) -> None:
    assert build_base_url("c", host, None) == expected


@pytest.mark.parametrize(
    "host",
    [
        "http://openapiv1.coinstats.app",
        "http://10.0.0.5:8765",
        "http://sandbox:8765",
        "http://localhost.evil.example",
        "http://128.0.0.1",
        "http://[::2]:8765",
    ],
)
def test_plain_http_rejected_for_remote_host(
    host: str, rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, host)

    with pytest.raises(CoinStatsConfigError) as info:
        make_hook()[0].get_credit_usage()

    text = str(info.value)
    assert f"Connection '{CONN_ID}'" in text
    assert "https://" in text
    assert "loopback" in text
    assert len(rsps.calls) == 0
    assert_no_canary(text)


# -- 3. a paid call answered 2xx is never sent twice -----------------------------------------------


@pytest.fixture
def raw_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[list[bytes]], RawServer]]:
    servers: list[RawServer] = []

    def make(script: list[bytes]) -> RawServer:
        server = RawServer(script)
        servers.append(server)
        use_server(monkeypatch, server.url)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.mark.parametrize("cut", CUT_ANSWERS)
def test_cut_sync_answer_is_sent_once(
    raw_server: Callable[[list[bytes]], RawServer], logs: pytest.LogCaptureFixture, cut: bytes
) -> None:
    server = raw_server([cut, answer(200, b'{"success": true}')])
    hook, delays = make_hook()

    hook.trigger_portfolio_sync("pf-1")

    assert server.requests == ["PATCH /portfolio/sync?portfolioId=pf-1 HTTP/1.1"]
    assert hook.credits.spent == 30
    assert delays == []
    assert "answered 200 with an unreadable body; the call succeeded" in logs.text
    assert "body cut off" in logs.text


@pytest.mark.parametrize("cut", CUT_ANSWERS)
def test_cut_connect_answer_raises_without_resending(
    raw_server: Callable[[list[bytes]], RawServer], cut: bytes
) -> None:
    connected = b'{"portfolioId": "pf-1", "connectionId": "okx", "status": "connected"}'
    server = raw_server([cut, answer(200, connected)])
    hook, delays = make_hook()

    with pytest.raises(CoinStatsTruncatedAnswerError) as info:
        hook.connect_exchange_portfolio("okx", FIELDS)

    err = info.value
    assert server.requests == ["POST /portfolio/exchange HTTP/1.1"]
    assert hook.credits.spent == 10
    assert delays == []
    assert err.retryable is True  # a new Airflow try may reconnect on purpose; the hook itself never does
    text = str(err)
    assert "accepted the connect" in text
    assert "cut off" in text
    assert "portfolio exists" in text
    assert "'existing'" in text
    assert_no_canary(text, repr(err), err.__cause__, err.__context__)


def test_malformed_connect_answer_is_not_resent(rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch) -> None:
    use_server(monkeypatch, BASE_URL)
    rsps.post(CONNECT_URL, body='{"portfolioId": "pf-1", "sta', content_type="application/json")
    rsps.post(CONNECT_URL, json={"portfolioId": "pf-1", "connectionId": "okx", "status": "connected"})
    hook, delays = make_hook()

    with pytest.raises(CoinStatsTruncatedAnswerError, match="malformed or truncated JSON"):
        hook.connect_exchange_portfolio("okx", FIELDS)

    assert len(rsps.calls) == 1
    assert delays == []
    assert hook.credits.spent == 10


@pytest.mark.parametrize("cut", CUT_ANSWERS)
def test_cut_paid_read_is_retried_and_second_answer_used(
    raw_server: Callable[[list[bytes]], RawServer], logs: pytest.LogCaptureFixture, cut: bytes
) -> None:
    page = {"data": [{"_id": "tx-1", "coinData": {"symbol": "BTC"}}]}
    server = raw_server([cut, answer(200, json.dumps(page).encode())])
    hook, delays = make_hook()

    data = hook.request(
        "GET", "/portfolio/transactions", params={"portfolioId": "pf-1", "currency": "USD", "page": 1, "limit": 100}
    )

    assert data == page
    assert len(server.requests) == 2
    assert all(line.startswith("GET /portfolio/transactions?") for line in server.requests)
    assert len(delays) == 1
    # Both answers were 2xx: both are paid.
    assert hook.credits.spent == 8
    assert "GET /portfolio/transactions failed (body cut off: ChunkedEncodingError); retry 1 of 2" in logs.text


def test_write_marked_resendable_is_retried(raw_server: Callable[[list[bytes]], RawServer]) -> None:
    server = raw_server([CUT_CHUNKED, answer(200, b'{"portfolioId": "pf-1", "status": "existing"}')])
    hook, _ = make_hook()

    data = hook.request("POST", "/portfolio/exchange", json_body={"connectionId": "okx"}, resend_after_2xx=True)

    assert data == {"portfolioId": "pf-1", "status": "existing"}
    assert len(server.requests) == 2


@pytest.mark.parametrize("cut", CUT_ANSWERS)
async def test_async_cut_write_is_sent_once(raw_server: Callable[[list[bytes]], RawServer], cut: bytes) -> None:
    server = raw_server([cut])  # every answer is cut
    hook, delays = make_hook()

    assert await hook.arequest("PATCH", "/portfolio/sync", params={"portfolioId": "pf-1"}, need_body=False) is None
    assert server.requests == ["PATCH /portfolio/sync?portfolioId=pf-1 HTTP/1.1"]
    assert hook.credits.spent == 30

    with pytest.raises(CoinStatsTruncatedAnswerError, match=r"PATCH /portfolio/sync \(answered 200\)"):
        await hook.arequest("PATCH", "/portfolio/sync", params={"portfolioId": "pf-2"})
    assert len(server.requests) == 2
    assert delays == []


@pytest.mark.parametrize("cut", CUT_ANSWERS)
async def test_async_cut_read_is_retried(raw_server: Callable[[list[bytes]], RawServer], cut: bytes) -> None:
    server = raw_server([cut, answer(200, b'{"status": "synced"}')])
    hook, delays = make_hook()

    assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    assert len(server.requests) == 2
    assert len(delays) == 1
    assert hook.credits.spent == 6


def test_request_signature_marks_writes() -> None:
    for method in (CoinStatsHook.request, CoinStatsHook.arequest):
        param = inspect.signature(method).parameters["resend_after_2xx"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY
        assert param.default is None


# -- 4. exact numbers ------------------------------------------------------------------------------


EXACT_BODY = '{"amount": 0.123456789012345678, "price": 65432.000000000000000001, "huge": 1e400, "count": 3}'


def test_exact_numbers_keep_every_digit(rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch) -> None:
    use_server(monkeypatch, BASE_URL)
    rsps.get(STATUS_URL, body=EXACT_BODY, content_type="application/json")
    hook, _ = make_hook()

    exact = hook.request("GET", "/portfolio/status", params={"portfolioId": "pf-1"}, exact_numbers=True)
    loose = hook.request("GET", "/portfolio/status", params={"portfolioId": "pf-1"})

    assert exact["amount"] == decimal.Decimal("0.123456789012345678")
    assert exact["price"] == decimal.Decimal("65432.000000000000000001")
    assert isinstance(exact["huge"], decimal.Decimal)
    assert exact["huge"].is_finite()
    assert exact["huge"] == decimal.Decimal("1e400")
    assert exact["count"] == 3
    assert isinstance(exact["count"], int)
    # The default stays float, as before.
    assert isinstance(loose["amount"], float)
    assert math.isinf(loose["huge"])


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_exact_numbers_reject_non_standard_constants(
    rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture, constant: str
) -> None:
    use_server(monkeypatch, BASE_URL)
    rsps.get(STATUS_URL, body=f'{{"amount": {constant}}}', content_type="application/json")
    rsps.get(STATUS_URL, json={"amount": 1.5})
    hook, delays = make_hook()

    data = hook.request("GET", "/portfolio/status", params={"portfolioId": "pf-1"}, exact_numbers=True)

    assert data == {"amount": decimal.Decimal("1.5")}
    assert len(rsps.calls) == 2
    assert len(delays) == 1
    assert "failed (non-standard JSON); retry 1 of 2" in logs.text


def test_exact_numbers_persistent_constant_is_malformed_answer(
    rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, BASE_URL)
    rsps.get(STATUS_URL, body='{"amount": NaN}', content_type="application/json")
    hook, _ = make_hook()

    with pytest.raises(CoinStatsResponseError, match="non-standard JSON constant NaN") as info:
        hook.request("GET", "/portfolio/status", params={"portfolioId": "pf-1"}, exact_numbers=True)

    assert info.value.retryable is True
    assert len(rsps.calls) == 3


def test_exact_numbers_signature() -> None:
    for method in (CoinStatsHook.request, CoinStatsHook.arequest):
        param = inspect.signature(method).parameters["exact_numbers"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY
        assert param.default is False


async def test_async_exact_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    server = RecordingServer((200, {"Content-Type": "application/json"}, EXACT_BODY.encode()))
    try:
        use_server(monkeypatch, server.url)
        data = await make_hook()[0].arequest(
            "GET", "/portfolio/status", params={"portfolioId": "pf-1"}, exact_numbers=True
        )
    finally:
        server.close()

    assert data["amount"] == decimal.Decimal("0.123456789012345678")
    assert data["huge"].is_finite()


# -- 5. redaction of nested and escaped secrets ----------------------------------------------------


ODD_SECRETS = ["pass\\phrase-CANARY", 'se"cret-CANARY', "clé-ünï-密钥-CANARY"]


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(lambda s: [{"property": "apiSecret", "value": s}], id="list-of-dicts"),
        pytest.param(lambda s: {"errors": [[f"bad {s}"]]}, id="nested-dict"),
        pytest.param(lambda s: [f"bad {s}", 42], id="flat-list"),
        pytest.param(lambda s: f"bad {json.dumps(s)}", id="json-escaped-in-string"),
        pytest.param(lambda s: f"bad {[s]}", id="repr-escaped-in-string"),
    ],
)
@pytest.mark.parametrize("secret", ODD_SECRETS)
def test_nested_message_is_redacted(secret: str, message: Callable[[str], Any]) -> None:
    body = json.dumps({"statusCode": 400, "message": message(secret), "requestId": {"id": secret}}).encode()

    err = error_from_response(400, body, "/portfolio/exchange", ("CANARY-API-KEY", secret), "c")

    assert isinstance(err, CoinStatsBadRequestError)
    text = str(err)
    assert "***" in text
    for form in secret_forms(secret):
        assert form not in text, form
        assert form not in (err.request_id or "")


@pytest.mark.parametrize("secret", ODD_SECRETS)
def test_redact_removes_escaped_forms(secret: str) -> None:
    text = " | ".join(secret_forms(secret)) + f" | {[secret]} | {json.dumps({'k': secret})}"

    redacted = redact(text, [secret])

    for form in secret_forms(secret):
        assert form not in redacted
    assert redacted.count("***") >= 5


def test_connect_error_echoing_odd_credentials_is_redacted(
    rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, BASE_URL)
    fields = dict(zip(("apiKey", "apiSecret", "passphrase"), ODD_SECRETS, strict=True))
    rsps.post(CONNECT_URL, status=400, json={"statusCode": 400, "message": [{"constraints": fields}]})
    hook, _ = make_hook()

    with pytest.raises(CoinStatsAPIError) as info:
        hook.connect_exchange_portfolio("okx", fields)

    text = str(info.value)
    for secret in ODD_SECRETS:
        for form in secret_forms(secret):
            assert form not in text


# -- 6. strict parsing of Retry-After and extras ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("99999999999", MAX_RETRY_AFTER),
        ("²", None),
        ("\uff11\uff12", None),  # fullwidth digits
        ("\u0663", None),  # Arabic-Indic three
        ("nan", None),
        ("inf", None),
        ("-1", None),
        ("1e3", None),
        ("0x10", None),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),
        ("Mon, 99 Foo 2020 99:99:99 GMT", None),
    ],
)
def test_parse_retry_after_is_strict(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, now=1_700_000_000.0) == expected


def test_unicode_digit_retry_after_does_not_crash_the_call(
    rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, BASE_URL, backoff_base=1, backoff_max=4)
    rsps.get(STATUS_URL, status=503, json={"message": "busy"}, headers={"Retry-After": "²"})
    rsps.get(STATUS_URL, json={"status": "synced"})
    hook, delays = make_hook()

    assert hook.get_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    # No Retry-After understood: exponential backoff (base 1, first attempt) applies.
    assert len(delays) == 1
    assert 0.5 <= delays[0] <= 1.0


NUMERIC_EXTRAS = ["timeout", "backoff_base", "backoff_max", "support_cache_ttl", "credit_budget"]
BAD_NUMBERS = [
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(float("-inf"), id="-inf"),
    pytest.param("nan", id="str-nan"),
    pytest.param("Infinity", id="str-infinity"),
    pytest.param("-inf", id="str-minus-inf"),
    pytest.param(True, id="bool"),
    pytest.param(10**400, id="huge-int"),
    pytest.param([1], id="list"),
]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("key", NUMERIC_EXTRAS)
def test_non_finite_numeric_extra_rejected(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, key: str, value: Any
) -> None:
    use_server(monkeypatch, BASE_URL, **{key: value})

    with pytest.raises(CoinStatsConfigError) as info:
        _ = make_hook()[0].settings

    text = str(info.value)
    assert f"Extra '{key}' of connection '{CONN_ID}'" in text
    assert "must be a finite number from" in text
    assert len(rsps.calls) == 0


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), "nan", "inf", True, False, 2.5, "2.5", "-1", [2]],
    ids=["nan", "inf", "str-nan", "str-inf", "true", "false", "fraction", "str-fraction", "negative", "list"],
)
def test_bad_max_retries_rejected(monkeypatch: pytest.MonkeyPatch, value: Any) -> None:
    use_server(monkeypatch, BASE_URL, max_retries=value)

    with pytest.raises(CoinStatsConfigError, match=r"Extra 'max_retries' of connection 'cs_trust' must be an integer"):
        _ = make_hook()[0].settings


def test_extras_in_range_still_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    use_server(
        monkeypatch,
        BASE_URL,
        timeout="2.5",
        backoff_base=0.5,
        backoff_max=10,
        support_cache_ttl=0,
        credit_budget="100",
        max_retries="3",
    )

    settings = make_hook()[0].settings

    assert (settings.timeout, settings.backoff_base, settings.backoff_max) == (2.5, 0.5, 10.0)
    assert (settings.support_cache_ttl, settings.credit_budget, settings.max_retries) == (0.0, 100, 3)


def test_hook_argument_timeout_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    use_server(monkeypatch, BASE_URL)

    with pytest.raises(CoinStatsConfigError, match="'timeout'"):
        _ = CoinStatsHook(CONN_ID, timeout=float("nan")).settings


# -- 7. exchange-support cache on disk -------------------------------------------------------------


def support_hook(monkeypatch: pytest.MonkeyPatch) -> CoinStatsHook:
    use_server(monkeypatch, BASE_URL, support_cache_ttl=3600)
    hooks._SUPPORT_CACHE.clear()
    return make_hook()[0]


def support_calls(rsps: responses.RequestsMock) -> int:
    return sum(1 for c in rsps.calls if c.request.url == SUPPORT_URL)


def write_cache(path: Path, fetched_at: Any, exchanges: Any = SUPPORT) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps({"fetched_at": fetched_at, "exchanges": exchanges}))


PLANTED = [{"connectionId": "evilx", "name": "Evil", "connectionFields": [{"name": "Seed", "key": "seed"}]}]


def test_default_cache_dir_is_per_user_and_private(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    monkeypatch.delenv("COINSTATS_CACHE_DIR")
    monkeypatch.setattr(hooks.tempfile, "tempdir", str(tmp_path))
    rsps.get(SUPPORT_URL, json=SUPPORT)

    support_hook(monkeypatch).get_supported_exchanges()

    root = tmp_path / f"coinstats-provider-{os.getuid()}"
    assert hooks._cache_file(BASE_URL).parent == root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    cache_file = hooks._cache_file(BASE_URL)
    assert cache_file.is_file()
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600
    assert [p.name for p in root.iterdir()] == [cache_file.name]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_writable_cache_dir_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
    rsps: responses.RequestsMock,
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
    mode: int,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    monkeypatch.setenv("COINSTATS_CACHE_DIR", str(shared))
    write_cache(hooks._cache_file(BASE_URL), time.time(), PLANTED)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert [e.connection_id for e in exchanges] == ["binance", "okx", "kraken"]
    assert support_calls(rsps) == 1
    # Nothing was written there either: the planted list is untouched.
    assert json.loads(hooks._cache_file(BASE_URL).read_text())["exchanges"] == PLANTED
    assert "group- or world-writable" in logs.text


def test_cache_dir_of_another_user_is_skipped(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    write_cache(hooks._cache_file(BASE_URL), time.time(), PLANTED)
    real_uid = os.getuid()
    monkeypatch.setattr(hooks.os, "getuid", lambda: real_uid + 1)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert support_calls(rsps) == 1


def test_symlinked_default_cache_dir_is_skipped(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    monkeypatch.delenv("COINSTATS_CACHE_DIR")
    monkeypatch.setattr(hooks.tempfile, "tempdir", str(tmp_path))
    attacker = tmp_path / "attacker"
    write_cache(attacker / hooks._cache_file(BASE_URL).name, time.time(), PLANTED)
    (tmp_path / f"coinstats-provider-{os.getuid()}").symlink_to(attacker)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert support_calls(rsps) == 1
    assert json.loads((attacker / hooks._cache_file(BASE_URL).name).read_text())["exchanges"] == PLANTED


def test_symlinked_cache_file_is_never_followed(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    planted = tmp_path / "planted.json"
    write_cache(planted, time.time(), PLANTED)
    cache_file = hooks._cache_file(BASE_URL)
    cache_file.parent.mkdir(mode=0o700, parents=True)
    cache_file.symlink_to(planted)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert support_calls(rsps) == 1
    # The write replaced the link itself; the file it pointed to is untouched.
    assert not cache_file.is_symlink()
    assert json.loads(cache_file.read_text())["exchanges"] == SUPPORT
    assert json.loads(planted.read_text())["exchanges"] == PLANTED


def test_cache_write_never_uses_a_predictable_temp_name(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache_file = hooks._cache_file(BASE_URL)
    cache_file.parent.mkdir(mode=0o700, parents=True)
    cache_file.with_suffix(f".{os.getpid()}.tmp").symlink_to(victim)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    support_hook(monkeypatch).get_supported_exchanges()

    assert victim.read_text() == "precious"
    assert json.loads(cache_file.read_text())["exchanges"] == SUPPORT


@pytest.mark.parametrize(
    "fetched_at",
    [
        pytest.param(lambda now: now + 10 * 86400, id="future"),
        pytest.param(lambda now: now + 3600, id="hour-ahead"),
        pytest.param(lambda now: float("nan"), id="nan"),
        pytest.param(lambda now: float("inf"), id="inf"),
        pytest.param(lambda now: "NaN", id="str-nan"),
    ],
)
def test_cache_with_impossible_fetched_at_is_refetched(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, fetched_at: Callable[[float], Any]
) -> None:
    write_cache(hooks._cache_file(BASE_URL), fetched_at(time.time()), PLANTED)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert support_calls(rsps) == 1
    stored = json.loads(hooks._cache_file(BASE_URL).read_text())
    assert abs(stored["fetched_at"] - time.time()) < 60


def test_cache_within_clock_skew_is_used(monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock) -> None:
    write_cache(hooks._cache_file(BASE_URL), time.time() + 30, PLANTED)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "evilx"
    assert support_calls(rsps) == 0


@pytest.mark.parametrize(
    "content",
    [
        pytest.param('{"fetched_at": 1, "exchanges": ' + "[" * 100_000 + "]" * 100_000 + "}", id="deeply-nested"),
        pytest.param("\x00\xff not json", id="garbage"),
        pytest.param('{"fetched_at": {"a": 1}, "exchanges": []}', id="wrong-types"),
    ],
)
def test_broken_cache_never_fails_the_task(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, content: str
) -> None:
    cache_file = hooks._cache_file(BASE_URL)
    cache_file.parent.mkdir(mode=0o700, parents=True)
    cache_file.write_text(content)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert support_calls(rsps) == 1


def test_cache_write_failure_never_fails_the_task(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(hooks.tempfile, "mkstemp", broken)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert not hooks._cache_file(BASE_URL).exists()


def test_cache_dir_that_is_a_file_falls_back_to_network(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("COINSTATS_CACHE_DIR", str(not_a_dir))
    rsps.get(SUPPORT_URL, json=SUPPORT)

    assert support_hook(monkeypatch).get_supported_exchanges()[0].connection_id == "binance"
    assert not_a_dir.read_text() == "x"
