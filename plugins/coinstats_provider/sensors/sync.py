"""CoinStatsPortfolioSyncedSensor: wait until a portfolio whose sync was started elsewhere is ``synced``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from coinstats_provider.credits import POLL_COST
from coinstats_provider.exceptions import CoinStatsError
from coinstats_provider.hooks.connection import DEFAULT_CONN_NAME
from coinstats_provider.models import SyncStatus
from coinstats_provider.operators._common import (
    PORTFOLIO_MAP_INDEX_TEMPLATE,
    as_bool,
    credits_spent_before,
    fail_fast,
    parse_credit_budget,
    push_credits_spent,
    save_credits_spent,
    with_map_index_template,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from coinstats_provider.hooks.coinstats import CoinStatsHook

__all__ = ["DEFAULT_POKE_INTERVAL", "DEFAULT_TIMEOUT", "UNSEEN_STATE_KEY", "CoinStatsPortfolioSyncedSensor"]

#: Seconds between status polls: each costs 3 credits, so 5 minutes is 36 credits an hour.
DEFAULT_POKE_INTERVAL = 300.0
#: Seconds the sensor waits at most (24 polls, 72 credits at the default interval), not Airflow's 7 days.
DEFAULT_TIMEOUT = 2 * 3600.0
#: Task state store key: credits held back from the budget for status polls an earlier trigger of this
#: sensor may have made before a triggerer restart (assumed, never counted as spent).
UNSEEN_STATE_KEY = "coinstats_sensor_unseen_credits"


class CoinStatsPortfolioSyncedSensor(BaseSensorOperator):
    """Wait until ``GET /portfolio/status`` (3 credits a poll) says a portfolio is ``synced``.

    For syncs started elsewhere (the CoinStats app, another DAG, the connect's background sync). Modes:
    ``poke`` (holds a worker slot), ``reschedule`` (frees the slot between pokes) and ``deferrable=True``
    (pokes once, then waits in :class:`~coinstats_provider.triggers.sync.PortfolioSyncTrigger`, holding no
    slot). Every poll is metered: ``credits_spent`` (an XCom, and the task state store across pokes,
    reschedules and tries) counts them, and ``credit_budget`` caps them: a poll the budget cannot pay is
    not sent and the sensor fails (or skips with ``soft_fail``). With ``soft_fail=True`` a timeout or a
    non-retryable error skips the task instead of failing it.

    :param portfolio_id: The portfolio to watch.
    :param coinstats_conn_id: CoinStats connection.
    :param credit_budget: Credits the sensor may spend on polls over its whole wait; ``None`` for no limit.
    :param deferrable: Wait in the triggerer; by default ``[operators] default_deferrable``.
    :param hook_params: JSON-serialisable keyword arguments for :class:`CoinStatsHook`.
    :param account: The account (connection id) the portfolio belongs to; labels the task in the grid.
    :param poke_interval: Seconds between polls (default :data:`DEFAULT_POKE_INTERVAL`).
    :param timeout: Seconds to wait before failing (default :data:`DEFAULT_TIMEOUT`).
    """

    template_fields: Sequence[str] = ("portfolio_id", "coinstats_conn_id", "credit_budget", "deferrable", "account")
    ui_color = "#9ad1f5"

    def __init__(
        self,
        *,
        portfolio_id: str,
        coinstats_conn_id: str = DEFAULT_CONN_NAME,
        credit_budget: int | str | None = None,
        deferrable: bool | str | None = None,
        hook_params: dict[str, Any] | None = None,
        account: str | None = None,
        poke_interval: float = DEFAULT_POKE_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        kwargs = with_map_index_template(kwargs, PORTFOLIO_MAP_INDEX_TEMPLATE)
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.portfolio_id = portfolio_id
        self.coinstats_conn_id = coinstats_conn_id
        self.credit_budget = credit_budget
        self.deferrable = (
            conf.getboolean("operators", "default_deferrable", fallback=True) if deferrable is None else deferrable
        )
        self.hook_params = hook_params or {}
        self.account = account

    def _budget(self, context: Context) -> int | None:
        """The sensor's budget less the credits held back for polls an earlier trigger may have made.

        :param context: Task context.
        """
        budget = parse_credit_budget(self.credit_budget, self.task_id)
        return None if budget is None else max(0, budget - credits_spent_before(context, UNSEEN_STATE_KEY))

    def _hook(self, context: Context) -> CoinStatsHook:
        """A fresh hook for one poke, limited to the sensor's budget (a rescheduled poke is a new process).

        :param context: Task context.
        """
        from coinstats_provider.hooks.coinstats import CoinStatsHook

        return CoinStatsHook(self.coinstats_conn_id, credit_budget=self._budget(context), **self.hook_params)

    def execute(self, context: Context) -> Any:
        """Poke (in ``poke``/``reschedule`` mode), or poke once and defer to the trigger."""
        polls = max(1, int(self.timeout // max(self.poke_interval, 1e-9)))
        self.log.info(
            "Waiting for CoinStats portfolio %s to be synced: a poll every %g s for at most %g s (up to %d polls, "
            "%d credits)",
            self.portfolio_id,
            self.poke_interval,
            self.timeout,
            polls,
            polls * POLL_COST,
        )
        if not as_bool(self.deferrable):
            return super().execute(context)
        if self.poke(context):
            return None
        self._defer(context)

    def poke(self, context: Context) -> bool:
        """Poll the status once (3 credits); count it into the sensor's credits.

        :param context: Task context.
        """
        hook = self._hook(context)
        spent = credits_spent_before(context)
        try:
            hook.credits.carry_over(spent, lambda total: save_credits_spent(context, total))
            status = hook.get_portfolio_sync_status(self.portfolio_id)
        except CoinStatsError as err:
            raise fail_fast(err, f"Checking the sync status of portfolio {self.portfolio_id}") from err
        finally:
            push_credits_spent(context, max(spent, hook.credits_spent))
        self.log.info(
            "Portfolio %s is %s (%d credits spent on polls so far)", self.portfolio_id, status, hook.credits_spent
        )
        return status is SyncStatus.SYNCED

    def _defer(self, context: Context) -> None:
        from coinstats_provider.operators.sync import defer_timeout
        from coinstats_provider.triggers.sync import PortfolioSyncTrigger

        budget = self._budget(context)
        max_polls = None if budget is None else max(0, budget - credits_spent_before(context)) // POLL_COST
        now = time.time()
        end_time = now + self.timeout
        self.defer(
            trigger=PortfolioSyncTrigger(
                portfolio_id=self.portfolio_id,
                coinstats_conn_id=self.coinstats_conn_id,
                end_time=end_time,
                poll_interval=self.poke_interval,
                max_polls=max_polls,
                hook_params=self.hook_params,
                started_at=now,
            ),
            method_name="execute_complete",
            timeout=defer_timeout(end_time, now),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None) -> None:
        """Count the trigger's polls, then succeed, time out (skipped with ``soft_fail``) or fail.

        The event's ``polls`` are what CoinStats charged the trigger that sent it; the polls an earlier
        trigger lost in a triggerer restart may have made (``earlier_polls_possible``) are not counted as
        spent (the credits are then a lower bound) but held back from the budget of later tries
        (:data:`UNSEEN_STATE_KEY`).

        :param context: Task context.
        :param event: The event of :class:`PortfolioSyncTrigger`.
        """
        from coinstats_provider.triggers.sync import EVENT_STATUSES

        if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES:
            raise AirflowFailException(f"Invalid event from the portfolio sync trigger: {str(event)[:200]}")
        spent = credits_spent_before(context) + int(event.get("polls") or 0) * POLL_COST
        save_credits_spent(context, spent)
        push_credits_spent(context, spent)
        earlier = event.get("earlier_polls_possible")
        if isinstance(earlier, int) and not isinstance(earlier, bool) and earlier > 0:
            unseen = credits_spent_before(context, UNSEEN_STATE_KEY) + earlier * POLL_COST
            save_credits_spent(context, unseen, UNSEEN_STATE_KEY)
        status = event["status"]
        if status == "success":
            self.log.info("Portfolio %s is synced (%d credits spent on polls)", self.portfolio_id, spent)
            return
        message = f"Portfolio {self.portfolio_id}: {event.get('message')}"
        if status == "timeout":
            raise AirflowSensorTimeout(f"{message} Raise the sensor's timeout or check the account in CoinStats.")
        if status == "budget":
            raise AirflowFailException(f"{message} Raise the sensor's credit_budget or its poke_interval.")
        if event.get("retryable"):
            raise AirflowException(message)
        raise AirflowFailException(message)
