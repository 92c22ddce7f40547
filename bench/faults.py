"""Faults: the main DAG under >= 30 % injected faults ends with the same warehouse as a fault-free run.

Runs ``coinstats_portfolio_sync`` in-process with ``dag.test()`` (the way ``tests/integration/test_pipeline_e2e.py``
does) against the CoinStats sandbox (started in this process), with a throw-away ``AIRFLOW_HOME`` and a
SQLite metadata database. Three exchange accounts with distinct credentials: binance, okx (with a
passphrase) and kraken.

1. A fault-free run loads warehouse A (SQLite): the reference tables.
2. ``--runs`` runs with ``--faults`` (default 0.3) spread evenly over the sandbox's five fault kinds (429
   without ``Retry-After``, 500/502/503/504, TCP reset, a response slower than the client timeout, JSON
   cut in half), each with its own fault seed, load warehouse B. The first starts like the reference (an
   empty B, and the sandbox has forgotten every portfolio, so the accounts are connected anew); the
   others are reruns into B.

The ``coinstats_default`` connection has a client timeout (``--timeout``, 1.5 s) shorter than the
sandbox's ``slow_seconds`` (``--slow-seconds``, 2 s), so every slow answer becomes a client timeout;
``max_retries`` 10 and a short backoff (0.01..0.05 s) keep the run quick.

After every run: the run's state; its requests, by outcome, from a ledger kept inside the sandbox; the
client-side retries (counted in ``CoinStatsHook._backoff``, by cause); Airflow task retries (task
instances with ``try_number`` > 1); credits charged by the sandbox vs the DAG summary's
``total_credits``; and B compared with A on every column except the volatile ones (``loaded_at``,
``updated_at``, ``last_connect_status``): rows lost, duplicated (per primary key), extra and changed.
Exits 1 if a run did not succeed, a table differs, or no faults (or not every kind) were injected.

``python -m bench.faults [--runs 5] [--transactions 2500] [--faults 0.3] [--json out.json] [--log-dir DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench._common import (
    API_KEY,
    ROOT,
    machine_info,
    prepare_airflow_env,
    print_machine,
    set_connection,
    table,
    temp_dir,
)

DAG_ID = "coinstats_portfolio_sync"
TABLE_NAMES = (
    "coinstats_portfolios",
    "coinstats_portfolio_values",
    "coinstats_portfolio_coins",
    "coinstats_portfolio_transactions",
)
VOLATILE = ("loaded_at", "updated_at", "last_connect_status")
FAULT_KINDS = ("429", "5xx", "reset", "slow", "truncate")
#: (conn id, CoinStats exchange id, extra fields); credentials are distinct per account.
ACCOUNTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("coinstats_exchange_binance", "binance", {}),
    ("coinstats_exchange_okx", "okx", {"passphrase": "faults-okx-passphrase"}),
    ("coinstats_exchange_kraken", "kraken", {}),
)
#: Hook retry cause -> the sandbox fault kind that produces it.
CAUSE_OF_KIND = {"429": "429", "5xx": "5xx", "reset": "connection", "slow": "timeout", "truncate": "bad json"}


# -- instrumentation (wraps objects of this process only; no project file changes) ---------------


class SandboxLedger:
    """One record per API request the sandbox received: route, injected fault, status, credits charged.

    Wraps ``SandboxApp.plan_fault`` (called once per API request, draws the fault) and
    ``SandboxApp.handle_api`` (authenticates, charges and answers; not called for 429/5xx/reset faults).
    The charge is the sandbox's own route cost, for 2xx answers only, as ``SandboxApp._settle`` keeps it.
    """

    def __init__(self, app: Any) -> None:
        from include.coinstats_sandbox import server

        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        plan_fault, handle_api = app.plan_fault, app.handle_api

        def planned(route_key: str) -> tuple[str | None, int]:
            kind, code = plan_fault(route_key)
            record: dict[str, Any] = {"route": route_key, "fault": kind or "none", "status": None, "charged": 0}
            if kind == "429":
                record["status"] = 429
            elif kind == "5xx":
                record["status"] = code
            self._local.record = record
            with self._lock:
                self.records.append(record)
            return kind, code

        def handled(method: str, path: str, query: dict[str, str], body: bytes, api_key: str | None) -> Any:
            response = handle_api(method, path, query, body, api_key)
            record = getattr(self._local, "record", None)
            if record is not None:
                record["status"] = response.status
                route = server._ROUTES.get((method, path))
                if route is not None and 200 <= response.status < 300:
                    record["charged"] = route.cost(query)
            return response

        app.plan_fault = planned
        app.handle_api = handled

    def mark(self) -> int:
        """Position to slice this run's records from."""
        with self._lock:
            return len(self.records)

    def since(self, mark: int) -> list[dict[str, Any]]:
        """Records after :meth:`mark`."""
        with self._lock:
            return [dict(r) for r in self.records[mark:]]


