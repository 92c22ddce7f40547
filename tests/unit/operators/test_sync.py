"""Unit tests of SyncPortfolioOperator: execute with a fake context, HTTP mocked with ``responses``."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from responses import matchers

from coinstats_provider.exceptions import CoinStatsError, CoinStatsServerError, CoinStatsSyncTimeoutError
from coinstats_provider.hooks import sync_wait
from coinstats_provider.operators import sync as sync_operator
from coinstats_provider.operators._common import as_bool
from coinstats_provider.operators.sync import SYNC_COST, SyncPortfolioOperator
from coinstats_provider.triggers.sync import POLL_COST, PortfolioSyncTrigger
from tests.conftest import BASE_URL, CANARIES, assert_no_canary

SYNC_URL = BASE_URL + "/portfolio/sync"
STATUS_URL = BASE_URL + "/portfolio/status"
PID = "pf-1"
SYNCING = {"status": "syncing"}
SYNCED = {"status": "synced"}


class FakeTI:
    """Records ``xcom_push`` calls."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, Any]] = []

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed.append((key, value))


class FakeClock:
    """Stands in for the ``time`` module of the operator and its wait loop: ``sleep`` advances ``time``."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(sync_operator, "time", fake)
    monkeypatch.setattr(sync_wait, "time", fake)  # the worker-side wait loop
    return fake


def make_operator(**kwargs: Any) -> SyncPortfolioOperator:
    kwargs.setdefault("task_id", "sync")
    kwargs.setdefault("portfolio_id", PID)
    return SyncPortfolioOperator(**kwargs)


class FakeStore:
    """Airflow's task state store: keys kept across the tries of one task instance."""

    def __init__(self, **values: Any) -> None:
        self.values: dict[str, Any] = dict(values)

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(json.dumps(self.values[key])) if key in self.values else default

    def set(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))  # stored as JSON, like the metadata DB


def context(ti: FakeTI, store: FakeStore | None = None) -> Any:
    return {"ti": ti} if store is None else {"ti": ti, "task_state_store": store}


def register_sync(rsps: responses.RequestsMock, status: int = 200, body: Any = None) -> None:
    rsps.patch(
        SYNC_URL,
        status=status,
        json={"success": True} if body is None else body,
        match=[matchers.query_param_matcher({"portfolioId": PID})],
    )


def register_statuses(rsps: responses.RequestsMock, *bodies: dict[str, Any]) -> None:
    """Status answers in order; the last one repeats."""
    for body in bodies:
        rsps.get(STATUS_URL, json=body, match=[matchers.query_param_matcher({"portfolioId": PID})])


def methods(rsps: responses.RequestsMock) -> list[str]:
    return [str(call.request.method) for call in rsps.calls]


# -- deferrable (default) --------------------------------------------------------------------------


