"""Command line: ``python -m include.coinstats_sandbox [options]``."""

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

from .server import DEFAULT_API_KEY, FAULT_FIELDS, SandboxConfig, SandboxServer, spread_fault_rate


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the sandbox CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m include.coinstats_sandbox",
        description="Serve a local CoinStats-compatible API (portfolio, exchange, sync, usage).",
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
    add("--faults", type=float, default=None, metavar="TOTAL", help="spread TOTAL over the five fault kinds")
    add("--fault-seed", type=int, default=0, help="seed of the fault sequence (default 0)")
    add("--retry-after", type=float, default=None, metavar="SECONDS", help="Retry-After on 429 faults")
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
