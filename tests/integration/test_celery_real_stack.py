"""``coinstats_portfolio_sync`` on CeleryExecutor with two workers that share nothing but Airflow's stores.

The stack (``celery_stack``): api-server, scheduler, dag-processor, triggerer, Redis as broker, the
PostgreSQL metadata database as Celery's result backend, the warehouse on PostgreSQL, and two
``airflow celery worker`` processes (``worker-a``, ``worker-b``), each with its own working directory,
``HOME``, ``TMPDIR`` and CoinStats cache. One run over :data:`ACCOUNTS` fresh sandbox accounts (created
as ``bench/load_accounts.py`` creates them); in the middle of it ``worker-a`` is SIGKILLed with its pool
and the tasks running on it. Then:

* the run succeeds; the tasks of one portfolio ran on different workers (task instances' ``hostname``);
* the task instances that were running on the killed worker failed there and succeeded in a retry on
  the other worker;
* every portfolio was synced once and connected once (``PATCH /portfolio/sync`` and
  ``POST /portfolio/exchange`` counted by the sandbox), and the warehouse holds exactly, row for row, what
  a LocalExecutor run loads: the sandbox's data for each portfolio through the provider's own transform
  (the reference ``bench/load_accounts.py`` checks a LocalExecutor run of 100 accounts against), no
  duplicate and no row under another portfolio;
* what Airflow's retries cost in credits is printed: the sandbox's count per route and the summary
  task's total; the retries paid again only for reads (no second sync, no second connect).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from bench.load_accounts import all_task_instances, make_accounts, verify_isolation, xcom_value
from tests.helpers.airflow_stack import DAG_ID, AirflowStack, wait_until

pytest_plugins = ["tests.helpers.postgres_server", "tests.helpers.redis_server", "tests.helpers.airflow_stack"]
pytestmark = pytest.mark.slow

ACCOUNTS = 21
TRANSACTIONS = 300
PORTFOLIO_TASKS = ("portfolio.sync", "portfolio.load_value", "portfolio.load_coins", "portfolio.load_transactions")
KILLED, SURVIVOR = "worker-a", "worker-b"
#: Portfolios fully loaded before the kill (so it falls in the middle of the per-portfolio phase).
DONE_BEFORE_KILL = 3
SANDBOX = {"latency_ms": 150.0, "transactions": TRANSACTIONS, "sync_seconds": 1.0}


def portfolios_done(tis: list[dict[str, Any]]) -> int:
    """Portfolios whose four tasks have all succeeded."""
    done = Counter(ti["map_index"] for ti in tis if ti["task_id"] in PORTFOLIO_TASKS and ti["state"] == "success")
    return sum(1 for count in done.values() if count == len(PORTFOLIO_TASKS))


def running_on(tis: list[dict[str, Any]], worker: str) -> list[dict[str, Any]]:
    """Task instances running right now on ``worker``."""
    return [ti for ti in tis if ti["state"] == "running" and ti.get("hostname") == worker]


def test_two_celery_workers_one_killed_mid_run(celery_stack: AirflowStack) -> None:
    stack = celery_stack
    assert stack.workers == (KILLED, SURVIVOR)
    accounts = make_accounts(ACCOUNTS)
    for account in accounts:
        stack.api("POST", "/connections", expect=201, json=account.connection_body())
    original = {key: getattr(stack.sandbox_server.config, key) for key in SANDBOX}
    stack.sandbox_server.update(**SANDBOX)
    before = stack.sandbox_server.stats()
    started = time.monotonic()
    run_id = str(
        stack.trigger({"exchange_conn_ids": [a.conn_id for a in accounts], "sync_poll_seconds": 1})["dag_run_id"]
    )
    try:

        def kill_moment() -> list[dict[str, Any]] | None:
            tis = all_task_instances(stack, run_id)
            if portfolios_done(tis) < DONE_BEFORE_KILL:
                return None
            busy = [ti for ti in running_on(tis, KILLED) if ti["task_id"] in PORTFOLIO_TASKS]
            return busy or None

        victims = wait_until("a portfolio task running on worker-a mid-run", kill_moment, timeout=600, interval=0.3)
        killed_processes = stack.kill_worker(KILLED)
        killed_at = time.monotonic() - started
        print(f"SIGKILLed {KILLED} ({killed_processes} processes) at {killed_at:.0f}s; running on it: ")
        print([(ti["task_id"], ti["map_index"], ti["try_number"]) for ti in victims])

        final = stack.wait_for_run(run_id, timeout=900)
    finally:
        stack.sandbox_server.update(**original)
        if stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"] in ("queued", "running"):
            stack.finish_run(run_id)
    after = stack.sandbox_server.stats()
    tis = all_task_instances(stack, run_id)
    print(f"run {run_id}: {final['state']} after {time.monotonic() - started:.0f}s")
    assert final["state"] == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]

    # Every task ran on one of the two workers, and the tasks of one portfolio on different ones.
    hosts = Counter(ti["hostname"] for ti in tis if ti["state"] == "success")
    print(f"successful task instances per worker: {dict(hosts)}")
    assert set(hosts) == {KILLED, SURVIVOR}, hosts
    per_portfolio: dict[int, set[str]] = {}
    for ti in tis:
        if ti["task_id"] in PORTFOLIO_TASKS:
            per_portfolio.setdefault(ti["map_index"], set()).add(ti["hostname"])
    assert len(per_portfolio) == ACCOUNTS
    split = sorted(index for index, workers in per_portfolio.items() if len(workers) > 1)
    print(f"portfolios whose tasks ran on both workers: {len(split)} of {ACCOUNTS}")
    assert split, per_portfolio

    # The tasks the kill interrupted failed on worker-a and succeeded in a later try on worker-b.
    retried: list[str] = []
    for victim in victims:
        tries = stack.api(
            "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{victim['task_id']}/{victim['map_index']}/tries"
        )["task_instances"]
        by_try = {t["try_number"]: t for t in tries}
        first, last = by_try[victim["try_number"]], by_try[max(by_try)]
        if first["state"] == "success":  # it finished in the instant between the look and the kill
            continue
        assert first["hostname"] == KILLED, first
        assert last["try_number"] > victim["try_number"], tries
        assert (last["state"], last["hostname"]) == ("success", SURVIVOR), last
        retried.append(f"{victim['task_id']}[{victim['map_index']}]")
    print(f"retried after the kill: {retried}")
    assert retried, "no task was interrupted by the kill"

    # Exactly once: one sync and one connect per portfolio, and the warehouse as a LocalExecutor run loads it.
    requests = Counter(after["requests"]) - Counter(before["requests"])
    assert requests["PATCH /portfolio/sync"] == ACCOUNTS, requests
    assert requests["POST /portfolio/exchange"] == ACCOUNTS, requests
    isolation = verify_isolation(stack, accounts, TRANSACTIONS, None)
    print(f"warehouse: {isolation['rows_found']} (expected {isolation['rows_expected']})")
    assert isolation["ok"], isolation["problems"]
    assert isolation["rows_found"] == isolation["rows_expected"]

    # What the retries cost: credits the sandbox counted beyond what the successful tries reported.
    sandbox_credits = int(after["credits_used"]) - int(before["credits_used"])
    summary_credits = int(xcom_value(stack, run_id, "summary")["total_credits"])
    by_route = Counter(after["credits_by_path"]) - Counter(before["credits_by_path"])
    retries = sum(max(0, int(ti["try_number"]) - 1) for ti in tis if ti.get("start_date"))
    print(
        f"credits: sandbox {sandbox_credits}, summary {summary_credits}, sandbox - summary "
        f"{sandbox_credits - summary_credits}; retries {retries}; by route {dict(by_route)}"
    )
    # The retried tries repeat only what a load costs (its GETs), never the 30-credit sync or the connect.
    assert by_route["PATCH /portfolio/sync"] == 30 * ACCOUNTS, by_route
    assert by_route["POST /portfolio/exchange"] == 10 * ACCOUNTS, by_route
