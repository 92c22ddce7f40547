"""Unit tests of CoinStatsHook's endpoints: connect, supported exchanges, usage, pages, value, sync."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
import requests
import responses

from coinstats_provider.exceptions import (
    CoinStatsConfigError,
    CoinStatsResponseError,
)
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.models import ConnectResult, ConnectStatus, SupportedExchange, SyncStatus
from tests.conftest import BASE_URL, CANARIES, SUPPORT, assert_no_canary
from tests.unit.hooks.helpers import (
    API_KEY,
    COINS_URL,
    CONNECT_URL,
    CONNECTED,
    EXISTING,
    FIELDS,
    INVALID_KEY_BODY,
    STATUS_URL,
    SUPPORT_URL,
    SYNC_URL,
    TX_URL,
    USAGE,
    USAGE_URL,
    make_hook,
)

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
