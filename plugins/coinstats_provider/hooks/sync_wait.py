"""The poll policy of a portfolio sync wait, shared by the worker (blocking) and the triggerer (async).

One pure step, :func:`next_step`, decides what a wait does next (wait, poll, or stop with ``success``,
``timeout`` or ``budget``); :func:`wait_for_sync` and :func:`await_sync` are thin loops that carry its
decisions out with the hook's ``get_portfolio_sync_status`` / ``aget_portfolio_sync_status``. The poll
count of a wait is the number of status answers CoinStats charged (retries of a charged answer
included), read from the hook's ``credits_spent``, so ``polls * POLL_COST`` is what the wait cost.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from coinstats_provider.credits import POLL_COST
from coinstats_provider.exceptions import CoinStatsCreditBudgetExceeded
from coinstats_provider.models import SyncStatus

if TYPE_CHECKING:
    from coinstats_provider.hooks.coinstats import CoinStatsHook

__all__ = [
    "Action",
    "Phase",
    "SyncWaitResult",
    "WaitStep",
    "await_sync",
    "next_step",
    "polls_possible",
    "wait_for_sync",
]


class Action(Enum):
    """What a sync wait does next; the last three end it (their values are the trigger event statuses)."""

    WAIT = "wait"
    POLL = "poll"
    SUCCESS = "success"
    TIMEOUT = "timeout"
    BUDGET = "budget"


class Phase(Enum):
    """Where a sync wait stands when it asks :func:`next_step` what to do."""

    #: Nothing done yet.
    START = "start"
    #: Nothing done yet by this loop, which takes over a wait an earlier one began (its polls are counted).
    RESUME = "resume"
    #: A status poll was just answered.
    POLLED = "polled"
    #: One interval has passed since the last poll (or the start).
    WAITED = "waited"


@dataclass(frozen=True)
class WaitStep:
    """One decision of :func:`next_step`.

    :param action: What to do.
    :param seconds: How long to wait (for :attr:`Action.WAIT`).
    """

    action: Action
    seconds: float = 0.0


@dataclass(frozen=True)
class SyncWaitResult:
    """How a sync wait ended.

    :param outcome: :attr:`Action.SUCCESS`, :attr:`Action.TIMEOUT` or :attr:`Action.BUDGET`.
    :param polls: Status polls counted against the allowance (``earlier_polls``, assumed, plus the charged
        answers of this loop).
    :param new_polls: The charged status answers of this loop alone: what it spent.
    """

    outcome: Action
    polls: int
    new_polls: int

    @property
    def status(self) -> str:
        """The outcome as an event status: ``success``, ``timeout`` or ``budget``."""
        return self.outcome.value


class _Log(Protocol):
    def info(self, event: str, *args: Any) -> Any: ...

    def warning(self, event: str, *args: Any) -> Any: ...


def polls_possible(started_at: float, poll_interval: float, end_time: float, now: float) -> int:
    """The most status polls a wait that started at ``started_at`` can have made by ``now``.

    A wait polls at most once per ``poll_interval`` (the first one interval after it started), plus one
    poll at the deadline; a wait resumed after the deadline does not poll again. So this bounds the polls
    of every incarnation of one wait together, however often the triggerer restarted.

    :param started_at: Epoch seconds the wait (the deferral) started.
    :param poll_interval: Seconds between polls.
    :param end_time: Epoch seconds of the deadline.
    :param now: Epoch seconds now.
    """
    if now <= started_at:
        return 0
    before_deadline = max(0, int((min(now, end_time) - started_at) // poll_interval))
    return before_deadline + (1 if now >= end_time else 0)


def next_step(
    phase: Phase,
    *,
    now: float,
    deadline: float,
    poll_interval: float,
    polls: int,
    max_polls: int | None,
    last_status: SyncStatus | None,
) -> WaitStep:
    """Decide what a sync wait does next. Pure: the same inputs always give the same step.

    Every poll follows one interval of waiting (the first one too: a sync never finishes at once); the
    last wait ends at the deadline. After a wait, the allowance is checked before polling; after a poll,
    ``synced`` ends the wait, else the deadline does. A wait resumed after its deadline stops without
    polling (its deadline poll counts as made).

    :param phase: Where the wait stands.
    :param now: Epoch seconds now.
    :param deadline: Epoch seconds after which the wait ends with ``timeout``.
    :param poll_interval: Seconds between polls.
    :param polls: Polls the wait has made (charged answers, earlier incarnations' included).
    :param max_polls: Polls the whole wait may make; ``None`` for no limit.
    :param last_status: Answer of the poll just made (``None``: unreadable); ignored in other phases.
    """
    if phase is Phase.WAITED:
        if max_polls is not None and polls >= max_polls:
            return WaitStep(Action.BUDGET)
        return WaitStep(Action.POLL)
    if phase is Phase.POLLED and last_status is SyncStatus.SYNCED:
        return WaitStep(Action.SUCCESS)
    if phase is not Phase.START and now >= deadline:
        return WaitStep(Action.TIMEOUT)
    return WaitStep(Action.WAIT, min(poll_interval, max(0.0, deadline - now)))


def wait_for_sync(
    hook: CoinStatsHook,
    portfolio_id: str,
    *,
    deadline: float,
    poll_interval: float,
    max_polls: int | None = None,
    log: _Log | None = None,
) -> SyncWaitResult:
    """Poll ``GET /portfolio/status`` on this thread until ``synced``, the deadline or the allowance.

    Provider errors (:class:`~coinstats_provider.exceptions.CoinStatsError`) propagate; the hook retries
    transient ones itself, and retries of a charged answer count as polls.

    :param hook: The hook to poll with; its credit meter counts the polls.
    :param portfolio_id: The portfolio being synced.
    :param deadline: Epoch seconds after which the wait ends with ``timeout``.
    :param poll_interval: Seconds between polls.
    :param max_polls: Polls this wait may make; ``None`` for no limit.
    :param log: Logger for progress lines (default: the hook's).
    """
    log = log or hook.log
    start, phase, status = hook.credits_spent, Phase.START, None
    while True:
        polls = (hook.credits_spent - start) // POLL_COST
        step = next_step(
            phase,
            now=time.time(),
            deadline=deadline,
            poll_interval=poll_interval,
            polls=polls,
            max_polls=max_polls,
            last_status=status,
        )
        if step.action is Action.WAIT:
            if phase is Phase.POLLED:
                log.info("Portfolio %s still syncing (poll %d)", portfolio_id, polls)
            time.sleep(step.seconds)
            phase = Phase.WAITED
        elif step.action is Action.POLL:
            status, phase = hook.get_portfolio_sync_status(portfolio_id), Phase.POLLED
        else:
            return SyncWaitResult(step.action, polls, polls)


async def await_sync(
    hook: CoinStatsHook,
    portfolio_id: str,
    *,
    deadline: float,
    poll_interval: float,
    max_polls: int | None = None,
    earlier_polls: int = 0,
    resumed: bool = False,
    log: _Log | None = None,
) -> SyncWaitResult:
    """Async :func:`wait_for_sync` for triggers: the same steps, and at most one charged answer per poll.

    A charged answer that cannot be read is not asked again at once (the next poll comes one interval
    later), so a wait never polls more often than :func:`polls_possible` allows, which a rebuilt trigger
    relies on. The connection is resolved with the async lookup before the first wait.

    :param hook: The hook to poll with (its budget is only narrowed while a poll runs).
    :param portfolio_id: The portfolio being synced.
    :param deadline: Epoch seconds after which the wait ends with ``timeout``.
    :param poll_interval: Seconds between polls.
    :param max_polls: Polls the whole wait may make, ``earlier_polls`` included; ``None`` for no limit.
    :param earlier_polls: Polls earlier incarnations of this wait may have made: counted against
        ``max_polls`` only (the result's ``new_polls`` are the answers this loop was charged).
    :param resumed: This loop takes over a wait begun earlier (a rebuilt trigger).
    :param log: Logger for progress lines (default: the hook's).
    """
    log = log or hook.log
    start, status, ready = hook.credits_spent, None, False
    phase = Phase.RESUME if resumed else Phase.START
    while True:
        polls = earlier_polls + (hook.credits_spent - start) // POLL_COST
        step = next_step(
            phase,
            now=time.time(),
            deadline=deadline,
            poll_interval=poll_interval,
            polls=polls,
            max_polls=max_polls,
            last_status=status,
        )
        if step.action in (Action.SUCCESS, Action.TIMEOUT, Action.BUDGET):
            return SyncWaitResult(step.action, polls, polls - earlier_polls)
        if not ready:
            await hook.asettings()  # never the blocking connection lookup on the event loop
            ready = True
        if step.action is Action.WAIT:
            if phase is Phase.POLLED:
                log.info("Portfolio %s still syncing (poll %d)", portfolio_id, polls - earlier_polls)
            await asyncio.sleep(step.seconds)
            phase = Phase.WAITED
        else:
            status, phase = await _apoll_once(hook, portfolio_id, poll_interval, log), Phase.POLLED


async def _apoll_once(hook: CoinStatsHook, portfolio_id: str, poll_interval: float, log: _Log) -> SyncStatus | None:
    """One status poll that CoinStats can charge at most once; ``None`` when its charged answer was unreadable.

    :param hook: The hook (settings already resolved).
    :param portfolio_id: The portfolio.
    :param poll_interval: Seconds to the next poll, for the warning.
    :param log: Logger for the warning.
    """
    meter = hook.credits
    budget, before = meter.budget, meter.spent
    limit = before + POLL_COST
    meter.budget = limit if budget is None else min(budget, limit)
    try:
        return await hook.aget_portfolio_sync_status(portfolio_id)
    except CoinStatsCreditBudgetExceeded:
        if meter.spent == before:
            raise  # refused before any answer: the hook's own budget is used up
        log.warning(
            "CoinStats answered the status poll of portfolio %s with an unreadable body (charged); "
            "polling again in %g s",
            portfolio_id,
            poll_interval,
        )
        return None
    finally:
        meter.budget = budget
