"""Unit tests of ConnectExchangePortfolioOperator (execute with a fake context; HTTP mocked)."""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
from airflow.sdk.exceptions import AirflowFailException

from coinstats_provider.exceptions import (
    CoinStatsCreditBudgetExceeded,
    CoinStatsCreditsExhaustedError,
    CoinStatsError,
    CoinStatsExchangeCredentialsError,
    CoinStatsInvalidApiKeyError,
    CoinStatsRateLimitError,
    CoinStatsServerError,
    CoinStatsTransportError,
    CoinStatsValidationError,
)
from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator
from tests.conftest import BASE_URL, CANARIES, SUPPORT, assert_no_canary, set_connection

SUPPORT_URL = BASE_URL + "/exchange/support"
CONNECT_URL = BASE_URL + "/portfolio/exchange"
CONNECTED = {"portfolioId": "pf-1", "connectionId": "binance", "status": "connected"}
EXISTING = {"portfolioId": "pf-1", "connectionId": "binance", "status": "existing"}
INVALID_KEY_BODY = {
    "statusCode": 401,
    "message": "Your API Key is invalid. Please login to https://openapi.coinstats.app and generate your API Key.",
}
#: A CoinStats error message echoing every secret a binance account sends (API key and exchange key/secret).
ECHOED_SECRETS = (
    f"Invalid credentials {CANARIES['exchange_key']} / {CANARIES['exchange_secret']} (key {CANARIES['api_key']})"
)
#: GET /exchange/support sends no exchange credential, so CoinStats can only echo the API key there.
ECHOED_API_KEY = f"Bad key {CANARIES['api_key']}"
#: The same for an okx account, which also sends its passphrase.
ECHOED_OKX_SECRETS = f"{ECHOED_SECRETS} passphrase {CANARIES['passphrase']}"


