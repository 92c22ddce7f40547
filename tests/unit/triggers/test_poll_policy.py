"""One poll policy for the worker and the triggerer: ``next_step`` and the two loops around it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from coinstats_provider.credits import POLL_COST, CreditMeter
from coinstats_provider.exceptions import CoinStatsCreditBudgetExceeded, CoinStatsNotFoundError
from coinstats_provider.hooks import sync_wait
from coinstats_provider.hooks.sync_wait import (
    Action,
    Phase,
    SyncWaitResult,
    WaitStep,
    await_sync,
    next_step,
    wait_for_sync,
)
from coinstats_provider.models import SyncStatus
from include.coinstats_sandbox import SandboxServer
from tests.helpers.sandbox import sandboxes

SYNCING, SYNCED = SyncStatus.SYNCING, SyncStatus.SYNCED
CONN_ID = "coinstats_default"


def step(phase: Phase, now: float = 0.0, **kwargs: Any) -> WaitStep:
    kwargs.setdefault("deadline", 100.0)
    kwargs.setdefault("poll_interval", 30.0)
    kwargs.setdefault("polls", 0)
    kwargs.setdefault("max_polls", None)
    kwargs.setdefault("last_status", None)
    return next_step(phase, now=now, **kwargs)


# -- next_step -------------------------------------------------------------------------------------


def test_a_wait_starts_with_one_interval() -> None:
    assert step(Phase.START) == WaitStep(Action.WAIT, 30.0)
    assert step(Phase.RESUME, now=10.0) == WaitStep(Action.WAIT, 30.0)


def test_the_last_wait_ends_at_the_deadline() -> None:
    assert step(Phase.POLLED, now=90.0, last_status=SYNCING) == WaitStep(Action.WAIT, 10.0)


def test_a_start_after_the_deadline_polls_once_but_a_resumed_wait_does_not() -> None:
    assert step(Phase.START, now=150.0) == WaitStep(Action.WAIT, 0.0)  # then the deadline poll
    assert step(Phase.RESUME, now=150.0) == WaitStep(Action.TIMEOUT)  # its deadline poll counts as made


def test_after_a_wait_the_allowance_decides_whether_to_poll() -> None:
    assert step(Phase.WAITED, polls=4, max_polls=5) == WaitStep(Action.POLL)
    assert step(Phase.WAITED, polls=5, max_polls=5) == WaitStep(Action.BUDGET)
    assert step(Phase.WAITED, polls=0, max_polls=0) == WaitStep(Action.BUDGET)
    assert step(Phase.WAITED, polls=10_000, max_polls=None) == WaitStep(Action.POLL)
    assert step(Phase.WAITED, now=500.0, polls=1) == WaitStep(Action.POLL)  # the deadline poll


def test_after_a_poll_synced_wins_over_the_deadline() -> None:
    assert step(Phase.POLLED, now=150.0, last_status=SYNCED) == WaitStep(Action.SUCCESS)
    assert step(Phase.POLLED, now=150.0, last_status=SYNCING) == WaitStep(Action.TIMEOUT)
    assert step(Phase.POLLED, now=100.0, last_status=None) == WaitStep(Action.TIMEOUT)  # unreadable at the deadline
    assert step(Phase.POLLED, now=50.0, last_status=None) == WaitStep(Action.WAIT, 30.0)


# -- the worker loop and the trigger loop take the same steps -------------------------------------


class ScriptedHook:
    """A hook whose status answers follow a script; every answer is charged like CoinStats does."""

    def __init__(self, clock: SimpleNamespace, statuses: list[SyncStatus], spent: int = 0) -> None:
        self.clock = clock
        self.statuses = list(statuses)
        self.credits = CreditMeter()
        self.credits.spent = spent
        self.log = SimpleNamespace(info=lambda *_a: None, warning=lambda *_a: None)
        self.asked_at: list[float] = []
        self.resolved = False

    @property
    def credits_spent(self) -> int:
        return self.credits.spent

    def get_portfolio_sync_status(self, portfolio_id: str) -> SyncStatus:
        assert portfolio_id == "pf-1"
        self.credits.check("GET", "/portfolio/status", POLL_COST)
        self.asked_at.append(self.clock.now)
        self.credits.record("GET", "/portfolio/status", POLL_COST)
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    async def aget_portfolio_sync_status(self, portfolio_id: str) -> SyncStatus:
        assert self.resolved, "the connection must be resolved with the async lookup first"
        return self.get_portfolio_sync_status(portfolio_id)

    async def asettings(self) -> None:
        self.resolved = True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A fake clock for both loops: every sleep advances it and is recorded."""
    fake = SimpleNamespace(now=1_000.0, sleeps=[])

    def sleep(seconds: float) -> None:
        fake.sleeps.append(seconds)
        fake.now += seconds

    async def asleep(seconds: float) -> None:
        sleep(seconds)

    monkeypatch.setattr(sync_wait, "time", SimpleNamespace(time=lambda: fake.now, sleep=sleep))
    monkeypatch.setattr(sync_wait, "asyncio", SimpleNamespace(sleep=asleep))
    return fake


