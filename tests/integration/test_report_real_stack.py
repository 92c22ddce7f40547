"""On a real Airflow, a sync run's warehouse Assets trigger ``coinstats_portfolio_report`` by themselves.

The sync DAG is triggered over REST as the UI does; no one triggers the report: the scheduler starts it
from the Asset events of the loads. Its table is then checked against the warehouse, and a rerun must
leave it identical.
"""

from __future__ import annotations

from typing import Any

import pytest

from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from tests.helpers.airflow_stack import EXCHANGE_ACCOUNTS, AirflowStack, wait_until
from tests.helpers.report import expected_report, report_rows

pytest_plugins = ["tests.helpers.postgres_server", "tests.helpers.airflow_stack"]
pytestmark = pytest.mark.slow

REPORT_DAG = "coinstats_portfolio_report"
TERMINAL = ("success", "failed")


def _report_dag(stack: AirflowStack) -> dict[str, Any] | None:
    body = stack.api("GET", f"/dags/{REPORT_DAG}", expect=(200, 404))
    return body if isinstance(body, dict) and body.get("dag_id") == REPORT_DAG else None


def test_sync_assets_trigger_the_report_and_a_rerun_changes_nothing(
    airflow_stack: AirflowStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = airflow_stack
    dag = wait_until("the report DAG to be parsed", lambda: _report_dag(stack), timeout=180, check=stack.check_alive)
    assert dag["timetable_summary"] != "None"  # scheduled on Assets, not on time
    stack.unpause(REPORT_DAG)
    monkeypatch.setenv("AIRFLOW_CONN_COINSTATS_WAREHOUSE", stack.postgres.conn_json(stack.warehouse_db))
    warehouse = CoinStatsWarehouse()
    wait_until(
        "the sync DAG to have no active run",
        lambda: not any(run["state"] in ("queued", "running") for run in stack.dag_runs()),
        timeout=360,
        check=stack.check_alive,
    )
    before = {run["dag_run_id"] for run in stack.dag_runs(REPORT_DAG)}

    sync = stack.trigger({"exchange_conn_ids": list(EXCHANGE_ACCOUNTS), "sync_poll_seconds": 2})
    assert stack.wait_for_run(sync["dag_run_id"])["state"] == "success"

    def report_settled() -> list[dict[str, Any]] | None:
        runs = [run for run in stack.dag_runs(REPORT_DAG) if run["dag_run_id"] not in before]
        if not runs or any(run["state"] not in TERMINAL for run in runs):
            return None
        # The run started by the last load's Asset event has seen the whole sync.
        return runs if report_rows(warehouse) == expected_report(warehouse) else None

    runs = wait_until("asset-triggered report runs to match the warehouse", report_settled, timeout=240, interval=2)
    assert {run["run_type"] for run in runs} == {"asset_triggered"}
    assert {run["state"] for run in runs} == {"success"}
    report = report_rows(warehouse)
    # One row per synced portfolio for today's snapshot, with its coins and the day's transactions.
    assert len(report) == len(EXCHANGE_ACCOUNTS)
    assert all(row[7] > 0 for row in report)

    rerun = stack.trigger({}, dag_id=REPORT_DAG)
    assert stack.wait_for_run(rerun["dag_run_id"], dag_id=REPORT_DAG)["state"] == "success"
    assert report_rows(warehouse) == report
