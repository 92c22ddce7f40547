"""Unit tests of PortfolioSyncTrigger: serialisation, and ``run()`` against the in-process sandbox (httpx)."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from coinstats_provider.hooks import sync_wait
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.triggers.sync import EVENT_STATUSES, POLL_COST, PortfolioSyncTrigger
from include.coinstats_sandbox import SandboxServer
from tests.conftest import CANARIES, assert_no_canary, set_connection
from tests.helpers.sandbox import sandboxes

CONN_ID = "coinstats_default"
STATUS_ROUTE = "GET /portfolio/status"
CLASSPATH = "coinstats_provider.triggers.sync.PortfolioSyncTrigger"

StartSandbox = Callable[..., SandboxServer]


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[StartSandbox]:
    """Start a sandbox (API key = the canary) and point ``coinstats_default`` at it; stopped after the test."""
    with sandboxes(monkeypatch, CONN_ID, max_retries=2, sync_seconds=0.0) as start:
        yield start


def connect(secret: str = "plain-secret") -> str:  # noqa: S107
    """Create a binance portfolio in the sandbox (``stuck...`` secrets never finish syncing)."""
    hook = CoinStatsHook(CONN_ID)
    return hook.connect_exchange_portfolio("binance", {"apiKey": "key-1", "apiSecret": secret}).portfolio_id


def status_polls(server: SandboxServer) -> int:
    """Status requests the sandbox received (answered or not)."""
    return int(server.stats()["requests"].get(STATUS_ROUTE, 0))


def make_trigger(portfolio_id: str, *, timeout: float = 10.0, poll_interval: float = 0.05, **kwargs: Any) -> Any:
    return PortfolioSyncTrigger(
        portfolio_id=portfolio_id,
        coinstats_conn_id=CONN_ID,
        end_time=time.time() + timeout,
        poll_interval=poll_interval,
        **kwargs,
    )


async def run_trigger(trigger: PortfolioSyncTrigger, limit: float = 10.0) -> list[dict[str, Any]]:
    """Every event ``run()`` yields until it returns (bounded so a hang fails instead of blocking)."""

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return await asyncio.wait_for(collect(), timeout=limit)


def only_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(events) == 1, f"expected exactly one event, got {events}"
    event = events[0]
    assert event["status"] in EVENT_STATUSES
    json.dumps(event)  # events travel through the metadata DB
    return event


def fake_asyncio(monkeypatch: pytest.MonkeyPatch, on_sleep: Callable[[float], None]) -> list[float]:
    """Replace the ``asyncio`` of the trigger's wait loop so its sleeps are recorded (and do not wait)."""
    delays: list[float] = []
    real_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def sleep(delay: float) -> None:
        delays.append(delay)
        on_sleep(delay)
        await real_sleep(0)

    monkeypatch.setattr(sync_wait, "asyncio", SimpleNamespace(sleep=sleep, CancelledError=asyncio.CancelledError))
    return delays


# -- serialisation ---------------------------------------------------------------------------------


def test_serialize_round_trips_through_classpath_and_json() -> None:
    trigger = PortfolioSyncTrigger(
        portfolio_id="pf-1",
        coinstats_conn_id="cs_conn",
        end_time=1_760_000_000.25,
        poll_interval=0.5,
        max_polls=7,
        hook_params={"max_retries": 2, "timeout": 5.0},
        started_at=1_759_999_000.5,
    )

    classpath, kwargs = trigger.serialize()

    assert classpath == CLASSPATH
    assert kwargs == {
        "portfolio_id": "pf-1",
        "coinstats_conn_id": "cs_conn",
        "end_time": 1_760_000_000.25,
        "poll_interval": 0.5,
        "max_polls": 7,
        "hook_params": {"max_retries": 2, "timeout": 5.0},
        "started_at": 1_759_999_000.5,  # a rebuilt trigger counts the polls made since then
    }
    # The triggerer stores the kwargs as JSON and rebuilds the trigger from the classpath.
    stored = json.loads(json.dumps(kwargs))
    module_name, _, class_name = classpath.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    assert cls is PortfolioSyncTrigger
    rebuilt = cls(**stored)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_serialize_defaults() -> None:
    classpath, kwargs = PortfolioSyncTrigger("pf-2", CONN_ID, end_time=5.0, poll_interval=1).serialize()

    assert classpath == CLASSPATH
    assert kwargs["max_polls"] is None
    assert kwargs["hook_params"] == {}
    assert kwargs["started_at"] is None
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert PortfolioSyncTrigger(**kwargs).serialize() == (classpath, kwargs)


