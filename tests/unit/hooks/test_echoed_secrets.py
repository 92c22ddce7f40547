"""Every place that quotes a CoinStats answer in a log, an exception or a UI message, fed an answer that echoes
each canary the hook holds, at the front of the quoted text (so no length cap cuts it off before the check).

The check is the fragment check of tests/helpers/canary.py: 8 consecutive characters of a canary fail it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import responses

from coinstats_provider.exceptions import CoinStatsAPIError, CoinStatsResponseError
from coinstats_provider.hooks import support_cache
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.errors import error_from_response
from coinstats_provider.hooks.exchange import CoinStatsExchangeHook
from tests.conftest import CANARIES, SUPPORT, assert_no_canary
from tests.unit.hooks.helpers import CONNECT_URL, STATUS_URL, SUPPORT_URL, USAGE, USAGE_URL, make_hook

#: The OKX credentials of the ``ex_okx`` connection: every exchange canary is sent (and may be echoed).
OKX_FIELDS = {
    "apiKey": CANARIES["exchange_key"],
    "apiSecret": CANARIES["exchange_secret"],
    "passphrase": CANARIES["passphrase"],
}
ALL = list(CANARIES)


def echo(name: str) -> str:
    """A CoinStats text that starts with canary ``name`` and goes on long enough to be cut."""
    return f"{CANARIES[name]} was not accepted " + "x" * 400


@pytest.mark.parametrize("name", ALL)
def test_unknown_connect_status(coinstats_conn: Any, rsps: responses.RequestsMock, name: str) -> None:
    rsps.post(CONNECT_URL, json={"portfolioId": "pf-1", "connectionId": "okx", "status": echo(name)})

    with pytest.raises(CoinStatsResponseError, match="unknown status '\\*\\*\\* was not") as info:
        make_hook()[0].connect_exchange_portfolio("okx", OKX_FIELDS)

    assert_no_canary(str(info.value), repr(info.value))


@pytest.mark.parametrize("name", ALL)
def test_other_connection_id_in_connect_answer(
    coinstats_conn: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture, name: str
) -> None:
    rsps.post(CONNECT_URL, json={"portfolioId": "pf-1", "connectionId": echo(name), "status": "connected"})

    result = make_hook()[0].connect_exchange_portfolio("okx", OKX_FIELDS)

    assert result.connection_id == "okx"
    assert "CoinStats answered connectionId '*** was not" in logs.text
    assert_no_canary(logs.text)


def test_unknown_sync_status(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    # A status poll sends only the API key, so that is the secret the answer can echo.
    rsps.get(STATUS_URL, json={"status": echo("api_key")})

    with pytest.raises(CoinStatsResponseError, match="unknown status '\\*\\*\\* was not") as info:
        make_hook()[0].get_portfolio_sync_status("pf-1")

    assert_no_canary(str(info.value), repr(info.value))


def test_subscription_in_test_connection_message(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(USAGE_URL, json={**USAGE, "subscription": echo("api_key")})

    ok, message = CoinStatsHook().test_connection()

    assert ok is True
    assert "(*** was not" in message
    assert_no_canary(message)


def test_test_connection_unexpected_error_quoting_the_answer(
    coinstats_conn: Any, rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    rsps.get(USAGE_URL, json={**USAGE, "subscription": echo("api_key")})

    def misread(self: CoinStatsHook) -> Any:
        raise RuntimeError(f"cannot read {self.request('GET', '/usage/credits')['subscription']}")

    monkeypatch.setattr(CoinStatsHook, "get_credit_usage", misread)

    ok, message = CoinStatsHook().test_connection()

    assert ok is False
    assert message.startswith("RuntimeError: cannot read *** was not")
    assert_no_canary(message)


@pytest.mark.parametrize("name", ALL)
def test_exchange_test_connection_unexpected_error_quoting_the_answer(
    coinstats_conn: Any,
    exchange_conn: Any,
    rsps: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    """The Test button of an exchange connection: an unexpected error that quotes CoinStats' answer."""
    exchange_conn("ex_okx", connection_id="okx", passphrase=CANARIES["passphrase"])
    rsps.get(SUPPORT_URL, json=[*SUPPORT, {"connectionId": echo(name), "name": "Echo"}])

    def misread(data: Any) -> Any:
        raise RuntimeError(f"cannot read exchange {data[-1]['connectionId']}")

    monkeypatch.setattr(support_cache, "EXCHANGES", dataclasses.replace(support_cache.EXCHANGES, parse=misread))

    ok, message = CoinStatsExchangeHook("ex_okx").test_connection()

    assert ok is False
    assert message.startswith("RuntimeError: cannot read exchange *** was not")
    assert len(rsps.calls) == 1
    assert_no_canary(message)


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 409, 429, 500, 503, 418])
@pytest.mark.parametrize("name", ALL)
def test_error_body_message_and_request_id(status: int, name: str) -> None:
    body = {"statusCode": status, "message": echo(name), "requestId": echo(name)}
    secrets = (CANARIES["api_key"], *OKX_FIELDS.values())

    err = error_from_response(status, json.dumps(body).encode(), "/portfolio/exchange", secrets, "c")

    assert isinstance(err, CoinStatsAPIError)
    assert err.api_message.startswith("*** was not")
    assert (err.request_id or "").startswith("*** was not")
    assert_no_canary(str(err), repr(err), err.api_message, err.request_id)
