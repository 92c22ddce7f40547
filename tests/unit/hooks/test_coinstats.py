"""Unit tests of CoinStatsHook: configuration, errors, retries, caching, credits, pagination, sync."""

from __future__ import annotations

import email.utils
import inspect
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import responses

from coinstats_provider import __version__
from coinstats_provider.credits import CREDIT_COSTS, CreditMeter, credit_cost
from coinstats_provider.exceptions import (
    CoinStatsAPIError,
    CoinStatsAuthError,
    CoinStatsBadRequestError,
    CoinStatsConfigError,
    CoinStatsConflictError,
    CoinStatsCreditBudgetExceeded,
    CoinStatsCreditsExhaustedError,
    CoinStatsError,
    CoinStatsExchangeCredentialsError,
    CoinStatsInvalidApiKeyError,
    CoinStatsNotFoundError,
    CoinStatsPermissionError,
    CoinStatsRateLimitError,
    CoinStatsResponseError,
    CoinStatsServerError,
    CoinStatsTransportError,
)
from coinstats_provider.hooks import coinstats as hooks
from coinstats_provider.hooks.coinstats import CoinStatsHook, build_base_url, parse_retry_after
from coinstats_provider.models import ConnectResult, ConnectStatus, SupportedExchange, SyncStatus
from tests.conftest import BASE_URL, CANARIES, SUPPORT, assert_no_canary, set_connection

API_KEY = CANARIES["api_key"]
FIELDS = {"apiKey": CANARIES["exchange_key"], "apiSecret": CANARIES["exchange_secret"]}
#: Fast retry settings, as in the ``coinstats_conn`` fixture.
FAST = {"backoff_base": 0, "backoff_max": 0, "max_retries": 3, "timeout": 5}
INVALID_KEY_BODY = {
    "statusCode": 401,
    "message": "Your API Key is invalid. Please login to https://openapi.coinstats.app and generate your API Key.",
}
CONNECTED = {"portfolioId": "pf-1", "connectionId": "binance", "status": "connected"}
EXISTING = {"portfolioId": "pf-1", "connectionId": "binance", "status": "existing"}
USAGE = {"totalCredits": 100000, "usedCredits": 45000, "remainingCredits": 55000, "subscription": "PRO"}
SUPPORT_URL = BASE_URL + "/exchange/support"
CONNECT_URL = BASE_URL + "/portfolio/exchange"
USAGE_URL = BASE_URL + "/usage/credits"
COINS_URL = BASE_URL + "/portfolio/coins"
TX_URL = BASE_URL + "/portfolio/transactions"
STATUS_URL = BASE_URL + "/portfolio/status"
SYNC_URL = BASE_URL + "/portfolio/sync"