# -- run(): the four event kinds -------------------------------------------------------------------


async def test_success_counts_polls_and_credits(sandbox: StartSandbox, logs: pytest.LogCaptureFixture) -> None:
    server = sandbox(sync_seconds=1.5)
    portfolio_id = connect()

    event = only_event(await run_trigger(make_trigger(portfolio_id, poll_interval=0.2)))

    assert event["status"] == "success"
    assert event["portfolio_id"] == portfolio_id
    assert event["polls"] >= 2  # still syncing at the first poll (0.2 s into a 1.5 s sync, even under load)
    assert event["polls"] == status_polls(server)
    assert event["credits_spent"] == event["polls"] * POLL_COST == event["polls"] * 3
    assert event["credits_spent"] == server.stats()["credits_by_path"][STATUS_ROUTE]
    assert "retryable" not in event
    assert f"Portfolio {portfolio_id} is synced" in event["message"]
    assert f"Portfolio {portfolio_id} still syncing (poll 1)" in logs.text
    assert_no_canary(event, logs.text)


async def test_first_poll_waits_one_interval(sandbox: StartSandbox) -> None:
    server = sandbox(sync_seconds=0.0)  # synced as soon as it is connected
    portfolio_id = connect()
    started = time.monotonic()

    event = only_event(await run_trigger(make_trigger(portfolio_id, poll_interval=0.3)))

    assert time.monotonic() - started >= 0.3
    assert event["status"] == "success"
    assert event["polls"] == status_polls(server) == 1
    assert event["credits_spent"] == 3


