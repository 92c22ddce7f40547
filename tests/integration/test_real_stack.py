"""``coinstats_portfolio_sync`` on a real Airflow: api-server, scheduler, dag-processor, triggerer.

Everything goes through the REST API as a user (or the UI) would: the run is triggered with conf, the
wait is observed in the triggerer, XComs, rendered fields and task logs are read back and searched for
the canary secrets, and the warehouse rows are checked in PostgreSQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import psycopg2
import pytest

from coinstats_provider.warehouse.schema import DATASETS, DEFAULT_DATASETS
from tests.helpers.airflow_stack import DAG_ID, EXCHANGE_ACCOUNTS, AirflowStack, wait_until
from tests.helpers.canary import assert_no_fragment, new_canary

pytest_plugins = ["tests.helpers.postgres_server", "tests.helpers.airflow_stack"]
pytestmark = pytest.mark.slow

TRIGGER_CLASSPATH = "coinstats_provider.triggers.sync.PortfolioSyncTrigger"
SYNC_TASK = "portfolio.sync"
SYNC_ROUTE = "PATCH /portfolio/sync"
TABLES = (
    "coinstats_portfolios",
    "coinstats_portfolio_values",
    "coinstats_portfolio_coins",
    "coinstats_portfolio_transactions",
)
ACTIVE = ("scheduled", "queued", "running", "deferred", "up_for_retry", "up_for_reschedule", None)


def assert_no_canary(stack: AirflowStack, where: str, *texts: object) -> None:
    """Fail, naming the secret and the place, if any 8-character fragment of a stack canary is in ``texts``."""
    rendered = [text if isinstance(text, str) else json.dumps(text, default=str) for text in texts]
    assert_no_fragment(stack.canaries, *rendered, where=where)


class RunObservation:
    """What was seen while polling a run: task-instance states, the triggers of deferred ones, sync calls."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, int], set[str | None]] = {}
        self.triggers: dict[tuple[str, int], set[str]] = {}
        self.sync_calls = 0

    def record(self, tis: Iterable[dict[str, Any]]) -> None:
        for ti in tis:
            key = (ti["task_id"], ti["map_index"])
            self.states.setdefault(key, set()).add(ti["state"])
            if ti["state"] == "deferred" and ti.get("trigger"):
                self.triggers.setdefault(key, set()).add(ti["trigger"]["classpath"])


@pytest.fixture(scope="module")
def finished_run(airflow_stack: AirflowStack) -> tuple[dict[str, Any], RunObservation, float]:
    """Trigger the DAG with conf through ``POST /dagRuns`` (as the UI does) and poll it to the end."""
    stack = airflow_stack
    wait_until(
        "the DAG to have no active run",
        lambda: not any(run["state"] in ("queued", "running") for run in stack.dag_runs()),
        timeout=360,
        check=stack.check_alive,
    )
    conf = {"exchange_conn_ids": list(EXCHANGE_ACCOUNTS), "sync_poll_seconds": 2}
    sync_calls_before = sandbox_requests(stack, SYNC_ROUTE)
    started = time.monotonic()
    run = stack.trigger(conf)
    assert run["conf"] == conf
    assert run["run_type"] == "manual"
    run_id = run["dag_run_id"]
    seen = RunObservation()

    def finished() -> dict[str, Any] | None:
        seen.record(stack.task_instances(run_id))
        current = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
        return dict(current) if current["state"] in ("success", "failed") else None

    final = wait_until(f"run {run_id} to finish", finished, timeout=360, interval=0.5, check=stack.check_alive)
    seen.record(stack.task_instances(run_id))
    seen.sync_calls = sandbox_requests(stack, SYNC_ROUTE) - sync_calls_before
    return final, seen, time.monotonic() - started


def sandbox_requests(stack: AirflowStack, route: str) -> int:
    """Requests the sandbox has answered on ``route`` (e.g. ``PATCH /portfolio/sync``) so far."""
    return int(stack.sandbox_server.stats()["requests"].get(route, 0))


def stale_executor_event_failed(stack: AirflowStack, run_id: str, map_index: int) -> bool:
    """Whether the scheduler failed a try of this sync task on a stale executor event (``state mismatch``).

    That is Airflow 3.3's race on resumed deferred tasks (apache/airflow#67287, #72716), not ours.
    """
    events = stack.api(
        "GET", "/eventLogs", params={"dag_id": DAG_ID, "run_id": run_id, "task_id": SYNC_TASK, "limit": 100}
    )["event_logs"]
    return any(e["event"] == "state mismatch" and e["map_index"] == map_index for e in events)


def _failure_report(stack: AirflowStack, run_id: str) -> str:
    lines = []
    for ti in stack.task_instances(run_id):
        if ti["state"] != "success":
            lines.append(f"{ti['task_id']}[{ti['map_index']}] {ti['state']}")
            if ti["try_number"]:
                log = stack.task_log(run_id, ti["task_id"], ti["try_number"], ti["map_index"])
                lines.append(log[-3000:])
    return "\n".join(lines)


