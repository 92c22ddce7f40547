"""A task's credit budget holds across Airflow retries and triggerer restarts; deferral timeout; snapshot dates.

Each Airflow try of a task instance runs with the same task state store (simulated by one ``FakeStore``
shared by two ``execute`` calls); a rebuilt trigger is built from the kwargs ``serialize()`` returned.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from responses import matchers

from coinstats_provider import credits
from coinstats_provider.credits import POLL_COST, SYNC_COST, CreditMeter
from coinstats_provider.exceptions import CoinStatsCreditBudgetExceeded, CoinStatsServerError, CoinStatsSyncTimeoutError
from coinstats_provider.hooks import sync_wait
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.sync_wait import polls_possible
from coinstats_provider.operators import _common
from coinstats_provider.operators import connect as operators
from coinstats_provider.operators import load as load_operator
from coinstats_provider.operators import sync as sync_operator
from coinstats_provider.operators._common import CREDITS_STATE_KEY
from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator
from coinstats_provider.operators.load import LoadPortfolioOperator
from coinstats_provider.operators.sync import STATE_KEY, SyncPortfolioOperator, defer_timeout
from coinstats_provider.triggers import sync as triggers
from coinstats_provider.triggers.sync import PortfolioSyncTrigger
from include.coinstats_sandbox import SandboxServer
from tests.conftest import BASE_URL, SUPPORT, assert_no_canary, set_connection
from tests.helpers.sandbox import sandboxes

PID = "pf-1"
SUPPORT_URL = BASE_URL + "/exchange/support"
CONNECT_URL = BASE_URL + "/portfolio/exchange"
SYNC_URL = BASE_URL + "/portfolio/sync"
STATUS_URL = BASE_URL + "/portfolio/status"
VALUE_URL = BASE_URL + "/portfolio/value"
COINS_URL = BASE_URL + "/portfolio/coins"
CONNECTED = {"portfolioId": PID, "connectionId": "binance", "status": "connected"}
VALUE = {"totalValue": 1234.5, "totalCost": 1000, "unrealizedProfitLoss": 234.5}
SANDBOX_CONN = "coinstats_default"
STATUS_ROUTE = "GET /portfolio/status"


class FakeTI:
    """Records ``xcom_push`` calls."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, Any]] = []

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed.append((key, value))


class FakeStore:
    """Airflow's task state store: keys kept (as JSON) across the tries of one task instance."""

    def __init__(self, **values: Any) -> None:
        self.values: dict[str, Any] = dict(values)
        self.writes = 0

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(json.dumps(self.values[key])) if key in self.values else default

    def set(self, key: str, value: Any) -> None:
        self.writes += 1
        self.values[key] = json.loads(json.dumps(value))


def context(ti: FakeTI, store: FakeStore | None, **values: Any) -> Any:
    ctx: dict[str, Any] = {"ti": ti, **values}
    if store is not None:
        ctx["task_state_store"] = store
    return ctx


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def charged(mock: responses.RequestsMock, cost_by_path: dict[str, int]) -> int:
    """Credits CoinStats billed in ``mock``: the cost of every 2xx answer."""
    total = 0
    for call in mock.calls:
        status = getattr(call.response, "status_code", 0)
        if 200 <= status < 300:
            total += cost_by_path[call.request.path_url.split("?")[0]]
    return total


COSTS = {
    "/exchange/support": credits.SUPPORT_COST,
    "/portfolio/exchange": credits.CONNECT_COST,
    "/portfolio/sync": SYNC_COST,
    "/portfolio/status": POLL_COST,
    "/portfolio/value": credits.VALUE_COST,
    "/portfolio/coins": credits.COINS_PAGE_COST,
}


# -- cost constants --------------------------------------------------------------------------------


