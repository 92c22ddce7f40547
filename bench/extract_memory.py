"""Rows/s and peak RSS of extracting N transactions into SQLite: our streamed path vs ``HttpOperator``.

Both jobs read every ``GET /portfolio/transactions`` page (limit 100, the API maximum) of one sandbox
portfolio and upsert the rows into a fresh SQLite warehouse with the same transform and the same
``CoinStatsWarehouse.reconcile_transactions`` call, each in a fresh process (peak RSS = ``VmHWM``):

* ``ours``: ``LoadPortfolioOperator(dataset="transactions").execute()``, i.e. the hook's page generator
  -> ``transaction_rows`` -> ``reconcile_transactions`` (pages are consumed while they arrive).
* ``http``: ``airflow.providers.http`` ``HttpOperator`` with a ``pagination_function`` (page + 1 until a
  short page). The operator keeps every ``Response`` until the last page has arrived and then calls
  ``response_filter(responses)``; the filter decodes the pages one by one and streams them through the
  same transform and upsert. This is the most memory-friendly way to use ``HttpOperator`` for the job:
  only the raw bodies are held, never decoded objects, and nothing goes to XCom.
* ``http-items`` (optional): the common ``response_filter`` that returns the decoded items of all pages,
  then loads them (decoded objects of every page alive at once).

The sandbox runs in its own process and generates transactions on demand (flat server memory).

``python -m bench.extract_memory [--sizes 10000,100000,1000000] [--variants ours,http] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import (
    API_KEY,
    allow_direct_execute,
    connect_portfolio,
    emit_result,
    machine_info,
    median,
    prepare_airflow_env,
    print_machine,
    rss_mib,
    run_child,
    sandbox,
    sandbox_stats,
    set_connection,
    table,
    task_context,
    temp_dir,
)

GOAL = 10.0
VARIANTS = ("ours", "http", "http-items")


def child(variant: str, base_url: str, portfolio_id: str, db: Path, page_size: int) -> None:
    """Run one extraction in this (fresh) process and emit rows, seconds and memory."""
    prepare_airflow_env(Path(os.environ["BENCH_AIRFLOW_HOME"]))
    allow_direct_execute()
    set_connection("coinstats_warehouse", conn_type="sqlite", host=str(db))
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse
    from coinstats_provider.warehouse.schema import TRANSACTIONS_TABLE
    from coinstats_provider.warehouse.transform import TransactionKeyer, transaction_rows
    from tests.helpers.warehouse import count_rows

    rows: int
    if variant == "ours":
        from coinstats_provider.operators.load import LoadPortfolioOperator

        set_connection("coinstats_default", conn_type="coinstats", host=base_url, password=API_KEY)
        load_transactions = LoadPortfolioOperator(
            task_id="load_transactions", portfolio_id=portfolio_id, dataset="transactions", page_size=page_size
        )
        before = rss_mib()
        start = time.perf_counter()
        result = load_transactions.execute(task_context())  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        rows, pages = int(result["rows"]), int(result["pages"])
    else:
        import requests
        from airflow.providers.http.operators.http import HttpOperator

        host, _, port = base_url.removeprefix("http://").partition(":")
        set_connection("coinstats_http", conn_type="http", host=host, port=int(port), schema="http")
        page_count = [0]

        def next_page(response: requests.Response) -> dict[str, Any] | None:
            page_count[0] += 1
            body = response.json()
            if len(body["data"]) < page_size:
                return None
            return {"data": {"page": int(body["meta"]["page"]) + 1}}

        def load(responses: list[requests.Response]) -> int:
            warehouse = CoinStatsWarehouse("coinstats_warehouse")
            warehouse.ensure_schema()
            if variant == "http-items":
                items = [item for r in responses for item in r.json()["data"]]
            else:
                items = (item for r in responses for item in r.json()["data"])  # type: ignore[assignment]
            return warehouse.reconcile_transactions(
                portfolio_id, transaction_rows(portfolio_id, items, TransactionKeyer())
            ).total

        extract_transactions = HttpOperator(
            task_id="extract_transactions",
            http_conn_id="coinstats_http",
            method="GET",
            endpoint="/portfolio/transactions",
            data={"portfolioId": portfolio_id, "currency": "USD", "page": 1, "limit": page_size},
            headers={"X-API-KEY": API_KEY, "Accept": "application/json"},
            pagination_function=next_page,
            response_filter=load,
        )
        before = rss_mib()
        start = time.perf_counter()
        rows = int(extract_transactions.execute(task_context()))  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        pages = page_count[0]
    after = rss_mib()
    stored = count_rows(CoinStatsWarehouse("coinstats_warehouse"), TRANSACTIONS_TABLE)
    emit_result(
        {
            "variant": variant,
            "rows": rows,
            "stored_rows": stored,
            "pages": pages,
            "seconds": seconds,
            "rows_per_s": rows / seconds if seconds else 0.0,
            "rss_before_mib": before.get("VmRSS", 0.0),
            "peak_rss_mib": after.get("VmHWM", after["ru_maxrss"]),
            "ru_maxrss_mib": after["ru_maxrss"],
        }
    )


def main() -> None:
    """Parent: start a sandbox per size, run each variant in fresh processes, print the tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.extract_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="transaction counts (comma-separated)")
    parser.add_argument("--variants", default="ours,http", help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--http-max", type=int, default=None, help="skip the http variants above this size")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant for sizes below 1,000,000")
    parser.add_argument("--repeat-large", type=int, default=1, help="runs per variant for sizes >= 1,000,000")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per child run")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--portfolio-id", help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.base_url, args.portfolio_id, args.db, args.page_size)
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    if any(v != "ours" for v in variants) and importlib.util.find_spec("airflow.providers.http") is None:
        parser.error(
            "apache-airflow-providers-http is not installed; install it into the venv with "
            "`python3 -m uv pip install --python .venv/bin/python apache-airflow-providers-http` "
            "or run with --variants ours"
        )
    info = machine_info()
    print_machine(info)
    runs: list[dict[str, Any]] = []
    with temp_dir("coinstats-bench-extract-") as work:
        env = {**os.environ, "BENCH_AIRFLOW_HOME": str(work / "airflow")}
        for size in sizes:
            chosen = [v for v in variants if v == "ours" or args.http_max is None or size <= args.http_max]
            repeat = args.repeat if size < 1_000_000 else args.repeat_large
            with sandbox(transactions=size, sync_seconds=0.0) as server:
                pid = connect_portfolio(server.base_url)
                for index in range(repeat):
                    order = chosen if index % 2 == 0 else list(reversed(chosen))
                    for variant in order:
                        db = work / f"{variant}-{size}-{index}.db"
                        cmd = [
                            "-m",
                            "bench.extract_memory",
                            "--child",
                            variant,
                            "--base-url",
                            server.base_url,
                            "--portfolio-id",
                            pid,
                            "--db",
                            str(db),
                            "--page-size",
                            str(args.page_size),
                        ]
                        result = run_child(cmd, env=env, timeout=args.timeout)
                        result.update(size=size, repeat=index)
                        runs.append(result)
                        db.unlink(missing_ok=True)
                        print(
                            f"  size={size:>9,} {variant:10} run {index}: {result['rows']:,} rows "
                            f"({result['stored_rows']:,} stored, {result['pages']} pages) in {result['seconds']:.1f} s "
                            f"= {result['rows_per_s']:,.0f} rows/s, peak RSS {result['peak_rss_mib']:.0f} MiB "
                            f"(before run {result['rss_before_mib']:.0f} MiB)",
                            flush=True,
                        )
                stats = sandbox_stats(server.base_url)
                print(f"  sandbox served {stats['requests'].get('GET /portfolio/transactions', 0):,} pages")

    rows = []
    for size in sizes:
        summary: dict[str, dict[str, float]] = {}
        for variant in variants:
            mine = [r for r in runs if r["size"] == size and r["variant"] == variant]
            if not mine:
                continue
            summary[variant] = {
                "peak": median([r["peak_rss_mib"] for r in mine]),
                "growth": median([r["peak_rss_mib"] - r["rss_before_mib"] for r in mine]),
                "rate": median([r["rows_per_s"] for r in mine]),
                "n": len(mine),
            }
        ours = summary.get("ours")
        for variant, s in summary.items():
            ratio = growth_ratio = speed = ""
            if ours and variant != "ours":
                ratio = f"{s['peak'] / ours['peak']:.1f}x"
                growth_ratio = f"{s['growth'] / max(ours['growth'], 1e-9):.1f}x"
                speed = f"{ours['rate'] / s['rate']:.2f}x"
            rows.append(
                [
                    f"{size:,}",
                    variant,
                    int(s["n"]),
                    f"{s['rate']:,.0f}",
                    f"{s['peak']:.0f}",
                    f"{s['growth']:.0f}",
                    ratio,
                    growth_ratio,
                    speed,
                ]
            )
    print()
    print(
        table(
            [
                "rows",
                "variant",
                "runs",
                "rows/s (median)",
                "peak RSS MiB",
                "peak - RSS before run, MiB",
                "peak vs ours",
                "growth vs ours",
                "ours faster by",
            ],
            rows,
        )
    )
    print(f"\ngoal: >= {GOAL:g}x less peak memory than HttpOperator at 1,000,000 rows")
    print("raw runs:")
    for run in runs:
        print("  " + json.dumps(run, sort_keys=True))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "runs": runs}, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