def test_triggered_run_succeeds_and_defers_to_the_triggerer(
    airflow_stack: AirflowStack, finished_run: tuple[dict[str, Any], RunObservation, float]
) -> None:
    stack = airflow_stack
    run, seen, seconds = finished_run
    run_id = run["dag_run_id"]
    assert run["state"] == "success", _failure_report(stack, run_id)
    print(f"run {run_id} succeeded in {seconds:.1f}s")

    tis = stack.task_instances(run_id)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for ti in tis:
        by_task.setdefault(ti["task_id"], []).append(ti)
    assert len(by_task["connect_exchange_portfolio"]) == len(EXCHANGE_ACCOUNTS)
    # Skipped by design, everything else succeeded: every account fits into one run (no follow-up run),
    # there are no wallets and nothing to prune (empty mappings), and the opt-in datasets are not selected.
    opt_in = [name for name in DATASETS if name not in DEFAULT_DATASETS]
    skipped = {"remaining_accounts_conf", "continue_with_remaining_accounts", "connect_wallet_portfolio"}
    skipped |= {"prune_removed_portfolio", *(f"portfolio.load_{name}" for name in opt_in)}
    states = {task_id: {ti["state"] for ti in group} for task_id, group in by_task.items()}
    expected = {task_id: {"skipped" if task_id in skipped else "success"} for task_id in states}
    assert states == expected, states
    sync_tis = by_task[SYNC_TASK]
    assert sorted(ti["map_index"] for ti in sync_tis) == [0, 1, 2]

    # The wait really ran in the triggerer: every sync task instance was seen deferred on our trigger ...
    for ti in sync_tis:
        key = (SYNC_TASK, ti["map_index"])
        assert "deferred" in seen.states[key], f"{key} never seen deferred: {seen.states[key]}"
        assert seen.triggers.get(key) == {TRIGGER_CLASSPATH}, seen.triggers
        # ... and its log (served by the api-server, merged with the triggerer's part) says so.
        log = stack.task_log(run_id, SYNC_TASK, ti["try_number"], ti["map_index"])
        assert "Pausing task as DEFERRED" in log
        assert "Trigger fired event" in log
        assert "'status': 'success'" in log
        # Resuming after the trigger must not start a new try; only Airflow's own race may cause one.
        if ti["try_number"] != 1:
            assert stale_executor_event_failed(stack, run_id, ti["map_index"]), f"{key} retried:\n{log[-3000:]}"
        # The sync this task started is kept in Airflow's task state store, so a retry would wait for it.
        store = stack.api(
            "GET",
            f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{SYNC_TASK}/state-store/coinstats_sync",
            params={"map_index": ti["map_index"]},
        )
        assert store["value"]["credits"] >= 30, store
    # One CoinStats sync per portfolio (30 credits each), whatever Airflow retried.
    assert seen.sync_calls == len(EXCHANGE_ACCOUNTS)