def both_loops(
    clock: SimpleNamespace, statuses: list[SyncStatus], **kwargs: Any
) -> list[tuple[SyncWaitResult, list[float], list[float]]]:
    """Run the worker loop, then the trigger loop, from the same start; each result with its sleeps and polls."""
    runs = []
    for run in (
        lambda hook: wait_for_sync(hook, "pf-1", **kwargs),
        lambda hook: asyncio.run(await_sync(hook, "pf-1", **kwargs)),
    ):
        clock.now, clock.sleeps = 1_000.0, []
        hook = ScriptedHook(clock, statuses, spent=30)  # the sync already paid: polls start at 0
        runs.append((run(hook), clock.sleeps, hook.asked_at))
    return runs


@pytest.mark.parametrize(
    ("statuses", "kwargs", "expected"),
    [
        ([SYNCING, SYNCING, SYNCED], {}, SyncWaitResult(Action.SUCCESS, 3, 3)),
        ([SYNCING], {}, SyncWaitResult(Action.TIMEOUT, 4, 4)),  # 30, 60, 90 and the deadline poll at 100
        ([SYNCING], {"max_polls": 2}, SyncWaitResult(Action.BUDGET, 2, 2)),
        ([SYNCING], {"max_polls": 0}, SyncWaitResult(Action.BUDGET, 0, 0)),
    ],
    ids=["success", "timeout", "budget", "no-allowance"],
)
def test_worker_and_trigger_loops_take_the_same_steps(
    clock: SimpleNamespace, statuses: list[SyncStatus], kwargs: dict[str, Any], expected: SyncWaitResult
) -> None:
    worker, trigger = both_loops(clock, statuses, deadline=1_100.0, poll_interval=30.0, **kwargs)

    assert worker == trigger
    result, sleeps, asked_at = worker
    assert result == expected
    assert asked_at == [1_000.0 + sum(sleeps[: i + 1]) for i in range(len(asked_at))]  # each poll after a sleep
    assert all(0 < seconds <= 30.0 for seconds in sleeps)


class TwiceChargedHook(ScriptedHook):
    """A hook whose every status poll CoinStats charges twice (e.g. a cut answer and its retry)."""

    def get_portfolio_sync_status(self, portfolio_id: str) -> SyncStatus:
        status = super().get_portfolio_sync_status(portfolio_id)
        self.credits.record("GET", "/portfolio/status", POLL_COST)
        return status


@pytest.mark.parametrize("max_polls", [None, 3])
def test_both_loops_count_charged_answers_not_loop_turns(clock: SimpleNamespace, max_polls: int | None) -> None:
    results = []
    for run in (
        lambda hook: wait_for_sync(hook, "pf-1", deadline=2_000.0, poll_interval=10.0, max_polls=max_polls),
        lambda hook: asyncio.run(await_sync(hook, "pf-1", deadline=2_000.0, poll_interval=10.0, max_polls=max_polls)),
    ):
        hook = TwiceChargedHook(clock, [SYNCING, SYNCED] if max_polls is None else [SYNCING])
        results.append((run(hook), hook.credits.spent, len(hook.asked_at)))

    if max_polls is None:  # two polls asked, four answers charged
        assert results == [(SyncWaitResult(Action.SUCCESS, 4, 4), 12, 2)] * 2
    else:  # still syncing; after two asks, four charged answers exceed the allowance of three: no third ask
        assert results == [(SyncWaitResult(Action.BUDGET, 4, 4), 12, 2)] * 2


