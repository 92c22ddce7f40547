"""Unit tests of CoinStatsPortfolioSyncedSensor: poke, reschedule, deferrable, metering, soft_fail."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import responses
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.sensors.sync import DEFAULT_POKE_INTERVAL, UNSEEN_STATE_KEY, CoinStatsPortfolioSyncedSensor
from tests.conftest import BASE_URL
from tests.helpers.sandbox import sandboxes
from tests.unit.operators.test_connect import FakeTI
from tests.unit.test_bad_input_matrix import FakeTaskStateStore

STATUS_URL = BASE_URL + "/portfolio/status"


class RescheduleTI(FakeTI):
    def get_first_reschedule_date(self, context: Any) -> dt.datetime | None:
        return None


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def context(store: dict[str, Any] | None = None, ti: FakeTI | None = None) -> Any:
    return {"ti": ti or FakeTI(), "task_state_store": FakeTaskStateStore({} if store is None else store)}


def sensor(**kwargs: Any) -> CoinStatsPortfolioSyncedSensor:
    kwargs.setdefault("deferrable", False)
    kwargs.setdefault("poke_interval", 0.01)
    kwargs.setdefault("timeout", 5)
    return CoinStatsPortfolioSyncedSensor(task_id="wait", portfolio_id="pf-1", **kwargs)


def test_defaults_respect_the_poll_cost() -> None:
    made = CoinStatsPortfolioSyncedSensor(task_id="wait", portfolio_id="pf-1")
    assert made.poke_interval == DEFAULT_POKE_INTERVAL >= 300
    assert made.timeout == 7200
    assert made.mode == "poke"


def test_poke_mode_meters_every_poll(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    for status in ("syncing", "syncing", "synced"):
        rsps.get(STATUS_URL, json={"status": status})
    store: dict[str, Any] = {}
    ctx = context(store)

    sensor().execute(ctx)

    assert len(rsps.calls) == 3
    assert store == {"coinstats_credits_spent": 9}
    assert ctx["ti"].pushed[-1] == ("credits_spent", 9)


def test_reschedule_mode_keeps_the_count_across_pokes(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(STATUS_URL, json={"status": "syncing"})
    store: dict[str, Any] = {"coinstats_credits_spent": 6}  # two earlier pokes

    with pytest.raises(AirflowRescheduleException):
        sensor(mode="reschedule").execute(context(store, RescheduleTI()))

    assert store == {"coinstats_credits_spent": 9}


def test_budget_stops_polling(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(STATUS_URL, json={"status": "syncing"})
    store: dict[str, Any] = {}
    with pytest.raises(AirflowFailException, match="Credit budget used up"):
        sensor(credit_budget=6).execute(context(store))
    assert len(rsps.calls) == 2
    assert store == {"coinstats_credits_spent": 6}


def test_soft_fail_skips_on_timeout_and_on_errors(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(STATUS_URL, json={"status": "syncing"})
    with pytest.raises(AirflowSkipException):
        sensor(timeout=0.02, soft_fail=True).execute(context())
    with pytest.raises(AirflowSensorTimeout):
        sensor(timeout=0.02).execute(context())
    rsps.replace(responses.GET, STATUS_URL, status=404, json={"statusCode": 404, "message": "Portfolio not found"})
    with pytest.raises(AirflowSkipException):
        sensor(soft_fail=True).execute(context())


def test_deferrable_pokes_once_then_defers_against_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    with sandboxes(monkeypatch, "coinstats_default", max_retries=0) as start:
        server = start(sync_seconds=0.3)
        pid = CoinStatsHook().connect_wallet_portfolio("ethereum", "0x" + "12" * 20).portfolio_id  # starts a sync
        store: dict[str, Any] = {}
        made = CoinStatsPortfolioSyncedSensor(
            task_id="wait", portfolio_id=pid, deferrable=True, poke_interval=0.1, timeout=5, credit_budget=30
        )

        with pytest.raises(TaskDeferred) as deferred:
            made.execute(context(store))

        trigger = deferred.value.trigger
        classpath, kwargs = trigger.serialize()
        assert classpath == "coinstats_provider.triggers.sync.PortfolioSyncTrigger"
        assert (kwargs["portfolio_id"], kwargs["poll_interval"], kwargs["max_polls"]) == (pid, 0.1, 9)
        assert store == {"coinstats_credits_spent": 3}

        async def run() -> list[Any]:
            return [event async for event in trigger.run()]

        (event,) = asyncio.run(run())
        made.execute_complete(context(store), event.payload)

        assert event.payload["status"] == "success"
        polled = server.stats()["credits_by_path"]["GET /portfolio/status"]
        assert (
            store == {"coinstats_credits_spent": polled} == {"coinstats_credits_spent": 3 + 3 * event.payload["polls"]}
        )


def test_deferrable_already_synced_never_defers(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(STATUS_URL, json={"status": "synced"})
    sensor(deferrable=True).execute(context())
    assert len(rsps.calls) == 1


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"status": "timeout", "polls": 2, "message": "still syncing"}, AirflowSensorTimeout),
        ({"status": "budget", "polls": 2, "message": "no credits"}, AirflowFailException),
        ({"status": "error", "polls": 0, "message": "bad", "retryable": False}, AirflowFailException),
        ({"status": "weird"}, AirflowFailException),
    ],
)
def test_execute_complete_failures(event: dict[str, Any], error: type[Exception]) -> None:
    store: dict[str, Any] = {"coinstats_credits_spent": 3}
    with pytest.raises(error):
        sensor(deferrable=True).execute_complete(context(store), event)
    if event["status"] != "weird":
        assert store == {"coinstats_credits_spent": 3 + 3 * event["polls"]}


def test_polls_a_trigger_only_assumed_are_held_back_not_counted(
    coinstats_conn: Any, rsps: responses.RequestsMock
) -> None:
    store: dict[str, Any] = {"coinstats_credits_spent": 3}
    event = {"status": "error", "polls": 1, "earlier_polls_possible": 4, "message": "bad", "retryable": True}
    with pytest.raises(AirflowException):
        sensor(deferrable=True, credit_budget=30).execute_complete(context(store), event)
    # What CoinStats charged is counted; the four polls an earlier trigger may have made are held back.
    assert store == {"coinstats_credits_spent": 6, UNSEEN_STATE_KEY: 12}

    rsps.get(STATUS_URL, json={"status": "syncing"})
    with pytest.raises(TaskDeferred) as info:
        sensor(deferrable=True, credit_budget=30).execute(context(store))  # the retry
    assert store["coinstats_credits_spent"] == 9
    assert info.value.trigger.serialize()[1]["max_polls"] == (30 - 12 - 9) // 3 == 3


def test_soft_fail_skips_a_deferred_timeout() -> None:
    made = sensor(deferrable=True, soft_fail=True)
    event = {"status": "timeout", "polls": 1, "message": "still syncing"}
    with pytest.raises(AirflowSkipException):
        made.resume_execution("execute_complete", {"event": event}, context())


def test_tasks_are_labelled_by_account() -> None:
    from jinja2 import Environment

    pid = "66c19c585400000000000000"
    made = CoinStatsPortfolioSyncedSensor(task_id="wait", portfolio_id=pid, account="coinstats_exchange_binance")
    plain = CoinStatsPortfolioSyncedSensor(task_id="wait2", portfolio_id=pid)
    env = Environment(autoescape=True)
    assert env.from_string(made.map_index_template or "").render(task=made) == "coinstats_exchange_binance (66c19c58)"
    assert env.from_string(plain.map_index_template or "").render(task=plain) == pid
