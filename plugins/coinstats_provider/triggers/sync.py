"""PortfolioSyncTrigger: waits for a CoinStats sync in the triggerer, without holding a worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from coinstats_provider.credits import POLL_COST
from coinstats_provider.exceptions import CoinStatsError
from coinstats_provider.hooks.sync_wait import Action, SyncWaitResult, await_sync, polls_possible

__all__ = ["EVENT_STATUSES", "POLL_COST", "PortfolioSyncTrigger"]

#: Event statuses the trigger can yield; the operator rejects anything else.
EVENT_STATUSES = frozenset({"success", "timeout", "budget", "error"})


class PortfolioSyncTrigger(BaseTrigger):
    """Poll ``GET /portfolio/status`` (3 credits per poll) until the portfolio is ``synced``.

    The first poll happens one ``poll_interval`` after the sync was started (a sync never finishes
    instantly). Yields exactly one event: ``success``, ``timeout`` (deadline passed), ``budget`` (the next
    poll would exceed ``max_polls``) or ``error`` (with ``retryable``). ``polls`` and ``credits_spent`` in
    the event count the polls CoinStats charged (2xx answers).

    Surviving a triggerer restart: the triggerer builds every trigger from its serialized kwargs, which
    never change, so a trigger cannot tell whether it is the first incarnation of the wait (perhaps picked
    up late by a busy triggerer) or one rebuilt after a restart, and a rebuilt one cannot know how many
    polls the lost one made. ``max_polls`` is therefore the allowance of the whole wait since
    ``started_at`` (the defer time), and the allowance conservatively assumes the polls an earlier
    incarnation may have made (:func:`polls_possible`: one per elapsed interval). Those are reported
    apart, as ``earlier_polls_possible`` (and logged), never as spent: ``polls`` and ``credits_spent``
    are what CoinStats charged this incarnation. After a real restart the lost incarnation's charged
    polls are unknown, so the reported credits are then a lower bound (like a request that timed out),
    while the allowance still holds: every poll may be charged once only (a 2xx answer with an
    unreadable body is not re-sent at once; the next poll comes one interval later), so the wait as a
    whole never polls more than ``max_polls`` times. A trigger rebuilt after the deadline reports
    ``timeout`` without polling. Without ``started_at`` (kwargs of an older version) no earlier polls
    are assumed. The loop is :func:`~coinstats_provider.hooks.sync_wait.await_sync`, the poll policy the
    worker-side wait shares.

    :param portfolio_id: The portfolio being synced.
    :param coinstats_conn_id: CoinStats connection.
    :param end_time: Epoch seconds after which the wait fails with ``timeout``.
    :param poll_interval: Seconds between polls.
    :param max_polls: Polls the whole wait may make (from the credits left at defer time); ``None`` for no
        limit.
    :param hook_params: JSON-serialisable keyword arguments for :class:`CoinStatsHook`.
    :param started_at: Epoch seconds the wait started (the operator's defer time).
    """

    def __init__(
        self,
        portfolio_id: str,
        coinstats_conn_id: str,
        end_time: float,
        poll_interval: float,
        max_polls: int | None = None,
        hook_params: dict[str, Any] | None = None,
        started_at: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.portfolio_id = portfolio_id
        self.coinstats_conn_id = coinstats_conn_id
        self.end_time = end_time
        self.poll_interval = poll_interval
        self.max_polls = max_polls
        self.hook_params = hook_params or {}
        self.started_at = started_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the keyword arguments to rebuild this trigger."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "portfolio_id": self.portfolio_id,
                "coinstats_conn_id": self.coinstats_conn_id,
                "end_time": self.end_time,
                "poll_interval": self.poll_interval,
                "max_polls": self.max_polls,
                "hook_params": self.hook_params,
                "started_at": self.started_at,
            },
        )

    def _event(self, status: str, polls: int, message: str, earlier: int, **extra: Any) -> TriggerEvent:
        """One event: ``polls``/``credits_spent`` charged by this incarnation, ``earlier`` assumed apart."""
        return TriggerEvent(  # type: ignore[no-untyped-call]
            {
                "status": status,
                "portfolio_id": self.portfolio_id,
                "polls": polls,
                "credits_spent": polls * POLL_COST,
                "earlier_polls_possible": earlier,
                "message": message,
                **extra,
            }
        )

    def _earlier_polls(self, now: float) -> int:
        """Polls an earlier incarnation of this wait may have made, for the allowance only (never as spent)."""
        if self.started_at is None:
            return 0
        earlier = polls_possible(self.started_at, self.poll_interval, self.end_time, now)
        return earlier if self.max_polls is None else min(earlier, self.max_polls)

    def _outcome_event(self, result: SyncWaitResult) -> TriggerEvent:
        """The event for how :func:`await_sync` ended (``polls``: the charged answers of this incarnation)."""
        pid, polls, earlier = self.portfolio_id, result.new_polls, result.polls - result.new_polls
        if result.outcome is Action.SUCCESS:
            return self._event("success", polls, f"Portfolio {pid} is synced.", earlier)
        if result.outcome is Action.BUDGET:
            assumed = f" (and {earlier} an earlier trigger may have made)" if earlier else ""
            message = (
                f"Portfolio {pid} was still syncing after {polls} status polls{assumed}, and one more would "
                "exceed the credit budget."
            )
            return self._event("budget", polls, message, earlier)
        if polls == 0 and earlier:  # a wait rebuilt after the deadline: the deadline poll may have been made
            message = f"Portfolio {pid} was still syncing at the deadline (the wait resumed after it)."
            return self._event("timeout", polls, message, earlier)
        message = f"Portfolio {pid} was still syncing at the deadline after {polls} status polls."
        return self._event("timeout", polls, message, earlier)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until synced, the deadline, the poll budget or an error; yield one event."""
        from coinstats_provider.hooks.coinstats import CoinStatsHook  # at run time, not at parse time

        hook = CoinStatsHook(self.coinstats_conn_id, **self.hook_params)
        earlier = self._earlier_polls(time.time())
        try:
            if earlier:
                self.log.info(
                    "Portfolio %s: the allowance of this wait assumes %d status polls an earlier trigger may have "
                    "made since the task deferred (not counted as spent)",
                    self.portfolio_id,
                    earlier,
                )
            result = await await_sync(
                hook,
                self.portfolio_id,
                deadline=self.end_time,
                poll_interval=self.poll_interval,
                max_polls=self.max_polls,
                earlier_polls=earlier,
                resumed=self.started_at is not None,
                log=self.log,
            )
            yield self._outcome_event(result)
        except CoinStatsError as err:
            # This hook only polls the status: its charged answers are the polls this incarnation made.
            polls = hook.credits_spent // POLL_COST
            yield self._event("error", polls, str(err), earlier, retryable=err.retryable)
        except AirflowNotFoundException:
            message = f"The CoinStats connection '{self.coinstats_conn_id}' is not defined where the triggerer runs."
            yield self._event("error", 0, message, earlier, retryable=False)
        except asyncio.CancelledError:
            self.log.info("Stopped waiting for portfolio %s (trigger cancelled)", self.portfolio_id)
            raise
