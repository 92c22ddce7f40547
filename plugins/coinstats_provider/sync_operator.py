"""SyncPortfolioOperator: start a CoinStats portfolio sync on the worker, wait for it in the triggerer."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from coinstats_provider.credits import credit_cost
from coinstats_provider.exceptions import CoinStatsError, CoinStatsSyncTimeout
from coinstats_provider.hooks import CoinStatsHook
from coinstats_provider.models import SyncStatus
from coinstats_provider.operators import fail_fast
from coinstats_provider.triggers import EVENT_STATUSES, POLL_COST, PortfolioSyncTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

SYNC_COST = credit_cost("PATCH", "/portfolio/sync", {"portfolioId": "x"})
#: Task state store key: the sync this task instance started (portfolio_id, deadline, credits so far).
STATE_KEY = "coinstats_sync"


def as_bool(value: Any) -> bool:
    """Read a templated boolean (``True``, ``"true"``, ``"False"``, ``0``...).

    :param value: The rendered value.
    """
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class SyncPortfolioOperator(BaseOperator):
    """Trigger ``PATCH /portfolio/sync?portfolioId=...`` (30 credits) and wait until ``synced``.

    Deferrable by default: the wait runs in :class:`PortfolioSyncTrigger` with its own deadline, so no
    worker slot (and no pool slot) is held. ``deferrable=False`` polls on the worker for setups without a
    triggerer. Returns ``{"portfolio_id", "polls", "credits_spent"}``; ``credits_spent`` (also an XCom key)
    covers every try of the task instance.

    A retry does not start a second sync while the first one is within its deadline: the sync started
    is kept in Airflow's task state store, and the retry waits for it (same deadline) instead of paying
    30 credits again.

    :param portfolio_id: The portfolio to sync (always sent: without it CoinStats syncs all at 10x).
    :param coinstats_conn_id: CoinStats connection.
    :param sync_timeout: Seconds to wait for ``synced`` before failing.
    :param poll_interval: Seconds between status polls (each costs 3 credits).
    :param credit_budget: Credits this task may spend (sync plus polls); ``None`` for no limit.
    :param deferrable: Wait in the triggerer (default) or on the worker.
    :param hook_params: JSON-serialisable keyword arguments for :class:`CoinStatsHook`.
    """

    template_fields: Sequence[str] = (
        "portfolio_id",
        "coinstats_conn_id",
        "sync_timeout",
        "poll_interval",
        "credit_budget",
        "deferrable",
    )
    ui_color = "#9ad1f5"

    def __init__(
        self,
        *,
        portfolio_id: str,
        coinstats_conn_id: str = CoinStatsHook.default_conn_name,
        sync_timeout: float | str = 1800,
        poll_interval: float | str = 30,
        credit_budget: int | str | None = None,
        deferrable: bool | str = True,
        hook_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("map_index_template", "{{ task.portfolio_id }}")
        super().__init__(**kwargs)
        self.portfolio_id = portfolio_id
        self.coinstats_conn_id = coinstats_conn_id
        self.sync_timeout = sync_timeout
        self.poll_interval = poll_interval
        self.credit_budget = credit_budget
        self.deferrable = deferrable
        self.hook_params = hook_params or {}

    @cached_property
    def hook(self) -> CoinStatsHook:
        """The CoinStats hook, limited to this task's credit budget."""
        return CoinStatsHook(self.coinstats_conn_id, credit_budget=self._budget(), **self.hook_params)

    def _budget(self) -> int | None:
        return None if self.credit_budget in (None, "", "None") else int(float(str(self.credit_budget)))

    def _numbers(self) -> tuple[float, float]:
        try:
            timeout, interval = float(self.sync_timeout), float(self.poll_interval)
        except (TypeError, ValueError):
            raise AirflowFailException(
                f"Task {self.task_id}: sync_timeout and poll_interval must be numbers of seconds."
            ) from None
        if not (0 < timeout < math.inf and 0 < interval < math.inf):
            raise AirflowFailException(
                f"Task {self.task_id}: sync_timeout and poll_interval must be positive, finite seconds."
            )
        return timeout, interval

    def _max_polls(self) -> int | None:
        budget = self._budget()
        return None if budget is None else max(0, (budget - SYNC_COST) // POLL_COST)

    def execute(self, context: Context) -> dict[str, Any]:
        """Start the sync (or take over the one an earlier try started), then defer (or poll) until ``synced``."""
        timeout, interval = self._numbers()
        state = self._load_state(context)
        if state is not None and time.time() < state["deadline"]:
            self.log.info(
                "Portfolio %s: an earlier try of this task started a sync that is still within its deadline; "
                "waiting for that sync instead of paying %d credits for another",
                self.portfolio_id,
                SYNC_COST,
            )
        else:
            try:
                spent_before = self.hook.credits.spent  # reads the connection: its errors are reported below too
                self.hook.trigger_portfolio_sync(self.portfolio_id)
            except CoinStatsError as err:
                raise fail_fast(err, f"Starting the sync of portfolio {self.portfolio_id}") from err
            cost = self.hook.credits.spent - spent_before  # as metered: a retried, charged answer counts twice
            self.log.info("Started CoinStats sync of portfolio %s (%d credits)", self.portfolio_id, cost)
            earlier = state["credits"] if state is not None else 0
            state = {"portfolio_id": self.portfolio_id, "deadline": time.time() + timeout}
            state["credits"] = earlier + cost
            self._save_state(context, state)
        context["ti"].xcom_push(key="credits_spent", value=state["credits"])
        end_time = state["deadline"]
        if as_bool(self.deferrable):
            self.defer(
                trigger=PortfolioSyncTrigger(
                    portfolio_id=self.portfolio_id,
                    coinstats_conn_id=self.coinstats_conn_id,
                    end_time=end_time,
                    poll_interval=interval,
                    max_polls=self._max_polls(),
                    hook_params=self.hook_params,
                ),
                method_name="execute_complete",
                # The trigger enforces its own deadline so execute_complete always runs and reports it.
                timeout=None,
            )
        return self._poll_on_worker(context, end_time, interval)

    def _load_state(self, context: Context) -> dict[str, Any] | None:
        """The sync an earlier try of this task instance started, from Airflow's task state store.

        The store keeps its keys across the tries of one task instance in one DAG run, so a retry (after a
        worker crash, a failed poll, or Airflow's stale-executor-event race on resumed deferred tasks)
        waits for the sync already running instead of paying for another one.
        """
        store = context.get("task_state_store")
        state: Any = store.get(STATE_KEY) if store is not None else None
        if not isinstance(state, dict) or state.get("portfolio_id") != self.portfolio_id:
            return None
        try:
            deadline, credits = float(state["deadline"]), int(state["credits"])
        except (KeyError, TypeError, ValueError):
            return None
        return {"portfolio_id": self.portfolio_id, "deadline": deadline, "credits": credits}

    @staticmethod
    def _save_state(context: Context, state: dict[str, Any]) -> None:
        store = context.get("task_state_store")
        if store is not None:
            store.set(STATE_KEY, state)

    def _poll_on_worker(self, context: Context, end_time: float, interval: float) -> dict[str, Any]:
        polls = 0
        max_polls = self._max_polls()
        try:
            while True:
                time.sleep(min(interval, max(0.0, end_time - time.time())))
                if max_polls is not None and polls >= max_polls:
                    return self.execute_complete(context, {"status": "budget", "polls": polls, "message": ""})
                status = self.hook.get_portfolio_sync_status(self.portfolio_id)
                polls = self.hook.credits.calls["GET /portfolio/status"]  # charged answers, retries included
                if status is SyncStatus.SYNCED:
                    return self.execute_complete(context, {"status": "success", "polls": polls, "message": ""})
                if time.time() >= end_time:
                    return self.execute_complete(context, {"status": "timeout", "polls": polls, "message": ""})
        except CoinStatsError as err:
            raise fail_fast(err, f"Waiting for the sync of portfolio {self.portfolio_id}") from err

    def execute_complete(self, context: Context, event: dict[str, Any] | None) -> dict[str, Any]:
        """Validate the trigger event and finish: return the summary, or fail with a clear message.

        :param context: Task context.
        :param event: The event from :class:`PortfolioSyncTrigger`.
        """
        if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES:
            # A malformed event is a bug, not a passing fault: retrying would only pay for another sync.
            raise AirflowFailException(f"Invalid event from the portfolio sync trigger: {str(event)[:200]}")
        polls = int(event.get("polls") or 0)
        state = self._load_state(context)
        before = state["credits"] if state is not None else SYNC_COST
        spent = before + polls * POLL_COST
        if state is not None:
            self._save_state(context, {**state, "credits": spent})
        context["ti"].xcom_push(key="credits_spent", value=spent)
        self.log.info(
            "CoinStats credits spent by this task: %d (%d before this wait + %d status polls)", spent, before, polls
        )
        status = event["status"]
        if status == "success":
            self.log.info("Portfolio %s is synced after %d status polls", self.portfolio_id, polls)
            return {"portfolio_id": self.portfolio_id, "polls": polls, "credits_spent": spent}
        if status == "timeout":
            raise AirflowFailException(
                str(
                    CoinStatsSyncTimeout(
                        f"CoinStats sync of portfolio {self.portfolio_id} did not finish within "
                        f"{float(self.sync_timeout):g} s ({polls} status poll{'' if polls == 1 else 's'}). "
                        "Raise the sync timeout (Param sync_timeout_minutes) or check the account in CoinStats."
                    )
                )
            )
        if status == "budget":
            raise AirflowFailException(
                f"Stopped waiting for portfolio {self.portfolio_id}: another status poll would exceed the "
                f"credit budget of {self._budget()} credits ({spent} spent). Raise the budget or the poll interval."
            )
        message = f"Waiting for the sync of portfolio {self.portfolio_id} failed: {event.get('message')}"
        if event.get("retryable"):
            raise AirflowException(message)
        raise AirflowFailException(message)

    def on_kill(self) -> None:
        """CoinStats has no call to cancel a sync; nothing is held locally, so there is nothing to clean up."""
        self.log.info(
            "Task killed while portfolio %s was syncing; CoinStats finishes that sync on its own.", self.portfolio_id
        )