class RetryCounter:
    """Counts client-side retries by cause, by wrapping ``CoinStatsHook._backoff`` (sync and async paths)."""

    def __init__(self) -> None:
        from coinstats_provider import exceptions
        from coinstats_provider.hooks.coinstats import CoinStatsHook

        self.counts: Counter[str] = Counter()
        original = CoinStatsHook._backoff

        def classify(error: Exception) -> str:
            if isinstance(error, exceptions.CoinStatsRateLimitError):
                return "429"
            if isinstance(error, exceptions.CoinStatsServerError):
                return "5xx"
            if isinstance(error, exceptions.CoinStatsTransportError):
                return "timeout" if "Timeout" in str(error) else "connection"
            if isinstance(error, exceptions.CoinStatsResponseError):
                return "bad json"
            return type(error).__name__

        def counted(hook: Any, method: str, path: str, attempt: int, error: Any, retry_after: float | None) -> float:
            try:
                delay = original(hook, method, path, attempt, error, retry_after)
            except BaseException:
                self.counts[f"gave up: {classify(error)}"] += 1
                raise
            self.counts[classify(error)] += 1
            return float(delay)

        CoinStatsHook._backoff = counted  # type: ignore[method-assign,assignment]

    def snapshot(self) -> Counter[str]:
        """A copy of the counts so far."""
        return Counter(self.counts)


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to ``path`` while inside."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# -- warehouse comparison ---------------------------------------------------------------------------


def read_tables(path: Path) -> dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    """Every warehouse table of the SQLite file at ``path``: (columns without volatile ones, rows)."""
    from coinstats_provider.warehouse.schema import TABLES

    out: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]] = {}
    if not path.exists():
        return {name: ((), []) for name in TABLE_NAMES}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for name in TABLE_NAMES:
            columns = tuple(c for c in TABLES[name].column_names if c not in VOLATILE)
            try:
                rows = con.execute(f"SELECT {', '.join(columns)} FROM {name}").fetchall()  # noqa: S608
            except sqlite3.OperationalError:
                rows = []
            out[name] = (columns, rows)
    finally:
        con.close()
    return out