# -- helpers and fixtures --------------------------------------------------------------------------


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """Mock every HTTP call made through ``requests``; an unregistered URL fails as a ConnectionError."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def make_hook(conn_id: str = "coinstats_default", **kwargs: Any) -> tuple[CoinStatsHook, list[float]]:
    """A hook whose retry sleeps are recorded instead of slept."""
    hook = CoinStatsHook(conn_id, **kwargs)
    delays: list[float] = []
    hook._sleep = delays.append
    return hook, delays


def calls_to(mock: responses.RequestsMock, method: str, url: str) -> list[Any]:
    return [c for c in mock.calls if c.request.method == method and c.request.url.split("?")[0] == url]


def error_body(status: int, message: str, path: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"statusCode": status, "message": message, "path": path}
    if request_id:
        body["requestId"] = request_id
    return body


# -- connect: happy paths and request shape --------------------------------------------------------


def test_connect_connected(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.post(CONNECT_URL, json=CONNECTED)
    hook, delays = make_hook()

    result = hook.connect_exchange_portfolio("binance", FIELDS, name="My Binance")

    assert result == ConnectResult(portfolio_id="pf-1", connection_id="binance", status=ConnectStatus.CONNECTED)
    assert len(rsps.calls) == 1
    request = rsps.calls[0].request
    assert request.method == "POST"
    assert json.loads(request.body) == {
        "connectionId": "binance",
        "connectionFields": FIELDS,
        "name": "My Binance",
    }
    assert delays == []


def test_connect_existing_returns_same_portfolio_id(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.post(CONNECT_URL, json=CONNECTED)
    rsps.post(CONNECT_URL, json=EXISTING)
    hook, _ = make_hook()

    first = hook.connect_exchange_portfolio("binance", FIELDS)
    second = hook.connect_exchange_portfolio("binance", FIELDS)

    assert first.status is ConnectStatus.CONNECTED
    assert second.status is ConnectStatus.EXISTING
    assert first.portfolio_id == second.portfolio_id == "pf-1"
    assert len(rsps.calls) == 2
    # No name given: the optional "name" key is not sent.
    assert "name" not in json.loads(rsps.calls[1].request.body)


def test_connect_keeps_requested_connection_id_when_answer_differs(
    coinstats_conn: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    rsps.post(CONNECT_URL, json={"portfolioId": "pf-9", "connectionId": "ethereum", "status": "connected"})
    hook, _ = make_hook()

    result = hook.connect_exchange_portfolio("binance", FIELDS)

    assert result.connection_id == "binance"
    assert "ethereum" in logs.text
    assert_no_canary(logs.text)


def test_request_headers_user_agent_and_timeout(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(USAGE_URL, json=USAGE)
    hook, _ = make_hook()

    hook.get_credit_usage()

    assert len(rsps.calls) == 1
    request = rsps.calls[0].request
    assert request.headers["X-API-KEY"] == API_KEY
    assert request.headers["User-Agent"] == f"airflow-provider-coinstats/{__version__}"
    assert re.fullmatch(r"airflow-provider-coinstats/\d+\.\d+\.\d+\S*", request.headers["User-Agent"])
    assert request.headers["Accept"] == "application/json"
    assert request.req_kwargs["timeout"] == 5.0


def test_session_request_receives_timeout_kwarg(coinstats_conn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    def fake_request(self: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
        seen.append({"method": method, "url": url, "headers": dict(self.headers), **kwargs})
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps(USAGE).encode()
        return response

    monkeypatch.setattr(requests.Session, "request", fake_request)
    hook, _ = make_hook(timeout=2.5)

    assert hook.get_credit_usage().remaining_credits == 55000

    assert len(seen) == 1
    assert seen[0]["timeout"] == 2.5
    assert seen[0]["url"] == USAGE_URL
    assert seen[0]["headers"]["X-API-KEY"] == API_KEY
    assert seen[0]["headers"]["User-Agent"].startswith("airflow-provider-coinstats/")


# -- configuration ---------------------------------------------------------------------------------


def test_default_base_url(coinstats_conn: Any) -> None:
    assert CoinStatsHook().settings.base_url == "https://openapiv1.coinstats.app"


@pytest.mark.parametrize(
    ("host", "port"),
    [
        pytest.param("http://127.0.0.1:8765", None, id="url-with-port"),
        pytest.param("http://127.0.0.1", 8765, id="scheme-host-plus-port-field"),
        pytest.param("http://127.0.0.1:8765/", 8765, id="same-port-twice-trailing-slash"),
    ],
)
def test_base_url_local_forms(coinstats_conn: Any, rsps: responses.RequestsMock, host: str, port: int | None) -> None:
    fields: dict[str, Any] = {"host": host}
    if port is not None:
        fields["port"] = port
    coinstats_conn("cs_local", **fields)
    rsps.get("http://127.0.0.1:8765/usage/credits", json=USAGE)
    hook, _ = make_hook("cs_local")

    assert hook.settings.base_url == "http://127.0.0.1:8765"
    hook.get_credit_usage()
    assert len(rsps.calls) == 1
    assert rsps.calls[0].request.url == "http://127.0.0.1:8765/usage/credits"


def test_bare_host_plus_port_defaults_to_https(coinstats_conn: Any) -> None:
    coinstats_conn("cs_bare", host="127.0.0.1", port=8765)
    assert CoinStatsHook("cs_bare").settings.base_url == "https://127.0.0.1:8765"


def test_build_base_url_keeps_path() -> None:
    assert build_base_url("c", "https://proxy.example/coinstats/", None) == "https://proxy.example/coinstats"
    assert build_base_url("c", "  ", None) == "https://openapiv1.coinstats.app"


def test_conflicting_ports_error(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn("cs_conflict", host="http://127.0.0.1:8765", port=9999)
    hook, _ = make_hook("cs_conflict")

    with pytest.raises(CoinStatsConfigError, match="9999") as info:
        hook.get_credit_usage()

    assert "8765" in str(info.value)
    assert len(rsps.calls) == 0


@pytest.mark.parametrize(
    "host",
    ["ftp://x", "http://", "https://", "http://127.0.0.1:notaport", "http://user:pw@example.test"],
)
def test_invalid_host(coinstats_conn: Any, rsps: responses.RequestsMock, host: str) -> None:
    coinstats_conn("cs_invalid", host=host)
    hook, _ = make_hook("cs_invalid")

    with pytest.raises(CoinStatsConfigError, match="cs_invalid") as info:
        hook.get_credit_usage()

    assert len(rsps.calls) == 0
    assert_no_canary(str(info.value))
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("password", [None, "", "   "])
def test_missing_or_blank_api_key(monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, password: Any) -> None:
    fields: dict[str, Any] = {"conn_type": "coinstats", "extra": FAST}
    if password is not None:
        fields["password"] = password
    set_connection(monkeypatch, "cs_nokey", **fields)
    hook, _ = make_hook("cs_nokey")

    with pytest.raises(CoinStatsConfigError, match="Password field") as info:
        hook.get_supported_exchanges()

    assert "cs_nokey" in str(info.value)
    assert len(rsps.calls) == 0


def test_wrong_conn_type(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn("cs_pg", conn_type="postgres")
    hook, _ = make_hook("cs_pg")

    with pytest.raises(CoinStatsConfigError, match="conn_type 'postgres'") as info:
        hook.get_credit_usage()

    assert "coinstats" in str(info.value)
    assert len(rsps.calls) == 0


def test_malformed_extra_json(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn("cs_badextra", extra="{not json")
    hook, _ = make_hook("cs_badextra")

    with pytest.raises(CoinStatsConfigError, match="not valid JSON") as info:
        hook.get_credit_usage()

    assert "cs_badextra" in str(info.value)
    assert "JSON object" in str(info.value)
    assert_no_canary(str(info.value))
    assert len(rsps.calls) == 0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        pytest.param("[1, 2]", "must be a JSON object", id="json-list"),
        pytest.param({"timeout": "soon"}, "'timeout'", id="timeout-not-number"),
        pytest.param({"timeout": 0}, "'timeout'", id="timeout-zero"),
        pytest.param({"max_retries": 21}, "between 0 and 20", id="too-many-retries"),
        pytest.param({"max_retries": "x"}, "integer", id="retries-not-int"),
        pytest.param({"backoff_max": -1}, "'backoff_max'", id="negative-backoff"),
    ],
)
def test_invalid_extras(coinstats_conn: Any, rsps: responses.RequestsMock, extra: Any, needle: str) -> None:
    coinstats_conn("cs_extra", extra=extra)

    with pytest.raises(CoinStatsConfigError, match=re.escape(needle)):
        make_hook("cs_extra")[0].get_credit_usage()

    assert len(rsps.calls) == 0


def test_extras_timeout_and_max_retries_honoured(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn("cs_tuned", extra={**FAST, "timeout": 2.5, "max_retries": 1})
    rsps.get(USAGE_URL, status=503, json=error_body(503, "Service Unavailable", "/usage/credits"))
    hook, delays = make_hook("cs_tuned")

    with pytest.raises(CoinStatsServerError):
        hook.get_credit_usage()

    assert len(rsps.calls) == 2
    assert all(c.request.req_kwargs["timeout"] == 2.5 for c in rsps.calls)
    assert len(delays) == 1


def test_constructor_overrides_extras(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(USAGE_URL, status=503, json=error_body(503, "Service Unavailable", "/usage/credits"))
    hook, delays = make_hook(timeout=1.5, max_retries=0)

    with pytest.raises(CoinStatsServerError):
        hook.get_credit_usage()

    assert len(rsps.calls) == 1
    assert rsps.calls[0].request.req_kwargs["timeout"] == 1.5
    assert delays == []


# -- error mapping (no retry) ----------------------------------------------------------------------

ERROR_CASES = [
    pytest.param(
        "GET",
        "/portfolio/coins",
        400,
        error_body(400, "Invalid parameter: coinId", "/portfolio/coins", "req-400-aaaa"),
        CoinStatsBadRequestError,
        id="400",
    ),
    pytest.param("GET", "/portfolio/coins", 401, INVALID_KEY_BODY, CoinStatsInvalidApiKeyError, id="401-key"),
    pytest.param(
        "POST",
        "/portfolio/exchange",
        401,
        error_body(401, "Exchange credentials expired", "/portfolio/exchange", "req-401-exch"),
        CoinStatsExchangeCredentialsError,
        id="401-exchange",
    ),
    pytest.param(
        "GET",
        "/portfolio/coins",
        401,
        error_body(401, "Unauthorized", "/portfolio/coins", "req-401-gen"),
        CoinStatsAuthError,
        id="401-generic",
    ),
    pytest.param(
        "GET",
        "/portfolio/value",
        403,
        error_body(403, "Forbidden resource", "/portfolio/value", "req-403-bbbb"),
        CoinStatsPermissionError,
        id="403",
    ),
    pytest.param(
        "GET",
        "/portfolio/status",
        404,
        error_body(404, "Portfolio not found", "/portfolio/status", "req-404-cccc"),
        CoinStatsNotFoundError,
        id="404",
    ),
    pytest.param(
        "POST",
        "/portfolio/exchange",
        406,
        error_body(
            406,
            "Credits limit reached. Please upgrade your plan or wait for renewal.",
            "/portfolio/exchange",
            "req-406-dddd",
        ),
        CoinStatsCreditsExhaustedError,
        id="406",
    ),
    pytest.param(
        "GET",
        "/portfolio/coins",
        429,
        error_body(429, "Insufficient credits for this request", "/portfolio/coins", "req-429-eeee"),
        CoinStatsCreditsExhaustedError,
        id="429-credits",
    ),
    pytest.param(
        "GET",
        "/portfolio/transactions",
        409,
        error_body(
            409,
            "Transactions not synced. Please call PATCH /transactions",
            "/portfolio/transactions",
            "req-409-ffff",
        ),
        CoinStatsConflictError,
        id="409",
    ),
    pytest.param(
        "GET",
        "/portfolio/coins",
        402,
        error_body(402, "Payment required", "/portfolio/coins", "req-402-gggg"),
        CoinStatsCreditsExhaustedError,
        id="402",
    ),
]


@pytest.mark.parametrize(("method", "path", "status", "body", "expected"), ERROR_CASES)
def test_error_status_raises_typed_error_without_retry(
    coinstats_conn: Any,
    rsps: responses.RequestsMock,
    method: str,
    path: str,
    status: int,
    body: dict[str, Any],
    expected: type[CoinStatsAPIError],
) -> None:
    rsps.add(method, BASE_URL + path, status=status, json=body, headers={"Retry-After": "1"})
    hook, delays = make_hook()

    def call() -> Any:
        if path == "/portfolio/exchange":
            return hook.connect_exchange_portfolio("binance", FIELDS)
        return hook.request(method, path, params={"portfolioId": "pf-1", "currency": "USD"})

    with pytest.raises(CoinStatsAPIError) as info:
        call()

    err = info.value
    assert type(err) is expected
    assert len(rsps.calls) == 1
    assert delays == []
    assert err.retryable is False
    assert hook.credits.retries == 0
    assert hook.credits.spent == 0
    assert err.http_status == status
    assert err.path == path
    text = str(err)
    assert str(status) in text
    assert body["message"] in text
    assert path in text
    if "requestId" in body:
        assert err.request_id == body["requestId"]
        assert body["requestId"] in text
    assert_no_canary(text, repr(err))
    for header in ("X-API-KEY", "User-Agent", "keep-alive", "gzip", "Content-Type"):
        assert header.lower() not in text.lower()


def test_401_on_exchange_support_is_not_blamed_on_exchange_credentials(
    coinstats_conn: Any, rsps: responses.RequestsMock
) -> None:
    # GET /exchange/support sends no exchange credential: a 401 there can only be about the API key.
    rsps.get(SUPPORT_URL, status=401, json={"statusCode": 401, "message": "Unauthorized"})
    hook, delays = make_hook()

    with pytest.raises(CoinStatsAuthError) as info:
        hook.get_supported_exchanges()

    assert not isinstance(info.value, CoinStatsExchangeCredentialsError)
    assert "coinstats_default" in str(info.value)
    assert len(rsps.calls) == 1
    assert delays == []


def test_invalid_key_error_names_password_field(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(USAGE_URL, status=401, json=INVALID_KEY_BODY)
    hook, _ = make_hook()

    with pytest.raises(CoinStatsInvalidApiKeyError) as info:
        hook.get_credit_usage()

    assert "Password field" in str(info.value)
    assert "coinstats_default" in str(info.value)
    assert info.value.request_id is None


def test_error_message_redacts_echoed_secrets(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    echoed = (
        f"Invalid connectionFields: apiKey {CANARIES['exchange_key']} apiSecret "
        f"{CANARIES['exchange_secret']} with X-API-KEY {API_KEY}"
    )
    rsps.post(
        CONNECT_URL,
        status=400,
        json={
            "statusCode": 400,
            "message": echoed,
            "requestId": f"id-{API_KEY}",
            "path": "/portfolio/exchange",
        },
    )
    hook, _ = make_hook()

    with pytest.raises(CoinStatsBadRequestError) as info:
        hook.connect_exchange_portfolio("binance", FIELDS)

    err = info.value
    assert_no_canary(str(err), repr(err), err.api_message, err.request_id)
    assert err.api_message.count("***") == 3
    assert "Invalid connectionFields" in str(err)
    assert len(rsps.calls) == 1


def test_error_with_non_json_body(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(COINS_URL, status=400, body=f"<html>bad {API_KEY}</html>", content_type="text/html")
    hook, _ = make_hook()

    with pytest.raises(CoinStatsBadRequestError, match="no message") as info:
        hook.request("GET", "/portfolio/coins", params={"portfolioId": "pf"})

    assert_no_canary(str(info.value))
    assert "<html>" not in str(info.value)


def test_long_error_message_is_capped(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(COINS_URL, status=400, json=error_body(400, "x" * 5000, "/portfolio/coins"))
    hook, _ = make_hook()

    with pytest.raises(CoinStatsBadRequestError) as info:
        hook.request("GET", "/portfolio/coins", params={"portfolioId": "pf"})

    assert len(info.value.api_message) <= 300
    assert info.value.api_message.endswith("...")


# -- retries ---------------------------------------------------------------------------------------


def test_429_without_retry_after_uses_exponential_backoff(
    coinstats_conn: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    coinstats_conn(extra={"backoff_base": 2, "backoff_max": 60, "max_retries": 3, "timeout": 5})
    for _ in range(3):
        rsps.get(COINS_URL, status=429, json=error_body(429, "Rate limit exceeded", "/portfolio/coins"))
    rsps.get(COINS_URL, json={"result": []})
    hook, delays = make_hook()

    assert hook.request("GET", "/portfolio/coins", params={"portfolioId": "pf"}) == {"result": []}

    assert len(rsps.calls) == 4
    assert len(delays) == 3
    for attempt, delay in enumerate(delays):
        ceiling = 2 * 2**attempt
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay)
    assert hook.credits.retries == 3
    assert hook.credits.spent == 8
    assert "retry 1 of 3" in logs.text
    assert "HTTP 429" in logs.text
    assert_no_canary(logs.text)


@pytest.mark.parametrize(("pick", "expected"), [("low", [0.5, 1.0, 2.0]), ("high", [1.0, 2.0, 4.0])])
def test_backoff_jitter_bounds_exact(
    coinstats_conn: Any,
    rsps: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    pick: str,
    expected: list[float],
) -> None:
    coinstats_conn(extra={"backoff_base": 1, "backoff_max": 60, "max_retries": 3})
    monkeypatch.setattr(hooks.random, "uniform", lambda a, b: a if pick == "low" else b)
    rsps.get(COINS_URL, status=503, json=error_body(503, "Service Unavailable", "/portfolio/coins"))
    hook, delays = make_hook()

    with pytest.raises(CoinStatsServerError):
        hook.request("GET", "/portfolio/coins")

    assert delays == expected


def test_exponential_backoff_capped_by_backoff_max(
    coinstats_conn: Any, rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    coinstats_conn(extra={"backoff_base": 4, "backoff_max": 5, "max_retries": 3})
    monkeypatch.setattr(hooks.random, "uniform", lambda a, b: b)
    rsps.get(COINS_URL, status=502, json=error_body(502, "Bad Gateway", "/portfolio/coins"))
    hook, delays = make_hook()

    with pytest.raises(CoinStatsServerError):
        hook.request("GET", "/portfolio/coins")

    assert delays == [4.0, 5.0, 5.0]


def test_429_retry_after_seconds(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn(extra={"backoff_base": 1, "backoff_max": 60, "max_retries": 3})
    rsps.get(
        COINS_URL,
        status=429,
        json=error_body(429, "Rate limit exceeded", "/portfolio/coins"),
        headers={"Retry-After": "7"},
    )
    rsps.get(COINS_URL, json={"result": [{"count": 1}]})
    hook, delays = make_hook()

    assert hook.request("GET", "/portfolio/coins") == {"result": [{"count": 1}]}

    assert delays == [7.0]
    assert len(rsps.calls) == 2


def test_429_retry_after_http_date(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn(extra={"backoff_base": 1, "backoff_max": 60, "max_retries": 3})
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    rsps.get(
        COINS_URL,
        status=429,
        json=error_body(429, "Rate limit exceeded", "/portfolio/coins"),
        headers={"Retry-After": when},
    )
    rsps.get(COINS_URL, json={"result": []})
    hook, delays = make_hook()

    hook.request("GET", "/portfolio/coins")

    assert len(delays) == 1
    assert 27.0 <= delays[0] <= 30.0


def test_retry_after_larger_than_backoff_max_is_capped(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn(extra={"backoff_base": 1, "backoff_max": 10, "max_retries": 3})
    rsps.get(
        COINS_URL,
        status=503,
        json=error_body(503, "Service Unavailable", "/portfolio/coins"),
        headers={"Retry-After": "3600"},
    )
    rsps.get(COINS_URL, json={"result": []})
    hook, delays = make_hook()

    hook.request("GET", "/portfolio/coins")

    assert delays == [10.0]


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(date, now=now) == pytest.approx(12.0)
    assert parse_retry_after(email.utils.formatdate(now - 100, usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_then_success(coinstats_conn: Any, rsps: responses.RequestsMock, status: int) -> None:
    rsps.post(CONNECT_URL, status=status, json={"statusCode": status, "message": "Service Unavailable"})
    rsps.post(CONNECT_URL, json=CONNECTED)
    hook, delays = make_hook()

    result = hook.connect_exchange_portfolio("binance", FIELDS)

    assert result.portfolio_id == "pf-1"
    assert len(rsps.calls) == 2
    assert delays == [0.0]
    assert hook.credits.spent == 10
    assert hook.credits.retries == 1


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(requests.exceptions.ReadTimeout("read timed out"), id="timeout"),
        pytest.param(requests.exceptions.ConnectionError("Connection reset by peer"), id="reset"),
        pytest.param(requests.exceptions.ChunkedEncodingError("truncated"), id="chunked"),
    ],
)
def test_transport_error_then_success(coinstats_conn: Any, rsps: responses.RequestsMock, exc: Exception) -> None:
    rsps.post(CONNECT_URL, body=exc)
    rsps.post(CONNECT_URL, json=CONNECTED)
    hook, delays = make_hook()

    assert hook.connect_exchange_portfolio("binance", FIELDS).portfolio_id == "pf-1"

    assert len(rsps.calls) == 2
    assert len(delays) == 1


@pytest.mark.parametrize(
    ("register", "expected"),
    [
        pytest.param(
            {"status": 429, "json": {"statusCode": 429, "message": "Rate limit exceeded"}},
            CoinStatsRateLimitError,
            id="429",
        ),
        pytest.param(
            {
                "status": 503,
                "json": {"statusCode": 503, "message": "Service Unavailable. Please Contact Support"},
            },
            CoinStatsServerError,
            id="503",
        ),
        pytest.param(
            {"status": 500, "body": "Internal Server Error"},
            CoinStatsServerError,
            id="500-no-json",
        ),
        pytest.param(
            {"body": requests.exceptions.ReadTimeout("timed out")},
            CoinStatsTransportError,
            id="timeout",
        ),
        pytest.param(
            {"body": requests.exceptions.ConnectionError("Connection reset by peer")},
            CoinStatsTransportError,
            id="reset",
        ),
    ],
)
@pytest.mark.parametrize("max_retries", [0, 2])
def test_exhausted_retries_raise_retryable(
    coinstats_conn: Any,
    rsps: responses.RequestsMock,
    register: dict[str, Any],
    expected: type[CoinStatsError],
    max_retries: int,
) -> None:
    coinstats_conn(extra={**FAST, "max_retries": max_retries})
    rsps.post(CONNECT_URL, **register)
    hook, delays = make_hook()

    with pytest.raises(CoinStatsError) as info:
        hook.connect_exchange_portfolio("binance", FIELDS)

    err = info.value
    assert type(err) is expected
    assert err.retryable is True
    assert len(rsps.calls) == max_retries + 1
    assert len(delays) == max_retries
    assert hook.credits.spent == 0
    assert_no_canary(str(err), repr(err), err.__cause__, err.__context__)


def test_transport_error_message_is_actionable(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(USAGE_URL, body=requests.exceptions.ConnectTimeout("connect timeout"))
    hook, _ = make_hook()

    with pytest.raises(CoinStatsTransportError) as info:
        hook.get_credit_usage()

    text = str(info.value)
    assert "ConnectTimeout" in text
    assert BASE_URL in text
    assert "timeout 5 s" in text
    assert info.value.__cause__ is None


def test_malformed_json_retried_then_success(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    # A paid read is sent again; a paid write (connect) is not: see tests/test_hook_transport_trust.py.
    rsps.get(STATUS_URL, body='{"status": "syn', content_type="application/json")
    rsps.get(STATUS_URL, json={"status": "synced"})
    hook, delays = make_hook()

    assert hook.get_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    assert len(rsps.calls) == 2
    assert len(delays) == 1


def test_truncated_sync_answer_is_not_sent_again(
    coinstats_conn: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    # 2xx means CoinStats started the sync; a retry would start (and bill) a second one.
    rsps.patch(SYNC_URL, body='{"succ', content_type="application/json")
    hook, delays = make_hook()

    hook.trigger_portfolio_sync("pf-1")

    assert len(rsps.calls) == 1
    assert delays == []
    assert hook.credits.spent == 30
    assert "answered 200 with an unreadable body; the call succeeded" in logs.text


def test_credit_budget_is_checked_before_every_retry(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    # The truncated answer was charged (10); a retry would cost 10 more, beyond the budget of 15.
    coinstats_conn(extra={**FAST, "credit_budget": 15})
    rsps.get(BASE_URL + "/portfolio/value", body='{"totalValue": 1', content_type="application/json")
    hook, delays = make_hook()

    with pytest.raises(CoinStatsCreditBudgetExceeded, match="GET /portfolio/value costs 10 credits, 10 of the"):
        hook.get_portfolio_value("pf-1")

    assert len(rsps.calls) == 1
    assert len(delays) == 1
    assert hook.credits.spent == 10


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (requests.exceptions.ReadTimeout("read timed out"), "ReadTimeout"),
        (requests.exceptions.ConnectionError("Connection reset by peer"), "ConnectionError"),
    ],
    ids=["timeout", "reset"],
)
def test_retry_warning_names_the_transport_failure(
    coinstats_conn: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture, exc: Exception, cause: str
) -> None:
    rsps.get(USAGE_URL, body=exc)
    rsps.get(USAGE_URL, json=USAGE)
    hook, _ = make_hook()

    hook.get_credit_usage()

    assert f"CoinStats GET /usage/credits failed ({cause}); retry 1 of 3" in logs.text


def test_malformed_json_persistent(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(STATUS_URL, body="<html>gateway</html>", content_type="text/html")
    hook, delays = make_hook()

    with pytest.raises(CoinStatsResponseError, match="malformed or truncated JSON") as info:
        hook.get_portfolio_sync_status("pf-1")

    assert info.value.retryable is True
    assert len(rsps.calls) == 4
    assert len(delays) == 3


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"connectionId": "binance", "status": "connected"}, id="missing"),
        pytest.param({"portfolioId": "", "connectionId": "binance", "status": "connected"}, id="empty"),
        pytest.param({"portfolioId": 42, "connectionId": "binance", "status": "connected"}, id="not-str"),
        pytest.param([CONNECTED], id="list-body"),
    ],
)
def test_missing_portfolio_id_is_response_error_without_retry(
    coinstats_conn: Any, rsps: responses.RequestsMock, body: Any
) -> None:
    rsps.post(CONNECT_URL, json=body)
    hook, delays = make_hook()

    with pytest.raises(CoinStatsResponseError) as info:
        hook.connect_exchange_portfolio("binance", FIELDS)

    assert info.value.retryable is False
    assert len(rsps.calls) == 1
    assert delays == []


def test_unknown_connect_status_is_response_error(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.post(CONNECT_URL, json={"portfolioId": "pf-1", "connectionId": "binance", "status": "pending"})
    hook, delays = make_hook()

    with pytest.raises(CoinStatsResponseError, match="unknown status 'pending'"):
        hook.connect_exchange_portfolio("binance", FIELDS)

    assert len(rsps.calls) == 1
    assert delays == []


def test_unknown_connect_status_echoing_secret_is_redacted(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.post(CONNECT_URL, json={"portfolioId": "pf-1", "status": CANARIES["exchange_secret"]})
    hook, _ = make_hook()

    with pytest.raises(CoinStatsResponseError) as info:
        hook.connect_exchange_portfolio("binance", FIELDS)

    assert_no_canary(str(info.value))


# -- supported exchanges cache ---------------------------------------------------------------------


def test_supported_exchanges_parsed(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(SUPPORT_URL, json=[*SUPPORT, {"name": "broken"}, "junk"])
    hook, _ = make_hook()

    exchanges = hook.get_supported_exchanges()

    assert [e.connection_id for e in exchanges] == ["binance", "okx", "kraken"]
    assert exchanges[1] == SupportedExchange(
        connection_id="okx",
        name="OKX",
        field_keys=("apiKey", "apiSecret", "passphrase"),
        field_labels=("API Key", "API Secret", "Passphrase"),
    )
    assert hook.credits.spent == 1


@pytest.mark.parametrize("body", [{"result": SUPPORT}, [], [{"name": "no id"}]])
def test_supported_exchanges_bad_body(coinstats_conn: Any, rsps: responses.RequestsMock, body: Any) -> None:
    rsps.get(SUPPORT_URL, json=body)

    with pytest.raises(CoinStatsResponseError):
        make_hook()[0].get_supported_exchanges()

    assert len(rsps.calls) == 1


def test_supported_exchanges_cached_in_process(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(SUPPORT_URL, json=SUPPORT)
    first_hook, _ = make_hook()
    second_hook, _ = make_hook()

    first = first_hook.get_supported_exchanges()
    second = second_hook.get_supported_exchanges()
    again = first_hook.get_supported_exchanges()

    assert first == second == again
    assert len(rsps.calls) == 1
    assert first_hook.credits.spent == 1
    assert second_hook.credits.spent == 0


def test_supported_exchanges_cached_on_disk(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(SUPPORT_URL, json=SUPPORT)
    first = make_hook()[0].get_supported_exchanges()
    assert hooks._cache_file(BASE_URL).exists()

    hooks._SUPPORT_CACHE.clear()
    second = make_hook()[0].get_supported_exchanges()

    assert first == second
    assert len(rsps.calls) == 1
    assert BASE_URL in hooks._SUPPORT_CACHE


def test_supported_exchanges_cache_keyed_by_base_url(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn("cs_local", host="http://127.0.0.1:8765")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.get("http://127.0.0.1:8765/exchange/support", json=SUPPORT[:1])

    assert len(make_hook()[0].get_supported_exchanges()) == 3
    assert len(make_hook("cs_local")[0].get_supported_exchanges()) == 1
    assert len(rsps.calls) == 2


def test_supported_exchanges_ttl_zero_disables_cache(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn(extra={**FAST, "support_cache_ttl": 0})
    rsps.get(SUPPORT_URL, json=SUPPORT)
    hook, _ = make_hook()

    hook.get_supported_exchanges()
    hook.get_supported_exchanges()
    make_hook()[0].get_supported_exchanges()

    assert len(rsps.calls) == 3
    assert hook.credits.spent == 2
    assert not hooks._cache_file(BASE_URL).exists()


def test_supported_exchanges_expired_disk_cache_refetches(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn(extra={**FAST, "support_cache_ttl": 60})
    rsps.get(SUPPORT_URL, json=SUPPORT)
    make_hook()[0].get_supported_exchanges()
    cache_file = hooks._cache_file(BASE_URL)
    stored = json.loads(cache_file.read_text())
    stored["fetched_at"] = time.time() - 61
    cache_file.write_text(json.dumps(stored))
    hooks._SUPPORT_CACHE.clear()

    make_hook()[0].get_supported_exchanges()

    assert len(rsps.calls) == 2
    assert json.loads(cache_file.read_text())["fetched_at"] > time.time() - 10


def test_supported_exchanges_expired_in_process_cache_refetches(
    coinstats_conn: Any, rsps: responses.RequestsMock
) -> None:
    coinstats_conn(extra={**FAST, "support_cache_ttl": 60})
    rsps.get(SUPPORT_URL, json=SUPPORT)
    make_hook()[0].get_supported_exchanges()
    fetched_at, exchanges = hooks._SUPPORT_CACHE[BASE_URL]
    hooks._SUPPORT_CACHE[BASE_URL] = (fetched_at - 61, exchanges)
    hooks._cache_file(BASE_URL).unlink()

    make_hook()[0].get_supported_exchanges()

    assert len(rsps.calls) == 2


def test_supported_exchanges_corrupt_disk_cache_refetches(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    cache_file = hooks._cache_file(BASE_URL)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text("{corrupt")
    rsps.get(SUPPORT_URL, json=SUPPORT)

    assert len(make_hook()[0].get_supported_exchanges()) == 3
    assert len(rsps.calls) == 1


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
        ("GET", "/exchange/status", {"portfolioId": "pf-1"}, 3),
        ("PATCH", "/exchange/sync", {"portfolioId": "pf-1"}, 20),
        ("GET", "/usage/credits", None, 0),
    ],
)
def test_credit_cost_table(method: str, path: str, params: dict[str, Any] | None, cost: int) -> None:
    assert credit_cost(method, path, params) == cost


def test_credit_cost_unknown_route() -> None:
    with pytest.raises(ValueError, match="CREDIT_COSTS"):
        credit_cost("DELETE", "/portfolio/pf-1")
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


# -- test_connection -------------------------------------------------------------------------------


def test_test_connection_ok(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(USAGE_URL, json=USAGE)

    ok, message = CoinStatsHook().test_connection()

    assert ok is True
    assert "55,000" in message
    assert "100,000" in message
    assert "PRO" in message
    assert_no_canary(message)
    assert len(rsps.calls) == 1


def test_test_connection_invalid_key(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(USAGE_URL, status=401, json=INVALID_KEY_BODY)

    ok, message = CoinStatsHook().test_connection()

    assert ok is False
    assert "401" in message
    assert "invalid" in message.lower()
    assert_no_canary(message)
    assert len(rsps.calls) == 1


def test_test_connection_connection_error(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(USAGE_URL, body=requests.exceptions.ConnectionError(f"refused {API_KEY}"))
    hook, delays = make_hook()

    ok, message = hook.test_connection()

    assert ok is False
    assert "ConnectionError" in message
    assert_no_canary(message)
    assert len(rsps.calls) == 4
    assert len(delays) == 3


@pytest.mark.parametrize(
    "setup",
    ["missing-connection", "no-key", "bad-body", "unexpected-exception"],
)
def test_test_connection_never_raises(
    coinstats_conn: Any, rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch, setup: str
) -> None:
    conn_id = "coinstats_default"
    if setup == "missing-connection":
        conn_id = "cs_does_not_exist"
    elif setup == "no-key":
        coinstats_conn(password="")
    elif setup == "bad-body":
        rsps.get(USAGE_URL, json={"totalCredits": "lots"})
    else:
        rsps.get(USAGE_URL, json=USAGE)

        def boom(self: Any) -> Any:
            raise RuntimeError(f"unexpected failure around {API_KEY}")

        monkeypatch.setattr(CoinStatsHook, "get_credit_usage", lambda self: boom(self.settings))

    ok, message = CoinStatsHook(conn_id).test_connection()

    assert ok is False
    assert message
    assert_no_canary(message)


# -- pagination ------------------------------------------------------------------------------------


def _coins(start: int, count: int) -> list[dict[str, Any]]:
    return [{"count": i, "coin": {"identifier": f"coin-{i}"}} for i in range(start, start + count)]


def test_pages_stop_on_short_page(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(COINS_URL, json={"result": _coins(0, 3)})
    rsps.get(COINS_URL, json={"result": _coins(3, 1)})
    hook, _ = make_hook()

    pages = list(hook.iter_portfolio_coins("pf-1", page_size=3))

    assert [len(p) for p in pages] == [3, 1]
    assert len(rsps.calls) == 2
    assert [c.request.params for c in rsps.calls] == [
        {"portfolioId": "pf-1", "page": "1", "limit": "3"},
        {"portfolioId": "pf-1", "page": "2", "limit": "3"},
    ]
    assert hook.credits.spent == 16


def test_pages_stop_on_empty_page(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(COINS_URL, json={"result": []})

    pages = list(make_hook()[0].iter_portfolio_coins("pf-1"))

    assert pages == []
    assert len(rsps.calls) == 1
    assert rsps.calls[0].request.params["limit"] == "100"


def test_pages_exact_multiple_of_limit(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(COINS_URL, json={"result": _coins(0, 2)})
    rsps.get(COINS_URL, json={"result": _coins(2, 2)})
    rsps.get(COINS_URL, json={"result": []})
    rsps.get(COINS_URL, json={"result": _coins(100, 2)})  # never requested

    pages = list(make_hook()[0].iter_portfolio_coins("pf-1", page_size=2))

    assert [p[0]["count"] for p in pages] == [0, 2]
    assert len(rsps.calls) == 3
    assert [c.request.params["page"] for c in rsps.calls] == ["1", "2", "3"]


def test_pages_start_page(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(COINS_URL, json={"result": _coins(0, 1)})

    list(make_hook()[0].iter_portfolio_coins("pf-1", page_size=5, start_page=4))

    assert rsps.calls[0].request.params["page"] == "4"


@pytest.mark.parametrize(("currency", "sent"), [("EUR", "EUR"), ("", "USD")])
def test_transactions_send_currency_and_read_data(
    coinstats_conn: Any, rsps: responses.RequestsMock, currency: str, sent: str
) -> None:
    rsps.get(TX_URL, json={"data": [{"transactionType": "Buy"}], "meta": {"page": 1, "limit": 10}})

    pages = list(make_hook()[0].iter_portfolio_transactions("pf-1", currency=currency, page_size=10))

    assert pages == [[{"transactionType": "Buy"}]]
    assert rsps.calls[0].request.params == {
        "portfolioId": "pf-1",
        "currency": sent,
        "page": "1",
        "limit": "10",
    }
    assert len(rsps.calls) == 1


def test_transactions_default_currency_usd(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(TX_URL, json={"data": []})

    list(make_hook()[0].iter_portfolio_transactions("pf-1"))

    assert rsps.calls[0].request.params["currency"] == "USD"


@pytest.mark.parametrize(
    ("url", "method_name", "envelope"),
    [
        (COINS_URL, "iter_portfolio_coins", "result"),
        (COINS_URL, "iter_portfolio_coins", "data"),
        (TX_URL, "iter_portfolio_transactions", "data"),
        (TX_URL, "iter_portfolio_transactions", "result"),
    ],
)
def test_pages_accept_data_or_result_envelope(
    coinstats_conn: Any, rsps: responses.RequestsMock, url: str, method_name: str, envelope: str
) -> None:
    rsps.get(url, json={envelope: [{"id": 1}]})

    pages = list(getattr(make_hook()[0], method_name)("pf-1"))

    assert pages == [[{"id": 1}]]


@pytest.mark.parametrize("body", [{"items": []}, {"result": "nope"}, [], "a string"])
def test_pages_without_list_envelope(coinstats_conn: Any, rsps: responses.RequestsMock, body: Any) -> None:
    rsps.get(COINS_URL, json=body)

    with pytest.raises(CoinStatsResponseError, match="without a list"):
        list(make_hook()[0].iter_portfolio_coins("pf-1"))

    assert len(rsps.calls) == 1


def test_pages_repeated_identical_page(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(COINS_URL, json={"result": _coins(0, 2)})
    iterator = make_hook()[0].iter_portfolio_coins("pf-1", page_size=2)

    assert next(iterator) == _coins(0, 2)
    with pytest.raises(CoinStatsResponseError, match="same page twice"):
        next(iterator)

    assert len(rsps.calls) == 2


@pytest.mark.parametrize("page_size", [0, -1, 101])
def test_pages_page_size_out_of_range(coinstats_conn: Any, rsps: responses.RequestsMock, page_size: int) -> None:
    hook, _ = make_hook()

    with pytest.raises(CoinStatsConfigError, match="page_size"):
        list(hook.iter_portfolio_coins("pf-1", page_size=page_size))
    with pytest.raises(CoinStatsConfigError, match="page_size"):
        list(hook.iter_portfolio_transactions("pf-1", page_size=page_size))

    assert len(rsps.calls) == 0


def test_pages_is_lazy_generator(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(COINS_URL, json={"result": _coins(0, 2)})
    rsps.get(COINS_URL, json={"result": _coins(2, 1)})
    hook, _ = make_hook()

    iterator = hook.iter_portfolio_coins("pf-1", page_size=2)
    assert inspect.isgenerator(iterator)
    assert len(rsps.calls) == 0

    assert next(iterator) == _coins(0, 2)
    assert len(rsps.calls) == 1


# -- value and sync --------------------------------------------------------------------------------


def test_get_portfolio_value(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(BASE_URL + "/portfolio/value", json={"totalValue": 12.5})
    hook, _ = make_hook()

    assert hook.get_portfolio_value("pf-1", currency="EUR") == {"totalValue": 12.5}
    assert rsps.calls[0].request.params == {"portfolioId": "pf-1", "currency": "EUR"}
    assert hook.credits.spent == 10


def test_trigger_portfolio_sync_sends_portfolio_id(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.patch(SYNC_URL, json={"success": True})
    hook, _ = make_hook()

    hook.trigger_portfolio_sync("pf-1")

    assert len(rsps.calls) == 1
    assert rsps.calls[0].request.method == "PATCH"
    assert rsps.calls[0].request.params == {"portfolioId": "pf-1"}
    assert hook.credits.spent == 30


@pytest.mark.parametrize("portfolio_id", ["", None])
def test_trigger_portfolio_sync_requires_portfolio_id(
    coinstats_conn: Any, rsps: responses.RequestsMock, portfolio_id: Any
) -> None:
    rsps.patch(SYNC_URL, json={"success": True})

    with pytest.raises(CoinStatsConfigError, match="portfolio_id"):
        make_hook()[0].trigger_portfolio_sync(portfolio_id)

    assert len(rsps.calls) == 0


def test_trigger_portfolio_sync_refused(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.patch(SYNC_URL, json={"success": False})

    with pytest.raises(CoinStatsResponseError, match="success=false"):
        make_hook()[0].trigger_portfolio_sync("pf-1")


@pytest.mark.parametrize(("answer", "expected"), [("synced", SyncStatus.SYNCED), ("syncing", SyncStatus.SYNCING)])
def test_get_portfolio_sync_status(
    coinstats_conn: Any, rsps: responses.RequestsMock, answer: str, expected: SyncStatus
) -> None:
    rsps.get(STATUS_URL, json={"status": answer})
    hook, _ = make_hook()

    assert hook.get_portfolio_sync_status("pf-1") is expected
    assert rsps.calls[0].request.params == {"portfolioId": "pf-1"}
    assert hook.credits.spent == 3


@pytest.mark.parametrize("body", [{"status": "done"}, {}, ["synced"]])
def test_get_portfolio_sync_status_unknown(coinstats_conn: Any, rsps: responses.RequestsMock, body: Any) -> None:
    rsps.get(STATUS_URL, json=body)
    hook, delays = make_hook()

    with pytest.raises(CoinStatsResponseError, match="unknown status"):
        hook.get_portfolio_sync_status("pf-1")

    assert len(rsps.calls) == 1
    assert delays == []


# -- async (httpx) against a real local HTTP server ------------------------------------------------


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out closes its socket early; that is expected here, not worth a traceback."""


