"""Transport trust of CoinStatsHook: redirects never followed, no second paid call, exact numbers.

https-only hosts and strict extras: test_connection_settings; redaction and Retry-After: test_errors;
the on-disk cache: test_support_cache.
"""

from __future__ import annotations

import decimal
import inspect
import json
import math
import re
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import responses

from coinstats_provider.exceptions import CoinStatsRedirectError, CoinStatsResponseError, CoinStatsTruncatedAnswerError
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.errors import redirect_target
from coinstats_provider.models import SyncStatus
from tests.conftest import BASE_URL, CANARIES, assert_no_canary
from tests.unit.hooks.helpers import CONNECT_URL, STATUS_URL, TRUST_CONN_ID, make_hook, use_server

FIELDS = {
    "apiKey": CANARIES["exchange_key"],
    "apiSecret": CANARIES["exchange_secret"],
    "passphrase": CANARIES["passphrase"],
}


# -- helpers ---------------------------------------------------------------------------------------


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
#: What the hook says about either cut body.
CUT_PROBLEM = "a body cut off on the wire (ChunkedEncodingError)"
CUT_ANSWERS = [pytest.param(SHORT_CONTENT_LENGTH, id="content-length"), pytest.param(CUT_CHUNKED, id="chunked")]


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
    assert err.path == path
    text = str(err)
    assert text == (
        f"CoinStats API error {status} on {path}: {method} {path} was redirected to {second.url}; redirects "
        "are never followed, so the API key and the request body were not sent there. Set the host of "
        f"connection '{TRUST_CONN_ID}' (now {first.url}) to the final base URL of the CoinStats API (without "
        "the redirect), e.g. the https address the redirect points to if it is genuinely CoinStats."
    )
    assert "/steal" not in text
    assert "leak-me" not in text
    assert f"Set the host of connection '{TRUST_CONN_ID}'" in text
    assert_no_canary(text, repr(err), err.__cause__, err.__context__)


@pytest.mark.parametrize("status", [300, 301, 302, 307, 308])
@pytest.mark.parametrize(("call", "method", "path"), SYNC_CALLS)
def test_redirect_is_never_followed(
    redirect_pair: Callable[[int], tuple[RecordingServer, RecordingServer]],
    status: int,
    call: Callable[[CoinStatsHook], Any],
    method: str,
    path: str,
) -> None:
    first, second = redirect_pair(status)
    hook, delays = make_hook(TRUST_CONN_ID)

    with pytest.raises(CoinStatsRedirectError) as info:
        call(hook)

    assert_redirect_refused(info.value, first, second, status, method, path, hook, delays)
    if method == "POST":
        # The exchange credentials went to the configured host only, once.
        assert json.loads(first.requests[0]["body"])["connectionFields"] == FIELDS


@pytest.mark.parametrize("status", [300, 301, 302, 307, 308])
async def test_async_redirect_is_never_followed(
    redirect_pair: Callable[[int], tuple[RecordingServer, RecordingServer]], status: int
) -> None:
    first, second = redirect_pair(status)
    hook, delays = make_hook(TRUST_CONN_ID)

    with pytest.raises(CoinStatsRedirectError) as info:
        await hook.aget_portfolio_sync_status("pf-1")

    assert_redirect_refused(info.value, first, second, status, "GET", "/portfolio/status", hook, delays)


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        pytest.param("https://user:pw@evil.example:8443/a/b?key=1#f", "https://evil.example:8443", id="userinfo"),
        pytest.param("/other/path?x=1", "https://openapiv1.coinstats.app", id="relative"),
        pytest.param("https://[::1]:9/x", "https://[::1]:9", id="ipv6"),
        pytest.param(None, "an address not given (no Location header)", id="missing"),
        pytest.param("  ", "an address not given (no Location header)", id="blank"),
        pytest.param("javascript:alert(1)", "an unreadable Location", id="not-http"),
        pytest.param("ftp://evil.example/x", "an unreadable Location", id="ftp"),
        pytest.param("http:///no-host", "an unreadable Location", id="no-host"),
        pytest.param("https://evil.example:notaport/", "an unreadable Location", id="bad-port"),
        pytest.param("https://ev%il.example/", "an unreadable Location", id="odd-host"),
    ],
)
def test_redirect_target_shows_only_scheme_host_port(location: str | None, shown: str) -> None:
    target = redirect_target(location, BASE_URL + "/portfolio/status")

    assert target == shown
    for part in ("pw", "/a/b", "key=1", "/other", "alert"):
        assert part not in target


def test_a_relative_redirect_names_the_configured_host(
    rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, BASE_URL)
    rsps.get(STATUS_URL, status=302, headers={"Location": "/login?next=/portfolio/status"})
    hook, _ = make_hook(TRUST_CONN_ID)

    with pytest.raises(CoinStatsRedirectError, match=rf"redirected to {re.escape(BASE_URL)};"):
        hook.get_portfolio_sync_status("pf-1")

    assert len(rsps.calls) == 1


