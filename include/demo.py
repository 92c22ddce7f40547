"""`make demo`: run coinstats_portfolio_sync twice against the local sandbox and a SQLite warehouse.

Prepares a local Airflow home in ``.airflow/demo`` (metadata DB, the connections, variable and pool from
``airflow_settings.yaml``), starts the sandbox on 127.0.0.1:8765, runs ``airflow dags test`` twice and
prints what each run did. After each sync run it runs the downstream DAG ``coinstats_portfolio_report``
(which a scheduler starts by itself from the sync's Asset events) and prints its table. Then it names the warehouse
file and a query to try on it. Stops everything it started.

``--datasets chart,snapshot`` (``make demo DATASETS=chart,snapshot``) adds opt-in datasets to the default
``value``, ``coins``, ``transactions``; ``--datasets all`` selects every dataset. Without it the demo costs
what it always did.
"""

from __future__ import annotations

import argparse
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
REPORT_DAG_ID = "coinstats_portfolio_report"

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


def asset_events(dag_id: str) -> dict[str, int]:
    """Asset events the newest run of ``dag_id`` emitted, per Asset name.

    :param dag_id: The DAG whose newest run is read.
    """
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        run_id = session.scalar(
            select(DagRun.run_id).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)
        )
        rows = session.execute(
            select(AssetModel.name, func.count())
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .where(AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id)
            .group_by(AssetModel.name)
        ).all()
    return {str(name): int(count) for name, count in rows}


def report_table() -> list[tuple[Any, ...]]:
    """Every row of the daily report table, by portfolio and date."""
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse
    from coinstats_provider.warehouse.schema import REPORT_TABLE

    columns = "portfolio_id, report_date, currency, total_value, value_change, coin_count, transaction_count"
    conn = CoinStatsWarehouse("coinstats_warehouse").hook.get_conn()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT {columns} FROM {REPORT_TABLE} ORDER BY portfolio_id, report_date")  # noqa: S608
        return [tuple(row) for row in cur.fetchall()]
    finally:
        conn.close()


def run_report(attempt: int) -> list[tuple[Any, ...]]:
    """Run the report DAG after a sync run and print its table.

    :param attempt: The sync run it follows (for the log file name).
    """
    events = asset_events(DAG_ID)
    print(f"asset events of the sync run: {json.dumps(events)}; they schedule {REPORT_DAG_ID}")
    step(f"run {attempt}: airflow dags test {REPORT_DAG_ID}")
    run([str(BIN / "airflow"), "dags", "test", REPORT_DAG_ID], HOME / f"report-{attempt}.log")
    rows = report_table()
    print(f"{'portfolio':<26} {'date':<10} {'cur':<4} {'total value':>16} {'change':>12} {'coins':>5} {'txns':>5}")
    for pid, day, currency, total, change, coins, txns in rows:
        shown = "-" if change is None else str(change)
        print(f"{pid:<26} {day!s:<10} {currency or '':<4} {total!s:>16} {shown:>12} {coins:>5} {txns:>5}")
    return rows


def demo_conf(datasets: str | None) -> dict[str, Any]:
    """The run conf: fast polls, plus the datasets ``--datasets`` names (added to the default ones).

    :param datasets: ``all``, or dataset names separated by commas; ``None`` keeps the DAG's default.
    """
    conf: dict[str, Any] = {"sync_poll_seconds": 1}
    if not datasets:
        return conf
    from coinstats_provider.warehouse.schema import DATASETS, DEFAULT_DATASETS

    names = list(DATASETS) if datasets.strip() == "all" else [n.strip() for n in datasets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        raise SystemExit(f"unknown dataset {unknown[0]!r}: choose from {', '.join(DATASETS)} or all")
    conf["datasets"] = [d for d in DATASETS if d in {*DEFAULT_DATASETS, *names}]
    return conf


def warehouse_file() -> Path:
    """The SQLite file of the demo's warehouse connection (``airflow_settings.yaml``)."""
    from include.load_settings import parse_settings

    host = Path(str(parse_settings(ROOT / "airflow_settings.yaml").connections["coinstats_warehouse"]["host"]))
    return host if host.is_absolute() else ROOT / host


def try_query() -> str:
    """One query worth running on the demo warehouse: each account's kind and portfolio value, largest first."""
    from coinstats_provider.warehouse.schema import PORTFOLIOS_TABLE, VALUES_TABLE

    return (
        "SELECT p.kind, p.account_conn_id, v.snapshot_date, v.total_value "  # noqa: S608
        f"FROM {VALUES_TABLE} AS v JOIN {PORTFOLIOS_TABLE} AS p USING (portfolio_id) "
        "ORDER BY CAST(v.total_value AS REAL) DESC;"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the demo.

    :param argv: Command-line arguments (``--datasets``).
    """
    parser = argparse.ArgumentParser(prog="python -m include.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        help="opt-in datasets to add, comma-separated (chart, defi, snapshot), or 'all'",
    )
    conf = demo_conf(parser.parse_args(argv).datasets)
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
    reports = []
    try:
        for attempt in (1, 2):
            before = sandbox_credits()
            step(f"run {attempt}: airflow dags test {DAG_ID}")
            started = time.monotonic()
            run([str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)], HOME / f"run-{attempt}.log")
            summary = latest_summary()
            print(format_summary(summary))
            print(f"rows per table: {json.dumps(summary['rows'])}")
            print(
                f"sandbox charged {sandbox_credits() - before} credits; run took {time.monotonic() - started:.0f} s; "
                f"log: {HOME / f'run-{attempt}.log'}"
            )
            states.append(warehouse_state())
            reports.append(run_report(attempt))
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
    identical = states[0] == states[1]
    print(f"report after run 2 identical to after run 1: {'yes' if reports[0] == reports[1] else 'NO'}")
    identical = identical and reports[0] == reports[1]
    for table in compared_tables():
        if states[0][table] != states[1][table]:
            changed = len(set(states[0][table]) ^ set(states[1][table]))
            print(f"{table} differs between the runs ({changed} rows differ)")
    counts = {t: len(rows) for t, rows in states[1].items()}
    print(f"warehouse after run 2: {counts}; identical to after run 1: {'yes' if identical else 'NO'}")
    database = warehouse_file()
    print(f"warehouse file: {database}")
    print(f'try: sqlite3 {database} "{try_query()}"')
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
