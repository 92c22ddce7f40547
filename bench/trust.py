"""Trust: what the provider does when CoinStats misbehaves like a real API, case by case.

Each case gets its own sandbox (``SandboxServer`` in this process, on 127.0.0.1) and its own SQLite
warehouse file, and runs the provider's real operators in-process (``execute()`` with a minimal task
context, as ``bench.credits_per_sync`` does). ``coinstats_default`` keeps its defaults (timeout 30 s,
5 retries, backoff 1..60 s). Each step records: outcome; requests the sandbox received per route;
credits the sandbox charged vs what the operators' hooks metered; the warehouse's transactions vs the
sandbox's current list (phantom = stored but gone upstream, missing = upstream but not stored, stale =
same key, old content); inserted/updated/removed; wall time. Cases: 1 redirects, 2 a list that shifts
between page reads, 3 edits between runs, 4 a capped ``limit``, 5 a 10 s stall with 4 parallel loads
into one SQLite file, 6 2xx answers cut on the wire, 7 a clean run.

``python -m bench.trust [--transactions 2500] [--write]``: ``--write`` replaces the measured block of
``docs/faults.md`` (between the ``trust:begin``/``trust:end`` markers). Exits 1 if a step did not behave
as expected (the ``expected`` column).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl

from bench import _common as shared

DOC = shared.ROOT / "docs" / "faults.md"
BEGIN, END = "<!-- trust:begin (written by python -m bench.trust --write) -->", "<!-- trust:end -->"
TXNS = "coinstats_portfolio_transactions"
COINS = 45
DEADLINE_S = 900
HEADERS = (
    "#", "case", "step", "outcome", "requests (sandbox)", "credits charged / metered", "warehouse / sandbox",
    "phantom", "missing", "stale", "ins / upd / rem", "wall s", "expected",
)  # fmt: skip
Action = Callable[[list[Any]], Any]
"""``action(ops)`` runs operators (appending each to ``ops``); a list of load results, if it returns one."""


def instrument() -> Counter[str]:
    """Count, in this process: pages read again at a boundary, streams read again, client retries."""
    from coinstats_provider.exceptions import CoinStatsListChangedError
    from coinstats_provider.hooks import paging
    from coinstats_provider.hooks.coinstats import CoinStatsHook
    from coinstats_provider.operators.load import LoadPortfolioOperator

    counts: Counter[str] = Counter()
    load, backoff, check = LoadPortfolioOperator._load, CoinStatsHook._backoff, paging._Stream.check_boundary

    def counted_load(op: Any, *args: Any) -> int:
        try:
            return load(op, *args)
        except CoinStatsListChangedError:
            counts["list changed, read again"] += 1
            raise

    def counted_backoff(hook: Any, *args: Any) -> float:
        delay = backoff(hook, *args)
        counts["client retry"] += 1
        return delay

    def counted_check(stream: Any, *args: Any) -> None:
        fetch = stream.fetch

        def again(*fetch_args: Any) -> Any:
            counts["boundary re-read"] += 1
            return fetch(*fetch_args)

        stream.fetch = again
        try:
            check(stream, *args)
        finally:
            stream.fetch = fetch

    paging._Stream.check_boundary = counted_check  # type: ignore[method-assign,assignment]
    LoadPortfolioOperator._load = counted_load  # type: ignore[method-assign,assignment]
    CoinStatsHook._backoff = counted_backoff  # type: ignore[method-assign,assignment]
    return counts


def describe(err: BaseException) -> str:
    """``Exception ← cause (HTTP status)``: class names only, never a message."""
    cause = err.__cause__
    text = type(err).__name__ + (f" ← {type(cause).__name__}" if cause is not None else "")
    status = getattr(cause, "http_status", None) or getattr(err, "http_status", None)
    return f"{text} ({status})" if status else text


def run(op: Any, ops: list[Any]) -> Any:
    """Execute one operator with a fresh task context, keeping it in ``ops`` for its credit meter."""
    ops.append(op)
    return op.execute(shared.task_context())


def sync(ops: list[Any], pid: str) -> Any:
    """Sync one portfolio, polling on the worker."""
    from coinstats_provider.operators.sync import SyncPortfolioOperator

    return run(SyncPortfolioOperator(task_id="sync", portfolio_id=pid, deferrable=False, poll_interval=0.05), ops)


def connect(ops: list[Any], account: int, *, then_sync: bool = True) -> str:
    """Connect exchange account ``account`` (and sync it); return its portfolio id."""
    from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator

    pid = str(run(ConnectExchangePortfolioOperator(task_id="c", exchange_conn_id=f"coinstats_exchange_{account}"), ops))
    if then_sync:
        sync(ops, pid)
    return pid


def loads(pids: list[str], dataset: str = "transactions") -> Action:
    """An action loading ``dataset`` of each portfolio, one after the other."""
    from coinstats_provider.operators.load import LoadPortfolioOperator

    def op(pid: str) -> LoadPortfolioOperator:
        return LoadPortfolioOperator(task_id=f"load_{dataset}", portfolio_id=pid, dataset=dataset)

    return lambda ops: [run(op(pid), ops) for pid in pids]


def parallel(pids: list[str]) -> Action:
    """An action loading the transactions of every portfolio at once, one thread each."""

    def action(ops: list[Any]) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(len(pids)) as pool:
            futures = [pool.submit(loads([pid]), ops) for pid in pids]
        errors = [err for err in (f.exception() for f in futures) if err is not None]
        if errors:
            raise RuntimeError(f"{len(errors)} of {len(pids)} loads failed") from errors[0]
        return [f.result()[0] for f in futures]

    return action


class Case:
    """One case: a fresh sandbox and SQLite file; :meth:`step` measures one action and adds a table row."""

    def __init__(self, number: int, name: str, home: Path, counts: Counter[str], rows: list[list[Any]], **config: Any):
        from include.coinstats_sandbox import SandboxConfig, SandboxServer

        self.name, self.counts, self.rows, self.db = name, counts, rows, home / f"case{number}.db"
        self.server = SandboxServer(
            SandboxConfig(api_keys=(shared.API_KEY,), sync_seconds=0, coins=COINS, quiet=True, **config)
        )
        self.pids: list[str] = []

    def __enter__(self) -> Case:
        from coinstats_provider.hooks import support_cache
        from coinstats_provider.warehouse.loader import CoinStatsWarehouse

        self.server.start()
        shared.set_connection(
            "coinstats_default", conn_type="coinstats", host=self.server.base_url, password=shared.API_KEY
        )
        shared.set_connection("coinstats_warehouse", conn_type="sqlite", host=str(self.db))
        support_cache.clear()
        shutil.rmtree(os.environ["COINSTATS_CACHE_DIR"], ignore_errors=True)
        CoinStatsWarehouse().ensure_schema()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop()

    def setup(self, accounts: int, *, then_sync: bool = True, load: bool = True) -> None:
        """Connect (sync, and load the transactions of) ``accounts`` accounts, unmeasured."""
        self.pids = [connect([], n, then_sync=then_sync) for n in range(1, accounts + 1)]
        if load:
            loads(self.pids)([])

    def mirror(self) -> tuple[int, int, int, int, int]:
        """Warehouse transactions vs the sandbox's current lists: stored, upstream, phantom, missing, stale."""
        from coinstats_provider.warehouse.loader import CoinStatsWarehouse
        from coinstats_provider.warehouse.schema import TABLES
        from coinstats_provider.warehouse.transform import TransactionKeyer, transaction_rows

        cols = TABLES[TXNS].column_names
        pid_at, key_at, payload_at = (cols.index(c) for c in ("portfolio_id", "transaction_key", "payload_json"))
        stored = {(r[pid_at], r[key_at]): r[payload_at] for r in CoinStatsWarehouse().fetch_table(TXNS)}
        lists = {
            pid: json.loads(json.dumps(self.server.app.transactions(pid)), parse_float=Decimal) for pid in self.pids
        }
        truth = {
            (pid, row["transaction_key"]): row["payload_json"]
            for pid, items in lists.items()
            for row in transaction_rows(pid, items, TransactionKeyer())
        }
        stale = sum(1 for key in stored.keys() & truth.keys() if stored[key] != truth[key])
        return len(stored), len(truth), len(stored.keys() - truth.keys()), len(truth.keys() - stored.keys()), stale

    def step(
        self, number: str, label: str, action: Action, *, dataset: str | None = "transactions",
        ok: bool = True, equal: bool = True, other: Any = None,
    ) -> None:  # fmt: skip
        """Run ``action`` and add its measured row; ``ok``/``equal``: the expected outcome and mirror."""
        from coinstats_provider.warehouse.loader import CoinStatsWarehouse
        from coinstats_provider.warehouse.schema import DATASET_TABLES
        from tests.helpers.warehouse import count_rows

        before, counts_before = self.server.stats(), Counter(self.counts)
        other_before = sum(other.stats()["requests"].values()) if other is not None else 0
        ops: list[Any] = []
        started = time.monotonic()
        try:
            results, outcome, succeeded = action(ops), "success", True
        except Exception as err:  # measured and reported
            results, outcome, succeeded = None, describe(err), False
        wall, after = time.monotonic() - started, self.server.stats()
        outcome += "".join(f"; {what}: {n}" for what, n in sorted((self.counts - counts_before).items()))
        requests = {k.rsplit("/", 1)[-1]: v - before["requests"].get(k, 0) for k, v in after["requests"].items()}
        events = {k: v - before["switches"].get(k, 0) for k, v in after["switches"].items()}
        shown = ", ".join(f"{k} {v}" for k, v in requests.items() if v)
        shown += "".join(f"; {k} {v}" for k, v in events.items() if v)
        expected = succeeded == ok
        if other is not None:
            elsewhere = sum(other.stats()["requests"].values()) - other_before
            shown, expected = f"{shown}; other host {elsewhere}", expected and elsewhere == 0
        charged = after["credits_used"] - before["credits_used"]
        metered = sum(op.hook.credits.spent for op in ops if "hook" in op.__dict__ and "credits" in op.hook.__dict__)
        cells: list[Any] = ["", "", "", "", ""]
        if dataset == "transactions":
            stored, upstream, phantom, missing, stale = self.mirror()
            cells[:4] = [f"{stored} / {upstream}", phantom, missing, stale]
            expected = expected and (phantom + missing + stale == 0) == equal
            if isinstance(results, list):
                cells[4] = " / ".join(str(sum(r[k] for r in results)) for k in ("inserted", "updated", "removed"))
        elif dataset is not None:
            count, per = count_rows(CoinStatsWarehouse(), DATASET_TABLES[dataset]), COINS if dataset == "coins" else 1
            cells[0], expected = (
                f"{dataset} {count} / {per * len(self.pids)}",
                expected and count == per * len(self.pids),
            )
        row = [number, self.name, label, outcome, shown, f"{charged} / {metered}", *cells, f"{wall:.2f}"]
        self.rows.append([*row, "yes" if expected else "NO"])
        print(f"  {number} {label}: {outcome} in {wall:.2f} s", flush=True)


