"""Unit tests of CoinStatsExchangeHook: reading exchange accounts and validating them against the API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from coinstats_provider.exceptions import CoinStatsConfigError, CoinStatsValidationError
from coinstats_provider.hooks.exchange import CoinStatsExchangeHook, ExchangeAccount
from coinstats_provider.hooks.support_cache import parse_support
from tests.conftest import BASE_URL, CANARIES, SUPPORT, assert_no_canary, set_connection

SUPPORTED = parse_support(SUPPORT)
SUPPORT_URL = BASE_URL + "/exchange/support"


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """Mock every HTTP call made through ``requests``; an unregistered URL fails as a ConnectionError."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def only_support_calls(mock: responses.RequestsMock, base_url: str = BASE_URL) -> bool:
    """Whether every request sent was GET /exchange/support (in particular: no POST)."""
    return all(c.request.method == "GET" and c.request.url == base_url + "/exchange/support" for c in mock.calls)


def account_of(conn_id: str, **kwargs: Any) -> ExchangeAccount:
    return CoinStatsExchangeHook(conn_id).get_account(**kwargs)


# -- reading the account ---------------------------------------------------------------------------


def test_login_and_password_become_api_key_and_secret(exchange_conn: Any) -> None:
    exchange_conn("ex_binance", portfolio_name="Main Binance")

    account = account_of("ex_binance")

    assert account.conn_id == "ex_binance"
    assert account.connection_id == "binance"
    assert account.portfolio_name == "Main Binance"
    assert dict(account.credentials) == {
        "apiKey": CANARIES["exchange_key"],
        "apiSecret": CANARIES["exchange_secret"],
    }
    assert set(account.secrets) == {CANARIES["exchange_key"], CANARIES["exchange_secret"]}
    assert account.connection_fields(SUPPORTED) == {
        "apiKey": CANARIES["exchange_key"],
        "apiSecret": CANARIES["exchange_secret"],
    }
    assert_no_canary(repr(account), str(account))


def test_get_conn_returns_account(exchange_conn: Any) -> None:
    exchange_conn("ex_binance")
    assert CoinStatsExchangeHook("ex_binance").get_conn().connection_id == "binance"


def test_passphrase_from_extra(exchange_conn: Any) -> None:
    exchange_conn("ex_okx", connection_id="okx", passphrase=CANARIES["passphrase"])

    account = account_of("ex_okx")

    assert account.connection_fields(SUPPORTED) == {
        "apiKey": CANARIES["exchange_key"],
        "apiSecret": CANARIES["exchange_secret"],
        "passphrase": CANARIES["passphrase"],
    }
    assert CANARIES["passphrase"] in account.secrets
    assert_no_canary(repr(account))


def test_reserved_extras_are_not_credentials(exchange_conn: Any) -> None:
    exchange_conn("ex_binance", portfolio_name="P", coinstats_conn_id="cs_other", passphrase="")

    account = account_of("ex_binance")

    assert set(account.credentials) == {"apiKey", "apiSecret"}


def test_fields_not_listed_by_support_are_not_sent(exchange_conn: Any) -> None:
    exchange_conn("ex_binance", passphrase=CANARIES["passphrase"])

    fields = account_of("ex_binance").connection_fields(SUPPORTED)

    assert set(fields) == {"apiKey", "apiSecret"}


def test_connection_id_and_portfolio_name_arguments_override_extra(exchange_conn: Any) -> None:
    exchange_conn("ex_binance", portfolio_name="From extra")

    account = account_of("ex_binance", connection_id="kraken", portfolio_name="From argument")

    assert account.connection_id == "kraken"
    assert account.portfolio_name == "From argument"
    assert account.connection_fields(SUPPORTED)["apiKey"] == CANARIES["exchange_key"]


def test_no_portfolio_name(exchange_conn: Any) -> None:
    exchange_conn("ex_binance")
    assert account_of("ex_binance").portfolio_name is None


@pytest.mark.parametrize("given", ["Binance", "BINANCE", " binance "])
def test_exchange_id_matched_case_insensitively(exchange_conn: Any, given: str) -> None:
    exchange_conn("ex_binance", connection_id=given)

    fields = account_of("ex_binance").connection_fields(SUPPORTED)

    assert set(fields) == {"apiKey", "apiSecret"}


def test_unknown_exchange_suggests_nearest(exchange_conn: Any) -> None:
    exchange_conn("ex_typo", connection_id="binanse")
    account = account_of("ex_typo")

    with pytest.raises(CoinStatsValidationError) as info:
        account.connection_fields(SUPPORTED)

    text = str(info.value)
    assert "'binanse'" in text
    assert "Nearest supported ids: binance." in text  # only the close match, not every id
    assert "ex_typo" in text
    assert "connection_id" in text
    assert_no_canary(text, repr(info.value))


