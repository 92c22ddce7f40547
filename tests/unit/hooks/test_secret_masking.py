"""The hooks register every secret with Airflow's secrets masker, tested with that real masker in the log chain.

The ``logs`` fixture leaves the masker out on purpose (the code itself must not log a secret); here the
processor Airflow puts in front of every task log (``airflow.sdk.log.mask_logs``) is on, as in a deployment,
and each test uses secrets nobody registered before, so only the hook under test can have registered them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from airflow.sdk.log import mask_logs

from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.exchange import CoinStatsExchangeHook
from tests.conftest import _render, set_connection
from tests.helpers.canary import assert_no_fragment, new_canary


@pytest.fixture
def masked_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Route structlog output through Airflow's real secrets masker into caplog."""
    old = structlog.get_config()
    structlog.configure(
        processors=[mask_logs, _render],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    caplog.set_level(logging.DEBUG)
    try:
        yield caplog
    finally:
        structlog.configure(**old)


def log_lines(*secrets: str) -> Callable[[Any], None]:
    """Return a function that logs each secret through a logger the way a task would."""

    def emit(logger: Any) -> None:
        for secret in secrets:
            logger.info("CoinStats answered: bad credential %s", secret)
            logger.info("answer", body={"message": f"rejected {secret}"})

    return emit


def test_control_an_unregistered_value_is_not_masked(masked_logs: pytest.LogCaptureFixture) -> None:
    value = new_canary("CTRL")

    log_lines(value)(structlog.get_logger("control"))

    assert value in masked_logs.text  # the masker hides only what was registered


# Airflow masks a connection's password as typed; the hook uses it stripped (a pasted key often ends in a
# newline), so only the hook's own registration masks the key it sends.
def test_api_key_is_registered(masked_logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    api_key = new_canary("APIK")
    set_connection(monkeypatch, "cs_masked", conn_type="coinstats", password=f"  {api_key}\n")
    hook = CoinStatsHook("cs_masked")

    assert hook.settings.api_key == api_key
    log_lines(api_key)(hook.log)
    log_lines(api_key)(structlog.get_logger("airflow.task"))

    assert masked_logs.text.count("***") == 4
    assert_no_fragment({"api_key": api_key}, masked_logs.text)


async def test_api_key_is_registered_by_the_async_path(
    masked_logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_key = new_canary("APIK")
    set_connection(monkeypatch, "cs_masked", conn_type="coinstats", password=f"  {api_key}\n")
    hook = CoinStatsHook("cs_masked")

    assert (await hook.asettings()).api_key == api_key
    log_lines(api_key)(structlog.get_logger("airflow.triggerer"))

    assert masked_logs.text.count("***") == 2
    assert_no_fragment({"api_key": api_key}, masked_logs.text)


def test_exchange_credentials_are_registered(
    masked_logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {"login": new_canary("EXK"), "password": new_canary("EXS"), "passphrase": new_canary("PP")}
    set_connection(
        monkeypatch,
        "ex_masked",
        conn_type="coinstats_exchange",
        login=secrets["login"],
        password=secrets["password"],
        extra={"connection_id": "okx", "passphrase": secrets["passphrase"]},
    )

    account = CoinStatsExchangeHook("ex_masked").get_account()
    assert set(account.secrets) == set(secrets.values())
    log_lines(*secrets.values())(structlog.get_logger("airflow.task"))

    assert masked_logs.text.count("***") == 6
    assert_no_fragment(secrets, masked_logs.text)