def test_execute_starts_the_sync_and_defers(
    coinstats_conn: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    register_sync(rsps)
    op = make_operator(sync_timeout=600, poll_interval=15, credit_budget=90, hook_params={"timeout": 7})
    ti = FakeTI()
    before = time.time()

    with pytest.raises(TaskDeferred) as info:
        op.execute(context(ti))

    after = time.time()
    assert len(rsps.calls) == 1
    request = rsps.calls[0].request
    assert request.method == "PATCH"
    assert dict(parse_qsl(urlsplit(str(request.url)).query)) == {"portfolioId": PID}
    deferred = info.value
    assert deferred.method_name == "execute_complete"
    trigger = deferred.trigger
    assert isinstance(trigger, PortfolioSyncTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "coinstats_provider.triggers.sync.PortfolioSyncTrigger"
    end_time, started_at = kwargs.pop("end_time"), kwargs.pop("started_at")
    assert before + 600 <= end_time <= after + 600
    assert before <= started_at <= after
    # The trigger reports the deadline; Airflow's timeout (deadline + 5 min) only fires without a triggerer.
    assert deferred.timeout == dt.timedelta(seconds=end_time - started_at + 300)
    assert kwargs == {
        "portfolio_id": PID,
        "coinstats_conn_id": "coinstats_default",
        "poll_interval": 15.0,
        "max_polls": (90 - SYNC_COST) // POLL_COST,
        "hook_params": {"timeout": 7},
    }
    assert kwargs["max_polls"] == 20
    json.dumps(trigger.serialize()[1])
    assert ti.pushed == [("credits_spent", SYNC_COST)]
    assert f"Started CoinStats sync of portfolio {PID} (30 credits)" in logs.text
    assert_no_canary(logs.text, trigger.serialize())


def test_without_budget_the_trigger_has_no_poll_limit(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    register_sync(rsps)

    with pytest.raises(TaskDeferred) as info:
        make_operator().execute(context(FakeTI()))

    kwargs = info.value.trigger.serialize()[1]
    assert kwargs["max_polls"] is None
    assert kwargs["poll_interval"] == 30.0
    assert kwargs["hook_params"] == {}


def test_rendered_template_strings_are_accepted(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    register_sync(rsps)
    op = make_operator(sync_timeout="120", poll_interval="0.5", credit_budget="45", deferrable="True")
    before = time.time()

    with pytest.raises(TaskDeferred) as info:
        op.execute(context(FakeTI()))

    kwargs = info.value.trigger.serialize()[1]
    assert kwargs["poll_interval"] == 0.5
    assert kwargs["max_polls"] == 5
    assert before + 120 <= kwargs["end_time"] <= time.time() + 120


def test_template_fields() -> None:
    assert tuple(SyncPortfolioOperator.template_fields) == (
        "portfolio_id",
        "coinstats_conn_id",
        "sync_timeout",
        "poll_interval",
        "credit_budget",
        "deferrable",
        "account",
    )


def test_templates_render_from_params() -> None:
    op = make_operator(
        portfolio_id="{{ params.pid }}",
        sync_timeout="{{ params.minutes * 60 }}",
        poll_interval="{{ params.poll }}",
        deferrable="{{ params.deferrable }}",
    )

    op.render_template_fields({"params": {"pid": "pf-9", "minutes": 2, "poll": 5, "deferrable": False}})

    assert (op.portfolio_id, op.sync_timeout, op.poll_interval, op.deferrable) == ("pf-9", "120", "5", "False")
    assert as_bool(op.deferrable) is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("True", True),
        ("false", False),
        ("False", False),
        (" yes ", True),
        ("0", False),
        ("1", True),
        ("on", True),
        (" ON ", True),
        ("off", False),
    ],
)
def test_as_bool(value: Any, expected: bool) -> None:
    assert as_bool(value) is expected


# -- polling on the worker -------------------------------------------------------------------------


@pytest.mark.parametrize("deferrable", [False, "False"])
def test_worker_polls_until_synced(
    coinstats_conn: Any, rsps: responses.RequestsMock, clock: FakeClock, deferrable: bool | str
) -> None:
    register_sync(rsps)
    register_statuses(rsps, SYNCING, SYNCING, SYNCED)
    op = make_operator(deferrable=deferrable, poll_interval=10, sync_timeout=600)
    ti = FakeTI()

    result = op.execute(context(ti))

    assert result == {"portfolio_id": PID, "polls": 3, "credits_spent": 30 + 3 * 3}
    assert methods(rsps) == ["PATCH", "GET", "GET", "GET"]
    assert clock.sleeps == [10.0, 10.0, 10.0]  # one interval before every poll, the first included
    assert ti.pushed == [("credits_spent", 30), ("credits_spent", 39)]


def test_worker_counts_every_charged_status_answer(
    coinstats_conn: Any, rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    # A truncated 200 is charged by CoinStats and retried: two charged answers for one poll.
    register_sync(rsps)
    rsps.get(STATUS_URL, body='{"stat', content_type="application/json")
    register_statuses(rsps, SYNCED)
    ti = FakeTI()

    result = make_operator(deferrable=False, poll_interval=10).execute(context(ti))

    assert methods(rsps) == ["PATCH", "GET", "GET"]
    assert result == {"portfolio_id": PID, "polls": 2, "credits_spent": 30 + 2 * 3}


def test_worker_times_out(coinstats_conn: Any, rsps: responses.RequestsMock, clock: FakeClock) -> None:
    register_sync(rsps)
    register_statuses(rsps, SYNCING)
    op = make_operator(deferrable=False, poll_interval=0.3, sync_timeout=1)
    ti = FakeTI()

    with pytest.raises(AirflowFailException) as info:
        op.execute(context(ti))

    assert clock.sleeps == pytest.approx([0.3, 0.3, 0.3, 0.1], abs=1e-6)  # the last sleep ends at the deadline
    assert methods(rsps) == ["PATCH"] + ["GET"] * 4
    assert "did not finish within 1 s" in str(info.value)
    assert "Raise the sync timeout" in str(info.value)
    assert ti.pushed[-1] == ("credits_spent", 30 + 4 * 3)


def test_worker_stops_at_the_credit_budget(coinstats_conn: Any, rsps: responses.RequestsMock, clock: FakeClock) -> None:
    register_sync(rsps)
    register_statuses(rsps, SYNCING)
    op = make_operator(deferrable=False, poll_interval=1, credit_budget=36)  # the sync and two polls

    with pytest.raises(AirflowFailException, match="credit budget of 36 credits"):
        op.execute(context(FakeTI()))

    assert methods(rsps) == ["PATCH", "GET", "GET"]


def test_worker_404_fails_fast(coinstats_conn: Any, rsps: responses.RequestsMock, clock: FakeClock) -> None:
    register_sync(rsps)
    rsps.get(STATUS_URL, status=404, json={"message": "Portfolio not found"})

    with pytest.raises(AirflowFailException, match="Waiting for the sync of portfolio pf-1 failed"):
        make_operator(deferrable=False).execute(context(FakeTI()))

    assert methods(rsps) == ["PATCH", "GET"]


def test_worker_persistent_503_is_left_to_airflow_retries(
    coinstats_conn: Any, rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    register_sync(rsps)
    rsps.get(STATUS_URL, status=503, json={"message": "Service Unavailable"})

    with pytest.raises(CoinStatsServerError) as info:
        make_operator(deferrable=False).execute(context(FakeTI()))

    assert not isinstance(info.value, AirflowFailException)
    assert methods(rsps) == ["PATCH"] + ["GET"] * 4  # the connection allows 3 retries


# -- execute_complete ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [None, {}, {"status": "paused", "polls": 1}, {"polls": 2, "message": "no status"}, "success"],
    ids=["none", "empty", "unknown-status", "missing-status", "not-a-dict"],
)
def test_invalid_event_fails_fast(event: Any) -> None:
    ti = FakeTI()

    with pytest.raises(AirflowFailException) as info:
        make_operator().execute_complete(context(ti), event)

    # A broken trigger event is a bug: a retry would only pay for another sync.
    assert "Invalid event from the portfolio sync trigger" in str(info.value)
    assert str(event)[:20] in str(info.value)
    assert ti.pushed == []


def test_success_event_returns_the_summary(logs: pytest.LogCaptureFixture) -> None:
    ti = FakeTI()

    result = make_operator().execute_complete(context(ti), {"status": "success", "polls": 4, "message": ""})

    assert result == {"portfolio_id": PID, "polls": 4, "credits_spent": 42}
    assert ti.pushed == [("credits_spent", 42)]
    assert "credits spent by this task: 42 (30 before this wait + 4 status polls)" in logs.text


def test_success_event_without_polls_counts_zero() -> None:
    result = make_operator().execute_complete(context(FakeTI()), {"status": "success", "polls": None})

    assert result == {"portfolio_id": PID, "polls": 0, "credits_spent": 30}


def test_timeout_event_fails_naming_the_timeout_and_the_fix() -> None:
    ti = FakeTI()

    with pytest.raises(AirflowFailException) as info:
        make_operator(sync_timeout=1800).execute_complete(context(ti), {"status": "timeout", "polls": 60})

    message = str(info.value)
    assert f"sync of portfolio {PID} did not finish within 1800 s" in message
    assert "60 status polls" in message
    assert "Raise the sync timeout" in message
    assert "sync_timeout_minutes" in message
    assert ti.pushed == [("credits_spent", 30 + 60 * 3)]


@pytest.mark.parametrize("where", ["triggerer", "worker"])
def test_timeout_raises_the_provider_timeout_error_directly(
    coinstats_conn: Any, rsps: responses.RequestsMock, clock: FakeClock, where: str
) -> None:
    register_sync(rsps)
    register_statuses(rsps, SYNCING)

    def finish() -> Any:
        if where == "triggerer":
            return make_operator(sync_timeout=60).execute_complete(context(FakeTI()), {"status": "timeout", "polls": 1})
        # On the worker: polls at 30 s and at the 60 s deadline.
        return make_operator(deferrable=False, poll_interval=30, sync_timeout=60).execute(context(FakeTI()))

    with pytest.raises(CoinStatsSyncTimeoutError) as info:
        finish()

    # Both a provider error and a fail-fast one (no Airflow retry); before, a plain AirflowFailException.
    assert isinstance(info.value, CoinStatsError)
    assert isinstance(info.value, AirflowFailException)
    polls = "1 status poll" if where == "triggerer" else "2 status polls"
    assert str(info.value) == (
        f"CoinStats sync of portfolio {PID} did not finish within 60 s ({polls}). "
        "Raise the sync timeout (Param sync_timeout_minutes) or check the account in CoinStats."
    )


def test_budget_event_fails() -> None:
    ti = FakeTI()

    with pytest.raises(AirflowFailException) as info:
        make_operator(credit_budget=60).execute_complete(context(ti), {"status": "budget", "polls": 10})

    assert "would exceed the credit budget of 60 credits (60 spent)" in str(info.value)
    assert "Raise the budget or the poll interval" in str(info.value)
    assert ti.pushed == [("credits_spent", 60)]


def test_retryable_error_event_is_left_to_airflow_retries() -> None:
    event = {"status": "error", "polls": 2, "message": "CoinStats API error 503", "retryable": True}

    with pytest.raises(AirflowException) as info:
        make_operator().execute_complete(context(FakeTI()), event)

    assert type(info.value) is AirflowException
    assert "Waiting for the sync of portfolio pf-1 failed: CoinStats API error 503" in str(info.value)


@pytest.mark.parametrize("retryable", [False, None])
def test_non_retryable_error_event_fails_fast(retryable: bool | None) -> None:
    event: dict[str, Any] = {"status": "error", "polls": 0, "message": "CoinStats API error 404"}
    if retryable is not None:
        event["retryable"] = retryable
    ti = FakeTI()

    with pytest.raises(AirflowFailException, match="failed: CoinStats API error 404"):
        make_operator().execute_complete(context(ti), event)

    assert ti.pushed == [("credits_spent", 30)]


# -- retries: the sync an earlier try started is kept in the task state store ---------------------


def test_first_try_records_the_sync_in_the_task_state_store(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    register_sync(rsps)
    store = FakeStore()
    before = time.time()

    with pytest.raises(TaskDeferred) as info:
        make_operator(sync_timeout=600).execute(context(FakeTI(), store))

    state = store.values[sync_operator.STATE_KEY]
    assert state["portfolio_id"] == PID
    assert state["credits"] == SYNC_COST
    assert state["deadline"] == info.value.trigger.serialize()[1]["end_time"]
    assert before + 600 <= state["deadline"] <= time.time() + 600


def test_retry_waits_for_the_running_sync_instead_of_paying_for_another(
    coinstats_conn: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    deadline = time.time() + 300
    store = FakeStore(coinstats_sync={"portfolio_id": PID, "deadline": deadline, "credits": 36})
    ti = FakeTI()

    with pytest.raises(TaskDeferred) as info:
        make_operator(sync_timeout=600).execute(context(ti, store))

    assert len(rsps.calls) == 0  # no second PATCH: 30 credits saved
    assert info.value.trigger.serialize()[1]["end_time"] == deadline  # the first try's deadline still holds
    assert ti.pushed == [("credits_spent", 36)]
    assert "waiting for that sync instead of paying 30 credits for another" in logs.text


def test_retry_on_the_worker_polls_without_a_second_sync(
    coinstats_conn: Any, rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    register_statuses(rsps, SYNCING, SYNCED)
    store = FakeStore(coinstats_sync={"portfolio_id": PID, "deadline": clock.now + 100, "credits": 30})
    ti = FakeTI()

    result = make_operator(deferrable=False, poll_interval=10).execute(context(ti, store))

    assert methods(rsps) == ["GET", "GET"]
    assert result == {"portfolio_id": PID, "polls": 2, "credits_spent": 36}
    assert store.values["coinstats_sync"]["credits"] == 36  # a further retry adds to the total
    assert ti.pushed == [("credits_spent", 30), ("credits_spent", 36)]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        # the earlier sync's deadline has passed: a new sync, its credits added to the earlier tries'
        ({"portfolio_id": PID, "deadline": 1.0, "credits": 33}, 33 + SYNC_COST),
        # another sync cannot be reused, but what earlier tries spent still counts against the budget
        ({"portfolio_id": "pf-other", "deadline": 9e12, "credits": 33}, 33 + SYNC_COST),  # re-rendered portfolio id
        ({"portfolio_id": PID, "deadline": "soon", "credits": 33}, 33 + SYNC_COST),
        ("not-a-dict", SYNC_COST),
    ],
    ids=["expired", "other-portfolio", "unreadable", "not-a-dict"],
)
def test_retry_starts_a_new_sync_when_the_earlier_one_cannot_be_reused(
    coinstats_conn: Any, rsps: responses.RequestsMock, state: Any, expected: int
) -> None:
    register_sync(rsps)
    store = FakeStore(coinstats_sync=state)
    ti = FakeTI()

    with pytest.raises(TaskDeferred):
        make_operator().execute(context(ti, store))

    assert methods(rsps) == ["PATCH"]
    assert ti.pushed == [("credits_spent", expected)]
    assert store.values["coinstats_sync"]["credits"] == expected


def test_execute_complete_adds_the_polls_to_the_credits_of_all_tries() -> None:
    store = FakeStore(coinstats_sync={"portfolio_id": PID, "deadline": 9e12, "credits": 60})
    ti = FakeTI()

    result = make_operator().execute_complete(context(ti, store), {"status": "success", "polls": 2})

    assert result == {"portfolio_id": PID, "polls": 2, "credits_spent": 66}
    assert ti.pushed == [("credits_spent", 66)]
    assert store.values["coinstats_sync"]["credits"] == 66


# -- failures before waiting -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"message": f"Exchange rejected {CANARIES['api_key']}"}, "CoinStats API error 401"),
        (404, {"message": "Portfolio not found"}, "does not exist for this API key"),
        (406, {"message": "Not enough credits"}, "no credits left"),
    ],
)
def test_sync_rejected_fails_fast_with_one_request(
    coinstats_conn: Any,
    rsps: responses.RequestsMock,
    logs: pytest.LogCaptureFixture,
    status: int,
    body: dict[str, Any],
    expected: str,
) -> None:
    register_sync(rsps, status=status, body=body)
    ti = FakeTI()

    with pytest.raises(AirflowFailException) as info:
        make_operator().execute(context(ti))

    assert len(rsps.calls) == 1
    message = str(info.value)
    assert f"Starting the sync of portfolio {PID} failed and retrying cannot help" in message
    assert expected in message
    assert ti.pushed == []
    assert_no_canary(message, logs.text)


def test_budget_below_one_sync_fails_without_a_request(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    with pytest.raises(AirflowFailException, match="Credit budget exceeded"):
        make_operator(credit_budget=20).execute(context(FakeTI()))

    assert len(rsps.calls) == 0


@pytest.mark.parametrize(
    ("sync_timeout", "poll_interval", "expected"),
    [
        ("abc", 30, "must be numbers of seconds"),
        (None, 30, "must be numbers of seconds"),
        (600, "often", "must be numbers of seconds"),
        (0, 30, "must be positive"),
        (-60, 30, "must be positive"),
        (600, 0, "must be positive"),
        (600, "-1", "must be positive"),
    ],
)
def test_invalid_numbers_fail_before_any_request(
    coinstats_conn: Any, rsps: responses.RequestsMock, sync_timeout: Any, poll_interval: Any, expected: str
) -> None:
    ti = FakeTI()

    with pytest.raises(AirflowFailException, match=expected):
        make_operator(sync_timeout=sync_timeout, poll_interval=poll_interval).execute(context(ti))

    assert len(rsps.calls) == 0
    assert ti.pushed == []


def test_on_kill_logs(logs: pytest.LogCaptureFixture) -> None:
    make_operator().on_kill()

    assert "CoinStats finishes that sync on its own" in logs.text


@pytest.mark.parametrize(("configured", "expected"), [("False", False), ("True", True)])
def test_deferrable_defaults_to_airflows_default_deferrable(
    monkeypatch: pytest.MonkeyPatch, configured: str, expected: bool
) -> None:
    """Like Airflow's providers: without a triggerer (default_deferrable false) the wait runs on the worker."""
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", configured)
    assert SyncPortfolioOperator(task_id="sync", portfolio_id=PID).deferrable is expected
    assert SyncPortfolioOperator(task_id="sync", portfolio_id=PID, deferrable=True).deferrable is True