def test_unknown_exchange_without_close_match_lists_ids(exchange_conn: Any) -> None:
    exchange_conn("ex_unknown", connection_id="zzzzzzzz")

    with pytest.raises(CoinStatsValidationError) as info:
        account_of("ex_unknown").connection_fields(SUPPORTED)

    assert "binance, kraken, okx" in str(info.value)


def test_missing_passphrase_for_okx(exchange_conn: Any) -> None:
    exchange_conn("ex_okx", connection_id="okx")

    with pytest.raises(CoinStatsValidationError) as info:
        account_of("ex_okx").connection_fields(SUPPORTED)

    text = str(info.value)
    assert "passphrase" in text
    assert "extra key" in text
    assert "apiKey" not in text.split("requires", 1)[1]
    assert_no_canary(text)


def test_missing_password_names_api_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(
        monkeypatch,
        "ex_nopw",
        conn_type="coinstats_exchange",
        login=CANARIES["exchange_key"],
        extra={"connection_id": "binance"},
    )

    with pytest.raises(CoinStatsValidationError) as info:
        account_of("ex_nopw").connection_fields(SUPPORTED)

    text = str(info.value)
    assert "apiSecret" in text
    assert "Password field" in text
    assert_no_canary(text)


def test_missing_login_names_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(
        monkeypatch,
        "ex_nologin",
        conn_type="coinstats_exchange",
        password=CANARIES["exchange_secret"],
        extra={"connection_id": "kraken"},
    )

    with pytest.raises(CoinStatsValidationError) as info:
        account_of("ex_nologin").connection_fields(SUPPORTED)

    assert "apiKey" in str(info.value)
    assert "Login field" in str(info.value)


@pytest.mark.parametrize("extra", [{}, {"connection_id": ""}, {"connection_id": "   "}, None])
def test_missing_connection_id_extra(monkeypatch: pytest.MonkeyPatch, extra: Any) -> None:
    fields: dict[str, Any] = {
        "conn_type": "coinstats_exchange",
        "login": CANARIES["exchange_key"],
        "password": CANARIES["exchange_secret"],
    }
    if extra is not None:
        fields["extra"] = extra
    set_connection(monkeypatch, "ex_noid", **fields)

    with pytest.raises(CoinStatsConfigError) as info:
        account_of("ex_noid")

    text = str(info.value)
    assert "ex_noid" in text
    assert '"connection_id"' in text
    assert_no_canary(text)


def test_wrong_conn_type(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(
        monkeypatch,
        "ex_wrong",
        conn_type="coinstats",
        login=CANARIES["exchange_key"],
        password=CANARIES["exchange_secret"],
        extra={"connection_id": "binance"},
    )

    with pytest.raises(CoinStatsConfigError, match="expected 'coinstats_exchange'") as info:
        account_of("ex_wrong")

    assert_no_canary(str(info.value))


def test_malformed_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(
        monkeypatch,
        "ex_badjson",
        conn_type="coinstats_exchange",
        login=CANARIES["exchange_key"],
        password=CANARIES["exchange_secret"],
        extra="{not json",
    )

    with pytest.raises(CoinStatsConfigError, match="not valid JSON"):
        account_of("ex_badjson")


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({"nested": CANARIES["passphrase"]}, "dict"), ([CANARIES["passphrase"]], "list")],
)
def test_non_string_extra_value(exchange_conn: Any, value: Any, type_name: str) -> None:
    exchange_conn("ex_okx", connection_id="okx", passphrase=value)

    with pytest.raises(CoinStatsConfigError) as info:
        account_of("ex_okx")

    text = str(info.value)
    assert "'passphrase'" in text
    assert f"not {type_name}" in text
    assert_no_canary(text)


@pytest.mark.parametrize(("value", "expected"), [(123456, "123456"), (1.5, "1.5"), (True, "True")])
def test_scalar_extra_value_becomes_string(exchange_conn: Any, value: Any, expected: str) -> None:
    exchange_conn("ex_okx", connection_id="okx", passphrase=value)

    assert account_of("ex_okx").connection_fields(SUPPORTED)["passphrase"] == expected


# -- test_connection -------------------------------------------------------------------------------


