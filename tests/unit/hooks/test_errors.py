"""Unit tests of the error mapping: typed errors without retry, redaction, Retry-After parsing."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable
from typing import Any

import pytest
import responses

from coinstats_provider.exceptions import (
    CoinStatsAPIError,
    CoinStatsAuthError,
    CoinStatsBadRequestError,
    CoinStatsConflictError,
    CoinStatsCreditsExhaustedError,
    CoinStatsError,
    CoinStatsExchangeCredentialsError,
    CoinStatsInvalidApiKeyError,
    CoinStatsNotFoundError,
    CoinStatsPermissionError,
    CoinStatsRateLimitError,
    CoinStatsServerError,
)
from coinstats_provider.hooks.errors import (
    MAX_RETRY_AFTER,
    error_from_response,
    parse_retry_after,
    redact,
    short_cause,
    transport_error,
)
from coinstats_provider.models import SyncStatus
from tests.conftest import BASE_URL, CANARIES, assert_no_canary
from tests.helpers.canary import assert_no_fragment
from tests.unit.hooks.helpers import (
    API_KEY,
    COINS_URL,
    CONNECT_URL,
    FIELDS,
    INVALID_KEY_BODY,
    STATUS_URL,
    SUPPORT_URL,
    TRUST_CONN_ID,
    USAGE_URL,
    error_body,
    make_hook,
    use_server,
)

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


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(date, now=now) == pytest.approx(12.0)
    assert parse_retry_after(email.utils.formatdate(now - 100, usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None


def secret_forms(secret: str) -> list[str]:
    """Every way a secret may be written into text: raw, JSON-escaped and repr/ascii-escaped."""
    return [
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
    ]


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
    assert_no_fragment({form: form for form in secret_forms(secret)}, text, err.request_id or "")


@pytest.mark.parametrize("secret", ODD_SECRETS)
def test_redact_removes_escaped_forms(secret: str) -> None:
    text = " | ".join(secret_forms(secret)) + f" | {[secret]} | {json.dumps({'k': secret})}"

    redacted = redact(text, [secret])

    assert_no_fragment({form: form for form in secret_forms(secret)}, redacted)
    assert redacted.count("***") >= 5


def test_connect_error_echoing_odd_credentials_is_redacted(
    rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, BASE_URL)
    fields = dict(zip(("apiKey", "apiSecret", "passphrase"), ODD_SECRETS, strict=True))
    rsps.post(CONNECT_URL, status=400, json={"statusCode": 400, "message": [{"constraints": fields}]})
    hook, _ = make_hook(TRUST_CONN_ID)

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
    hook, delays = make_hook(TRUST_CONN_ID)

    assert hook.get_portfolio_sync_status("pf-1") is SyncStatus.SYNCED

    # No Retry-After understood: exponential backoff (base 1, first attempt) applies.
    assert len(delays) == 1
    assert 0.5 <= delays[0] <= 1.0


# -- 6. wording that picks the error, and the transport error's advice ---------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Your API Key is invalid.", CoinStatsInvalidApiKeyError),
        ("Invalid apikey", CoinStatsInvalidApiKeyError),
        ("Bad api-key supplied", CoinStatsInvalidApiKeyError),
        ("Unauthorized", CoinStatsExchangeCredentialsError),
    ],
)
def test_401_on_an_exchange_route_names_the_key_only_when_coinstats_does(message: str, expected: type) -> None:
    body = json.dumps({"statusCode": 401, "message": message}).encode()

    err = error_from_response(401, body, "/portfolio/exchange", (), "cs")

    assert type(err) is expected


def test_transport_error_names_the_cause_host_and_timeout_advice() -> None:
    err = transport_error(
        "GET", "/portfolio/status", ConnectionError("refused"), base_url="https://h.example", timeout=2.5
    )

    assert str(err) == (
        "CoinStats GET /portfolio/status failed: ConnectionError talking to https://h.example (timeout 2.5 s). "
        "Check that the host is reachable or raise the connection extra 'timeout'."
    )
    assert err.cause == "ConnectionError"
    assert err.retryable is True


@pytest.mark.parametrize(
    ("path", "message", "hint"),
    [
        (
            "/portfolio/coins",
            "Your API Key is invalid.",
            "The CoinStats API key in connection 'cs' (Password field) is invalid; generate a new key at "
            "https://openapi.coinstats.app and update the connection.",
        ),
        (
            "/portfolio/exchange",
            "Unauthorized",
            "CoinStats accepted the API key but the exchange rejected the exchange credentials; create a new "
            "read-only API key on the exchange and update the exchange connection.",
        ),
        ("/usage/credits", "Unauthorized", "Check the API key in connection 'cs'."),
    ],
)
def test_401_hints_say_what_to_fix(path: str, message: str, hint: str) -> None:
    body = json.dumps({"statusCode": 401, "message": message}).encode()

    err = error_from_response(401, body, path, (), "cs")

    assert hint in str(err)


# -- 7. every message and hint, word for word ------------------------------------------------------
#
# What users read when a call fails is the provider's interface: each hint says what to fix. These pin
# the whole text, so a dropped hint, a lost path or a changed word fails a test.

NOT_FOUND_BASE_URL = (
    "CoinStats has no {path} at this address; check the host (base URL) of connection 'cs' "
    "(default https://openapiv1.coinstats.app)."
)
EXACT_ERRORS = [
    pytest.param(
        400,
        "/portfolio/coins",
        {"message": "Invalid parameter", "requestId": "r-1"},
        CoinStatsBadRequestError,
        "Check the request parameters.",
        id="400",
    ),
    pytest.param(
        402,
        "/portfolio/coins",
        {"message": "Payment required"},
        CoinStatsCreditsExhaustedError,
        "The CoinStats account has no credits left: upgrade the plan or wait for the renewal "
        "(GET /usage/credits shows the balance). Retrying cannot help.",
        id="402",
    ),
    pytest.param(
        403,
        "/portfolio/chart",
        {"message": "Forbidden resource"},
        CoinStatsPermissionError,
        "The API key's plan does not include this endpoint; upgrade the CoinStats plan or use an API key "
        "whose plan includes /portfolio/chart in connection 'cs'.",
        id="403",
    ),
    pytest.param(
        404,
        "/portfolio/coins",
        {"message": "Portfolio not found"},
        CoinStatsNotFoundError,
        "The portfolio does not exist for this API key; connect the exchange again.",
        id="404-portfolio",
    ),
    pytest.param(
        404,
        "/portfolio/exchange",
        {"message": "Cannot POST"},
        CoinStatsNotFoundError,
        NOT_FOUND_BASE_URL.format(path="/portfolio/exchange"),
        id="404-connect-route",
    ),
    pytest.param(
        404,
        "/exchange/support",
        {"message": "Cannot GET"},
        CoinStatsNotFoundError,
        NOT_FOUND_BASE_URL.format(path="/exchange/support"),
        id="404-other-route",
    ),
    pytest.param(
        409,
        "/portfolio/transactions",
        {"message": "Transactions not synced"},
        CoinStatsConflictError,
        "Trigger a portfolio sync and wait until GET /portfolio/status says synced.",
        id="409",
    ),
    pytest.param(
        429,
        "/portfolio/coins",
        {"message": "Too many requests"},
        CoinStatsRateLimitError,
        "Rate limited; lower the pool size.",
        id="429",
    ),
    pytest.param(
        503,
        "/portfolio/coins",
        {"message": "Service unavailable"},
        CoinStatsServerError,
        "CoinStats is having trouble; retry later.",
        id="503",
    ),
    pytest.param(418, "/portfolio/coins", {"message": "I'm a teapot"}, CoinStatsAPIError, None, id="other"),
]


@pytest.mark.parametrize(("status", "path", "body", "expected", "hint"), EXACT_ERRORS)
def test_each_error_says_what_to_fix_word_for_word(
    status: int, path: str, body: dict[str, Any], expected: type, hint: str | None
) -> None:
    err = error_from_response(status, json.dumps(body).encode(), path, (), "cs")

    assert type(err) is expected
    assert (err.http_status, err.path, err.api_message, err.hint) == (status, path, body["message"], hint)
    request = f" (requestId {body['requestId']})" if "requestId" in body else ""
    tail = f". {hint}" if hint else ""
    assert str(err) == f"CoinStats API error {status} on {path}: {body['message']}{request}{tail}"


def test_an_error_field_stands_in_for_a_missing_message_and_request_id_for_request_id() -> None:
    body = json.dumps({"error": "Bad Gateway", "request_id": "gw-7"}).encode()

    err = error_from_response(502, body, "/portfolio/coins", (), "cs")

    assert (err.api_message, err.request_id) == ("Bad Gateway", "gw-7")


def test_a_long_request_id_is_cut_to_80_characters() -> None:
    body = json.dumps({"message": "x", "requestId": "r" * 100}).encode()

    err = error_from_response(500, body, "/portfolio/coins", (), "cs")

    assert err.request_id == "r" * 80


def test_a_nested_message_is_flattened_in_order_with_its_separators() -> None:
    message = ["first", {"field": ["a", 1], "other": None}, 2.5]
    body = json.dumps({"message": message}).encode()

    err = error_from_response(400, body, "/portfolio/exchange", (), "cs")

    assert err.api_message == "first; field: a; 1; other: None; 2.5"


def nested(depth: int, core: Any = "core") -> Any:
    """A message nested ``depth`` lists deep around ``core``."""
    value = core
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("depth", "shown"),
    [(8, "core"), (9, "..."), (4, "core")],
)
def test_nesting_deeper_than_eight_levels_is_cut(depth: int, shown: str) -> None:
    body = json.dumps({"message": nested(depth)}).encode()

    assert error_from_response(400, body, "/portfolio/coins", (), "cs").api_message == shown


@pytest.mark.parametrize(("depth", "shown"), [(7, "key: v"), (8, "...: ...")])
def test_nesting_is_counted_for_keys_and_values_alike(depth: int, shown: str) -> None:
    body = json.dumps({"message": nested(depth, {"key": "v"})}).encode()

    assert error_from_response(400, body, "/portfolio/coins", (), "cs").api_message == shown


@pytest.mark.parametrize("secret", [*ODD_SECRETS, 'clé-"ünï\\-CANARY'])
@pytest.mark.parametrize("form", ["raw", "json", "json-unicode", "repr", "ascii"])
def test_each_written_form_of_a_secret_is_replaced_whole(secret: str, form: str) -> None:
    written = dict(zip(["raw", "json", "json-unicode", "repr", "ascii"], secret_forms(secret), strict=True))[form]

    assert redact(f"<{written}>", [secret]) == "<***>"


def test_a_retry_line_names_an_error_without_a_short_cause_by_its_class() -> None:
    assert short_cause(CoinStatsError("odd")) == "CoinStatsError"
    assert short_cause(CoinStatsServerError(503, "x")) == "HTTP 503"


@pytest.mark.parametrize(
    ("length", "shown"),
    [(300, "m" * 300), (301, "m" * 297 + "...")],
)
def test_a_message_is_cut_to_300_characters_only_beyond_them(length: int, shown: str) -> None:
    assert redact("m" * length, ["unrelated-secret"]) == shown


def test_a_secret_inside_a_longer_one_does_not_leave_the_rest_of_the_longer_one() -> None:
    # Longest first: replacing "PASS" first would leave "MY***WORD", most of the longer secret.
    assert redact("echo MYPASSWORD and PASS", ["PASS", "MYPASSWORD"]) == "echo *** and ***"