def test_redirect_error_from_responses_mock(rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch) -> None:
    use_server(monkeypatch, BASE_URL)
    rsps.get(STATUS_URL, status=308, headers={"Location": "https://api.example.test/portfolio/status"})
    rsps.get("https://api.example.test/portfolio/status", json={"status": "synced"})
    hook, _ = make_hook(TRUST_CONN_ID)

    with pytest.raises(CoinStatsRedirectError, match=r"redirected to https://api\.example\.test;"):
        hook.get_portfolio_sync_status("pf-1")

    assert len(rsps.calls) == 1
    # The status line is read before the body (stream), so a cut 2xx body is known to be served.
    assert rsps.calls[0].request.req_kwargs["stream"] is True


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
    hook, delays = make_hook(TRUST_CONN_ID)

    hook.trigger_portfolio_sync("pf-1")

    assert server.requests == ["PATCH /portfolio/sync?portfolioId=pf-1 HTTP/1.1"]
    assert hook.credits.spent == 30
    assert delays == []
    assert (
        "CoinStats PATCH /portfolio/sync answered 200 with an unreadable body; the call succeeded, so it is not "
        "sent (and paid for) again (body cut off: ChunkedEncodingError)"
    ) in logs.messages


@pytest.mark.parametrize("cut", CUT_ANSWERS)
def test_cut_connect_answer_raises_without_resending(
    raw_server: Callable[[list[bytes]], RawServer], cut: bytes
) -> None:
    connected = b'{"portfolioId": "pf-1", "connectionId": "okx", "status": "connected"}'
    server = raw_server([cut, answer(200, connected)])
    hook, delays = make_hook(TRUST_CONN_ID)

    with pytest.raises(CoinStatsTruncatedAnswerError) as info:
        hook.connect_exchange_portfolio("okx", FIELDS)

    err = info.value
    assert server.requests == ["POST /portfolio/exchange HTTP/1.1"]
    assert hook.credits.spent == 10
    assert delays == []
    assert err.retryable is True  # a new Airflow try may reconnect on purpose; the hook itself never does
    assert (err.status, err.problem, err.cause) == (200, CUT_PROBLEM, "body cut off: ChunkedEncodingError")
    text = str(err)
    assert text == (
        f"CoinStats accepted the connect (POST /portfolio/exchange answered 200) but its answer was cut off or "
        f"unreadable ({CUT_PROBLEM}), so the portfolioId is unknown. The portfolio exists on CoinStats; the "
        "hook does not send a paid write twice. The task's next try (or a rerun) reconnects for 10 credits "
        "and CoinStats answers 'existing' with the same portfolioId."
    )
    assert_no_canary(text, repr(err), err.__cause__, err.__context__)


@pytest.mark.parametrize(
    ("cut", "status"),
    [
        pytest.param(SHORT_CONTENT_LENGTH, 200, id="200"),
        pytest.param(SHORT_CONTENT_LENGTH.replace(b"200 OK", b"202 Accepted", 1), 202, id="202"),
    ],
)
def test_a_cut_paid_write_says_it_was_served_billed_and_not_resent(
    raw_server: Callable[[list[bytes]], RawServer], cut: bytes, status: int
) -> None:
    server = raw_server([cut, answer(200, b"{}")])
    hook, delays = make_hook(TRUST_CONN_ID)

    with pytest.raises(CoinStatsTruncatedAnswerError) as info:
        hook.request("DELETE", "/portfolio/pf-1")

    err = info.value
    assert server.requests == ["DELETE /portfolio/pf-1 HTTP/1.1"]
    assert delays == []
    assert (err.status, err.problem, err.cause, err.retryable) == (
        status,
        CUT_PROBLEM,
        "body cut off: ChunkedEncodingError",
        False,
    )
    assert str(err) == (
        f"CoinStats accepted DELETE /portfolio/pf-1 (answered {status}) but its answer was cut off or unreadable "
        f"({CUT_PROBLEM}). The call was served and billed; it was not sent again automatically because it is "
        "a paid write. Check its effect on CoinStats before rerunning the task."
    )


def test_malformed_connect_answer_is_not_resent(rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch) -> None:
    use_server(monkeypatch, BASE_URL)
    rsps.post(CONNECT_URL, body='{"portfolioId": "pf-1", "sta', content_type="application/json")
    rsps.post(CONNECT_URL, json={"portfolioId": "pf-1", "connectionId": "okx", "status": "connected"})
    hook, delays = make_hook(TRUST_CONN_ID)

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
    hook, delays = make_hook(TRUST_CONN_ID)

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
    hook, _ = make_hook(TRUST_CONN_ID)

    data = hook.request("POST", "/portfolio/exchange", json_body={"connectionId": "okx"}, resend_after_2xx=True)

    assert data == {"portfolioId": "pf-1", "status": "existing"}
    assert len(server.requests) == 2