def test_test_connection_ok(coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock) -> None:
    exchange_conn("ex_okx", connection_id="okx", passphrase=CANARIES["passphrase"])
    rsps.get(SUPPORT_URL, json=SUPPORT)

    ok, message = CoinStatsExchangeHook("ex_okx").test_connection()

    assert ok is True
    assert "'okx'" in message
    assert "3 required fields" in message
    assert "Nothing was connected" in message
    assert_no_canary(message)
    assert len(rsps.calls) == 1
    assert only_support_calls(rsps)


@pytest.mark.parametrize(
    ("connection_id", "extra", "needle"),
    [
        pytest.param("binanse", {}, "binance", id="unknown-exchange"),
        pytest.param("okx", {}, "passphrase", id="missing-passphrase"),
        pytest.param("okx", {"passphrase": {"a": 1}}, "must be a string", id="non-string-extra"),
    ],
)
def test_test_connection_invalid_account(
    coinstats_conn: Any,
    exchange_conn: Any,
    rsps: responses.RequestsMock,
    connection_id: str,
    extra: dict[str, Any],
    needle: str,
) -> None:
    exchange_conn("ex_bad", connection_id=connection_id, **extra)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    ok, message = CoinStatsExchangeHook("ex_bad").test_connection()

    assert ok is False
    assert needle in message
    assert_no_canary(message)
    assert only_support_calls(rsps)


def test_test_connection_invalid_coinstats_key(
    coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock
) -> None:
    exchange_conn("ex_binance")
    rsps.get(
        SUPPORT_URL,
        status=401,
        json={"statusCode": 401, "message": "Your API Key is invalid. Please login and generate one."},
    )

    ok, message = CoinStatsExchangeHook("ex_binance").test_connection()

    assert ok is False
    assert "401" in message
    assert_no_canary(message)
    assert len(rsps.calls) == 1
    assert only_support_calls(rsps)


def test_test_connection_unreachable(coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock) -> None:
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, body=requests.exceptions.ConnectionError("Connection reset by peer"))

    ok, message = CoinStatsExchangeHook("ex_binance").test_connection()

    assert ok is False
    assert "ConnectionError" in message
    assert_no_canary(message)
    assert len(rsps.calls) == 4  # max_retries 3 of the coinstats_conn fixture, backoff 0
    assert only_support_calls(rsps)


@pytest.mark.parametrize("case", ["no-coinstats-connection", "no-exchange-connection", "wrong-type"])
def test_test_connection_never_raises(
    monkeypatch: pytest.MonkeyPatch, exchange_conn: Any, rsps: responses.RequestsMock, case: str
) -> None:
    conn_id = "ex_binance"
    if case == "no-coinstats-connection":
        exchange_conn(conn_id)  # coinstats_default is not defined in this test
    elif case == "no-exchange-connection":
        conn_id = "ex_missing"
    else:
        set_connection(
            monkeypatch,
            conn_id,
            conn_type="http",
            login=CANARIES["exchange_key"],
            password=CANARIES["exchange_secret"],
            extra={"connection_id": "binance"},
        )

    ok, message = CoinStatsExchangeHook(conn_id).test_connection()

    assert ok is False
    assert message
    assert_no_canary(message)
    assert len(rsps.calls) == 0


def test_test_connection_uses_coinstats_conn_id_from_extra(
    coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock
) -> None:
    coinstats_conn("cs_local", host="http://127.0.0.1:8765")
    exchange_conn("ex_binance", coinstats_conn_id="cs_local")
    rsps.get("http://127.0.0.1:8765/exchange/support", json=SUPPORT)

    ok, _ = CoinStatsExchangeHook("ex_binance").test_connection()

    assert ok is True
    assert len(rsps.calls) == 1
    assert only_support_calls(rsps, "http://127.0.0.1:8765")


def test_test_connection_argument_beats_extra(
    coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock
) -> None:
    coinstats_conn("cs_local", host="http://127.0.0.1:8765")
    exchange_conn("ex_binance", coinstats_conn_id="cs_does_not_exist")
    rsps.get("http://127.0.0.1:8765/exchange/support", json=SUPPORT)

    ok, _ = CoinStatsExchangeHook("ex_binance", coinstats_conn_id="cs_local").test_connection()

    assert ok is True
    assert len(rsps.calls) == 1


def test_test_connection_default_coinstats_conn(
    coinstats_conn: Any, exchange_conn: Any, rsps: responses.RequestsMock
) -> None:
    exchange_conn("ex_kraken", connection_id="kraken")
    rsps.get(SUPPORT_URL, json=SUPPORT)

    hook = CoinStatsExchangeHook("ex_kraken")
    first = hook.test_connection()
    second = hook.test_connection()

    assert first[0] is True
    assert second == first
    assert len(rsps.calls) == 1  # the support list is cached
