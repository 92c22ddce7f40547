"""DAG parse time of ``dags/*.py`` vs a trivial ``airflow.sdk`` DAG, and network calls at parse.

Each measurement is a fresh process that does what Airflow 3.3's DAG processor does for one file:
Airflow and the DAG processor are already imported (the manager forks the parser from a process that
has them) and the file's ``airflow.*`` imports are pre-imported (``parsing_pre_import_modules``, on by
default); then ``airflow.dag_processing.processor._parse_file`` runs: the stability check, the
``BundleDagBag`` import of the file (incl. everything it imports that is not ``airflow.*``, e.g. our
provider) and the serialisation of its DAGs. Only that last step is the *parse time*; the cold-process
wall time is reported too. Files are interleaved round by round; medians over ``--repeat`` rounds.

Before anything else the child replaces ``socket.getaddrinfo``/``gethostbyname*``/``create_connection``
and ``socket.socket.connect``/``connect_ex`` with counters that refuse the call, so any network access
at import or parse time is counted (and cannot leave the machine).

``python -m bench.parse_time [--repeat 15] [--importtime]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import socket
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

GOAL = 1.2
TRIVIAL_DAG = '''"""A trivial DAG: one task, nothing else."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

with DAG(
    dag_id="trivial",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
):

    @task
    def hello() -> str:
        return "hello"

    hello()