@pytest.mark.parametrize("cut", CUT_ANSWERS)
async def test_async_cut_write_is_sent_once(raw_server: Callable[[list[bytes]], RawServer], cut: bytes) -> None:
    server = raw_server([cut])  # every answer is cut
    hook, delays = make_hook(TRUST_CONN_ID)

    assert await hook.arequest("PATCH", "/portfolio/sync", params={"portfolioId": "pf-1"}, need_body=False) is None
    assert server.requests == ["PATCH /portfolio/sync?portfolioId=pf-1 HTTP/1.1"]
    assert hook.credits.spent == 30

    with pytest.raises(CoinStatsTruncatedAnswerError, match=r"PATCH /portfolio/sync \(answered 200\)"):
        await hook.arequest("PATCH", "/portfolio/sync", params={"portfolioId": "pf-2"})
    assert len(server.requests) == 2
    assert delays == []


@pytest.mark.parametrize("cut", CUT_ANSWERS)
async def test_async_cut_read_is_retried(
    raw_server: Callable[[list[bytes]], RawServer], logs: pytest.LogCaptureFixture, cut: bytes
) -> None:
    server = raw_server([cut, answer(200, b'{"status": "synced"}')])
    hook, delays = make_hook(TRUST_CONN_ID)

    assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    assert len(server.requests) == 2
    assert len(delays) == 1
    assert hook.credits.spent == 6
    assert [message for message in logs.messages if "retry" in message] == [
        f"CoinStats GET /portfolio/status failed (body cut off: RemoteProtocolError); retry 1 of 2 in {delays[0]:.1f} s"
    ]


#: A 503 asking for a 7-second wait, whose body announces 100 bytes and is cut after 10.
CUT_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 7\r\n"
    b"Content-Length: 100\r\n\r\n" + b'{"message"'
)


def test_a_503_whose_body_is_cut_is_retried_after_its_retry_after(
    raw_server: Callable[[list[bytes]], RawServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = raw_server([CUT_503, answer(200, b'{"status": "synced"}')])
    use_server(monkeypatch, server.url, backoff_max=60)
    hook, delays = make_hook(TRUST_CONN_ID)

    assert hook.get_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    assert len(server.requests) == 2
    assert delays == [7.0]


async def test_async_a_503_whose_body_is_cut_is_retried_after_its_retry_after(
    raw_server: Callable[[list[bytes]], RawServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = raw_server([CUT_503, answer(200, b'{"status": "synced"}')])
    use_server(monkeypatch, server.url, backoff_max=60)
    hook, delays = make_hook(TRUST_CONN_ID)

    assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    assert len(server.requests) == 2
    assert delays == [7.0]


@pytest.mark.parametrize("cut", CUT_ANSWERS)
async def test_async_cut_write_is_sent_again_only_when_the_caller_allows_it(
    raw_server: Callable[[list[bytes]], RawServer], cut: bytes
) -> None:
    server = raw_server([cut, answer(200, b'{"success": true}')])
    hook, delays = make_hook(TRUST_CONN_ID)

    data = await hook.arequest("PATCH", "/portfolio/sync", params={"portfolioId": "pf-1"}, resend_after_2xx=True)

    assert data == {"success": True}
    assert len(server.requests) == 2
    assert len(delays) == 1
    assert hook.credits.spent == 60


@pytest.mark.parametrize("error", [httpx.ReadError("closed"), OSError("reset")], ids=["httpx", "os"])
async def test_async_an_error_closing_the_answer_does_not_lose_it(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    original = httpx.Response.aclose

    async def failing_close(self: httpx.Response) -> None:
        # httpx closes the response itself once the body is read; the hook's own close comes after.
        if self.is_closed:
            raise error
        await original(self)

    server = RecordingServer((200, {"Content-Type": "application/json"}, b'{"status": "synced"}'))
    try:
        use_server(monkeypatch, server.url)
        monkeypatch.setattr(httpx.Response, "aclose", failing_close)
        hook, delays = make_hook(TRUST_CONN_ID)

        assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCED
    finally:
        server.close()

    assert len(server.requests) == 1
    assert delays == []


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
    hook, _ = make_hook(TRUST_CONN_ID)

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
    hook, delays = make_hook(TRUST_CONN_ID)

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
    hook, _ = make_hook(TRUST_CONN_ID)

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
        hook = make_hook(TRUST_CONN_ID)[0]
        data = await hook.arequest("GET", "/portfolio/status", params={"portfolioId": "pf-1"}, exact_numbers=True)
        default = await hook.arequest("GET", "/portfolio/status", params={"portfolioId": "pf-1"})
    finally:
        server.close()

    assert data["amount"] == decimal.Decimal("0.123456789012345678")
    assert data["huge"].is_finite()
    # Without exact_numbers, floats as json.loads gives them (the trigger's status answers need no more).
    assert type(default["amount"]) is float
    assert default["huge"] == math.inf