def test_costs_come_from_one_table() -> None:
    assert (credits.SUPPORT_COST, credits.CONNECT_COST, SYNC_COST, POLL_COST) == (1, 10, 30, 3)
    assert (credits.VALUE_COST, credits.COINS_PAGE_COST, credits.TRANSACTIONS_PAGE_COST) == (10, 8, 4)
    assert credits.credit_cost("PATCH", "/portfolio/sync", {"portfolioId": PID}) == SYNC_COST
    # The operators and the trigger use these constants instead of pricing made-up requests.
    assert sync_operator.SYNC_COST is SYNC_COST
    assert triggers.POLL_COST is POLL_COST
    for module in (sync_operator, triggers, operators, load_operator, _common, sync_wait):
        assert "credit_cost(" not in inspect.getsource(module), module.__name__


# -- CreditMeter.carry_over ------------------------------------------------------------------------


def test_meter_counts_earlier_tries_against_the_budget() -> None:
    totals: list[int] = []
    meter = CreditMeter(40)

    meter.carry_over(25, totals.append)
    meter.record("GET", "/portfolio/value", 10)

    assert (meter.spent, meter.earlier, meter.spent_this_try, meter.remaining) == (35, 25, 10, 5)
    assert totals == [35]
    with pytest.raises(CoinStatsCreditBudgetExceeded, match="25 of them by earlier tries"):
        meter.check("GET", "/portfolio/value", 10)


def test_meter_with_nothing_left_fails_naming_budget_spent_and_fix() -> None:
    with pytest.raises(CoinStatsCreditBudgetExceeded) as info:
        CreditMeter(36).carry_over(36, state_key="coinstats_sync")

    message = str(info.value)
    assert "spent 36 of its budget of 36 credits" in message
    assert "raise the budget" in message
    assert "coinstats_sync" in message
    assert not info.value.retryable


def test_carrying_over_again_replaces_the_earlier_figure_and_keeps_this_tries_spend() -> None:
    meter = CreditMeter(100)
    meter.record("GET", "/portfolio/value", 10)  # this try spent 10 before the state was read

    meter.carry_over(25)
    assert (meter.spent, meter.earlier, meter.spent_this_try) == (35, 25, 10)
    meter.carry_over(30)  # a later read of the state store: 30, not 25 + 30
    assert (meter.spent, meter.earlier, meter.spent_this_try) == (40, 30, 10)


def test_a_negative_earlier_figure_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^credits spent by earlier tries must be >= 0$"):
        CreditMeter(10).carry_over(-1)


def test_a_used_up_budget_names_the_default_state_key_and_how_to_go_on() -> None:
    with pytest.raises(CoinStatsCreditBudgetExceeded) as info:
        CreditMeter(10).carry_over(10)

    assert str(info.value) == (
        "Credit budget used up: earlier tries of this task spent 10 of its budget of 10 credits, so this try "
        "cannot send a paid request. Retrying cannot help: raise the budget (the DAG's credit budget Param or "
        "connection extra 'credit_budget') in a new DAG run, or delete the task state key "
        "'coinstats_credits_spent' of this task instance to grant it a fresh budget."
    )


def test_zero_budget_without_earlier_tries_is_left_to_the_call_check() -> None:
    meter = CreditMeter(0)
    meter.carry_over(0)  # nothing spent yet: the first call fails with the usual "budget exceeded"
    with pytest.raises(CoinStatsCreditBudgetExceeded, match="Credit budget exceeded"):
        meter.check("GET", "/portfolio/value", 10)


# -- connect ---------------------------------------------------------------------------------------


def test_connect_retry_only_spends_what_the_first_try_left(
    coinstats_conn: Any, exchange_conn: Callable[..., None], rsps: responses.RequestsMock
) -> None:
    # Budget 11: the support list and one connect. Each try pays for the support list (no cache).
    coinstats_conn(extra={"backoff_base": 0, "backoff_max": 0, "max_retries": 3, "support_cache_ttl": 0})
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, status=503, json={"message": "Service Unavailable"})
    store = FakeStore()

    def attempt() -> ConnectExchangePortfolioOperator:
        op = ConnectExchangePortfolioOperator(
            task_id="connect", exchange_conn_id="ex_binance", hook_params={"credit_budget": 11}
        )
        op.hook._sleep = lambda _s: None
        return op

    with pytest.raises(CoinStatsServerError):  # retryable: Airflow retries the task
        attempt().execute(context(FakeTI(), store))
    assert store.values[CREDITS_STATE_KEY] == 1  # the support list was paid

    with pytest.raises(AirflowFailException) as info:  # after the support list, 10 credits do not fit into 9
        attempt().execute(context(FakeTI(), store))

    assert "Credit budget exceeded" in str(info.value)
    assert "1 of them by earlier tries" in str(info.value)
    assert charged(rsps, COSTS) == 2 <= 11  # before: the retry had 11 of its own (1 + 1 + 10 = 12)
    assert store.values[CREDITS_STATE_KEY] == 2