'''
MARK = "BENCH-PARSE-START"


class NetGuard:
    """Counts (and refuses) DNS look-ups and socket connects in this process."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.where: list[str] = []
        self.phase = "import"

    def _hit(self, name: str, detail: str) -> None:
        key = f"{self.phase}:{name}"
        self.calls[key] += 1
        if len(self.where) < 10:
            frames = [f for f in traceback.extract_stack()[:-2] if "bench/parse_time.py" not in f.filename]
            origin = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[-3:])
            self.where.append(f"{key} {detail[:80]} at {origin}")

    def install(self) -> None:
        """Patch the socket module; must run before anything else imports and binds these names."""
        guard = self

        def refuse(name: str) -> Any:
            def blocked(*args: Any, **kwargs: Any) -> Any:
                guard._hit(name, repr(args[:2]))
                raise OSError(f"network call {name} blocked by bench.parse_time")

            return blocked

        for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "create_connection"):
            setattr(socket, name, refuse(name))
        original_connect = socket.socket.connect
        original_connect_ex = socket.socket.connect_ex

        def connect(sock: socket.socket, address: Any) -> None:
            if sock.family == socket.AF_UNIX:
                guard._hit("connect(AF_UNIX)", repr(address))
                original_connect(sock, address)
                return
            guard._hit("connect", repr(address))
            raise OSError("network connect blocked by bench.parse_time")

        def connect_ex(sock: socket.socket, address: Any) -> int:
            if sock.family == socket.AF_UNIX:
                guard._hit("connect_ex(AF_UNIX)", repr(address))
                return original_connect_ex(sock, address)
            guard._hit("connect_ex", repr(address))
            return 101  # ENETUNREACH

        socket.socket.connect = connect  # type: ignore[method-assign,assignment]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]


def child(file: Path, preload: list[str]) -> None:
    """Parse one DAG file the way the DAG processor does; emit timings and network counters.

    :param file: The DAG file.
    :param preload: Modules to import before the parse (what-if: had they been imported lazily or earlier).
    """
    guard = NetGuard()
    guard.install()
    wall0 = time.perf_counter()
    from bench._common import emit_result, prepare_airflow_env, temp_dir

    with temp_dir("coinstats-bench-parse-") as home:
        prepare_airflow_env(home)
        import structlog
        from airflow.dag_processing.processor import DagFileParseRequest, _parse_file, _pre_import_airflow_modules

        log = structlog.get_logger("bench.parse_time")
        _pre_import_airflow_modules(str(file), log)
        for module in preload:
            importlib.import_module(module)
        modules_before = set(sys.modules)
        guard.phase = "parse"
        print(MARK, file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = _parse_file(
            DagFileParseRequest(file=str(file), bundle_path=file.parent, bundle_name="bench"),
            log,
        )
        parse_s = time.perf_counter() - start
        guard.phase = "after"
        assert result is not None
        emit_result(
            {
                "file": str(file),
                "parse_s": parse_s,
                "setup_s": start - wall0,
                "dags": sorted(d.dag_id for d in result.serialized_dags),
                "import_errors": {k: v[-300:] for k, v in (result.import_errors or {}).items()},
                "new_modules": len(set(sys.modules) - modules_before),
                "net_calls": dict(guard.calls),
                "net_where": guard.where,
            }
        )


def _importtime(
    file: Path, home_env: dict[str, str], preload: list[str]
) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """What the parse of ``file`` imports (``python -X importtime``), cumulative ms, heaviest first.

    :return: (top-level modules, outermost non-provider modules imported by ``coinstats_provider``).
    """
    from bench._common import PYTHON, ROOT

    proc = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "bench.parse_time", "--child", str(file), "--preload", ",".join(preload)],
        cwd=ROOT,
        env=home_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    entries: list[tuple[int, float, str]] = []  # (depth, ms, name) in importtime's post-order
    for line in proc.stderr.split(MARK, 1)[-1].splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, raw = line.split("|", 2)
        name = raw.strip()
        depth = (len(raw) - len(raw.lstrip(" ")) - 1) // 2
        entries.append((depth, int(cumulative.split(":")[-1].strip()) / 1000, name))
    top = [(ms, name) for depth, ms, name in entries if depth == 0]
    by_provider: list[tuple[float, str]] = []
    stack: list[tuple[int, str]] = []
    for depth, ms, name in reversed(entries):  # reversed post-order: parents before children
        while stack and stack[-1][0] >= depth:
            stack.pop()
        ancestors = [n for _, n in stack]
        under_provider = bool(ancestors) and all(n.startswith("coinstats_provider") for n in ancestors)
        if under_provider and not name.startswith("coinstats_provider"):
            by_provider.append((ms, name))
        stack.append((depth, name))
    return sorted(top, reverse=True), sorted(by_provider, reverse=True)


def main() -> None:
    """Parent: write the trivial DAG, run the interleaved rounds, print the tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.parse_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="rounds (each file once per round); >= 10")
    parser.add_argument("--files", nargs="*", type=Path, default=None, help="DAG files (default dags/*.py)")
    parser.add_argument("--importtime", action="store_true", help="also list what each file imports at parse")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    parser.add_argument(
        "--preload",
        default="",
        help="what-if: comma-separated modules to import before the timed parse (e.g. requests)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    preload = [m.strip() for m in args.preload.split(",") if m.strip()]
    if args.child:
        child(args.child.resolve(), preload)
        return

    import os

    from bench._common import ROOT, machine_info, median, print_machine, run_child, table, temp_dir

    info = machine_info()
    print_machine(info)
    ours = [f.resolve() for f in (args.files or sorted((ROOT / "dags").glob("*.py")))]
    results: dict[str, list[dict[str, Any]]] = {}
    walls: dict[str, list[float]] = {}
    with temp_dir("coinstats-bench-trivial-") as tmp:
        trivial = tmp / "trivial_dag.py"
        trivial.write_text(TRIVIAL_DAG)
        files = [trivial, *ours]
        env = os.environ.copy()
        for round_index in range(args.repeat):
            shift = round_index % len(files)
            for file in files[shift:] + files[:shift]:
                start = time.perf_counter()
                cmd = ["-m", "bench.parse_time", "--child", str(file), "--preload", ",".join(preload)]
                result = run_child(cmd, env=env, timeout=300)
                walls.setdefault(str(file), []).append(time.perf_counter() - start)
                results.setdefault(str(file), []).append(result)
        importtimes = {str(f): _importtime(f, env, preload) for f in files} if args.importtime else {}

    base = results[str(trivial)]
    base_parse = median([r["parse_s"] for r in base])
    base_wall = median(walls[str(trivial)])
    rows = []
    failures = []
    for file in files:
        runs = results[str(file)]
        parse = median([r["parse_s"] for r in runs])
        fastest = min(r["parse_s"] for r in runs)
        base_fastest = min(b["parse_s"] for b in base)
        wall = median(walls[str(file)])
        per_round = median([r["parse_s"] / b["parse_s"] for r, b in zip(runs, base, strict=True)])
        net_parse = sum(
            v for r in runs for k, v in r["net_calls"].items() if k.startswith("parse:") and "AF_UNIX" not in k
        )
        net_all = sum(v for r in runs for k, v in r["net_calls"].items() if "AF_UNIX" not in k)
        unix = sum(v for r in runs for k, v in r["net_calls"].items() if "AF_UNIX" in k)
        errors = runs[0]["import_errors"]
        if errors:
            failures.append(f"{file.name}: import errors {errors}")
        if net_parse:
            failures.append(f"{file.name}: {net_parse} network calls at parse: {runs[0]['net_where']}")
        is_trivial = file == trivial
        rows.append(
            [
                file.name + (" (baseline)" if is_trivial else ""),
                ",".join(runs[0]["dags"]),
                f"{parse * 1000:.1f}",
                "" if is_trivial else f"{parse / base_parse:.2f}x",
                f"{fastest * 1000:.1f}",
                "" if is_trivial else f"{fastest / base_fastest:.2f}x",
                "" if is_trivial else f"{per_round:.2f}x",
                f"{wall:.2f}",
                "" if is_trivial else f"{wall / base_wall:.2f}x",
                runs[0]["new_modules"],
                f"{net_parse} / {net_all}" + (f" (+{unix} AF_UNIX)" if unix else ""),
                "" if is_trivial else ("yes" if parse / base_parse <= GOAL else "NO"),
            ]
        )
    print()
    print(
        table(
            [
                "DAG file",
                "dag_id",
                "parse ms (median)",
                "vs trivial",
                "parse ms (min)",
                "min vs trivial",
                "per-round ratio",
                "cold process s",
                "process vs trivial",
                "modules imported at parse",
                "net calls parse / total",
                f"≤ {GOAL}x?",
            ],
            rows,
        )
    )
    if preload:
        print(f"\nwhat-if run: imported before the timed parse in every child: {', '.join(preload)}")
    print(f"\n{args.repeat} rounds per file, each a fresh process. Raw parse times (ms) and process walls (s):")
    for file in files:
        parse_ms = " ".join(f"{r['parse_s'] * 1000:.1f}" for r in results[str(file)])
        wall_s = " ".join(f"{w:.2f}" for w in walls[str(file)])
        print(f"  {file.name}: parse {parse_ms}\n  {' ' * len(file.name)}  wall  {wall_s}")
    if importtimes:
        print("\nTop-level modules first imported while parsing (python -X importtime, cumulative ms, one run):")
        for file, (top, by_provider) in importtimes.items():
            print(f"  {Path(file).name}: " + ", ".join(f"{name} {ms:.1f}" for ms, name in top[:8]))
            if by_provider:
                heavy = ", ".join(f"{name} {ms:.1f}" for ms, name in by_provider[:8])
                print(f"  {' ' * len(Path(file).name)}  of which imported by coinstats_provider modules: {heavy}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results, "walls": walls}, indent=2))
    if failures:
        print("\nFAILED: " + "; ".join(failures))
        sys.exit(1)
    print("\nnetwork: 0 DNS look-ups and 0 connects while parsing any file (asserted).")


if __name__ == "__main__":
    main()
