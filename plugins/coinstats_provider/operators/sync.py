"""SyncPortfolioOperator: start a CoinStats portfolio sync on the worker, wait for it in the triggerer."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from coinstats_provider.credits import POLL_COST, SYNC_COST
from coinstats_provider.exceptions import CoinStatsError, CoinStatsSyncTimeoutError
from coinstats_provider.hooks.connection import DEFAULT_CONN_NAME
from coinstats_provider.operators._common import (
    PORTFOLIO_MAP_INDEX_TEMPLATE,
    as_bool,
    fail_fast,
    log_credits_spent,
    parse_credit_budget,
    push_credits_spent,
    with_map_index_template,
)

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from coinstats_provider.credits import CreditMeter
    from coinstats_provider.hooks.coinstats import CoinStatsHook
    from coinstats_provider.triggers.sync import PortfolioSyncTrigger

__all__ = ["POLL_COST", "STATE_KEY", "SYNC_COST", "SyncPortfolioOperator", "defer_timeout"]

#: Task state store key: the sync this task instance started (``portfolio_id``, ``deadline``), the credits
#: all its tries spent (``credits``, charged answers only), the credits held back from the budget for status
#: polls an earlier trigger may have made unseen (``unseen``) and, while deferred, the wait in the triggerer
#: (``wait``).
STATE_KEY = "coinstats_sync"
#: Least time Airflow waits for the trigger beyond the sync deadline before it fails the deferred task.
DEFER_MARGIN = 300.0


def defer_timeout(end_time: float, now: float) -> dt.timedelta:
    """How long Airflow lets the task stay deferred: the time left to the sync deadline plus a margin.

    The trigger reports the deadline itself; this timeout only fires when no triggerer runs the trigger,
    so the task fails instead of waiting forever (and, with ``max_active_runs=1``, blocking later runs).
    The margin is 5 minutes or 10 % of the time left, whichever is larger.

    :param end_time: Epoch seconds of the sync deadline.
    :param now: Epoch seconds now.
    """
    left = max(0.0, end_time - now)
    return dt.timedelta(seconds=left + max(DEFER_MARGIN, 0.1 * left))


def _max_polls(meter: CreditMeter) -> int | None:
    """Status polls the credits left under the meter's budget pay for; ``None`` without a budget."""
    remaining = meter.remaining
    return None if remaining is None else max(0, remaining // POLL_COST)


def _trigger_class() -> type[PortfolioSyncTrigger]:
    """The trigger class, imported when a task defers (not when a DAG file is parsed)."""
    from coinstats_provider.triggers.sync import PortfolioSyncTrigger

    return PortfolioSyncTrigger


class SyncPortfolioOperator(BaseOperator):
    """Trigger ``PATCH /portfolio/sync?portfolioId=...`` (30 credits) and wait until ``synced``.

    Deferrable by default: the wait runs in :class:`PortfolioSyncTrigger` with its own deadline, so no
    worker slot (and no pool slot) is held. ``deferrable=False`` polls on the worker for setups without a
    triggerer, with the same poll policy (:mod:`coinstats_provider.hooks.sync_wait`). Returns
    ``{"portfolio_id", "polls", "credits_spent"}``; ``credits_spent`` (also an XCom key) covers every try
    of the task instance.

    A retry does not start a second sync while the first one is within its deadline: the sync started
    is kept in Airflow's task state store, and the retry waits for it (same deadline) instead of paying
    30 credits again.

    ``credit_budget`` covers all tries of the task instance: the credits spent so far are kept in the same
    state (``credits``, saved after every paid call) and a try only spends what is left; a try that finds
    nothing left fails without retrying. The trigger's poll allowance is derived from the credits left at
    defer time. While deferred the state also holds the wait (``wait``: start, interval, deadline, allowance),
    so a try that follows a wait which never resumed (deferral timeout, lost worker) holds back from the
    budget the polls that wait may have made. The trigger's event counts the polls CoinStats charged it;
    the polls an earlier trigger lost in a triggerer restart may have made (``earlier_polls_possible``) are
    not counted as spent but held back from the budget of later tries (``unseen``). The deferral has a
    timeout (the time left to the deadline plus a margin), so the task fails instead of waiting forever
    when no triggerer runs.

    :param portfolio_id: The portfolio to sync (always sent: without it CoinStats syncs all at 10x).
    :param coinstats_conn_id: CoinStats connection.
    :param sync_timeout: Seconds to wait for ``synced`` before failing.
    :param poll_interval: Seconds between status polls (each costs 3 credits).
    :param credit_budget: Credits this task may spend (sync plus polls); ``None`` for no limit.
    :param deferrable: Wait in the triggerer or on the worker; by default ``[operators] default_deferrable``
        (like Airflow's own providers), so deployments without a triggerer are not left waiting.
    :param hook_params: JSON-serialisable keyword arguments for :class:`CoinStatsHook`.
    :param account: The account (connection id) the portfolio belongs to; labels the task in the grid.
    """

    template_fields: Sequence[str] = (
        "portfolio_id",
        "coinstats_conn_id",
        "sync_timeout",
        "poll_interval",
        "credit_budget",
        "deferrable",
        "account",
    )
    ui_color = "#9ad1f5"

    def __init__(
        self,
        *,
        portfolio_id: str,
        coinstats_conn_id: str = DEFAULT_CONN_NAME,
        sync_timeout: float | str = 1800,
        poll_interval: float | str = 30,
        credit_budget: int | str | None = None,
        deferrable: bool | str | None = None,
        hook_params: dict[str, Any] | None = None,
        account: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**with_map_index_template(kwargs, PORTFOLIO_MAP_INDEX_TEMPLATE))
        self.portfolio_id = portfolio_id
        self.account = account
        self.coinstats_conn_id = coinstats_conn_id
        self.sync_timeout = sync_timeout
        self.poll_interval = poll_interval
        self.credit_budget = credit_budget
        self.deferrable = (
            conf.getboolean("operators", "default_deferrable", fallback=True) if deferrable is None else deferrable
        )
        self.hook_params = hook_params or {}

    @cached_property
    def hook(self) -> CoinStatsHook:
        """The CoinStats hook, limited to this task's credit budget (built on first use, not at parse time)."""
        from coinstats_provider.hooks.coinstats import CoinStatsHook

        return CoinStatsHook(self.coinstats_conn_id, credit_budget=self._budget(), **self.hook_params)

    def _budget(self) -> int | None:
        return parse_credit_budget(self.credit_budget, self.task_id)

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

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage[Any, Any]:
        """OpenLineage: the portfolio in, its datasets (value, coins, transactions) refreshed out.

        :param task_instance: The finished task instance (unused).
        """
        from coinstats_provider.openlineage import sync_lineage

        return sync_lineage(self.hook.settings.base_url, self.portfolio_id)

    def execute(self, context: Context) -> dict[str, Any]:
        """Start the sync (or take over the one an earlier try started), then defer (or poll) until ``synced``.

        Credits are counted over all tries of the task instance: this try only spends what earlier tries
        left of ``credit_budget``, and fails fast when nothing is left.
        """
        timeout, interval = self._numbers()
        state = self._read_state(context) or {"portfolio_id": None, "deadline": None, "credits": 0}
        if "wait" in state:
            self._count_unfinished_wait(context, state)
        reuse = state["portfolio_id"] == self.portfolio_id and time.time() < (state["deadline"] or 0.0)
        if reuse:
            self.log.info(
                "Portfolio %s: an earlier try of this task started a sync that is still within its deadline; "
                "waiting for that sync instead of paying %d credits for another",
                self.portfolio_id,
                SYNC_COST,
            )
        else:
            state = {
                "portfolio_id": self.portfolio_id,
                "deadline": time.time() + timeout,
                "credits": state["credits"],
                **({"unseen": state["unseen"]} if state.get("unseen") else {}),
            }
        meter = self._start_sync(context, state, reuse)
        state = {**state, "credits": meter.spent}
        self._save_state(context, state)
        push_credits_spent(context, meter.spent)
        end_time = float(state["deadline"])
        if as_bool(self.deferrable):
            self._defer_wait(context, state, _max_polls(meter), end_time, interval)
        return self._poll_on_worker(context, state, meter, end_time, interval)

    def _count_unfinished_wait(self, context: Context, state: dict[str, Any]) -> None:
        """Hold back from the budget the polls of a wait that never resumed, then forget that wait.

        An earlier try deferred and never came back (deferral timeout, lost worker, Airflow's race on
        resumed deferred tasks); its trigger may have polled until then. Nobody saw those answers, so they
        are not counted as spent (``credits``), only kept from the budget of this and later tries
        (``unseen``), as the polls a lost trigger may have made are.
        """
        polls = self._unfinished_wait_polls(state.pop("wait"))
        if polls:
            state["unseen"] = int(state.get("unseen") or 0) + polls * POLL_COST
        self.log.warning(
            "Portfolio %s: an earlier try of this task stopped while its trigger was waiting; holding back "
            "%d credits of the budget for the %d status polls that trigger may have made (not counted as spent)",
            self.portfolio_id,
            polls * POLL_COST,
            polls,
        )
        self._save_state(context, state)

    def _start_sync(self, context: Context, state: dict[str, Any], reuse: bool) -> CreditMeter:
        """Carry the credits of earlier tries over into the hook's meter and, unless ``reuse``, start the sync."""
        step = f"{'Waiting for' if reuse else 'Starting'} the sync of portfolio {self.portfolio_id}"
        try:
            meter = self.hook.credits  # reads the connection: its errors are reported below too
            # Saved after every paid call, so even a killed worker leaves the figure for the next try.
            meter.carry_over(
                state["credits"],
                lambda spent: self._save_state(context, {**state, "credits": spent}),
                state_key=STATE_KEY,
            )
            self._hold_back_unseen(meter, int(state.get("unseen") or 0))
            if not reuse:
                spent_before = meter.spent
                self.hook.trigger_portfolio_sync(self.portfolio_id)
                cost = meter.spent - spent_before  # as metered: a retried, charged answer counts twice
                self.log.info("Started CoinStats sync of portfolio %s (%d credits)", self.portfolio_id, cost)
        except CoinStatsError as err:
            raise fail_fast(err, step) from err
        return meter

    def _hold_back_unseen(self, meter: CreditMeter, unseen: int) -> None:
        """Keep ``unseen`` credits of the budget for polls an earlier trigger may have made (not as spent).

        A trigger cannot tell whether a triggerer restart lost an earlier incarnation of it, so its event
        reports those possible polls apart (``earlier_polls_possible``); they are not in ``credits_spent``,
        but a later try must not spend them, so the budget never overspends.
        """
        if not unseen or meter.budget is None:
            return
        meter.budget = max(meter.spent, meter.budget - unseen)
        self.log.info(
            "Portfolio %s: holding back %d credits of the budget for status polls an earlier trigger may have "
            "made (not counted as spent)",
            self.portfolio_id,
            unseen,
        )

    def _defer_wait(
        self, context: Context, state: dict[str, Any], max_polls: int | None, end_time: float, interval: float
    ) -> NoReturn:
        """Record the wait in the task state, then defer to :class:`PortfolioSyncTrigger` (raises ``TaskDeferred``)."""
        now = time.time()
        wait = {"started_at": now, "poll_interval": interval, "end_time": end_time, "max_polls": max_polls}
        self._save_state(context, {**state, "wait": wait})
        self.defer(
            trigger=_trigger_class()(
                portfolio_id=self.portfolio_id,
                coinstats_conn_id=self.coinstats_conn_id,
                end_time=end_time,
                poll_interval=interval,
                max_polls=max_polls,
                hook_params=self.hook_params,
                started_at=now,
            ),
            method_name="execute_complete",
            # The trigger reports the deadline itself; this only fires when no triggerer runs it.
            timeout=defer_timeout(end_time, now),
        )

    def _read_state(self, context: Context) -> dict[str, Any] | None:
        """This task instance's sync state from Airflow's task state store, or ``None`` without one.

        The store keeps its keys across the tries of one task instance in one DAG run, so a retry (after a
        worker crash, a failed poll, or Airflow's stale-executor-event race on resumed deferred tasks)
        waits for the sync already running instead of paying for another one, and spends only what earlier
        tries left of the budget. Unreadable fields are dropped; unreadable credits count 0.
        """
        store = context.get("task_state_store")
        raw: Any = store.get(STATE_KEY) if store is not None else None
        if not isinstance(raw, dict):
            return None
        state: dict[str, Any] = {"portfolio_id": None, "deadline": None, "credits": _number(raw.get("credits"), int)}
        if isinstance(raw.get("portfolio_id"), str):
            state["portfolio_id"] = raw["portfolio_id"]
        deadline = _number(raw.get("deadline"), float)
        if deadline:
            state["deadline"] = deadline
        if _number(raw.get("unseen"), int):
            state["unseen"] = _number(raw.get("unseen"), int)
        if isinstance(raw.get("wait"), dict):
            state["wait"] = raw["wait"]
        return state

    @staticmethod
    def _save_state(context: Context, state: dict[str, Any]) -> None:
        store = context.get("task_state_store")
        if store is not None:
            store.set(STATE_KEY, state)

    def _unfinished_wait_polls(self, wait: dict[str, Any]) -> int:
        """The most polls the trigger of a wait that never resumed can have made (:func:`polls_possible`)."""
        started_at, interval = _number(wait.get("started_at"), float), _number(wait.get("poll_interval"), float)
        end_time, max_polls = _number(wait.get("end_time"), float), wait.get("max_polls")
        if not (started_at and interval > 0 and end_time):
            return 0
        from coinstats_provider.hooks.sync_wait import polls_possible

        polls = polls_possible(started_at, interval, end_time, time.time())
        return min(polls, max_polls) if isinstance(max_polls, int) and max_polls >= 0 else polls

    def _poll_on_worker(
        self, context: Context, state: dict[str, Any], meter: CreditMeter, end_time: float, interval: float
    ) -> dict[str, Any]:
        """Wait for the sync on this worker (:func:`wait_for_sync`, the trigger's poll policy), then finish."""
        before = meter.spent
        try:
            from coinstats_provider.hooks.sync_wait import wait_for_sync

            result = wait_for_sync(
                self.hook,
                self.portfolio_id,
                deadline=end_time,
                poll_interval=interval,
                max_polls=_max_polls(meter),
                log=self.log,
            )
        except CoinStatsError as err:
            raise fail_fast(err, f"Waiting for the sync of portfolio {self.portfolio_id}") from err
        return self._finish(context, {"status": result.status, "polls": result.polls, "message": ""}, state, before)

    def execute_complete(self, context: Context, event: dict[str, Any] | None) -> dict[str, Any]:
        """Validate the trigger event and finish: return the summary, or fail with a clear message.

        :param context: Task context.
        :param event: The event from :class:`PortfolioSyncTrigger`.
        """
        from coinstats_provider.triggers.sync import EVENT_STATUSES

        if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES:
            # A malformed event is a bug, not a passing fault: retrying would only pay for another sync.
            raise AirflowFailException(f"Invalid event from the portfolio sync trigger: {str(event)[:200]}")
        state = self._read_state(context)
        before = state["credits"] if state is not None else SYNC_COST
        return self._finish(context, event, state, before)

    def _finish(
        self, context: Context, event: dict[str, Any], state: dict[str, Any] | None, before: int
    ) -> dict[str, Any]:
        """Count the wait's polls into the credits of all tries, push them, and return or fail.

        ``polls`` are the answers CoinStats charged the trigger that sent the event; the polls an earlier,
        lost incarnation of it may have made (``earlier_polls_possible``) are not counted as spent but held
        back from the budget of later tries (state key ``unseen``).
        """
        polls = _number(event.get("polls"), int)
        spent = before + polls * POLL_COST
        if state is not None:
            # The wait is over: its polls are in the total now, so a later try does not estimate them again.
            done = {key: value for key, value in state.items() if key != "wait"}
            unseen = int(done.get("unseen") or 0) + _number(event.get("earlier_polls_possible"), int) * POLL_COST
            self._save_state(context, {**done, "credits": spent, **({"unseen": unseen} if unseen else {})})
        push_credits_spent(context, spent)
        log_credits_spent(self.log, spent, " (%d before this wait + %d status polls)", before, polls)
        status = event["status"]
        if status == "success":
            self.log.info("Portfolio %s is synced after %d status polls", self.portfolio_id, polls)
            return {"portfolio_id": self.portfolio_id, "polls": polls, "credits_spent": spent}
        if status == "timeout":
            raise CoinStatsSyncTimeoutError(
                f"CoinStats sync of portfolio {self.portfolio_id} did not finish within "
                f"{float(self.sync_timeout):g} s ({polls} status poll{'' if polls == 1 else 's'}). "
                "Raise the sync timeout (Param sync_timeout_minutes) or check the account in CoinStats."
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


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    """``value`` as a non-negative ``int``/``float`` read from the task state store, else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return kind(0)
    return kind(value)