def test_the_trigger_loop_counts_earlier_polls_into_the_allowance(clock: SimpleNamespace) -> None:
    hook = ScriptedHook(clock, [SYNCING])

    result = asyncio.run(
        await_sync(hook, "pf-1", deadline=2_000.0, poll_interval=10.0, max_polls=5, earlier_polls=3, resumed=True)
    )

    assert result == SyncWaitResult(Action.BUDGET, 5, 2)
    assert len(hook.asked_at) == 2


def test_a_resumed_trigger_loop_after_the_deadline_neither_polls_nor_reads_the_connection(
    clock: SimpleNamespace,
) -> None:
    hook = ScriptedHook(clock, [SYNCING])

    result = asyncio.run(await_sync(hook, "pf-1", deadline=900.0, poll_interval=10.0, earlier_polls=7, resumed=True))

    assert result == SyncWaitResult(Action.TIMEOUT, 7, 0)
    assert (hook.asked_at, clock.sleeps, hook.resolved) == ([], [], False)


def test_the_trigger_loop_keeps_the_hooks_own_budget(clock: SimpleNamespace) -> None:
    hook = ScriptedHook(clock, [SYNCING, SYNCED])
    hook.credits.budget = 100

    result = asyncio.run(await_sync(hook, "pf-1", deadline=2_000.0, poll_interval=10.0))

    assert result.outcome is Action.SUCCESS
    assert hook.credits.budget == 100  # narrowed to one poll only while each poll ran


def test_the_trigger_loop_stops_at_the_hooks_own_budget(clock: SimpleNamespace) -> None:
    hook = ScriptedHook(clock, [SYNCING], spent=97)
    hook.credits.budget = 100

    with pytest.raises(CoinStatsCreditBudgetExceeded):
        asyncio.run(await_sync(hook, "pf-1", deadline=2_000.0, poll_interval=10.0))

    assert len(hook.asked_at) == 1  # the second poll does not fit and is not sent
    assert hook.credits.budget == 100


# -- the hook's methods, against the sandbox --------------------------------------------------------


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., SandboxServer]]:
    with sandboxes(monkeypatch, CONN_ID, max_retries=0) as start:
        yield start


def sandbox_portfolio(secret: str = "plain-secret") -> str:  # noqa: S107
    from coinstats_provider.hooks.coinstats import CoinStatsHook

    hook = CoinStatsHook(CONN_ID)
    return hook.connect_exchange_portfolio("binance", {"apiKey": "k", "apiSecret": secret}).portfolio_id


def test_hook_wait_for_sync_waits_until_synced(sandbox: Callable[..., SandboxServer]) -> None:
    from coinstats_provider.hooks.coinstats import CoinStatsHook

    server = sandbox(sync_seconds=0.3)
    portfolio_id = sandbox_portfolio()
    hook = CoinStatsHook(CONN_ID)

    result = hook.wait_for_sync(portfolio_id, deadline=time.time() + 10, poll_interval=0.1)

    assert result.outcome is Action.SUCCESS
    assert result.polls == server.stats()["requests"]["GET /portfolio/status"] >= 2
    assert hook.credits_spent == result.polls * POLL_COST


async def test_hook_await_sync_times_out_on_a_stuck_portfolio(sandbox: Callable[..., SandboxServer]) -> None:
    from coinstats_provider.hooks.coinstats import CoinStatsHook

    server = sandbox(sync_seconds=0.0)
    portfolio_id = sandbox_portfolio("stuck-secret")
    hook = CoinStatsHook(CONN_ID)

    result = await hook.await_sync(portfolio_id, deadline=time.time() + 1.5, poll_interval=0.1, max_polls=50)

    assert result.outcome is Action.TIMEOUT
    assert result.polls == server.stats()["requests"]["GET /portfolio/status"] >= 2
    assert hook.credits.budget is None  # the one-poll limit is lifted after every poll


def test_hook_wait_for_sync_raises_provider_errors(sandbox: Callable[..., SandboxServer]) -> None:
    from coinstats_provider.hooks.coinstats import CoinStatsHook

    sandbox()

    with pytest.raises(CoinStatsNotFoundError):
        CoinStatsHook(CONN_ID).wait_for_sync("no-such-portfolio", deadline=time.time() + 5, poll_interval=0.01)