def run_cases(home: Path, transactions: int, rows: list[list[Any]]) -> None:
    """The seven cases, in order."""
    from include.coinstats_sandbox import SandboxConfig, SandboxServer

    common: dict[str, Any] = {"home": home, "counts": instrument(), "rows": rows, "transactions": transactions}
    with Case(1, "redirect", **common) as case, SandboxServer(SandboxConfig(quiet=True)) as other:
        case.server.update(redirect_to=other.base_url, redirect_status=307, redirect_routes=["/portfolio/exchange"])
        case.step(
            "1a", "307 on POST /portfolio/exchange", lambda ops: connect(ops, 1), dataset=None, ok=False, other=other
        )
        case.server.update(redirect_to=None)
        case.setup(1)
        plan_redirect = case.server.app.plan_redirect

        def from_page_two(route_key: str, path: str, raw_path: str, raw_query: str) -> Any:
            page = int(dict(parse_qsl(raw_query)).get("page", "1"))
            return plan_redirect(route_key, path, raw_path, raw_query) if page >= 2 else None

        case.server.app.plan_redirect = from_page_two  # type: ignore[method-assign]
        case.server.update(redirect_to=other.base_url, redirect_status=308, redirect_routes=["/portfolio/transactions"])
        case.step("1b", "308 on GET /portfolio/transactions page 2", loads(case.pids), ok=False, other=other)

    with Case(2, "list shifts during a read", **common) as case:
        case.setup(1)
        for number, label, page, insert, delete in (
            ("2a", "1 inserted after page 1", 1, 1, 0),
            ("2b", "5 inserted after page 2", 2, 5, 0),
            ("2c", "1 deleted at the head after page 1", 1, 0, 1),
            ("2d", "next run, nothing changed", None, 0, 0),
        ):
            case.server.update(shift_after_page=page, shift_insert=insert, shift_delete=delete)
            case.step(number, label, loads(case.pids), equal=number != "2c")

    with Case(3, "edits between runs", **common) as case:
        case.setup(1)
        pid, app = case.pids[0], case.server.app
        for number, label, edit in (
            ("3a", "note edited", lambda: app.edit_note(pid, 3, "moved to cold storage")),
            ("3b", "label edited", lambda: app.edit_labels(pid, 5, name="Renamed account")),
            ("3c", "1 deleted", lambda: app.delete_transaction(pid, 7)),
            ("3d", "2 added", lambda: app.add_transactions(pid, 2)),
        ):
            edit()
            case.step(number, label, loads(case.pids))

    with Case(4, "limit capped at 20 (page_size 100)", limit_cap=20, **common) as case:
        case.setup(1, load=False)
        case.step("4a", f"coins ({COINS})", loads(case.pids, "coins"), dataset="coins")
        case.step("4b", "transactions", loads(case.pids))

    with Case(5, "10 s stall on page 2", **common) as case:
        case.setup(4, load=False)
        case.server.update(stall_seconds=10.0, stall_routes=["/portfolio/transactions"], stall_on_page=2)
        case.step("5", "4 parallel loads, 1 SQLite file", parallel(case.pids))

    with Case(6, "2xx cut on the wire", **common) as case:
        case.setup(1, then_sync=False, load=False)
        for number, mode in (("6a", "length"), ("6b", "chunked")):
            case.server.update(cut_routes=["/portfolio/sync"], cut_count=1, cut_mode=mode)
            case.step(number, f"PATCH /portfolio/sync cut ({mode})", lambda ops: sync(ops, case.pids[0]), dataset=None)
        for number, mode in (("6c", "length"), ("6d", "chunked")):
            case.server.update(cut_routes=["/portfolio/transactions"], cut_count=1, cut_mode=mode)
            case.step(number, f"transactions page 1 cut ({mode})", loads(case.pids))

    with Case(7, "clean run (comparison)", **common) as case:
        case.step("7a", "connect + sync", lambda ops: case.pids.append(connect(ops, 1)), dataset=None)
        case.step("7b", "value", loads(case.pids, "value"), dataset="value")
        case.step("7c", f"coins ({COINS})", loads(case.pids, "coins"), dataset="coins")
        case.step("7d", "transactions", loads(case.pids))
        case.step("7e", "transactions again", loads(case.pids))