def compare_table(name: str, ref: list[tuple[Any, ...]], got: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Rows of ``got`` against ``ref``, by the table's primary key and by full content."""
    from coinstats_provider.warehouse.schema import TABLES

    spec = TABLES[name]
    columns = [c for c in spec.column_names if c not in VOLATILE]
    key_at = [columns.index(c) for c in spec.primary_key]

    def by_key(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[tuple[Any, ...]]]:
        grouped: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        for row in rows:
            grouped.setdefault(tuple(row[i] for i in key_at), []).append(row)
        return grouped

    ref_keys, got_keys = by_key(ref), by_key(got)
    changed = sum(
        1
        for key in ref_keys.keys() & got_keys.keys()
        if sorted(map(repr, ref_keys[key])) != sorted(map(repr, got_keys[key]))
    )
    return {
        "reference_rows": len(ref),
        "rows": len(got),
        "lost": sum(len(rows) for key, rows in ref_keys.items() if key not in got_keys),
        "duplicated": sum(len(rows) - 1 for rows in got_keys.values()),
        "extra": sum(len(rows) for key, rows in got_keys.items() if key not in ref_keys),
        "changed": changed,
        "identical": Counter(map(repr, ref)) == Counter(map(repr, got)),
    }


def compare(ref_path: Path, got_path: Path) -> dict[str, dict[str, Any]]:
    """Every table of ``got_path`` against ``ref_path``."""
    ref, got = read_tables(ref_path), read_tables(got_path)
    return {name: compare_table(name, ref[name][1], got[name][1]) for name in TABLE_NAMES}


# -- one DAG run -----------------------------------------------------------------------------------


def summary_xcom(dag_run: Any) -> dict[str, Any] | None:
    """The ``summary`` task's return value (the DAG's own report of rows and credits)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.execute(
            select(XComModel.value).where(
                XComModel.run_id == dag_run.run_id,
                XComModel.dag_id == DAG_ID,
                XComModel.task_id == "summary",
                XComModel.key == "return_value",
            )
        ).scalar_one_or_none()
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else None


def delta(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, int]:
    """Per-key difference of two counters, without zero entries."""
    out = {k: int(v) - int(before.get(k, 0)) for k, v in after.items()}
    return {k: v for k, v in sorted(out.items()) if v}


def run_dag(
    *,
    label: str,
    dag: Any,
    sandbox: Any,
    ledger: SandboxLedger,
    retries: RetryCounter,
    warehouse: Path,
    faults: float,
    seed: int,
    args: argparse.Namespace,
    log_dir: Path,
    fresh: bool = False,
) -> dict[str, Any]:
    """One ``dag.test()`` run with the sandbox's faults set to ``faults``; returns what was measured.

    ``fresh``: the sandbox forgets its portfolios and counters first, so every account is connected anew.
    """
    from coinstats_provider.hooks import support_cache

    set_connection("coinstats_warehouse", conn_type="sqlite", host=str(warehouse))
    # Every run does the same work: the exchange list is fetched once per run (cold in-process and disk cache).
    support_cache.clear()
    shutil.rmtree(os.environ["COINSTATS_CACHE_DIR"], ignore_errors=True)
    sandbox.update(faults=faults, fault_seed=seed, slow_seconds=args.slow_seconds, retry_after=None)
    if fresh:
        sandbox.reset()
    before, mark, retries_before = sandbox.stats(), ledger.mark(), retries.snapshot()
    log_path = log_dir / f"{label}.log"
    conf = {
        "exchange_conn_ids": [conn_id for conn_id, _, _ in ACCOUNTS],
        "sync_poll_seconds": args.poll_seconds,
        "sync_timeout_minutes": 5,
    }
    started = time.monotonic()
    error = None
    dag_run = None
    with output_to(log_path):
        try:
            dag_run = dag.test(run_conf=conf)
        except Exception as exc:  # reported, and counted as a failed run
            error = f"{type(exc).__name__}: {exc}"
    wall = time.monotonic() - started
    # A slow answer whose client gave up is still being served: let it finish before counting.
    time.sleep(args.slow_seconds + 0.5)
    after = sandbox.stats()
    records = ledger.since(mark)
    client_retries = dict(sorted((retries.snapshot() - retries_before).items()))

    state = str(dag_run.state) if dag_run is not None else f"error ({error})"
    task_instances = dag_run.get_task_instances() if dag_run is not None else []
    task_retries = sorted(
        (f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id, int(ti.try_number))
        for ti in task_instances
        if int(ti.try_number or 0) > 1
    )
    not_ok = sorted(
        {f"{ti.task_id}: {ti.state}" for ti in task_instances if str(ti.state) not in ("success", "skipped")}
    )
    summary = summary_xcom(dag_run) if dag_run is not None else None

    by_fault = Counter(r["fault"] for r in records)
    slow_charged = sum(r["charged"] for r in records if r["fault"] == "slow")
    truncate_charged = sum(r["charged"] for r in records if r["fault"] == "truncate")
    statuses = Counter(str(r["status"]) for r in records if r["fault"] == "none")
    five_xx = Counter(str(r["status"]) for r in records if r["fault"] == "5xx")
    result: dict[str, Any] = {
        "label": label,
        "warehouse": warehouse.name,
        "faults_configured": faults,
        "fault_seed": seed,
        "state": state,
        "not_ok_tasks": not_ok,
        "wall_s": round(wall, 2),
        "requests": len(records),
        "requests_by_route": delta(after["requests"], before["requests"]),
        "clean_answers_by_status": dict(sorted(statuses.items())),
        "faults_by_kind": {kind: by_fault.get(kind, 0) for kind in FAULT_KINDS},
        "faults_by_kind_sandbox": delta(after["faults"], before["faults"]),
        "5xx_codes": dict(sorted(five_xx.items())),
        "faults_by_route": dict(
            sorted(Counter(f"{r['route']} {r['fault']}" for r in records if r["fault"] != "none").items())
        ),
        "client_retries": client_retries,
        "task_retries": task_retries,
        "credits_charged": int(after["credits_used"]) - int(before["credits_used"]),
        "credits_charged_ledger": sum(r["charged"] for r in records),
        "credits_by_route": delta(after["credits_by_path"], before["credits_by_path"]),
        "credits_slow_unseen": slow_charged,
        "credits_truncated": truncate_charged,
        "credits_truncated_sync": sum(
            r["charged"] for r in records if r["fault"] == "truncate" and r["route"] == "PATCH /portfolio/sync"
        ),
        "summary_total_credits": summary["total_credits"] if summary else None,
        "summary_rows": summary["rows"] if summary else None,
        "summary_statuses": sorted(p["status"] for p in summary["portfolios"]) if summary else None,
        "log": str(log_path),
    }
    result["fault_count"] = sum(result["faults_by_kind"].values())
    result["fault_share"] = result["fault_count"] / result["requests"] if result["requests"] else 0.0
    if error is not None:
        result["error"] = error
    return result


def log_tail(path: str, lines: int = 40) -> str:
    """The last ``lines`` lines of a run's log."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- report ----------------------------------------------------------------------------------------


def report(runs: Sequence[dict[str, Any]], reference: dict[str, Any]) -> None:
    """Print the per-run tables."""
    print("\nrequests and retries (requests and faults: the sandbox's per-request ledger; client retries:")
    print("CoinStatsHook retries by cause; task retries: task instances with try_number > 1):")
    rows = []
    for run in runs:
        f = run["faults_by_kind"]
        retries = run["client_retries"]
        rows.append(
            [
                run["label"],
                run["state"],
                f"{run['wall_s']:.1f}",
                run["requests"],
                sum(run["clean_answers_by_status"].values()),
                f["429"],
                f["5xx"],
                f["reset"],
                f["slow"],
                f["truncate"],
                f"{100 * run['fault_share']:.1f}",
                sum(v for k, v in retries.items() if not k.startswith("gave up")),
                run["requests"] - reference["requests"] if run is not reference else "",
                len(run["task_retries"]),
            ]
        )
    print(
        table(
            [
                "run",
                "state",
                "wall s",
                "requests",
                "answered (no fault)",
                "429",
                "5xx",
                "reset",
                "slow",
                "truncated",
                "fault share %",
                "client retries",
                "requests - fault-free",
                "task retries",
            ],
            rows,
        )
    )
    print("\ncredits and warehouse (B compared with A on all non-volatile columns, per primary key):")
    rows = []
    for run in runs:
        comparison = run.get("comparison")
        if comparison is None:
            lost = dup = extra = changed = ""
            same = "(reference)"
        else:
            lost = sum(c["lost"] for c in comparison.values())
            dup = sum(c["duplicated"] for c in comparison.values())
            extra = sum(c["extra"] for c in comparison.values())
            changed = sum(c["changed"] for c in comparison.values())
            same = "yes" if all(c["identical"] for c in comparison.values()) else "NO"
        rows.append(
            [
                run["label"],
                run["credits_charged"],
                run["summary_total_credits"],
                run["credits_slow_unseen"],
                run["credits_truncated"],
                run["credits_charged"] - (run["summary_total_credits"] or 0),
                run["credits_charged"] - reference["credits_charged"] if run is not reference else "",
                run["table_rows"],
                lost,
                dup,
                extra,
                changed,
                same,
            ]
        )
    print(
        table(
            [
                "run",
                "credits charged (sandbox)",
                "credits in DAG summary",
                "charged, answer timed out (slow)",
                "charged, answer truncated",
                "charged - summary",
                "charged - fault-free",
                "rows (portfolios/values/coins/txns)",
                "lost",
                "duplicated",
                "extra",
                "changed",
                "identical",
            ],
            rows,
        )
    )


def main() -> None:
    """Run the fault-free reference and the faulty runs; print the tables; exit 1 on any failure."""
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="faulty runs into warehouse B (default 5)")
    parser.add_argument("--faults", type=float, default=0.3, help="total fault rate, spread over 5 kinds")
    parser.add_argument("--transactions", type=int, default=2500, help="transactions per portfolio")
    parser.add_argument("--sync-seconds", type=float, default=0.5, help="duration of a sandbox sync")
    parser.add_argument("--poll-seconds", type=float, default=0.2, help="the DAG's sync_poll_seconds")
    parser.add_argument("--timeout", type=float, default=1.5, help="client timeout per request (s)")
    parser.add_argument("--slow-seconds", type=float, default=2.0, help="delay of a slow fault (s)")
    parser.add_argument("--max-retries", type=int, default=10, help="client retries per request")
    parser.add_argument("--seed", type=int, default=1, help="fault seed of the first faulty run (+1 per run)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep each run's Airflow output here")
    args = parser.parse_args()
    if args.slow_seconds <= args.timeout:
        parser.error("--slow-seconds must exceed --timeout, or slow answers are not client timeouts")

    info = machine_info()
    print_machine(info)
    extra = {"timeout": args.timeout, "max_retries": args.max_retries, "backoff_base": 0.01, "backoff_max": 0.05}
    settings = {
        "accounts": [f"{conn_id} ({exchange})" for conn_id, exchange, _ in ACCOUNTS],
        "transactions_per_portfolio": args.transactions,
        "sync_seconds": args.sync_seconds,
        "sync_poll_seconds": args.poll_seconds,
        "coinstats_default_extra": extra,
        "faults": args.faults,
        "fault_rate_per_kind": args.faults / len(FAULT_KINDS),
        "slow_seconds": args.slow_seconds,
        "retry_after": None,
        "runs": args.runs,
    }
    print(f"settings: {json.dumps(settings)}")
    print(f"started: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC")
    results: dict[str, Any] = {"machine": info, "settings": settings, "runs": []}
    problems: list[str] = []
    with temp_dir("coinstats-bench-faults-") as home:
        prepare_airflow_env(home)
        log_dir = args.log_dir.resolve() if args.log_dir else home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        migrate = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            check=False,
        )
        if migrate.returncode != 0:
            print(migrate.stdout[-3000:] + migrate.stderr[-3000:])
            raise SystemExit("airflow db migrate failed")

        from include.coinstats_sandbox import SandboxConfig, SandboxServer

        config = SandboxConfig(
            api_keys=(API_KEY,),
            credits=100_000_000,
            sync_seconds=args.sync_seconds,
            transactions=args.transactions,
            slow_seconds=args.slow_seconds,
            quiet=True,
        )
        with SandboxServer(config) as sandbox:
            ledger = SandboxLedger(sandbox.app)
            set_connection(
                "coinstats_default", conn_type="coinstats", host=sandbox.base_url, password=API_KEY, extra=extra
            )
            for conn_id, exchange, fields in ACCOUNTS:
                set_connection(
                    conn_id,
                    conn_type="coinstats_exchange",
                    login=f"faults-{exchange}-key",
                    password=f"faults-{exchange}-secret",
                    extra={"connection_id": exchange, **fields},
                )
            from airflow.dag_processing.dagbag import DagBag

            with output_to(log_dir / "dagbag.log"):
                bag = DagBag(dag_folder=str(ROOT / "dags"))
            if bag.import_errors:
                raise SystemExit(f"DAG import errors: {bag.import_errors}")
            dag = bag.dags[DAG_ID]
            retries = RetryCounter()
            warehouse_a, warehouse_b = home / "warehouse_a.db", home / "warehouse_b.db"
            common: dict[str, Any] = {
                "dag": dag,
                "sandbox": sandbox,
                "ledger": ledger,
                "retries": retries,
                "args": args,
                "log_dir": log_dir,
            }

            print("run 0: fault-free reference into warehouse A ...", flush=True)
            reference = run_dag(label="fault-free (A)", warehouse=warehouse_a, faults=0.0, seed=0, fresh=True, **common)
            ref_tables = read_tables(warehouse_a)
            reference["table_rows"] = "/".join(str(len(ref_tables[name][1])) for name in TABLE_NAMES)
            own = {name: compare_table(name, ref_tables[name][1], ref_tables[name][1]) for name in TABLE_NAMES}
            reference["duplicated_keys"] = sum(c["duplicated"] for c in own.values())
            results["runs"].append(reference)
            expected_txns = len(ACCOUNTS) * args.transactions
            if reference["state"] != "success":
                problems.append(f"the fault-free run ended {reference['state']}")
            if len(ref_tables["coinstats_portfolio_transactions"][1]) != expected_txns:
                problems.append(
                    f"the fault-free run loaded {len(ref_tables['coinstats_portfolio_transactions'][1])} "
                    f"transactions, expected {expected_txns}"
                )
            if reference["duplicated_keys"]:
                problems.append("warehouse A has duplicated keys")
            print(
                f"  {reference['state']} in {reference['wall_s']:.1f} s, {reference['requests']} requests, "
                f"rows {reference['table_rows']}, connect statuses {reference['summary_statuses']}",
                flush=True,
            )
            if reference["state"] != "success":
                print(log_tail(reference["log"]))

            for index in range(1, args.runs + 1):
                seed = args.seed + index - 1
                label = f"faulty {index} (B{', empty' if index == 1 else ', rerun'})"
                # Run 1 starts like run 0: an empty warehouse and a CoinStats account that has no portfolios.
                print(f"run {index}: faults {args.faults:g}, seed {seed}, into warehouse B ...", flush=True)
                run = run_dag(
                    label=label, warehouse=warehouse_b, faults=args.faults, seed=seed, fresh=index == 1, **common
                )
                comparison = compare(warehouse_a, warehouse_b)
                run["comparison"] = comparison
                got = read_tables(warehouse_b)
                run["table_rows"] = "/".join(str(len(got[name][1])) for name in TABLE_NAMES)
                results["runs"].append(run)
                identical = all(c["identical"] for c in comparison.values())
                print(
                    f"  {run['state']} in {run['wall_s']:.1f} s, {run['requests']} requests, "
                    f"{run['fault_count']} faults ({100 * run['fault_share']:.1f} %), "
                    f"connect statuses {run['summary_statuses']}, "
                    f"tables identical: {'yes' if identical else 'NO'}",
                    flush=True,
                )
                if run["state"] != "success":
                    problems.append(f"{label} ended {run['state']}: {run['not_ok_tasks']}")
                    print(log_tail(run["log"]))
                if not identical:
                    problems.append(f"{label}: warehouse B differs from A: {comparison}")
            sandbox.update(faults=0.0)

    runs = results["runs"]
    faulty = runs[1:]
    report(runs, reference)
    total_requests = sum(r["requests"] for r in faulty)
    total_faults = Counter[str]()
    for r in faulty:
        total_faults.update(r["faults_by_kind"])
    fault_count = sum(total_faults.values())
    retries_total: Counter[str] = Counter()
    for r in faulty:
        retries_total.update(r["client_retries"])
    print(
        f"\nall faulty runs: {total_requests} requests, {fault_count} faults injected "
        f"({100 * fault_count / max(total_requests, 1):.1f} %): {dict(total_faults)}; "
        f"5xx codes {dict(sum((Counter(r['5xx_codes']) for r in faulty), Counter()))}"
    )
    by_route: Counter[str] = Counter()
    for r in faulty:
        by_route.update(r["faults_by_route"])
    print(f"faults by route and kind: {dict(sorted(by_route.items()))}")
    print(f"client retries by cause: {dict(sorted(retries_total.items()))}")
    # A truncated 2xx answer to PATCH /portfolio/sync is not retried: the sync has started (hook need_body).
    unretried = Counter({"truncate": by_route.get("PATCH /portfolio/sync truncate", 0)})
    expected = total_faults - unretried
    matched = all(retries_total.get(CAUSE_OF_KIND[kind], 0) == expected[kind] for kind in FAULT_KINDS)
    print(
        "each injected fault cost exactly one client retry of the same cause, except truncated sync answers "
        f"({unretried['truncate']}), which are not re-sent: " + ("yes" if matched else "NO (see the raw output)")
    )
    gaps = {
        r["label"]: r["credits_charged"] - r["summary_total_credits"] - r["credits_slow_unseen"]
        for r in runs
        if r["summary_total_credits"] is not None
    }
    print(
        "credits: sandbox charged = DAG summary + credits of slow answers the client had given up on, in every run: "
        + ("yes" if all(gap == 0 for gap in gaps.values()) and len(gaps) == len(runs) else "NO")
    )
    for r in runs:
        gap = gaps.get(r["label"])
        if gap:
            print(
                f"  {r['label']}: the summary misses {gap} more credits; truncated 2xx answers to "
                f"PATCH /portfolio/sync in this run were charged {r['credits_truncated_sync']} credits"
            )
    print(
        f"ledger vs sandbox counters: requests "
        f"{'equal' if all(r['requests'] == sum(r['requests_by_route'].values()) for r in runs) else 'DIFFER'}, "
        f"credits {'equal' if all(r['credits_charged'] == r['credits_charged_ledger'] for r in runs) else 'DIFFER'}"
    )
    if faulty and fault_count == 0:
        problems.append("no faults were injected")
    missing = [kind for kind in FAULT_KINDS if faulty and total_faults[kind] == 0]
    if missing:
        problems.append(f"fault kinds never injected: {missing}")
    print(f"finished: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC")
    print("\nraw:")
    raw = {k: v for k, v in results.items() if k != "machine"}
    print(json.dumps(raw, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if problems:
        print("\nFAILED:")
        for problem in problems:
            print(f"- {problem}")
        raise SystemExit(1)
    print(
        f"\nOK: {len(faulty)} faulty runs all succeeded; warehouse B identical to the fault-free warehouse A "
        "after each (0 rows lost, 0 duplicated)."
    )


if __name__ == "__main__":
    main()