class ScriptedServer:
    """A tiny HTTP server answering scripted ``(status, json_body[, delay])`` replies; the last one repeats."""

    def __init__(self) -> None:
        self.script: list[tuple[Any, ...]] = [(200, {})]
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append({"method": handler.command, "path": handler.path, "headers": dict(handler.headers)})
            status, body, *delay = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if delay:
            time.sleep(delay[0])
        payload = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


@pytest.fixture
def local_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    server.thread.start()
    set_connection(
        monkeypatch,
        "cs_async",
        conn_type="coinstats",
        password=API_KEY,
        host=server.url,
        extra={"backoff_base": 0, "backoff_max": 0, "max_retries": 2, "timeout": 5},
    )
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)


def make_async_hook() -> tuple[CoinStatsHook, list[float]]:
    hook = CoinStatsHook("cs_async")
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    hook._asleep = record
    return hook, delays


async def test_async_sync_status_retries_503(local_server: ScriptedServer) -> None:
    local_server.script = [
        (503, {"statusCode": 503, "message": "Service Unavailable. Please Contact Support"}),
        (200, {"status": "synced"}),
    ]
    hook, delays = make_async_hook()

    assert await hook.aget_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    assert len(local_server.requests) == 2
    assert delays == [0.0]
    for request in local_server.requests:
        assert request["method"] == "GET"
        assert request["path"] == "/portfolio/status?portfolioId=pf-1"
        assert request["headers"]["X-API-KEY"] == API_KEY
        assert request["headers"]["User-Agent"] == f"airflow-provider-coinstats/{__version__}"
    assert hook.credits.spent == 3
    assert hook.credits.retries == 1


