"""PortfolioSyncTrigger reports what CoinStats charged it; polls it only assumes stay out of the credits."""

from __future__ import annotations

import time
from typing import Any

import pytest

from coinstats_provider.triggers.sync import POLL_COST
from tests.unit.triggers.test_sync import (
    StartSandbox,
    connect,
    fake_asyncio,
    make_trigger,
    only_event,
    run_trigger,
    sandbox,
    status_polls,
)

__all__ = ["sandbox"]  # the fixture, shared with test_sync

INTERVAL = 10.0


def started_late(portfolio_id: str, max_polls: int | None = None) -> Any:
    """A trigger whose wait started 5.5 poll intervals ago: a busy triggerer picked it up late."""
    started_at = time.time() - 5.5 * INTERVAL
    return make_trigger(
        portfolio_id, timeout=100 * INTERVAL, poll_interval=INTERVAL, max_polls=max_polls, started_at=started_at
    )


async def test_a_trigger_started_late_reports_only_the_polls_charged(
    sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    server = sandbox()
    portfolio_id = connect()  # synced at the first poll
    fake_asyncio(monkeypatch, lambda _delay: None)

    event = only_event(await run_trigger(started_late(portfolio_id, max_polls=20)))

    assert event["status"] == "success"
    # before: 6 polls / 18 credits, the five elapsed intervals counted as polls that were never sent
    assert (event["polls"], event["credits_spent"]) == (1, 3) == (status_polls(server), POLL_COST)
    assert event["credits_spent"] == server.stats()["credits_by_path"]["GET /portfolio/status"]
    assert event["earlier_polls_possible"] == 5  # assumed for the allowance, reported apart
    assert "assumes 5 status polls an earlier trigger may have made" in logs.text


@pytest.mark.parametrize(("max_polls", "sent"), [(5, 0), (6, 1)])
async def test_a_trigger_started_late_still_keeps_the_allowance(
    sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch, max_polls: int, sent: int
) -> None:
    server = sandbox()
    portfolio_id = connect("stuck-secret")  # never synced
    fake_asyncio(monkeypatch, lambda _delay: None)

    event = only_event(await run_trigger(started_late(portfolio_id, max_polls=max_polls)))

    # The five polls an earlier trigger may have made use up the allowance first; none is reported as spent.
    assert event["status"] == "budget"
    assert status_polls(server) == event["polls"] == sent
    assert event["credits_spent"] == sent * POLL_COST
    assert event["earlier_polls_possible"] == 5
