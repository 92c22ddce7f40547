"""The transactions load of :class:`~coinstats_provider.operators.load.LoadPortfolioOperator`: full or incremental.

``full`` reads the whole list and reconciles the table with it. ``incremental`` reads only the
transactions since the newest one loaded minus an overlap (``from`` filter) and merges them (inserts and
updates, never deletes), unless :func:`~coinstats_provider.warehouse.sync_state.plan_read` calls for a
full reconcile (schedule, empty table, other currency, no state). An incremental read stands only if it
proves its window; otherwise nothing of it is written and a full read follows, with a log line saying why:

* every item must be dated at or after ``from`` (else CoinStats ignored the filter:
  :class:`~coinstats_provider.exceptions.CoinStatsFilterIgnoredError`);
* the newest stored transaction and every stored one dated after ``from`` must come back (else one was
  deleted upstream or edited in a field that identifies it, and only a reconcile makes the table exact).

Keys are the full stream's keys: identical transactions share their date, so a date window holds all or
none of them and their ordinals come out as in a full read. Credits saved are counted against what a full
read of the stored list costs (4 credits per page of ``page_size``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coinstats_provider.credits import TRANSACTIONS_PAGE_COST
from coinstats_provider.exceptions import CoinStatsFilterIgnoredError
from coinstats_provider.warehouse.sync_state import (
    DEFAULT_FULL_EVERY_DAYS,
    DEFAULT_MODE,
    DEFAULT_OVERLAP_HOURS,
    FULL,
    INCREMENTAL,
    MODES,
    ReadPlan,
    SyncState,
    parse_moment,
    plan_read,
)

if TYPE_CHECKING:
    from airflow.sdk.types import Logger

    from coinstats_provider.hooks.coinstats import CoinStatsHook
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse, ReconcileResult

__all__ = [
    "DEFAULT_FULL_EVERY_DAYS",
    "DEFAULT_MODE",
    "DEFAULT_OVERLAP_HOURS",
    "TEMPLATE_FIELDS",
    "TransactionsLoad",
    "check_settings",
    "full_read_credits",
]


#: The load operator's templated arguments for this mode (the DAG passes its Params).
TEMPLATE_FIELDS: tuple[str, ...] = ("transactions_mode", "transactions_overlap_hours", "full_every_days")

Pages = Iterator[list[dict[str, Any]]]


def full_read_credits(rows: int, page_size: int) -> int:
    """Credits a full read of ``rows`` transactions costs: one page more than fills up (the end is a short page).

    :param rows: Transactions in the list.
    :param page_size: Items per page.
    """
    return TRANSACTIONS_PAGE_COST * (rows // page_size + 1)


def check_settings(mode: Any, overlap_hours: Any, full_every_days: Any, task_id: str) -> tuple[str, float, float]:
    """Validate the transactions settings of a load task (rendered templates are text).

    :param mode: ``full`` or ``incremental``.
    :param overlap_hours: Hours, at least 0.
    :param full_every_days: Days, more than 0.
    :param task_id: The task, for the message.
    :raises ValueError: Naming the setting and its fix.
    """
    text = str(mode).strip().lower()
    if text not in MODES:
        raise ValueError(
            f"Task {task_id}: transactions_mode {str(mode)[:40]!r} is not one of {', '.join(MODES)}; fix the task's "
            "transactions_mode argument or the DAG's transactions_mode Param."
        )
    numbers: list[float] = []
    for name, value, least in (
        ("transactions_overlap_hours", overlap_hours, 0.0),
        ("full_every_days", full_every_days, 0.0),
    ):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not number >= least or number == float("inf") or (name == "full_every_days" and number == 0):
            bound = "a number >= 0" if name == "transactions_overlap_hours" else "a number > 0"
            raise ValueError(
                f"Task {task_id}: {name} must be {bound}, got {str(value)[:40]!r}; fix the argument or Param."
            )
        numbers.append(number)
    return text, numbers[0], numbers[1]


class _WindowNotProven(Exception):
    """An incremental read lacks a stored transaction of its window (deleted or re-identified upstream)."""


class _Watch:
    """Passes rows through, noting the newest one; at the end checks that the window's stored keys came back."""

    def __init__(
        self, rows: Iterable[Mapping[str, Any]], required: Iterable[str], newest: tuple[dt.datetime, str] | None
    ):
        self.rows = rows
        self.missing = set(required)
        self.newest = newest
        self.read = 0

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        for row in self.rows:
            key = str(row["transaction_key"])
            self.missing.discard(key)
            moment = parse_moment(row.get("occurred_at"))
            if moment is not None and (self.newest is None or moment > self.newest[0]):
                self.newest = (moment, key)
            self.read += 1
            yield row
        if self.missing:
            raise _WindowNotProven(
                f"{len(self.missing)} stored transaction(s) of the window did not come back (deleted upstream or "
                "edited in a field that identifies them)"
            )


