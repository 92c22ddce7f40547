"""Per-portfolio state of the transactions load, and the read it calls for next: full or incremental.

A ``full`` read fetches the whole list and reconciles the table with it (inserts, updates, deletes). An
``incremental`` read fetches only the transactions dated from ``newest loaded - overlap`` on, and only
inserts and updates. :func:`plan_read` decides; it asks for a full read whenever an incremental one could
not be trusted to give the same table apart from deletions: no state yet, an empty table, another
currency (every stored value would be in the old one), no newest transaction to resume from, or a last
full reconcile older than ``full_every`` (which is when deletions are picked up).

The state row lives in :data:`~coinstats_provider.warehouse.schema.SYNC_STATE_TABLE` and is written in
the same database transaction as the rows it describes (:meth:`CoinStatsWarehouse.reconcile_transactions`
and :meth:`CoinStatsWarehouse.merge_transactions`), so it can never claim rows that were not committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

__all__ = [
    "DEFAULT_FULL_EVERY_DAYS",
    "DEFAULT_MODE",
    "DEFAULT_OVERLAP_HOURS",
    "FULL",
    "INCREMENTAL",
    "MODES",
    "ReadPlan",
    "SyncState",
    "parse_moment",
    "plan_read",
]

Mode = Literal["full", "incremental"]
FULL: Mode = "full"
INCREMENTAL: Mode = "incremental"
#: The transactions modes, as the DAG's Param and the operator accept them.
MODES: tuple[Mode, ...] = (FULL, INCREMENTAL)
#: The mode a load runs when none is given (README "Credits" says why it is not ``incremental``).
DEFAULT_MODE: Mode = FULL
#: How far before the newest loaded transaction an incremental read starts.
DEFAULT_OVERLAP_HOURS = 24.0
#: Longest time between two full reconciles in incremental mode.
DEFAULT_FULL_EVERY_DAYS = 7.0


def parse_moment(text: Any) -> datetime | None:
    """An ISO 8601 text with a timezone as an aware datetime; ``None`` for anything else.

    :param text: Stored or API text such as ``2026-02-27T12:00:00.000Z``.
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


@dataclass(frozen=True)
class SyncState:
    """One portfolio's row of the sync-state table.

    :param portfolio_id: The portfolio.
    :param last_mode: Mode of the last load that committed (``full`` or ``incremental``).
    :param currency: Currency the stored transaction values are in.
    :param newest_occurred_at: Date of the newest transaction loaded (ISO text), ``None`` when none.
    :param newest_key: Its ``transaction_key``; an incremental read must find it again.
    :param last_full_at: When the last full reconcile committed (ISO text, UTC).
    :param last_run_at: When the last load committed (ISO text, UTC).
    """

    portfolio_id: str
    last_mode: str | None = None
    currency: str | None = None
    newest_occurred_at: str | None = None
    newest_key: str | None = None
    last_full_at: str | None = None
    last_run_at: str | None = None

    def as_row(self) -> dict[str, Any]:
        """The state as a row of the sync-state table."""
        return {
            "portfolio_id": self.portfolio_id,
            "last_mode": self.last_mode,
            "currency": self.currency,
            "newest_occurred_at": self.newest_occurred_at,
            "newest_key": self.newest_key,
            "last_full_at": self.last_full_at,
            "last_run_at": self.last_run_at,
        }


@dataclass(frozen=True)
class ReadPlan:
    """What the next transactions load reads.

    :param mode: ``full`` or ``incremental``.
    :param reason: Why, in a few words (for logs, the run's plan and its summary).
    :param since: For ``incremental``: the ``from`` of the read (newest loaded minus the overlap).
    :param anchor_key: For ``incremental``: the newest stored key, which the read must contain.
    """

    mode: Mode
    reason: str
    since: datetime | None = None
    anchor_key: str | None = None


def plan_read(
    state: SyncState | None,
    *,
    requested: str,
    currency: str,
    stored_rows: int,
    overlap: timedelta,
    full_every: timedelta,
    now: datetime,
) -> ReadPlan:
    """Decide how the next transactions load reads (see the module docstring).

    :param state: The portfolio's state row, ``None`` when it has none.
    :param requested: The mode asked for (``full`` or ``incremental``).
    :param currency: The currency this load requests.
    :param stored_rows: Transactions stored for the portfolio now.
    :param overlap: How far before the newest loaded transaction an incremental read starts.
    :param full_every: Longest time between two full reconciles.
    :param now: The current time (aware).
    :raises ValueError: An unknown mode or a negative overlap or interval.
    """
    if requested not in MODES:
        raise ValueError(f"transactions_mode must be one of {', '.join(MODES)}, not {requested!r}")
    if overlap < timedelta(0) or full_every < timedelta(0):
        raise ValueError("the overlap and the full-reconcile interval must not be negative")
    if requested == FULL:
        return ReadPlan(FULL, "full mode requested")
    if state is None:
        return ReadPlan(FULL, "first load of this portfolio (no sync state)")
    if stored_rows == 0:
        return ReadPlan(FULL, "no transactions stored")
    if (state.currency or "").upper() != currency.upper():
        return ReadPlan(FULL, f"currency changed from {state.currency} to {currency}")
    newest = parse_moment(state.newest_occurred_at)
    if newest is None or not state.newest_key:
        return ReadPlan(FULL, "no newest transaction to resume from")
    last_full = parse_moment(state.last_full_at)
    if last_full is None:
        return ReadPlan(FULL, "no full reconcile recorded")
    age = now.astimezone(UTC) - last_full
    if age >= full_every:
        days = age.total_seconds() / 86_400
        return ReadPlan(FULL, f"scheduled reconcile (last full {days:.1f} days ago)")
    return ReadPlan(INCREMENTAL, "since the newest loaded transaction", newest - overlap, state.newest_key)
