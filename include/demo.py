"""`make demo`: run coinstats_portfolio_sync twice against the local sandbox and a SQLite warehouse.

Prepares a local Airflow home in ``.airflow/demo`` (metadata DB, the connections, variable and pool from
``airflow_settings.yaml``), starts the sandbox on 127.0.0.1:8765, runs ``airflow dags test`` twice and
prints what each run did. Stops everything it started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / ".airflow" / "demo"
SANDBOX_PORT = int(os.environ.get("COINSTATS_SANDBOX_PORT", "8765"))
DAG_ID = "coinstats_portfolio_sync"

os.environ.update(
    {
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME}/airflow.db",
        "COINSTATS_CACHE_DIR": str(HOME / "cache"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]),
    }
)
BIN = Path(sys.executable).parent


def step(message: str) -> None:
    """Print a progress line."""
    print(f"==> {message}", flush=True)


def run(args: list[str], log: Path | None = None) -> None:
    """Run a command; on failure show where its output is and stop."""
    out = log.open("w") if log else subprocess.DEVNULL
    try:
        code = subprocess.run(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    if code != 0:
        where = f"; see {log}" if log else ""
        raise SystemExit(f"command failed ({code}): {' '.join(args[:4])}{where}")


def start_sandbox() -> subprocess.Popen[bytes]:
    """Start the sandbox on the demo port and wait until it answers."""
    ready = HOME / "sandbox.url"
    ready.unlink(missing_ok=True)
    args = ["--port", str(SANDBOX_PORT), "--sync-seconds", "2", "--transactions", "1500"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "include.coinstats_sandbox", *args, "--ready-file", str(ready), "--quiet"],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(
                f"the sandbox did not start on port {SANDBOX_PORT} (is it in use? set COINSTATS_SANDBOX_PORT)"
            )
        time.sleep(0.1)
    return proc


def sandbox_credits() -> int:
    """Credits the sandbox has charged so far (its own accounting)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{SANDBOX_PORT}/_sandbox/stats", timeout=5) as answer:
        return int(json.load(answer)["credits_used"])


def latest_summary() -> dict[str, Any]:
    """The summary task's XCom of the newest run."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run_id = session.scalar(
            select(DagRun.run_id).where(DagRun.dag_id == DAG_ID).order_by(DagRun.id.desc()).limit(1)
        )
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == DAG_ID,
                XComModel.run_id == run_id,
                XComModel.task_id == "summary",
                XComModel.key == "return_value",
            )
        )
    if not isinstance(value, dict):
        raise SystemExit(f"no summary was recorded for {run_id}")
    return value


def compared_tables() -> tuple[str, ...]:
    """The tables compared between the runs: the portfolios and every dataset's table."""
    from coinstats_provider.warehouse.schema import DATASET_TABLES, PORTFOLIOS_TABLE

    return (PORTFOLIOS_TABLE, *DATASET_TABLES.values())


def warehouse_state() -> dict[str, list[tuple[Any, ...]]]:
    """Every compared table without its load timestamps."""
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse
    from coinstats_provider.warehouse.schema import TABLES
    from include.load_settings import parse_settings

    # Outside a task, connections resolve from the environment, not the metadata DB.
    fields = parse_settings(ROOT / "airflow_settings.yaml").connections["coinstats_warehouse"]
    os.environ["AIRFLOW_CONN_COINSTATS_WAREHOUSE"] = json.dumps(fields)
    warehouse = CoinStatsWarehouse("coinstats_warehouse")
    volatile = ("loaded_at", "updated_at", "last_connect_status")
    return {
        t: warehouse.fetch_table(t, exclude=[c for c in TABLES[t].column_names if c in volatile])
        for t in compared_tables()
    }


def main() -> int:
    """Run the demo."""
    HOME.mkdir(parents=True, exist_ok=True)
    (ROOT / "include" / "coinstats_warehouse.db").unlink(missing_ok=True)
    shutil.rmtree(HOME / "cache", ignore_errors=True)
    (HOME / "airflow.db").unlink(missing_ok=True)
    step("initialising the Airflow metadata DB in .airflow/demo")
    run([str(BIN / "airflow"), "db", "migrate"], HOME / "db-migrate.log")
    step("loading connections, variable and pool from airflow_settings.yaml")
    run([sys.executable, "-m", "include.load_settings", "airflow_settings.yaml"])
    step(f"starting the CoinStats sandbox on http://127.0.0.1:{SANDBOX_PORT}")
    sandbox = start_sandbox()
    from coinstats_provider.pipeline import format_summary

    states = []
    try:
        for attempt in (1, 2):
            before = sandbox_credits()
            step(f"run {attempt}: airflow dags test {DAG_ID}")
            started = time.monotonic()
            conf = json.dumps({"sync_poll_seconds": 1})
            run([str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", conf], HOME / f"run-{attempt}.log")
            summary = latest_summary()
            print(format_summary(summary))
            print(f"rows per table: {json.dumps(summary['rows'])}")
            print(
                f"sandbox charged {sandbox_credits() - before} credits; run took {time.monotonic() - started:.0f} s; "
                f"log: {HOME / f'run-{attempt}.log'}"
            )
            states.append(warehouse_state())
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
    identical = states[0] == states[1]
    for table in compared_tables():
        if states[0][table] != states[1][table]:
            changed = len(set(states[0][table]) ^ set(states[1][table]))
            print(f"{table} differs between the runs ({changed} rows differ)")
    counts = {t: len(rows) for t, rows in states[1].items()}
    print(f"warehouse after run 2: {counts}; identical to after run 1: {'yes' if identical else 'NO'}")
    print_try_it()
    return 0 if identical else 1


#: A first query on the demo's warehouse: each account's kind and latest value.
TRY_QUERY = (
    "SELECT p.kind, p.account_conn_id, v.snapshot_date, v.total_value FROM coinstats_portfolios p "
    "JOIN coinstats_portfolio_values v USING (portfolio_id) ORDER BY p.kind, p.account_conn_id;"
)


def print_try_it() -> None:
    """Name the warehouse file and one query to try on it."""
    from include.load_settings import parse_settings

    path = parse_settings(ROOT / "airflow_settings.yaml").connections["coinstats_warehouse"]["host"]
    print(f"warehouse: {path}")
    print(f'try: sqlite3 {path} "{TRY_QUERY}"')


if __name__ == "__main__":
    raise SystemExit(main())