def test_portfolio_ids_in_xcom_and_warehouse(
    airflow_stack: AirflowStack, finished_run: tuple[dict[str, Any], RunObservation, float]
) -> None:
    stack = airflow_stack
    run_id = finished_run[0]["dag_run_id"]
    base = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
    portfolio_ids = []
    for map_index in range(len(EXCHANGE_ACCOUNTS)):
        entry = stack.api(
            "GET", f"{base}/connect_exchange_portfolio/xcomEntries/return_value", params={"map_index": map_index}
        )
        assert entry["map_index"] == map_index
        value = entry["value"]
        portfolio_id = json.loads(value) if isinstance(value, str) and value.startswith('"') else value
        assert isinstance(portfolio_id, str)
        assert portfolio_id
        portfolio_ids.append(portfolio_id)
    assert len(set(portfolio_ids)) == len(EXCHANGE_ACCOUNTS)

    with psycopg2.connect(stack.warehouse_dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT portfolio_id, exchange_conn_id, connection_id FROM coinstats_portfolios")
        registered = {row[0]: (row[1], row[2]) for row in cur.fetchall()}
        assert set(registered) == set(portfolio_ids)
        assert {value[0]: value[1] for value in registered.values()} == EXCHANGE_ACCOUNTS
        for table in TABLES[1:]:
            cur.execute(f"SELECT portfolio_id, count(*) FROM {table} GROUP BY portfolio_id")  # noqa: S608
            counts = dict(cur.fetchall())
            assert set(counts) == set(portfolio_ids), f"{table}: {counts}"
            assert all(n > 0 for n in counts.values()), f"{table}: {counts}"
        cur.execute("SELECT * FROM coinstats_portfolios")
        assert_no_canary(stack, "the warehouse", cur.fetchall())
    conn.close()


def test_no_secret_in_any_log_xcom_or_rendered_field(
    airflow_stack: AirflowStack, finished_run: tuple[dict[str, Any], RunObservation, float]
) -> None:
    stack = airflow_stack
    run_id = finished_run[0]["dag_run_id"]
    base = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
    tis = stack.task_instances(run_id)
    assert len(tis) >= 1 + 3 + 1 + 3 * 4 + 1
    checked_logs = 0
    for ti in tis:
        where = f"{ti['task_id']}[{ti['map_index']}]"
        assert_no_canary(stack, f"rendered fields of {where}", ti)
        tries = stack.api("GET", f"{base}/{ti['task_id']}/{ti['map_index']}/tries")["task_instances"]
        for try_number in sorted({t["try_number"] for t in tries}):
            log = stack.task_log(run_id, ti["task_id"], try_number, ti["map_index"])
            assert log.strip(), f"empty log for {where} try {try_number}"
            assert_no_canary(stack, f"the log of {where} try {try_number}", log)
            checked_logs += 1
    assert checked_logs >= len(tis)

    # Every task and trigger log file on disk too (including any try the REST API no longer lists).
    log_files = [path for path in (stack.root / "logs").rglob("*") if path.is_file()]
    assert len(log_files) >= len(tis)
    for path in log_files:
        assert_no_canary(stack, f"log file {path.relative_to(stack.root)}", path.read_text(errors="replace"))

    entries = stack.api("GET", f"{base}/~/xcomEntries", params={"limit": 1000})["xcom_entries"]
    assert len(entries) >= len(EXCHANGE_ACCOUNTS)
    for entry in entries:
        value = stack.api(
            "GET",
            f"{base}/{entry['task_id']}/xcomEntries/{entry['key']}",
            params={"map_index": entry["map_index"]},
        )
        assert_no_canary(stack, f"XCom {entry['task_id']}[{entry['map_index']}].{entry['key']}", value)

    # The components' own logs (scheduler, triggerer, api-server, dag-processor) too.
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert_no_canary(stack, f"the {component} log", stack.log_file(component).read_text(errors="replace"))


def _connection_bodies(stack: AirflowStack) -> dict[str, dict[str, Any]]:
    return {
        "coinstats": {
            "connection_id": "coinstats_rest_test",
            "conn_type": "coinstats",
            "host": stack.sandbox_url,
            "password": stack.canaries["api_key"],
            "extra": json.dumps({"timeout": 5, "max_retries": 1}),
        },
        "coinstats_exchange": {
            "connection_id": "coinstats_exchange_rest_test",
            "conn_type": "coinstats_exchange",
            "login": stack.canaries["coinstats_exchange_okx.login"],
            "password": stack.canaries["coinstats_exchange_okx.password"],
            "extra": json.dumps(
                {"connection_id": "okx", "passphrase": stack.canaries["coinstats_exchange_okx.passphrase"]}
            ),
        },
    }


@pytest.mark.parametrize("conn_type", ["coinstats", "coinstats_exchange"])
def test_connection_test_through_rest_api(airflow_stack: AirflowStack, conn_type: str) -> None:
    body = _connection_bodies(airflow_stack)[conn_type]
    result = airflow_stack.api("POST", "/connections/test", json=body)
    assert result["status"] is True, result["message"]
    expected = {"coinstats": "Connected to CoinStats at", "coinstats_exchange": "Exchange 'okx' is supported"}
    assert expected[conn_type] in result["message"]
    assert_no_canary(airflow_stack, f"the {conn_type} test message", result["message"])


def test_connection_test_reports_a_bad_key_without_echoing_it(airflow_stack: AirflowStack) -> None:
    wrong_key = new_canary("WRNG")
    body = {**_connection_bodies(airflow_stack)["coinstats"], "password": wrong_key}
    result = airflow_stack.api("POST", "/connections/test", json=body)
    assert result["status"] is False
    assert_no_fragment({"wrong key": wrong_key, **airflow_stack.canaries}, result["message"])


def test_provider_and_connection_forms_are_registered(airflow_stack: AirflowStack) -> None:
    providers = airflow_stack.api("GET", "/providers", params={"limit": 100})["providers"]
    assert "airflow-provider-coinstats" in {p["package_name"] for p in providers}

    meta = airflow_stack.client.get("/ui/connections/hook_meta")
    assert meta.status_code == 200, meta.text[:500]
    by_type = {item["connection_type"]: item for item in meta.json()}
    assert by_type["coinstats"]["hook_name"] == "CoinStats"
    assert by_type["coinstats"]["standard_fields"]["password"]["title"] == "CoinStats API key"
    assert by_type["coinstats_exchange"]["standard_fields"]["login"]["title"] == "Exchange API key"
    assert "passphrase" in json.dumps(by_type["coinstats_exchange"]["extra_fields"])
