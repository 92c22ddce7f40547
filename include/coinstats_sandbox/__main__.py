"""Command line: ``python -m include.coinstats_sandbox [options]``.

Besides the sizes and the random faults, the flags switch on the misbehaviours described in
:mod:`include.coinstats_sandbox.server`: ``--redirect-to/--redirect-status/--redirect-route``,
``--shift-after-page/--shift-insert/--shift-delete``, ``--limit-cap``,
``--stall-seconds/--stall-route/--stall-on-page``, ``--fault-rate-cut/--cut-route/--cut-count/--cut-mode``
``--transaction-ids`` and ``--ignore-from``. All of them can also be changed at runtime with ``POST /_sandbox/config``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .server import (
    CUT_MODES,
    DEFAULT_API_KEY,
    FAULT_FIELDS,
    REDIRECT_STATUSES,
    SandboxConfig,
    SandboxServer,
    spread_fault_rate,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the sandbox CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m include.coinstats_sandbox",
        description="Serve a local CoinStats-compatible API (portfolio, exchange, sync, usage).",
        epilog=(
            "Admin routes (no auth, never charged): GET /_sandbox/stats, POST /_sandbox/reset, "
            'GET|POST /_sandbox/config (any option by its field name, e.g. {"limit_cap": 10}), '
            "POST /_sandbox/shift/arm, GET /_sandbox/transactions?portfolioId=ID&currency=USD, "
            "POST /_sandbox/transactions/add {portfolioId, count}, "
            "POST /_sandbox/transactions/note {portfolioId, index, note}, "
            "POST /_sandbox/transactions/labels {portfolioId, index, name, icon}, "
            "POST /_sandbox/transactions/delete {portfolioId, index}."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    add("--port", type=int, default=8765, help="port to bind; 0 picks a free port (default 8765)")
    add(
        "--api-key",
        dest="api_keys",
        action="append",
        metavar="KEY",
        help=f"accepted X-API-KEY value, repeatable (default {DEFAULT_API_KEY!r})",
    )
    add("--credits", type=int, default=1_000_000, help="credits per API key (default 1000000)")
    add("--sync-seconds", type=float, default=2.0, help="duration of a sync; negative = never ends")
    add("--transactions", type=int, default=2500, help="transactions per portfolio (default 2500)")
    add("--coins", type=int, default=None, help="coins per portfolio (default: 3..40 per portfolio)")
    add("--latency-ms", type=float, default=0.0, help="delay added to every API response")
    for kind in ("429", "5xx", "reset", "slow", "truncate"):
        add(f"--fault-rate-{kind}", type=float, default=None, metavar="RATE", help=f"{kind} fault rate")
    add("--slow-seconds", type=float, default=5.0, help="delay of a 'slow' fault (default 5)")
    add("--faults", type=float, default=None, metavar="TOTAL", help="spread TOTAL over the five fault kinds (not cut)")
    add("--fault-seed", type=int, default=0, help="seed of the fault sequence (default 0)")
    add("--retry-after", type=float, default=None, metavar="SECONDS", help="Retry-After on 429 faults")
    group = parser.add_argument_group("misbehaviour switches (all off by default)")
    add = group.add_argument
    add("--redirect-to", default=None, metavar="URL", help="answer API calls with a redirect to URL + path?query")
    add(
        "--redirect-status",
        type=int,
        default=307,
        choices=REDIRECT_STATUSES,
        help="status of those redirects (default 307)",
    )
    add(
        "--redirect-route",
        dest="redirect_routes",
        action="append",
        metavar="PATH",
        help="API path to redirect, repeatable (default: every API path)",
    )
    add(
        "--shift-after-page",
        type=int,
        default=None,
        metavar="N",
        help="after serving page N of /portfolio/transactions, shift that portfolio's list once",
    )
    add("--shift-insert", type=int, default=1, metavar="K", help="new transactions added at the head (default 1)")
    add("--shift-delete", type=int, default=0, metavar="K", help="transactions removed from the head (default 0)")
    add("--limit-cap", type=int, default=None, metavar="N", help="serve at most N items per page of paged routes")
    add("--stall-seconds", type=float, default=0.0, help="pause this long after half of an answer's body")
    add(
        "--stall-route",
        dest="stall_routes",
        action="append",
        metavar="PATH",
        help="API path that stalls, repeatable (default: every API path)",
    )
    add("--stall-on-page", type=int, default=None, metavar="N", help="stall only requests for page N")
    add("--fault-rate-cut", type=float, default=0.0, metavar="RATE", help="rate of answers cut on the wire")
    add(
        "--cut-route",
        dest="cut_routes",
        action="append",
        metavar="PATH",
        help="API path whose next --cut-count answers are cut, repeatable (default: every API path)",
    )
    add("--cut-count", type=int, default=0, metavar="N", help="cut the next N answers of the --cut-route paths")
    add("--cut-mode", default="length", choices=CUT_MODES, help="length: short body; chunked: stop mid-chunk")
    add("--transaction-ids", action="store_true", help="give every transaction a hash {id, explorerUrl}")
    add(
        "--container-network",
        action="store_true",
        help="allow a non-loopback --host such as 0.0.0.0 (only inside a container on a private network)",
    )
    add("--ignore-from", action="store_true", help="accept the transactions 'from' filter but do not apply it")
    add = parser.add_argument
    add("--ready-file", type=Path, default=None, help="write the base URL here once listening")
    add("--quiet", action="store_true", help="do not log requests")
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """Build the configuration; raises ``ValueError`` on invalid options."""
    rates: dict[str, Any] = spread_fault_rate(args.faults) if args.faults is not None else {}
    for field_name in FAULT_FIELDS.values():
        value = getattr(args, field_name)
        if value is not None:
            rates[field_name] = value
    return SandboxConfig(
        host=args.host,
        port=args.port,
        api_keys=tuple(args.api_keys) if args.api_keys else (DEFAULT_API_KEY,),
        credits=args.credits,
        sync_seconds=args.sync_seconds,
        transactions=args.transactions,
        coins=args.coins,
        latency_ms=args.latency_ms,
        slow_seconds=args.slow_seconds,
        fault_seed=args.fault_seed,
        retry_after=args.retry_after,
        quiet=args.quiet,
        redirect_to=args.redirect_to,
        redirect_status=args.redirect_status,
        redirect_routes=tuple(args.redirect_routes) if args.redirect_routes else None,
        shift_after_page=args.shift_after_page,
        shift_insert=args.shift_insert,
        shift_delete=args.shift_delete,
        limit_cap=args.limit_cap,
        stall_seconds=args.stall_seconds,
        stall_routes=tuple(args.stall_routes) if args.stall_routes else None,
        stall_on_page=args.stall_on_page,
        fault_rate_cut=args.fault_rate_cut,
        cut_routes=tuple(args.cut_routes) if args.cut_routes else None,
        cut_count=args.cut_count,
        cut_mode=args.cut_mode,
        transaction_ids=args.transaction_ids,
        container_network=args.container_network,
        ignore_from=args.ignore_from,
        **rates,
    )


def _write_ready_file(path: Path, url: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(url, encoding="utf-8")
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sandbox until SIGINT or SIGTERM; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"coinstats-sandbox: error: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    server = SandboxServer(config)
    try:
        url = server.start()
    except OSError as exc:
        where = f"{config.host}:{config.port}"
        print(f"coinstats-sandbox: error: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"CoinStats sandbox listening on {url}", flush=True)
        if args.ready_file is not None:
            _write_ready_file(args.ready_file, url)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