@dataclass
class TransactionsOutcome:
    """What one transactions load did.

    :param requested: The mode asked for.
    :param mode: The mode that ran (a fallback ends as ``full``).
    :param reason: Why this mode ran.
    :param changes: Inserted/updated/removed counts and the stream's length.
    :param stored: Transactions stored for the portfolio afterwards.
    :param credits: Credits the transactions reads spent (fallback reads included).
    :param full_read_credits: What a full read of the stored list costs (one page more than fills up).
    :param wasted: Credits an abandoned incremental read spent before a fallback.
    """

    requested: str
    mode: str
    reason: str
    changes: ReconcileResult
    stored: int
    credits: int
    full_read_credits: int
    wasted: int = 0

    @property
    def credits_saved(self) -> int:
        """Credits saved against a full read: 0 when a full read ran, minus the abandoned read's after a fallback."""
        return self.full_read_credits - self.credits if self.mode == INCREMENTAL else -self.wasted

    def result(self) -> dict[str, Any]:
        """The keys the load task returns (and the run's summary reads)."""
        return {
            "mode": self.mode,
            "mode_requested": self.requested,
            "mode_reason": self.reason,
            "read": self.changes.total,
            "credits_saved": self.credits_saved,
            "full_read_credits": self.full_read_credits,
        }


