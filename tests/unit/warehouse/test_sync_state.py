"""When a transactions load reads in full and when incrementally (plan_read), and its settings' checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from coinstats_provider.operators._transactions import check_settings, full_read_credits
from coinstats_provider.warehouse.sync_state import SyncState, parse_moment, plan_read

NOW = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)
NEWEST = "2026-03-09T18:30:00.250Z"
STATE = SyncState(
    "pf",
    last_mode="full",
    currency="USD",
    newest_occurred_at=NEWEST,
    newest_key="k-0",
    last_full_at=(NOW - timedelta(days=3)).isoformat(),
    last_run_at=(NOW - timedelta(days=1)).isoformat(),
)


def plan(state: SyncState | None = STATE, **overrides: object) -> tuple[str, str]:
    options: dict[str, object] = {
        "requested": "incremental",
        "currency": "USD",
        "stored_rows": 100,
        "overlap": timedelta(hours=24),
        "full_every": timedelta(days=7),
        "now": NOW,
        **overrides,
    }
    result = plan_read(state, **options)  # type: ignore[arg-type]
    return result.mode, result.reason


def test_incremental_starts_the_overlap_before_the_newest_loaded_transaction() -> None:
    result = plan_read(
        STATE,
        requested="incremental",
        currency="usd",
        stored_rows=1,
        overlap=timedelta(hours=24),
        full_every=timedelta(days=7),
        now=NOW,
    )
    assert (result.mode, result.anchor_key) == ("incremental", "k-0")
    assert result.since == datetime(2026, 3, 8, 18, 30, 0, 250_000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("state", "overrides", "reason"),
    [
        (STATE, {"requested": "full"}, "full mode requested"),
        (None, {}, "first load of this portfolio (no sync state)"),
        (STATE, {"stored_rows": 0}, "no transactions stored"),
        (STATE, {"currency": "EUR"}, "currency changed from USD to EUR"),
        (SyncState("pf", currency="USD", last_full_at=NOW.isoformat()), {}, "no newest transaction to resume from"),
        (SyncState("pf", currency="USD", newest_occurred_at=NEWEST, newest_key="k"), {}, "no full reconcile recorded"),
        (STATE, {"full_every": timedelta(days=3)}, "scheduled reconcile (last full 3.0 days ago)"),
    ],
)
def test_full_read_whenever_incremental_cannot_be_trusted(
    state: SyncState | None, overrides: dict[str, object], reason: str
) -> None:
    assert plan(state, **overrides) == ("full", reason)


def test_bad_plan_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="transactions_mode must be one of full, incremental"):
        plan(requested="sometimes")
    with pytest.raises(ValueError, match="must not be negative"):
        plan(overlap=timedelta(hours=-1))


def test_parse_moment_needs_a_timezone() -> None:
    assert parse_moment("2026-01-01T00:00:00.000Z") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_moment("2026-01-01T00:00:00") is None
    assert parse_moment("yesterday") is None
    assert parse_moment(None) is None


def test_settings_are_checked_with_cause_and_fix() -> None:
    assert check_settings(" Incremental ", "12", 7, "t") == ("incremental", 12.0, 7.0)
    assert check_settings("full", 0, "0.5", "t") == ("full", 0.0, 0.5)
    with pytest.raises(ValueError, match="Task t: transactions_mode 'daily' is not one of full, incremental"):
        check_settings("daily", 24, 7, "t")
    with pytest.raises(ValueError, match="transactions_overlap_hours must be a number >= 0, got '-1'"):
        check_settings("full", -1, 7, "t")
    with pytest.raises(ValueError, match="full_every_days must be a number > 0, got '0'"):
        check_settings("full", 1, 0, "t")
    with pytest.raises(ValueError, match="full_every_days must be a number > 0, got 'nan'"):
        check_settings("full", 1, "nan", "t")


def test_full_read_costs_one_page_more_than_fills_up() -> None:
    assert [full_read_credits(n, 100) for n in (0, 99, 100, 2500, 2505)] == [4, 4, 8, 104, 104]
