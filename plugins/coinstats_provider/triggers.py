"""PortfolioSyncTrigger: waits for a CoinStats sync in the triggerer, without holding a worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from coinstats_provider.credits import credit_cost
from coinstats_provider.exceptions import CoinStatsError
from coinstats_provider.hooks import CoinStatsHook
from coinstats_provider.models import SyncStatus

#: Event statuses the trigger can yield; the operator rejects anything else.
EVENT_STATUSES = frozenset({"success", "timeout", "budget", "error"})
POLL_COST = credit_cost("GET", "/portfolio/status")


class PortfolioSyncTrigger(BaseTrigger):
    """Poll ``GET /portfolio/status`` (3 credits per poll) until the portfolio is ``synced``.

    The first poll happens one ``poll_interval`` after the sync was started (a sync never finishes
    instantly). Yields exactly one event: ``success``, ``timeout`` (deadline passed), ``budget`` (the next
    poll would exceed ``max_polls``) or ``error`` (with ``retryable``).

    :param portfolio_id: The portfolio being synced.
    :param coinstats_conn_id: CoinStats connection.
    :param end_time: Epoch seconds after which the wait fails with ``timeout``.
    :param poll_interval: Seconds between polls.
    :param max_polls: Maximum polls (from the credit budget); ``None`` for no limit.
    :param hook_params: JSON-serialisable keyword arguments for :class:`CoinStatsHook`.
    """

    def __init__(
        self,
        portfolio_id: str,
        coinstats_conn_id: str,
        end_time: float,
        poll_interval: float,
        max_polls: int | None = None,
        hook_params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.portfolio_id = portfolio_id
        self.coinstats_conn_id = coinstats_conn_id
        self.end_time = end_time
        self.poll_interval = poll_interval
        self.max_polls = max_polls
        self.hook_params = hook_params or {}

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
            },
        )

    def _event(self, status: str, polls: int, message: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent(  # type: ignore[no-untyped-call]
            {
                "status": status,
                "portfolio_id": self.portfolio_id,
                "polls": polls,
                "credits_spent": polls * POLL_COST,
                "message": message,
                **extra,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until synced, the deadline, the poll budget or an error; yield one event."""
        hook = CoinStatsHook(self.coinstats_conn_id, **self.hook_params)
        polls = 0
        try:
            while True:
                wait = min(self.poll_interval, max(0.0, self.end_time - time.time()))
                await asyncio.sleep(wait)
                if self.max_polls is not None and polls >= self.max_polls:
                    yield self._event(
                        "budget",
                        polls,
                        f"Portfolio {self.portfolio_id} was still syncing after {polls} status polls, and one "
                        "more would exceed the credit budget.",
                    )
                    return
                status = await hook.aget_portfolio_sync_status(self.portfolio_id)
                polls = hook.credits.calls["GET /portfolio/status"]
                if status is SyncStatus.SYNCED:
                    yield self._event("success", polls, f"Portfolio {self.portfolio_id} is synced.")
                    return
                if time.time() >= self.end_time:
                    yield self._event(
                        "timeout",
                        polls,
                        f"Portfolio {self.portfolio_id} was still syncing at the deadline after {polls} status polls.",
                    )
                    return
                self.log.info("Portfolio %s still syncing (poll %d)", self.portfolio_id, polls)
        except CoinStatsError as err:
            polls = hook.credits.calls["GET /portfolio/status"] if "credits" in hook.__dict__ else 0
            yield self._event("error", polls, str(err), retryable=err.retryable)
        except AirflowNotFoundException:
            message = f"The CoinStats connection '{self.coinstats_conn_id}' is not defined where the triggerer runs."
            yield self._event("error", 0, message, retryable=False)
        except asyncio.CancelledError:
            self.log.info("Stopped waiting for portfolio %s (trigger cancelled)", self.portfolio_id)
            raise