class TransactionsLoad:
    """One task's transactions load; :meth:`run` may be called again after a list change (stream restart).

    :param hook: The task's CoinStats hook.
    :param warehouse: The warehouse.
    :param portfolio_id: The portfolio.
    :param currency: Currency of the values.
    :param page_size: Items per page.
    :param mode: ``full`` or ``incremental``.
    :param overlap: How far before the newest loaded transaction an incremental read starts.
    :param full_every: Longest time between two full reconciles.
    :param log: The task's logger.
    :param now: The current time (tests); defaults to now in UTC.
    """

    def __init__(
        self,
        hook: CoinStatsHook,
        warehouse: CoinStatsWarehouse,
        portfolio_id: str,
        *,
        currency: str,
        page_size: int,
        mode: str,
        overlap: dt.timedelta,
        full_every: dt.timedelta,
        log: Logger,
        now: dt.datetime | None = None,
    ) -> None:
        self.hook = hook
        self.warehouse = warehouse
        self.portfolio_id = portfolio_id
        self.currency = currency
        self.page_size = page_size
        self.mode = mode
        self.overlap = overlap
        self.full_every = full_every
        self.log = log
        self.now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        self.spent_before = hook.credits.spent_this_try
        self.fallback: str | None = None
        self.wasted = 0

    def plan(self) -> tuple[SyncState | None, ReadPlan]:
        """The state row and the read it calls for (a fallback already taken this try forces ``full``)."""
        state = self.warehouse.sync_state(self.portfolio_id)
        if self.fallback is not None:
            return state, ReadPlan(FULL, self.fallback)
        stored = self.warehouse.count_transactions(self.portfolio_id)
        return state, plan_read(
            state,
            requested=self.mode,
            currency=self.currency,
            stored_rows=stored,
            overlap=self.overlap,
            full_every=self.full_every,
            now=self.now,
        )

    def run(self, items: Callable[[Pages], Iterator[dict[str, Any]]]) -> TransactionsOutcome:
        """Plan, read and write; fall back to a full read when an incremental one cannot stand.

        :param items: Flattens pages into items (the operator's progress-logging flattener).
        """
        state, plan = self.plan()
        self.log.info(
            "Transactions of portfolio %s: %s read (%s)%s",
            self.portfolio_id,
            plan.mode,
            plan.reason,
            f", from {plan.since.isoformat()}" if plan.since is not None else "",
        )
        if plan.mode == INCREMENTAL:
            try:
                changes = self._incremental(plan, state, items)
            except (CoinStatsFilterIgnoredError, _WindowNotProven) as err:
                self.wasted = self.hook.credits.spent_this_try - self.spent_before
                self.fallback = f"fallback from incremental: {err}"
                self.log.warning(
                    "Transactions of portfolio %s: the incremental read cannot stand (%s); nothing of it was "
                    "written, reading the whole list and reconciling instead",
                    self.portfolio_id,
                    err,
                )
                plan = ReadPlan(FULL, self.fallback)
            else:
                stored = self.warehouse.count_transactions(self.portfolio_id)
                return self._outcome(INCREMENTAL, plan.reason, changes, stored)
        changes = self._full(items)
        return self._outcome(FULL, plan.reason, changes, changes.total)

    def _rows(self, pages: Pages, items: Callable[[Pages], Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        from coinstats_provider.warehouse import transform

        return transform.transaction_rows(self.portfolio_id, items(pages), transform.TransactionKeyer())

    def _state(self, watch: _Watch, full: bool, previous: SyncState | None) -> Callable[[], SyncState]:
        def after() -> SyncState:
            now = dt.datetime.now(dt.UTC).isoformat()
            newest = watch.newest
            return SyncState(
                self.portfolio_id,
                last_mode=FULL if full else INCREMENTAL,
                currency=self.currency.upper(),
                newest_occurred_at=None if newest is None else newest[0].isoformat(),
                newest_key=None if newest is None else newest[1],
                last_full_at=now if full else (previous.last_full_at if previous else None),
                last_run_at=now,
            )

        return after

    def _full(self, items: Callable[[Pages], Iterator[dict[str, Any]]]) -> ReconcileResult:
        pages = self.hook.iter_portfolio_transactions(
            self.portfolio_id, currency=self.currency, page_size=self.page_size
        )
        watch = _Watch(self._rows(pages, items), (), None)
        return self.warehouse.reconcile_transactions(self.portfolio_id, watch, state=self._state(watch, True, None))

    def _incremental(
        self, plan: ReadPlan, state: SyncState | None, items: Callable[[Pages], Iterator[dict[str, Any]]]
    ) -> ReconcileResult:
        assert plan.since is not None
        assert plan.anchor_key is not None
        assert state is not None
        window = self.warehouse.transactions_since(self.portfolio_id, plan.since)
        required = {key for key, moment in window.items() if moment > plan.since} | {plan.anchor_key}
        newest_moment = parse_moment(state.newest_occurred_at)
        newest = None if newest_moment is None else (newest_moment, plan.anchor_key)
        pages = self.hook.iter_portfolio_transactions(
            self.portfolio_id, currency=self.currency, page_size=self.page_size, since=plan.since
        )
        watch = _Watch(self._rows(pages, items), required, newest)
        return self.warehouse.merge_transactions(self.portfolio_id, watch, state=self._state(watch, False, state))

    def _outcome(self, mode: str, reason: str, changes: ReconcileResult, stored: int) -> TransactionsOutcome:
        outcome = TransactionsOutcome(
            requested=self.mode,
            mode=mode,
            reason=reason,
            changes=changes,
            stored=stored,
            credits=self.hook.credits.spent_this_try - self.spent_before,
            full_read_credits=full_read_credits(stored, self.page_size),
            wasted=self.wasted,
        )
        self.log.info(
            "Transactions of portfolio %s: %s mode ran (%s, %s requested): %d read, %d stored; %d credits, "
            "%d saved against a full read (%d)",
            self.portfolio_id,
            mode,
            reason,
            self.mode,
            changes.total,
            stored,
            outcome.credits,
            outcome.credits_saved,
            outcome.full_read_credits,
        )
        return outcome
