"""Shared constants and helpers of the CoinStats hook unit tests."""

from __future__ import annotations

from typing import Any

import pytest
import responses

from coinstats_provider.hooks.coinstats import CoinStatsHook
from tests.conftest import BASE_URL, CANARIES, set_connection

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


#: Connection of the transport-trust tests, with its own fast retry settings.
TRUST_CONN_ID = "cs_trust"
TRUST_FAST = {"backoff_base": 0, "backoff_max": 0, "max_retries": 2, "timeout": 5}


def make_hook(conn_id: str = "coinstats_default", **kwargs: Any) -> tuple[CoinStatsHook, list[float]]:
    """A hook whose retry sleeps (sync and async) are recorded instead of slept."""
    hook = CoinStatsHook(conn_id, **kwargs)
    delays: list[float] = []
    hook._sleep = delays.append

    async def record(delay: float) -> None:
        delays.append(delay)

    hook._asleep = record
    return hook, delays


def use_server(monkeypatch: pytest.MonkeyPatch, url: str, **extra: Any) -> None:
    """Point connection :data:`TRUST_CONN_ID` at ``url``; ``extra`` overrides its connection extras."""
    fields: dict[str, Any] = {"conn_type": "coinstats", "password": API_KEY, "host": url}
    set_connection(monkeypatch, TRUST_CONN_ID, **fields, extra={**TRUST_FAST, **extra})


def calls_to(mock: responses.RequestsMock, method: str, url: str) -> list[Any]:
    """The calls ``mock`` recorded for ``method`` on ``url`` (query string ignored)."""
    return [c for c in mock.calls if c.request.method == method and c.request.url.split("?")[0] == url]


def error_body(status: int, message: str, path: str, request_id: str | None = None) -> dict[str, Any]:
    """A CoinStats error body as the API sends it."""
    body: dict[str, Any] = {"statusCode": status, "message": message, "path": path}
    if request_id:
        body["requestId"] = request_id
    return body