async def test_async_sync_status_exhausted(local_server: ScriptedServer) -> None:
    local_server.script = [(503, {"statusCode": 503, "message": "Service Unavailable"})]
    hook, delays = make_async_hook()

    with pytest.raises(CoinStatsServerError) as info:
        await hook.aget_portfolio_sync_status("pf-1")

    assert info.value.retryable is True
    assert len(local_server.requests) == 3
    assert len(delays) == 2


async def test_async_invalid_key_not_retried(local_server: ScriptedServer) -> None:
    local_server.script = [(401, INVALID_KEY_BODY)]
    hook, delays = make_async_hook()

    with pytest.raises(CoinStatsInvalidApiKeyError) as info:
        await hook.aget_portfolio_sync_status("pf-1")

    assert len(local_server.requests) == 1
    assert delays == []
    assert_no_canary(str(info.value))


async def test_async_unknown_status(local_server: ScriptedServer) -> None:
    local_server.script = [(200, {"status": "paused"})]

    with pytest.raises(CoinStatsResponseError, match="unknown status 'paused'"):
        await make_async_hook()[0].aget_portfolio_sync_status("pf-1")

    assert len(local_server.requests) == 1


async def test_async_connection_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ScriptedServer()  # bound but never served, then closed: connections are refused
    url = server.url
    server.httpd.server_close()
    set_connection(
        monkeypatch,
        "cs_async",
        conn_type="coinstats",
        password=API_KEY,
        host=url,
        extra={"backoff_base": 0, "backoff_max": 0, "max_retries": 1, "timeout": 2},
    )
    hook, delays = make_async_hook()

    with pytest.raises(CoinStatsTransportError) as info:
        await hook.aget_portfolio_sync_status("pf-1")

    assert len(delays) == 1
    assert_no_canary(str(info.value))


async def test_async_uses_connection_timeout(local_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    local_server.script = [(200, {"status": "synced"}, 0.6)]
    set_connection(
        monkeypatch,
        "cs_async",
        conn_type="coinstats",
        password=API_KEY,
        host=local_server.url,
        extra={"backoff_base": 0, "backoff_max": 0, "max_retries": 0, "timeout": 0.1},
    )
    hook, delays = make_async_hook()

    with pytest.raises(CoinStatsTransportError, match=re.escape("timeout 0.1 s")):
        await hook.aget_portfolio_sync_status("pf-1")

    assert len(local_server.requests) == 1
    assert delays == []
