"""`coinstats_portfolio_sync` with every dataset selected, in a real in-process Airflow run against the sandbox."""
# ruff: noqa: F811  (pytest fixtures imported from test_pipeline_e2e)

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS
from include.coinstats_sandbox import SandboxServer
from tests.conftest import assert_no_canary
from tests.integration.test_pipeline_e2e import (  # noqa: F401  (fixtures)
    accounts,
    dag,
    run,
    sandbox,
    sqlite_warehouse,
    states,
    summary_of,
    xcoms,
)

pytestmark = pytest.mark.slow

VOLATILE = ("loaded_at", "updated_at", "last_connect_status")


def tables() -> dict[str, list[tuple[Any, ...]]]:
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse
    from coinstats_provider.warehouse.schema import TABLES

    warehouse = CoinStatsWarehouse()
    return {
        table: warehouse.fetch_table(table, exclude=[c for c in TABLES[table].column_names if c in VOLATILE])
        for table in DATASET_TABLES.values()
    }


def test_every_dataset_loads_reruns_identically_and_defi_skips_exchanges(
    airflow_db: Path,
    dag: Any,
    accounts: list[str],
    sandbox: SandboxServer,
    sqlite_warehouse: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    first = run(dag, accounts, datasets=list(DATASETS), chart_type="all", deferrable=False)
    assert first.state == "success", states(first)
    summary = summary_of(first)
    rows = summary["rows"]
    # 36 monthly points of the sandbox's "all" chart (timestamps in seconds) per portfolio.
    assert rows[DATASET_TABLES["chart"]] == 3 * 36
    # One sandbox snapshot per day of the run's data interval (a manual run: its own day) per portfolio.
    start, end = first.data_interval_start, first.data_interval_end
    days = (end.date() - start.date()).days + 1 if start and end else 1
    assert rows[DATASET_TABLES["snapshot"]] == 3 * days
    # The three accounts are exchange portfolios: defi sends nothing and loads nothing.
    assert rows[DATASET_TABLES["defi"]] == 0
    stats = sandbox.stats()
    assert "GET /portfolio/defi" not in stats["credits_by_path"]
    assert stats["credits_by_path"]["GET /portfolio/chart"] == 3 * 10
    assert stats["credits_by_path"]["GET /portfolio/snapshot/items"] == 3 * 500
    assert summary["total_credits"] == stats["credits_used"]
    after_first = tables()
    chart = after_first[DATASET_TABLES["chart"]]
    assert {row[1] for row in chart} == {"all"}
    assert all(row[2].endswith("+00:00") and row[2] < "2026-02-28" for row in chart)
    first_out = capfd.readouterr().out + caplog.text
    assert "Credit plan: 3 account(s) x datasets value, coins, transactions, chart, defi, snapshot" in first_out
    assert "CoinStats serves DeFi positions (GET /portfolio/defi, 400 credits) for wallet portfolios only" in first_out
    caplog.clear()

    second = run(dag, accounts, datasets=list(DATASETS), chart_type="all", deferrable=False)
    assert second.state == "success", states(second)
    assert tables() == after_first
    assert_no_canary(first_out, capfd.readouterr().out, caplog.text, xcoms(first), after_first)
