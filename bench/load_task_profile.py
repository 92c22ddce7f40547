"""Where a load task's time goes, beyond what Airflow's no-op task pays: one phase at a time, fresh processes.

A load task of ``coinstats_portfolio_sync`` does, after Airflow has started it (which the floor DAG's no-op
tasks pay too): import the hook, the warehouse loader and the PostgreSQL provider; ``ensure_schema()``;
the CoinStats call(s); the warehouse write. This script runs exactly those steps of
``LoadPortfolioOperator`` in a fresh Python process per try (as every task is a fresh process), against
an in-process CoinStats sandbox (``--latency-ms``) and a throw-away PostgreSQL, and times each phase.
A baseline child that only imports ``airflow.sdk`` (what every task process has) is timed the same way.

``python -m bench.load_task_profile --tries 5 --latency-ms 50``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT / "plugins"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

DATASETS = ("value", "coins", "transactions")
PHASES = ("import airflow.sdk", "import hook+loader+postgres", "ensure_schema", "fetch", "write")


def child(dataset: str, portfolio_id: str) -> dict[str, float]:
    """One load, phase by phase (runs in the fresh process); seconds per phase."""
    times: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        times[name] = now - mark
        mark = now

    import airflow.sdk  # noqa: F401  (every task process has it: the floor pays it too)

    lap("import airflow.sdk")
    if dataset == "none":
        return times
    from airflow.providers.postgres.hooks.postgres import PostgresHook  # noqa: F401

    from coinstats_provider.hooks.coinstats import CoinStatsHook
    from coinstats_provider.warehouse import transform
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse
    from coinstats_provider.warehouse.schema import DATASET_TABLES as TABLES

    lap("import hook+loader+postgres")
    warehouse = CoinStatsWarehouse("coinstats_warehouse")
    warehouse.ensure_schema()
    lap("ensure_schema")
    hook = CoinStatsHook()
    day = dt.date.today()
    if dataset == "value":
        rows: Any = [transform.value_row(portfolio_id, day, "USD", hook.get_portfolio_value(portfolio_id))]
        lap("fetch")
        warehouse.replace_snapshot(TABLES["value"], portfolio_id, day, rows)
    elif dataset == "coins":
        items = [item for page in hook.iter_portfolio_coins(portfolio_id) for item in page]
        lap("fetch")
        warehouse.replace_snapshot(TABLES["coins"], portfolio_id, day, transform.coin_rows(portfolio_id, day, items))
    else:
        items = [item for page in hook.iter_portfolio_transactions(portfolio_id, currency="USD") for item in page]
        lap("fetch")
        warehouse.reconcile_transactions(
            portfolio_id, transform.transaction_rows(portfolio_id, items, transform.TransactionKeyer())
        )
    lap("write")
    return times


def run_child(env: dict[str, str], dataset: str, portfolio_id: str) -> dict[str, float]:
    """Start a fresh interpreter for one try; its phase times plus the whole process's wall time."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.load_task_profile", "--child", dataset, "--portfolio", portfolio_id],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {dataset} failed:\n{proc.stderr[-3000:]}")
    times = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    times["process wall"] = time.perf_counter() - started
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tries", type=int, default=5, help="fresh processes per dataset")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="sandbox latency per request")
    parser.add_argument("--transactions", type=int, default=300, help="transactions per portfolio")
    parser.add_argument("--child", choices=(*DATASETS, "none"), help=argparse.SUPPRESS)
    parser.add_argument("--portfolio", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)  # stop the servers on `timeout` / kill too
    if args.child:
        print(json.dumps(child(args.child, args.portfolio)))
        return 0

    import httpx

    from bench._common import machine_info, print_machine, table
    from include.coinstats_sandbox import SandboxConfig, SandboxServer
    from tests.helpers.postgres_server import PostgresServer

    info = machine_info()
    print_machine(info)
    api_key = "bench-profile-key"
    config = SandboxConfig(
        api_keys=(api_key,), latency_ms=args.latency_ms, transactions=args.transactions, sync_seconds=0.1, quiet=True
    )
    with PostgresServer() as pg, SandboxServer(config) as sandbox:
        db = pg.create_database("profile_wh")
        with httpx.Client(base_url=sandbox.base_url, headers={"X-API-KEY": api_key}, trust_env=False) as client:
            fields = {"apiKey": "profile-key", "apiSecret": "profile-secret"}
            answer = client.post("/portfolio/exchange", json={"connectionId": "binance", "connectionFields": fields})
            portfolio_id = str(answer.json()["portfolioId"])
            client.patch("/portfolio/sync", params={"portfolioId": portfolio_id}).raise_for_status()
            time.sleep(0.5)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])
        env["AIRFLOW_CONN_COINSTATS_DEFAULT"] = json.dumps(
            {"conn_type": "coinstats", "host": sandbox.base_url, "password": api_key, "extra": {"timeout": 30}}
        )
        env["AIRFLOW_CONN_COINSTATS_WAREHOUSE"] = pg.conn_json(db)
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.tries):  # interleaved, so a change in the machine's load hits every kind alike
            for dataset in ("none", *DATASETS):
                results.setdefault(dataset, []).append(run_child(env, dataset, portfolio_id))
                print(f"{dataset}: {json.dumps({k: round(v, 3) for k, v in results[dataset][-1].items()})}", flush=True)
    rows = []
    for dataset, tries in results.items():
        cells = [_median(tries, phase) for phase in PHASES]
        rows.append((dataset, *(f"{c:.3f}" for c in cells), f"{_median(tries, 'process wall'):.3f}"))
    print(f"median seconds over {args.tries} fresh processes each (load average now {os.getloadavg()})")
    print(table(("load of", *PHASES, "process wall"), rows))
    print(json.dumps({"args": vars(args), "machine": info, "results": results}, default=str))
    return 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _median(tries: Sequence[dict[str, float]], key: str) -> float:
    return statistics.median(t.get(key, 0.0) for t in tries)


if __name__ == "__main__":
    raise SystemExit(main())
