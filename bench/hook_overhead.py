"""Per-request overhead of ``CoinStatsHook.request()`` vs a raw ``requests.Session`` on the same server.

Both clients send the same GET (``/usage/credits`` by default, or ``/portfolio/status``) with the same
headers over one keep-alive connection to a loopback server running in its own process, and both decode
the JSON body (the raw client also checks the status, as any caller must). Blocks of requests alternate
A-B, B-A, ... so drift and other load hit both alike; the ratio is taken per pair of blocks and the
median reported. Wall time and this process's CPU time per request are both reported: the server runs
in another process, so client CPU is the purest view of the client's own cost.

Servers: the CoinStats sandbox (realistic handler, ~0.3-1 ms per request) and a minimal asyncio server
(``bench._fastserver``, a fixed answer) that leaves the client's cost exposed.

``python -m bench.hook_overhead [--requests 5000] [--blocks 10] [--server both] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import (
    API_KEY,
    ServerProcess,
    connect_portfolio,
    machine_info,
    median,
    prepare_airflow_env,
    print_machine,
    sandbox,
    set_connection,
    table,
    temp_dir,
)

GOAL = 1.05
CONN_ID = "coinstats_bench"


def _clients(base_url: str, path: str, params: dict[str, Any] | None) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(hook_call, raw_call) bound to ``base_url``; each sends one GET and returns the decoded body."""
    import requests

    from coinstats_provider.hooks.coinstats import CoinStatsHook
    from coinstats_provider.hooks.coinstats_base import USER_AGENT

    set_connection(CONN_ID, conn_type="coinstats", host=base_url, password=API_KEY)
    hook = CoinStatsHook(CONN_ID)
    _ = hook.settings  # resolve the connection once, outside the measurement (the hook caches it)

    session = requests.Session()
    session.headers.update({"X-API-KEY": API_KEY, "Accept": "application/json", "User-Agent": USER_AGENT})
    url = base_url + path

    def hook_call() -> Any:
        return hook.request("GET", path, params=params)

    def raw_call() -> Any:
        response = session.get(url, params=params, timeout=30.0)
        response.raise_for_status()
        return response.json()

    return hook_call, raw_call


def _block(call: Callable[[], Any], n: int) -> tuple[float, float]:
    """Run ``call`` n times; return (wall µs, CPU µs) per request."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        call()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return wall / n * 1e6, cpu / n * 1e6


def measure(base_url: str, path: str, params: dict[str, Any] | None, requests_each: int, blocks: int) -> dict[str, Any]:
    """Interleaved blocks of hook and raw requests; per-request µs and ratios."""
    hook_call, raw_call = _clients(base_url, path, params)
    for _ in range(200):  # warm-up: connections, caches, code paths
        hook_call()
        raw_call()
    per_block = max(1, requests_each // blocks)
    hook_wall: list[float] = []
    raw_wall: list[float] = []
    hook_cpu: list[float] = []
    raw_cpu: list[float] = []
    gc.collect()
    for index in range(blocks):
        order = [(hook_call, hook_wall, hook_cpu), (raw_call, raw_wall, raw_cpu)]
        if index % 2:
            order.reverse()
        for call, wall_list, cpu_list in order:
            wall, cpu = _block(call, per_block)
            wall_list.append(wall)
            cpu_list.append(cpu)
    wall_ratios = [h / r for h, r in zip(hook_wall, raw_wall, strict=True)]
    cpu_ratios = [h / r for h, r in zip(hook_cpu, raw_cpu, strict=True)]
    return {
        "requests_each": per_block * blocks,
        "blocks": blocks,
        "hook_wall_us": hook_wall,
        "raw_wall_us": raw_wall,
        "hook_cpu_us": hook_cpu,
        "raw_cpu_us": raw_cpu,
        "wall_ratio_median": median(wall_ratios),
        "cpu_ratio_median": median(cpu_ratios),
        "wall_ratios": wall_ratios,
        "cpu_ratios": cpu_ratios,
    }


def profile(base_url: str, path: str, params: dict[str, Any] | None, n: int) -> str:
    """cProfile both clients for ``n`` requests; return where the hook's extra time goes."""
    hook_call, raw_call = _clients(base_url, path, params)
    for _ in range(100):
        hook_call()
        raw_call()
    out = io.StringIO()
    totals: dict[str, tuple[int, float]] = {}
    for name, call in (("hook", hook_call), ("raw", raw_call)):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            call()
        prof.disable()
        stats = pstats.Stats(prof, stream=out)
        totals[name] = (stats.total_calls, stats.total_tt)  # type: ignore[attr-defined]
        if name == "hook":
            out.write(f"\n--- hook: top functions by own time ({n} requests) ---\n")
            stats.sort_stats("tottime").print_stats(18)
            out.write(f"--- hook: provider functions (cumulative, {n} requests) ---\n")
            stats.sort_stats("cumulative").print_stats("coinstats_provider", 12)
    for name, (calls, seconds) in totals.items():
        out.write(
            f"{name}: {calls / n:.0f} Python function calls per request, {seconds / n * 1e6:.1f} µs per request "
            "under cProfile\n"
        )
    return out.getvalue()