class FakeTI:
    """Records ``xcom_push`` calls."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, Any]] = []

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed.append((key, value))

    @property
    def xcoms(self) -> dict[str, Any]:
        return dict(self.pushed)


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def make_operator(**kwargs: Any) -> tuple[ConnectExchangePortfolioOperator, list[float]]:
    """An operator whose hook records retry sleeps instead of sleeping."""
    kwargs.setdefault("task_id", "connect")
    kwargs.setdefault("exchange_conn_id", "ex_binance")
    op = ConnectExchangePortfolioOperator(**kwargs)
    delays: list[float] = []
    op.hook._sleep = delays.append
    return op, delays


def posts(mock: responses.RequestsMock) -> list[Any]:
    return [c for c in mock.calls if c.request.method == "POST"]


def exception_texts(exc: BaseException | None) -> list[str]:
    """str and repr of an exception and of every exception displayed as chained to it, plus its traceback."""
    texts: list[str] = []
    seen: set[int] = set()
    first = exc
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts += [str(exc), repr(exc), *(repr(a) for a in exc.args)]
        # Follow the chain as Python displays it: __cause__, else __context__ unless suppressed ("from None").
        suppressed = exc.__suppress_context__
        exc = exc.__cause__ if exc.__cause__ is not None else (None if suppressed else exc.__context__)
    if first is not None:
        texts.append("".join(traceback.format_exception(first)))
    return texts


# -- success ---------------------------------------------------------------------------------------


def test_connected(
    coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=CONNECTED)
    op, delays = make_operator()
    ti = FakeTI()

    result = op.execute({"ti": ti})

    assert result == "pf-1"
    # The extra link's URL is pushed first, so the link works even if anything later fails.
    assert ti.pushed == [
        ("portfolio_url", "https://coinstats.app/portfolio"),
        ("connection_id", "binance"),
        ("status", "connected"),
        ("credits_spent", 11),
    ]
    assert [(c.request.method, c.request.url) for c in rsps.calls] == [
        ("GET", SUPPORT_URL),
        ("POST", CONNECT_URL),
    ]
    assert json.loads(rsps.calls[1].request.body) == {
        "connectionId": "binance",
        "connectionFields": {"apiKey": CANARIES["exchange_key"], "apiSecret": CANARIES["exchange_secret"]},
    }
    assert "as new CoinStats portfolio pf-1" in logs.text
    assert "already connected" not in logs.text
    assert "credits spent by this task: 11" in logs.text
    assert delays == []


def test_existing(
    coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=EXISTING)
    op, _ = make_operator()
    ti = FakeTI()

    result = op.execute({"ti": ti})

    assert result == "pf-1"
    assert ti.xcoms == {
        "portfolio_url": "https://coinstats.app/portfolio",
        "connection_id": "binance",
        "status": "existing",
        "credits_spent": 11,
    }
    assert "already connected: existing CoinStats portfolio pf-1" in logs.text
    assert "as new CoinStats portfolio" not in logs.text


def test_rerun_is_idempotent(coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock) -> None:
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=CONNECTED)
    rsps.post(CONNECT_URL, json=EXISTING)
    first_ti, second_ti = FakeTI(), FakeTI()

    first = make_operator()[0].execute({"ti": first_ti})
    second = make_operator()[0].execute({"ti": second_ti})

    assert first == second == "pf-1"
    assert first_ti.xcoms["status"] == "connected"
    assert second_ti.xcoms["status"] == "existing"
    assert second_ti.xcoms["credits_spent"] == 10  # the support list came from the cache
    assert len(posts(rsps)) == 2


def test_okx_with_passphrase(coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock) -> None:
    exchange_conn("ex_okx", connection_id="okx", passphrase=CANARIES["passphrase"])
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json={**CONNECTED, "connectionId": "okx"})

    assert make_operator(exchange_conn_id="ex_okx")[0].execute({"ti": FakeTI()}) == "pf-1"

    body = json.loads(posts(rsps)[0].request.body)
    assert body["connectionId"] == "okx"
    assert body["connectionFields"]["passphrase"] == CANARIES["passphrase"]


def test_arguments_override_extras(coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock) -> None:
    exchange_conn("ex_binance", portfolio_name="From extra")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json={**CONNECTED, "connectionId": "kraken"})
    op, _ = make_operator(connection_id="kraken", portfolio_name="From argument")
    ti = FakeTI()

    op.execute({"ti": ti})

    body = json.loads(posts(rsps)[0].request.body)
    assert body["connectionId"] == "kraken"
    assert body["name"] == "From argument"
    assert ti.xcoms["connection_id"] == "kraken"


def test_extras_used_without_arguments(coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock) -> None:
    exchange_conn("ex_binance", portfolio_name="From extra")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=CONNECTED)

    make_operator()[0].execute({"ti": FakeTI()})

    body = json.loads(posts(rsps)[0].request.body)
    assert body["connectionId"] == "binance"
    assert body["name"] == "From extra"


def test_coinstats_conn_id_and_hook_params(
    coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock
) -> None:
    coinstats_conn("cs_local", host="http://127.0.0.1:8765")
    exchange_conn("ex_binance")
    rsps.get("http://127.0.0.1:8765/exchange/support", json=SUPPORT)
    rsps.post("http://127.0.0.1:8765/portfolio/exchange", json=CONNECTED)
    op, _ = make_operator(coinstats_conn_id="cs_local", hook_params={"timeout": 1.25})

    assert op.execute({"ti": FakeTI()}) == "pf-1"

    assert len(rsps.calls) == 2
    assert all(c.request.req_kwargs["timeout"] == 1.25 for c in rsps.calls)


def test_template_fields() -> None:
    assert set(ConnectExchangePortfolioOperator.template_fields) >= {
        "exchange_conn_id",
        "coinstats_conn_id",
        "connection_id",
        "portfolio_name",
    }
    op = ConnectExchangePortfolioOperator(task_id="t", exchange_conn_id="ex_{{ params.n }}")
    assert op.coinstats_conn_id == "coinstats_default"
    assert op.exchange_conn_id == "ex_{{ params.n }}"


def test_constructor_sends_nothing_and_reads_no_connection(rsps: responses.RequestsMock) -> None:
    # No connection is defined at all: building the operator (DAG parse time) must not need one.
    op = ConnectExchangePortfolioOperator(task_id="t", exchange_conn_id="ex_missing")
    assert "hook" not in op.__dict__
    assert len(rsps.calls) == 0


# -- fail fast: no POST, or exactly one -----------------------------------------------------------


@pytest.mark.parametrize(
    ("connection_id", "extra", "needle"),
    [
        pytest.param("binanse", {}, "binance", id="unknown-exchange"),
        pytest.param("okx", {}, "passphrase", id="missing-passphrase"),
    ],
)
def test_invalid_account_fails_without_post(
    coinstats_conn: Any,
    exchange_conn: Any,
    rsps: responses.RequestsMock,
    connection_id: str,
    extra: dict[str, Any],
    needle: str,
) -> None:
    exchange_conn("ex_bad", connection_id=connection_id, **extra)
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=CONNECTED)
    op, _ = make_operator(exchange_conn_id="ex_bad")
    ti = FakeTI()

    with pytest.raises(AirflowFailException, match=needle) as info:
        op.execute({"ti": ti})

    assert isinstance(info.value.__cause__, CoinStatsValidationError)
    assert posts(rsps) == []
    assert len(rsps.calls) == 1
    assert ti.pushed == []


def test_missing_password_fails_without_post(
    coinstats_conn: Any, monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock
) -> None:
    set_connection(
        monkeypatch,
        "ex_nopw",
        conn_type="coinstats_exchange",
        login=CANARIES["exchange_key"],
        extra={"connection_id": "binance"},
    )
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=CONNECTED)

    with pytest.raises(AirflowFailException, match="apiSecret") as info:
        make_operator(exchange_conn_id="ex_nopw")[0].execute({"ti": FakeTI()})

    assert "Password field" in str(info.value)
    assert posts(rsps) == []


def test_missing_connection_id_fails_before_any_request(
    coinstats_conn: Any, monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock
) -> None:
    set_connection(
        monkeypatch,
        "ex_noid",
        conn_type="coinstats_exchange",
        login=CANARIES["exchange_key"],
        password=CANARIES["exchange_secret"],
    )

    with pytest.raises(AirflowFailException, match="connection_id"):
        make_operator(exchange_conn_id="ex_noid")[0].execute({"ti": FakeTI()})

    assert len(rsps.calls) == 0


def test_credit_budget_fails_before_post(coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock) -> None:
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=CONNECTED)
    op, _ = make_operator(hook_params={"credit_budget": 5})

    with pytest.raises(AirflowFailException, match="budget") as info:
        op.execute({"ti": FakeTI()})

    assert isinstance(info.value.__cause__, CoinStatsCreditBudgetExceeded)
    assert posts(rsps) == []


@pytest.mark.parametrize(
    ("status", "body", "cause"),
    [
        pytest.param(401, INVALID_KEY_BODY, CoinStatsInvalidApiKeyError, id="401-bad-key"),
        pytest.param(
            401,
            {"statusCode": 401, "message": "Exchange credentials expired"},
            CoinStatsExchangeCredentialsError,
            id="401-exchange-credentials",
        ),
        pytest.param(403, {"statusCode": 403, "message": "Forbidden resource"}, None, id="403"),
        pytest.param(
            406,
            {"statusCode": 406, "message": "Credits limit reached. Please upgrade your plan or wait for renewal."},
            CoinStatsCreditsExhaustedError,
            id="406",
        ),
        pytest.param(
            429,
            {"statusCode": 429, "message": "Insufficient credits for this request"},
            CoinStatsCreditsExhaustedError,
            id="429-credits",
        ),
        pytest.param(409, {"statusCode": 409, "message": "Transactions not synced"}, None, id="409"),
        pytest.param(400, {"statusCode": 400, "message": "Invalid connectionFields"}, None, id="400"),
        pytest.param(200, {"connectionId": "binance", "status": "connected"}, None, id="200-without-portfolio-id"),
    ],
)
def test_non_retryable_connect_errors_fail_fast(
    coinstats_conn: Any,
    exchange_conn: Any,
    rsps: responses.RequestsMock,
    logs: pytest.LogCaptureFixture,
    status: int,
    body: dict[str, Any],
    cause: type[CoinStatsError] | None,
) -> None:
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, status=status, json={**body, "requestId": "req-123"})
    op, delays = make_operator()
    ti = FakeTI()

    with pytest.raises(AirflowFailException, match="retrying cannot help") as info:
        op.execute({"ti": ti})

    assert len(posts(rsps)) == 1
    assert len(rsps.calls) == 2
    assert delays == []
    assert op.hook.credits.retries == 0
    assert isinstance(info.value.__cause__, CoinStatsError)
    assert info.value.__cause__.retryable is False
    if cause is not None:
        assert type(info.value.__cause__) is cause
    if status != 200:
        assert str(status) in str(info.value)
        assert body["message"] in str(info.value)
    assert "ex_binance" in str(info.value)
    assert ti.pushed == []
    assert "credits spent by this task" in logs.text


def test_invalid_key_on_support_fails_without_post(
    coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock
) -> None:
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, status=401, json=INVALID_KEY_BODY)
    rsps.post(CONNECT_URL, json=CONNECTED)

    with pytest.raises(AirflowFailException) as info:
        make_operator()[0].execute({"ti": FakeTI()})

    assert isinstance(info.value.__cause__, CoinStatsInvalidApiKeyError)
    assert len(rsps.calls) == 1
    assert posts(rsps) == []


# -- retryable errors are re-raised so Airflow task retries apply ---------------------------------


@pytest.mark.parametrize(
    ("register", "expected"),
    [
        pytest.param(
            {"status": 429, "json": {"statusCode": 429, "message": "Rate limit exceeded"}},
            CoinStatsRateLimitError,
            id="429",
        ),
        pytest.param(
            {"status": 500, "json": {"statusCode": 500, "message": "Internal server error"}},
            CoinStatsServerError,
            id="500",
        ),
        pytest.param(
            {"status": 503, "json": {"statusCode": 503, "message": "Service Unavailable. Please Contact Support"}},
            CoinStatsServerError,
            id="503",
        ),
        pytest.param(
            {"body": requests.exceptions.ReadTimeout("read timed out")}, CoinStatsTransportError, id="timeout"
        ),
    ],
)
def test_retryable_errors_propagate(
    coinstats_conn: Any,
    exchange_conn: Any,
    rsps: responses.RequestsMock,
    logs: pytest.LogCaptureFixture,
    register: dict[str, Any],
    expected: type[CoinStatsError],
) -> None:
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, **register)
    op, delays = make_operator()
    ti = FakeTI()

    with pytest.raises(CoinStatsError) as info:
        op.execute({"ti": ti})

    assert type(info.value) is expected
    assert not isinstance(info.value, AirflowFailException)
    assert info.value.retryable is True
    assert len(posts(rsps)) == 4  # max_retries 3 in the coinstats_conn fixture
    assert len(delays) == 3
    assert ti.pushed == []
    assert "credits spent by this task: 1" in logs.text
    assert "retry 3 of 3" in logs.text


def test_retryable_error_on_support_call(coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock) -> None:
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, status=502, json={"statusCode": 502, "message": "Bad Gateway"})

    with pytest.raises(CoinStatsServerError):
        make_operator()[0].execute({"ti": FakeTI()})

    assert len(rsps.calls) == 4
    assert posts(rsps) == []


def test_transient_error_then_success(coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock) -> None:
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, status=503, json={"statusCode": 503, "message": "Service Unavailable"})
    rsps.post(CONNECT_URL, json=CONNECTED)
    op, delays = make_operator()
    ti = FakeTI()

    assert op.execute({"ti": ti}) == "pf-1"
    assert len(posts(rsps)) == 2
    assert len(delays) == 1
    assert ti.xcoms["credits_spent"] == 11


# -- secrets never leak ----------------------------------------------------------------------------


FAILURES: list[tuple[str, str, dict[str, Any]]] = [
    ("ex_binance", "POST", {"status": 400, "json": {"statusCode": 400, "message": ECHOED_SECRETS}}),
    ("ex_binance", "POST", {"status": 401, "json": {"statusCode": 401, "message": ECHOED_SECRETS}}),
    ("ex_binance", "POST", {"status": 401, "json": INVALID_KEY_BODY}),
    ("ex_binance", "POST", {"status": 403, "json": {"statusCode": 403, "message": ECHOED_SECRETS}}),
    ("ex_binance", "POST", {"status": 406, "json": {"statusCode": 406, "message": "Credits limit reached"}}),
    ("ex_binance", "POST", {"status": 503, "json": {"statusCode": 503, "message": ECHOED_SECRETS}}),
    ("ex_binance", "POST", {"body": requests.exceptions.ConnectionError(ECHOED_SECRETS)}),
    ("ex_binance", "POST", {"json": {"portfolioId": "pf-1", "status": ECHOED_SECRETS}}),
    ("ex_binance", "POST", {"body": ECHOED_SECRETS}),
    ("ex_binance", "GET", {"status": 401, "json": {"statusCode": 401, "message": ECHOED_API_KEY}}),
    ("ex_binance", "GET", {"status": 400, "json": {"statusCode": 400, "message": ECHOED_API_KEY}}),
    ("ex_okx", "POST", {"status": 400, "json": {"statusCode": 400, "message": ECHOED_OKX_SECRETS}}),
    ("ex_okx", "POST", {"status": 401, "json": {"statusCode": 401, "message": ECHOED_OKX_SECRETS}}),
    ("ex_okx", "POST", {"json": {"portfolioId": "pf-1", "status": ECHOED_OKX_SECRETS}}),
    ("ex_okx_nopass", "POST", {"json": CONNECTED}),
    ("ex_typo", "POST", {"json": CONNECTED}),
]


def test_no_canary_leaks(
    coinstats_conn: Any,
    exchange_conn: Any,
    rsps: responses.RequestsMock,
    logs: pytest.LogCaptureFixture,
) -> None:
    coinstats_conn(extra={"backoff_base": 0, "backoff_max": 0, "max_retries": 1, "support_cache_ttl": 0})
    exchange_conn("ex_binance")
    exchange_conn("ex_okx", connection_id="okx", passphrase=CANARIES["passphrase"])
    exchange_conn("ex_okx_nopass", connection_id="okx")
    exchange_conn("ex_typo", connection_id="binanse", passphrase=CANARIES["passphrase"])
    observed: list[Any] = []

    def run(conn_id: str, **kwargs: Any) -> BaseException | None:
        op, _ = make_operator(exchange_conn_id=conn_id, **kwargs)
        ti = FakeTI()
        error: BaseException | None = None
        try:
            observed.append(op.execute({"ti": ti}))
        except Exception as err:
            error = err
            observed.extend(exception_texts(err))
        observed.extend([ti.pushed, *(getattr(op, field) for field in op.template_fields)])
        return error

    # Success paths (binance and okx with passphrase): the secrets really are sent to CoinStats.
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=CONNECTED)
    assert run("ex_binance") is None
    assert run("ex_okx", connection_id="okx", portfolio_name="OKX main") is None
    sent = [c.request.body.decode() for c in posts(rsps)]
    assert CANARIES["exchange_secret"] in sent[0]
    assert CANARIES["passphrase"] in sent[1]
    assert rsps.calls[0].request.headers["X-API-KEY"] == CANARIES["api_key"]

    # Failure paths, several of which have CoinStats echo every secret back.
    errors = []
    for conn_id, method, register in FAILURES:
        rsps.reset()
        if method == "GET":
            rsps.get(SUPPORT_URL, **register)
        else:
            rsps.get(SUPPORT_URL, json=SUPPORT)
            rsps.post(CONNECT_URL, **register)
        errors.append(run(conn_id))

    assert all(err is not None for err in errors)
    assert any(isinstance(err, AirflowFailException) for err in errors)
    assert any(isinstance(err, CoinStatsServerError) for err in errors)
    assert "***" in "\n".join(str(o) for o in observed)  # the echoed secrets were redacted, not dropped
    assert observed
    assert logs.text
    assert_no_canary(logs.text, *observed)
    for record in logs.records:
        assert_no_canary(record.getMessage(), record.args)
