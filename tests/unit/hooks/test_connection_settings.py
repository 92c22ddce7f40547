"""Unit tests of connection settings: base URL, API key, conn_type, extras and overrides."""

from __future__ import annotations

import re
from typing import Any

import pytest
import responses

from coinstats_provider.exceptions import (
    CoinStatsConfigError,
    CoinStatsServerError,
)
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.connection import build_base_url
from tests.conftest import BASE_URL, assert_no_canary, set_connection
from tests.unit.hooks.helpers import (
    FAST,
    TRUST_CONN_ID,
    USAGE,
    USAGE_URL,
    error_body,
    make_hook,
    use_server,
)

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
        make_hook(TRUST_CONN_ID)[0].get_credit_usage()

    text = str(info.value)
    assert f"Connection '{TRUST_CONN_ID}'" in text
    assert "https://" in text
    assert "loopback" in text
    assert len(rsps.calls) == 0
    assert_no_canary(text)


# -- strict numeric extras ------------------------------------------------------------------------


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
        _ = make_hook(TRUST_CONN_ID)[0].settings

    text = str(info.value)
    assert f"Extra '{key}' of connection '{TRUST_CONN_ID}'" in text
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
        _ = make_hook(TRUST_CONN_ID)[0].settings


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

    settings = make_hook(TRUST_CONN_ID)[0].settings

    assert (settings.timeout, settings.backoff_base, settings.backoff_max) == (2.5, 0.5, 10.0)
    assert (settings.support_cache_ttl, settings.credit_budget, settings.max_retries) == (0.0, 100, 3)


def test_hook_argument_timeout_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    use_server(monkeypatch, BASE_URL)

    with pytest.raises(CoinStatsConfigError, match="'timeout'"):
        _ = CoinStatsHook(TRUST_CONN_ID, timeout=float("nan")).settings