def main() -> None:
    """Run every case, print the table, optionally write it into docs/faults.md; exit 1 if unexpected."""
    parser = argparse.ArgumentParser(prog="python -m bench.trust", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=2500, help="transactions per portfolio")
    parser.add_argument("--write", action="store_true", help="replace the measured block in docs/faults.md")
    args = parser.parse_args()

    def too_long(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"bench.trust did not finish within {DEADLINE_S} s")

    signal.signal(signal.SIGALRM, too_long)
    signal.alarm(DEADLINE_S)
    info = shared.machine_info()
    shared.print_machine(info)
    started, started_at = time.monotonic(), dt.datetime.now(dt.UTC)
    rows: list[list[Any]] = []
    with shared.temp_dir("coinstats-bench-trust-") as home:
        shared.prepare_airflow_env(home)
        shared.allow_direct_execute()
        for n in range(1, 5):
            shared.set_connection(
                f"coinstats_exchange_{n}", conn_type="coinstats_exchange", login=f"trust-key-{n}",
                password=f"trust-secret-{n}", extra={"connection_id": "binance"},
            )  # fmt: skip
        run_cases(home, args.transactions, rows)
    signal.alarm(0)
    block = (
        f"Measured {started_at:%Y-%m-%d %H:%M} UTC by `python -m bench.trust`: "
        f"{args.transactions} transactions per portfolio, {COINS} coins; total {time.monotonic() - started:.1f} s "
        f"on {info['nproc']} cores ({info['cpu'].get('Model name', '?')}), Python {info['python']}, "
        f"apache-airflow {info['apache-airflow']}.\n\n{shared.table(HEADERS, rows)}"
    )
    print("\n" + block)
    if args.write:
        text = DOC.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{DOC} has no {BEGIN} ... {END} block to replace")
        head, rest = text.split(BEGIN, 1)
        DOC.write_text(f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}")
        print(f"\nwrote the table into {DOC.relative_to(shared.ROOT)}")
    unexpected = [f"{r[0]} {r[2]}" for r in rows if r[-1] != "yes"]
    if unexpected:
        raise SystemExit(f"not as expected: {', '.join(unexpected)}")


if __name__ == "__main__":
    main()