async def test_every_poll_is_preceded_by_a_sleep(sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    server = sandbox()
    portfolio_id = connect("stuck-secret")
    seen: list[int] = []
    delays = fake_asyncio(monkeypatch, lambda _delay: seen.append(status_polls(server)))

    event = only_event(await run_trigger(make_trigger(portfolio_id, poll_interval=0.4, max_polls=2)))

    assert event["status"] == "budget"
    assert delays == [0.4, 0.4, 0.4]
    assert seen == [0, 1, 2]  # no request before the first sleep; one request per interval


async def test_timeout_on_a_stuck_portfolio(sandbox: StartSandbox, logs: pytest.LogCaptureFixture) -> None:
    server = sandbox()
    portfolio_id = connect("stuck-secret")
    started = time.monotonic()

    event = only_event(await run_trigger(make_trigger(portfolio_id, timeout=1.0, poll_interval=0.2)))

    elapsed = time.monotonic() - started
    assert event["status"] == "timeout"
    assert 0.95 <= elapsed < 4.0
    assert 1 <= event["polls"] <= 6  # about 1 s / 0.2 s; fewer when the machine is slow
    assert event["polls"] == status_polls(server)
    assert event["credits_spent"] == 3 * event["polls"]
    assert "still syncing at the deadline" in event["message"]
    assert portfolio_id in event["message"]
    assert "still syncing (poll" in logs.text
    assert_no_canary(event, logs.text)


async def test_deadline_already_passed_polls_once_then_times_out(sandbox: StartSandbox) -> None:
    server = sandbox()
    portfolio_id = connect("stuck-secret")

    event = only_event(await run_trigger(make_trigger(portfolio_id, timeout=-5.0, poll_interval=30)))

    assert event["status"] == "timeout"
    assert event["polls"] == status_polls(server) == 1


async def test_a_cut_status_answer_is_a_charged_poll_and_is_not_asked_again_at_once(
    sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    """The trigger's side of the worker's retried-status test: polls are the answers CoinStats charged."""
    server = sandbox(sync_seconds=0.0)  # synced as soon as it is connected
    portfolio_id = connect()
    server.update(cut_routes=("/portfolio/status",), cut_count=1)  # the first status answer is cut on the wire
    sleeps = fake_asyncio(monkeypatch, lambda _delay: None)

    event = only_event(await run_trigger(make_trigger(portfolio_id, poll_interval=0.05)))

    assert event["status"] == "success"
    assert status_polls(server) == 2
    assert event["polls"] == 2
    assert event["credits_spent"] == 6 == server.stats()["credits_by_path"][STATUS_ROUTE]
    assert sleeps == [0.05, 0.05]  # the cut answer was charged: the next poll waits one interval
    assert f"status poll of portfolio {portfolio_id} with an unreadable body (charged)" in logs.text


async def test_budget_after_max_polls(sandbox: StartSandbox, logs: pytest.LogCaptureFixture) -> None:
    server = sandbox()
    portfolio_id = connect("stuck-secret")

    event = only_event(await run_trigger(make_trigger(portfolio_id, poll_interval=0.05, max_polls=1)))

    assert event["status"] == "budget"
    assert event["polls"] == 1
    assert event["credits_spent"] == 3
    assert status_polls(server) == 1  # the poll that would exceed the budget was not sent
    assert "would exceed the credit budget" in event["message"]
    assert_no_canary(event, logs.text)


async def test_budget_of_zero_polls_sends_nothing(sandbox: StartSandbox) -> None:
    server = sandbox()
    portfolio_id = connect("stuck-secret")

    event = only_event(await run_trigger(make_trigger(portfolio_id, poll_interval=0.05, max_polls=0)))

    assert (event["status"], event["polls"], event["credits_spent"]) == ("budget", 0, 0)
    assert status_polls(server) == 0


async def test_unknown_portfolio_is_a_non_retryable_error(
    sandbox: StartSandbox, logs: pytest.LogCaptureFixture
) -> None:
    server = sandbox()

    event = only_event(await run_trigger(make_trigger("no-such-portfolio")))

    assert event["status"] == "error"
    assert event["retryable"] is False
    assert "CoinStats API error 404" in event["message"]
    assert "does not exist for this API key" in event["message"]
    assert (event["polls"], event["credits_spent"]) == (0, 0)
    assert status_polls(server) == 1  # 404 is not retried
    assert_no_canary(event, logs.text)


async def test_persistent_503_is_a_retryable_error(sandbox: StartSandbox, logs: pytest.LogCaptureFixture) -> None:
    server = sandbox()
    portfolio_id = connect()
    server.update(fault_rate_5xx=1.0)

    event = only_event(await run_trigger(make_trigger(portfolio_id, hook_params={"max_retries": 0})))

    assert event["status"] == "error"
    assert event["retryable"] is True
    assert "CoinStats API error 50" in event["message"]
    assert (event["polls"], event["credits_spent"]) == (0, 0)
    assert status_polls(server) == 1  # max_retries 0 from hook_params overrides the connection's 2
    assert_no_canary(event, logs.text)


async def test_error_after_some_polls_counts_the_answered_ones(
    sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = sandbox()
    portfolio_id = connect("stuck-secret")

    def break_after_two(_delay: float) -> None:
        if status_polls(server) == 2:
            server.update(fault_rate_5xx=1.0)

    fake_asyncio(monkeypatch, break_after_two)

    event = only_event(await run_trigger(make_trigger(portfolio_id, hook_params={"max_retries": 0})))

    assert event["status"] == "error"
    assert event["retryable"] is True
    assert event["polls"] == 2
    assert event["credits_spent"] == 6


async def test_invalid_api_key_is_a_non_retryable_error_without_leaking_it(
    sandbox: StartSandbox, logs: pytest.LogCaptureFixture
) -> None:
    server = sandbox(password=CANARIES["exchange_key"])  # a key the sandbox does not accept

    event = only_event(await run_trigger(make_trigger("pf-any")))

    assert event["status"] == "error"
    assert event["retryable"] is False
    assert "CoinStats API error 401" in event["message"]
    assert status_polls(server) == 1  # a 401 is not retried
    assert_no_canary(event, logs.text)


async def test_invalid_connection_yields_an_error_event(
    monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    """A connection that fails validation in the triggerer still yields exactly one (non-retryable) event."""
    set_connection(monkeypatch, CONN_ID, conn_type="coinstats", host="http://127.0.0.1:9", extra={"timeout": 1})

    event = only_event(await run_trigger(make_trigger("pf-1", poll_interval=0.01)))

    assert event["status"] == "error"
    assert event["retryable"] is False
    assert "has no CoinStats API key" in event["message"]
    assert (event["polls"], event["credits_spent"]) == (0, 0)


async def test_missing_connection_yields_an_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection the triggerer cannot find ends the wait with one non-retryable event, not a crash."""
    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", raising=False)

    event = only_event(await run_trigger(make_trigger("pf-1", poll_interval=0.01)))

    assert event["status"] == "error"
    assert event["retryable"] is False
    assert f"The CoinStats connection '{CONN_ID}' is not defined" in event["message"]


async def test_cancellation_is_logged_and_propagated(sandbox: StartSandbox, logs: pytest.LogCaptureFixture) -> None:
    sandbox()
    portfolio_id = connect("stuck-secret")
    trigger = make_trigger(portfolio_id, poll_interval=30)
    task = asyncio.ensure_future(run_trigger(trigger))
    await asyncio.sleep(0.05)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert f"Stopped waiting for portfolio {portfolio_id} (trigger cancelled)" in logs.text