def main() -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.hook_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="GETs per client and server (default 5000)")
    parser.add_argument("--blocks", type=int, default=100, help="interleaved blocks per client (default 100)")
    parser.add_argument("--server", choices=("sandbox", "fast", "both"), default="both")
    parser.add_argument("--endpoint", choices=("credits", "status"), default="credits")
    parser.add_argument("--profile", action="store_true", help="also cProfile both clients (fast server)")
    parser.add_argument("--profile-requests", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = parser.parse_args()

    with temp_dir("coinstats-bench-hook-") as home:
        prepare_airflow_env(home)
        info = machine_info()
        print_machine(info)
        servers: list[tuple[str, ServerProcess]] = []
        if args.server in ("sandbox", "both"):
            servers.append(("sandbox", sandbox(sync_seconds=0.0)))
        if args.server in ("fast", "both"):
            servers.append(("fast", ServerProcess("bench._fastserver")))
        results: dict[str, Any] = {"machine": info, "runs": {}}
        profile_text = ""
        for name, server in servers:
            with server:
                path, params = "/usage/credits", None
                if args.endpoint == "status":
                    path = "/portfolio/status"
                    pid = connect_portfolio(server.base_url) if name == "sandbox" else "fast"
                    params = {"portfolioId": pid}
                results["runs"][name] = measure(server.base_url, path, params, args.requests, args.blocks)
                if args.profile and name == "fast":
                    profile_text = profile(server.base_url, path, params, args.profile_requests)

    rows = []
    for name, run in results["runs"].items():
        hook_w, raw_w = median(run["hook_wall_us"]), median(run["raw_wall_us"])
        hook_c, raw_c = median(run["hook_cpu_us"]), median(run["raw_cpu_us"])
        rows.append(
            [
                f"{name} ({args.endpoint})",
                run["requests_each"],
                f"{hook_w:.1f}",
                f"{raw_w:.1f}",
                f"{hook_w - raw_w:+.1f}",
                f"{run['wall_ratio_median']:.3f}x",
                f"{hook_c:.1f}",
                f"{raw_c:.1f}",
                f"{run['cpu_ratio_median']:.3f}x",
                "yes" if run["wall_ratio_median"] <= GOAL else "NO",
            ]
        )
    print()
    print(
        table(
            [
                "server",
                "GETs each",
                "hook µs/req",
                "raw µs/req",
                "overhead µs",
                "ratio (wall)",
                "hook CPU µs",
                "raw CPU µs",
                "ratio (CPU)",
                f"wall ≤ {GOAL}x?",
            ],
            rows,
        )
    )
    print("\nraw per-block numbers (µs per request; blocks alternate hook-first / raw-first):")
    for name, run in results["runs"].items():
        for key in ("hook_wall_us", "raw_wall_us", "hook_cpu_us", "raw_cpu_us", "wall_ratios", "cpu_ratios"):
            print(f"  {name:7} {key:12} " + " ".join(f"{v:.3f}" if "ratio" in key else f"{v:.1f}" for v in run[key]))
    if profile_text:
        print("\ncProfile (fast server):")
        print(profile_text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
