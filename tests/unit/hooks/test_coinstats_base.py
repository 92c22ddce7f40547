"""Unit tests of CoinStatsBaseHook's transport: headers, timeouts, retries, credits, async path."""

from __future__ import annotations

import email.utils
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import responses

from coinstats_provider import __version__
from coinstats_provider.exceptions import (
    CoinStatsCreditBudgetExceeded,
    CoinStatsError,
    CoinStatsRateLimitError,
    CoinStatsResponseError,
    CoinStatsServerError,
    CoinStatsTransportError,
)
from coinstats_provider.hooks import coinstats_base
from coinstats_provider.models import SyncStatus
from tests.conftest import BASE_URL, assert_no_canary
from tests.unit.hooks.helpers import (
    API_KEY,
    COINS_URL,
    CONNECT_URL,
    CONNECTED,
    FAST,
    FIELDS,
    STATUS_URL,
    SYNC_URL,
    USAGE,
    USAGE_URL,
    error_body,
    make_hook,
)


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
    retries = [message for message in logs.messages if "retry" in message]
    assert retries == [
        f"CoinStats GET /portfolio/coins failed (HTTP 429); retry {n} of 3 in {delay:.1f} s"
        for n, delay in enumerate(delays, start=1)
    ]
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
    monkeypatch.setattr(coinstats_base.random, "uniform", lambda a, b: a if pick == "low" else b)
    rsps.get(COINS_URL, status=503, json=error_body(503, "Service Unavailable", "/portfolio/coins"))
    hook, delays = make_hook()

    with pytest.raises(CoinStatsServerError):
        hook.request("GET", "/portfolio/coins")

    assert delays == expected


def test_exponential_backoff_capped_by_backoff_max(
    coinstats_conn: Any, rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    coinstats_conn(extra={"backoff_base": 4, "backoff_max": 5, "max_retries": 3})
    monkeypatch.setattr(coinstats_base.random, "uniform", lambda a, b: b)
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

    assert str(info.value) == (
        f"CoinStats GET /usage/credits failed: ConnectTimeout talking to {BASE_URL} (timeout 5 s). Check that "
        "the host is reachable or raise the connection extra 'timeout'."
    )
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