def test_connect_credits_spent_xcom_covers_every_try(
    coinstats_conn: Any, exchange_conn: Callable[..., None], rsps: responses.RequestsMock
) -> None:
    exchange_conn("ex_binance")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.post(CONNECT_URL, json=CONNECTED)
    store = FakeStore(**{CREDITS_STATE_KEY: 21})  # two earlier tries connected, then failed
    ti = FakeTI()

    ConnectExchangePortfolioOperator(task_id="connect", exchange_conn_id="ex_binance").execute(context(ti, store))

    assert dict(ti.pushed)["credits_spent"] == 21 + 11
    assert store.values[CREDITS_STATE_KEY] == 32


# -- sync ------------------------------------------------------------------------------------------


def register_sync(rsps: responses.RequestsMock) -> None:
    rsps.patch(SYNC_URL, json={"success": True}, match=[matchers.query_param_matcher({"portfolioId": PID})])


class FakeClock:
    """Stands in for the ``time`` module of the sync operator and its wait loop: ``sleep`` advances ``time``."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(sync_operator, "time", fake)
    monkeypatch.setattr(sync_wait, "time", fake)  # the worker-side wait loop
    return fake


def test_sync_retry_does_not_exceed_the_budget_of_the_task_instance(
    coinstats_conn: Any, rsps: responses.RequestsMock, clock: FakeClock
) -> None:
    # Budget 39: the sync and three polls. Try 1 syncs, polls twice, then CoinStats fails with 503s.
    register_sync(rsps)
    rsps.get(STATUS_URL, json={"status": "syncing"})
    rsps.get(STATUS_URL, json={"status": "syncing"})
    rsps.get(STATUS_URL, status=503, json={"message": "Service Unavailable"})
    store = FakeStore()

    def attempt() -> SyncPortfolioOperator:
        op = SyncPortfolioOperator(
            task_id="sync", portfolio_id=PID, deferrable=False, poll_interval=10, sync_timeout=600, credit_budget=39
        )
        op.hook._sleep = lambda _s: None
        return op

    with pytest.raises(CoinStatsServerError):
        attempt().execute(context(FakeTI(), store))
    assert store.values[STATE_KEY]["credits"] == 36  # saved after every paid call, also on failure

    rsps.replace(responses.GET, STATUS_URL, json={"status": "syncing"})
    with pytest.raises(AirflowFailException, match="credit budget of 39 credits"):
        attempt().execute(context(FakeTI(), store))

    assert charged(rsps, COSTS) == 39  # before: a fresh allowance of 3 polls for the retry (45 credits)
    assert store.values[STATE_KEY]["credits"] == 39


def test_sync_retry_with_nothing_left_fails_fast_without_a_request(
    coinstats_conn: Any, rsps: responses.RequestsMock
) -> None:
    store = FakeStore(coinstats_sync={"portfolio_id": PID, "deadline": time.time() + 300, "credits": 36})

    with pytest.raises(AirflowFailException) as info:
        SyncPortfolioOperator(task_id="sync", portfolio_id=PID, credit_budget=36).execute(context(FakeTI(), store))

    message = str(info.value)
    assert "retrying cannot help" in message
    assert "spent 36 of its budget of 36 credits" in message
    assert "raise the budget" in message
    assert len(rsps.calls) == 0


def test_sync_retry_cannot_pay_for_a_new_sync_with_what_is_left(
    coinstats_conn: Any, rsps: responses.RequestsMock
) -> None:
    register_sync(rsps)
    # The earlier try's sync ran out of time after 33 credits; a second sync (30) does not fit into 39.
    store = FakeStore(coinstats_sync={"portfolio_id": PID, "deadline": 1.0, "credits": 33})

    with pytest.raises(AirflowFailException, match="Credit budget exceeded"):
        SyncPortfolioOperator(task_id="sync", portfolio_id=PID, credit_budget=39).execute(context(FakeTI(), store))

    assert len(rsps.calls) == 0


def test_deferred_retry_gives_the_trigger_only_the_polls_left(
    coinstats_conn: Any, rsps: responses.RequestsMock
) -> None:
    store = FakeStore(coinstats_sync={"portfolio_id": PID, "deadline": time.time() + 300, "credits": 45})
    ti = FakeTI()

    with pytest.raises(TaskDeferred) as info:
        SyncPortfolioOperator(task_id="sync", portfolio_id=PID, credit_budget=60).execute(context(ti, store))

    assert info.value.trigger.serialize()[1]["max_polls"] == (60 - 45) // POLL_COST == 5  # before: 10
    assert ti.pushed == [("credits_spent", 45)]
    assert len(rsps.calls) == 0


def test_a_wait_that_never_resumed_is_held_back_by_the_next_try_not_counted_as_spent(
    coinstats_conn: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    # Try 1 deferred 95 s ago (poll every 30 s) and never came back (deferral timeout, lost worker, or
    # Airflow's race on resumed deferred tasks, where the trigger fired and the resumed task never ran).
    now = time.time()
    wait = {"started_at": now - 95, "poll_interval": 30.0, "end_time": now + 300, "max_polls": 10}
    store = FakeStore(coinstats_sync={"portfolio_id": PID, "deadline": now + 300, "credits": 30, "wait": wait})
    ti = FakeTI()

    with pytest.raises(TaskDeferred) as info:
        SyncPortfolioOperator(task_id="sync", portfolio_id=PID, credit_budget=60).execute(context(ti, store))

    # Up to 3 polls in 95 s: kept from the budget, but nobody saw them charged, so not reported as spent.
    assert ti.pushed == [("credits_spent", 30)]
    assert info.value.trigger.serialize()[1]["max_polls"] == (60 - 30 - 3 * POLL_COST) // POLL_COST
    assert "holding back 9 credits of the budget for the 3 status polls" in logs.text
    assert store.values[STATE_KEY]["unseen"] == 3 * POLL_COST
    assert store.values[STATE_KEY]["credits"] == 30
    assert store.values[STATE_KEY]["wait"]["started_at"] >= now  # the new wait replaced the old one


def test_resumed_sync_counts_the_polls_once(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    register_sync(rsps)
    store = FakeStore()
    op = SyncPortfolioOperator(task_id="sync", portfolio_id=PID, credit_budget=90)
    with pytest.raises(TaskDeferred):
        op.execute(context(FakeTI(), store))
    assert store.values[STATE_KEY]["wait"]["max_polls"] == 20

    ti = FakeTI()
    result = op.execute_complete(context(ti, store), {"status": "success", "polls": 4})

    assert result["credits_spent"] == 30 + 4 * POLL_COST
    assert "wait" not in store.values[STATE_KEY]  # a later try does not estimate these polls again
    assert store.values[STATE_KEY]["credits"] == 42


def test_polls_a_trigger_only_assumed_are_held_back_from_the_budget_not_counted_as_spent(
    coinstats_conn: Any, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    register_sync(rsps)
    store = FakeStore()
    op = SyncPortfolioOperator(task_id="sync", portfolio_id=PID, credit_budget=90)
    with pytest.raises(TaskDeferred):
        op.execute(context(FakeTI(), store))

    # A late trigger (or one rebuilt after a restart) polled once; five earlier polls were possible.
    ti = FakeTI()
    event = {"status": "timeout", "polls": 1, "credits_spent": 3, "earlier_polls_possible": 5}
    with pytest.raises(CoinStatsSyncTimeoutError):
        op.execute_complete(context(ti, store), event)

    assert ti.pushed == [("credits_spent", 30 + POLL_COST)]  # what CoinStats charged, no phantom polls
    assert store.values[STATE_KEY]["credits"] == 33
    assert store.values[STATE_KEY]["unseen"] == 5 * POLL_COST

    # The retry reuses the sync; its trigger gets the polls left after the possible unseen ones.
    retry, retry_ti = SyncPortfolioOperator(task_id="sync", portfolio_id=PID, credit_budget=90), FakeTI()
    with pytest.raises(TaskDeferred) as info:
        retry.execute(context(retry_ti, store))
    assert retry_ti.pushed == [("credits_spent", 33)]
    assert info.value.trigger.serialize()[1]["max_polls"] == (90 - 33 - 15) // POLL_COST == 14
    assert "holding back 15 credits of the budget" in logs.text
    assert len([call for call in rsps.calls if "sync" in call.request.url]) == 1  # no second sync


# -- deferral timeout ------------------------------------------------------------------------------


def test_defer_timeout_is_the_time_to_the_deadline_plus_a_margin() -> None:
    assert defer_timeout(1000.0, 400.0) == dt.timedelta(seconds=600 + 300)  # at least 5 minutes
    assert defer_timeout(8200.0, 1000.0) == dt.timedelta(seconds=7200 + 720)  # or 10 % of the time left
    assert defer_timeout(10.0, 50.0) == dt.timedelta(seconds=300)  # deadline passed: the margin only


def test_deferral_has_a_timeout_so_a_missing_triggerer_fails_the_task(
    coinstats_conn: Any, rsps: responses.RequestsMock
) -> None:
    register_sync(rsps)

    with pytest.raises(TaskDeferred) as info:
        SyncPortfolioOperator(task_id="sync", portfolio_id=PID, sync_timeout=7200).execute(context(FakeTI(), None))

    kwargs = info.value.trigger.serialize()[1]
    assert info.value.timeout is not None  # before: None, a run waited forever without a triggerer
    left = kwargs["end_time"] - kwargs["started_at"]
    assert info.value.timeout == dt.timedelta(seconds=left + 0.1 * left)
    assert dt.timedelta(seconds=7200) < info.value.timeout < dt.timedelta(seconds=7930)


def test_retried_deferral_keeps_the_first_deadline(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    deadline = time.time() + 100
    store = FakeStore(coinstats_sync={"portfolio_id": PID, "deadline": deadline, "credits": 30})

    with pytest.raises(TaskDeferred) as info:
        SyncPortfolioOperator(task_id="sync", portfolio_id=PID, sync_timeout=3600).execute(context(FakeTI(), store))

    timeout = info.value.timeout
    assert timeout is not None
    assert dt.timedelta(seconds=395) < timeout <= dt.timedelta(seconds=400)


# -- load ------------------------------------------------------------------------------------------


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "warehouse.db"
    set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(path))
    return path


def coins_page(request: Any) -> tuple[int, dict[str, str], str]:
    """Pages of one coin: three full pages, then an empty one."""
    page = int(dict(p.split("=") for p in request.url.split("?")[1].split("&"))["page"])
    items = [
        {"count": 1, "coin": {"identifier": f"coin-{page}", "symbol": f"C{page}", "name": "c"}, "price": {"USD": 2}}
    ]
    return 200, {}, json.dumps({"result": items if page <= 3 else []})


def test_load_retry_does_not_exceed_the_budget(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    # Budget 20: two pages of coins. Try 1 pays for page 1, then page 2 keeps failing with 503.
    calls = {"n": 0}

    def flaky(request: Any) -> tuple[int, dict[str, str], str]:
        calls["n"] += 1
        if calls["n"] in (2, 3, 4, 5):
            return 503, {}, json.dumps({"message": "Service Unavailable"})
        return coins_page(request)

    rsps.add_callback(responses.GET, COINS_URL, callback=flaky)
    store = FakeStore()

    def attempt(ti: FakeTI) -> dict[str, Any]:
        op = LoadPortfolioOperator(
            task_id="load_coins", portfolio_id=PID, dataset="coins", page_size=1, credit_budget=20
        )
        op.hook._sleep = lambda _s: None
        result: dict[str, Any] = op.execute(context(ti, store, data_interval_end=dt.datetime.now(dt.UTC)))
        return result

    with pytest.raises(CoinStatsServerError):
        attempt(FakeTI())
    assert store.values[CREDITS_STATE_KEY] == 8

    ti = FakeTI()
    with pytest.raises(AirflowFailException, match="Credit budget exceeded"):
        attempt(ti)

    assert charged(rsps, COSTS) == 16 <= 20  # before: the retry had 20 of its own (8 + 16 = 24)
    assert ti.pushed == [("credits_spent", 16)]  # every try's credits
    assert store.values[CREDITS_STATE_KEY] == 16


def test_load_result_and_xcom_count_every_try(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    rsps.get(VALUE_URL, json=VALUE)
    store = FakeStore(**{CREDITS_STATE_KEY: 8})
    ti = FakeTI()

    result = LoadPortfolioOperator(task_id="load_value", portfolio_id=PID, dataset="value").execute(
        context(ti, store, data_interval_end=dt.datetime.now(dt.UTC))
    )

    assert result["credits_spent"] == 18
    assert ti.pushed == [("credits_spent", 18)]
    assert store.values[CREDITS_STATE_KEY] == 18


def test_load_retry_with_nothing_left_fails_fast(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    store = FakeStore(**{CREDITS_STATE_KEY: 20})

    with pytest.raises(AirflowFailException) as info:
        LoadPortfolioOperator(task_id="load_value", portfolio_id=PID, dataset="value", credit_budget=20).execute(
            context(FakeTI(), store)
        )

    assert "spent 20 of its budget of 20 credits" in str(info.value)
    assert "retrying cannot help" in str(info.value)
    assert len(rsps.calls) == 0


# -- snapshot date of an old run -------------------------------------------------------------------


def values_rows(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(
            "SELECT snapshot_date, total_value FROM coinstats_portfolio_values ORDER BY snapshot_date"
        ).fetchall()
    finally:
        db.close()


def test_clearing_an_old_run_does_not_overwrite_its_snapshot_with_todays_data(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    old = today - dt.timedelta(days=10)
    op = LoadPortfolioOperator(task_id="load_value", portfolio_id=PID, dataset="value")
    rsps.get(VALUE_URL, json={**VALUE, "totalValue": 500})
    op.execute(context(FakeTI(), None, data_interval_end=dt.datetime.combine(old, dt.time(), dt.UTC)))
    first = values_rows(warehouse)

    rsps.replace(responses.GET, VALUE_URL, json={**VALUE, "totalValue": 999})
    cleared = LoadPortfolioOperator(task_id="load_value", portfolio_id=PID, dataset="value")
    cleared.execute(context(FakeTI(), None, data_interval_end=dt.datetime.combine(old, dt.time(), dt.UTC)))

    stored = dict((day, float(value)) for day, value in values_rows(warehouse))
    assert old.isoformat() not in stored  # no row claims that 10 days ago the portfolio held today's value
    assert stored == {today.isoformat(): 999.0}
    assert [day for day, _ in first] == [today.isoformat()]
    assert f"This run is for {old}" in logs.text
    assert f"recorded under {today}" in logs.text


def test_snapshot_date_is_the_fetch_date_and_a_current_run_logs_nothing() -> None:
    warnings: list[str] = []

    class Log:
        def warning(self, message: str, *args: Any) -> None:
            warnings.append(message % args)

    now = dt.datetime(2026, 3, 1, 0, 5, tzinfo=dt.UTC)
    current = {"data_interval_end": dt.datetime(2026, 3, 1, tzinfo=dt.UTC)}
    old = {"data_interval_end": dt.datetime(2026, 2, 19, tzinfo=dt.UTC)}

    assert load_operator.snapshot_date(current, Log(), now=now) == dt.date(2026, 3, 1)  # type: ignore[arg-type]
    assert warnings == []
    assert load_operator.snapshot_date(old, Log(), now=now) == dt.date(2026, 3, 1)  # type: ignore[arg-type]
    assert len(warnings) == 1
    assert "This run is for 2026-02-19" in warnings[0]
    assert "recorded under 2026-03-01" in warnings[0]


# -- trigger: a rebuilt trigger gets no fresh allowance --------------------------------------------


def test_polls_possible_bounds_one_poll_per_interval_plus_the_deadline_poll() -> None:
    assert polls_possible(100.0, 10.0, 200.0, 100.0) == 0
    assert polls_possible(100.0, 10.0, 200.0, 109.9) == 0
    assert polls_possible(100.0, 10.0, 200.0, 135.0) == 3
    assert polls_possible(100.0, 10.0, 200.0, 205.0) == 11  # ten before the deadline and one at it
    assert polls_possible(100.0, 10.0, 200.0, 9e9) == 11


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., SandboxServer]]:
    with sandboxes(monkeypatch, SANDBOX_CONN, max_retries=2, sync_seconds=0.0) as start:
        yield start


def stuck_portfolio() -> str:
    """A sandbox portfolio that never finishes syncing."""
    hook = CoinStatsHook(SANDBOX_CONN)
    return hook.connect_exchange_portfolio("binance", {"apiKey": "k", "apiSecret": "stuck-secret"}).portfolio_id


def status_requests(server: SandboxServer) -> int:
    return int(server.stats()["requests"].get(STATUS_ROUTE, 0))


async def collect(trigger: PortfolioSyncTrigger, limit: float = 10.0) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return await asyncio.wait_for(run(), timeout=limit)


async def test_trigger_rebuilt_after_a_triggerer_restart_does_not_exceed_the_allowance(
    sandbox: Callable[..., SandboxServer],
) -> None:
    server = sandbox()
    portfolio_id = stuck_portfolio()
    first = PortfolioSyncTrigger(
        portfolio_id, SANDBOX_CONN, end_time=time.time() + 30, poll_interval=0.2, max_polls=5, started_at=time.time()
    )
    classpath, kwargs = first.serialize()
    task = asyncio.ensure_future(collect(first))
    while status_requests(server) < 3:  # the triggerer dies after three polls
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    rebuilt = PortfolioSyncTrigger(**json.loads(json.dumps(kwargs)))  # as the new triggerer process does
    (event,) = await collect(rebuilt)

    assert classpath.endswith("PortfolioSyncTrigger")
    assert event["status"] == "budget"
    assert status_requests(server) <= 5  # before: the rebuilt trigger polled 5 more times (8 in all)
    # The allowance assumed the lost trigger's polls; only the rebuilt one's charged polls are reported.
    assert event["polls"] + event["earlier_polls_possible"] == 5
    assert event["polls"] == status_requests(server) - 3
    assert event["credits_spent"] == event["polls"] * POLL_COST
    assert_no_canary(event)


async def test_trigger_rebuilt_after_the_deadline_does_not_poll(sandbox: Callable[..., SandboxServer]) -> None:
    server = sandbox()
    portfolio_id = stuck_portfolio()
    now = time.time()

    rebuilt = PortfolioSyncTrigger(
        portfolio_id, SANDBOX_CONN, end_time=now - 1, poll_interval=10, max_polls=50, started_at=now - 61
    )
    (event,) = await collect(rebuilt)

    assert event["status"] == "timeout"
    assert event["earlier_polls_possible"] == 7  # six intervals before the deadline and the deadline poll
    assert (event["polls"], event["credits_spent"]) == (0, 0)  # assumed, never reported as spent
    assert status_requests(server) == 0


async def test_trigger_pays_once_per_poll_for_unreadable_answers(sandbox: Callable[..., SandboxServer]) -> None:
    server = sandbox()
    portfolio_id = stuck_portfolio()
    server.update(fault_rate_truncate=1.0)  # every answer: 200 with half a JSON body (charged)

    trigger = PortfolioSyncTrigger(
        portfolio_id, SANDBOX_CONN, end_time=time.time() + 30, poll_interval=0.05, max_polls=3, started_at=time.time()
    )
    (event,) = await collect(trigger)

    assert event["status"] == "budget"
    assert event["polls"] == status_requests(server) == 3  # before: 3 charged answers in the first poll
    assert event["credits_spent"] == server.stats()["credits_by_path"][STATUS_ROUTE] == 9
