"""Load: one ``coinstats_portfolio_sync`` run over N mapped exchange accounts on a real Airflow stack.

Starts the test harness's :class:`~tests.airflow_stack.AirflowStack` (api-server, scheduler, dag-processor,
triggerer; LocalExecutor; PostgreSQL metadata DB and warehouse; CoinStats sandbox on loopback) with the
sandbox's ``latency_ms``, ``transactions`` and ``sync_seconds`` set from the flags. Then, through the REST
API only: creates N ``coinstats_exchange`` connections (distinct credentials; binance / okx with a
passphrase / kraken in turn), sets pool ``coinstats_api`` to ``--pool-slots`` and triggers the DAG once with
all N accounts in ``conf``, as the UI's trigger form would. While the run goes, the pool's slot counters are
sampled (``GET /pools/coinstats_api``).

Reported afterwards:

* wall time of the run (trigger -> terminal state) and per-phase spans (connect / sync / loads);
* task instances, their tries and worker executions (a deferred sync task runs twice on a worker), and
  why any task instance retried or failed (its tries, their error lines, the run's event log);
* requests the sandbox served (``GET /_sandbox/stats``) and credits: the sandbox's vs the DAG summary's;
* the maximum number of CoinStats-calling tasks running at once: the running intervals of the task
  instances in pool ``coinstats_api`` (``GET .../taskInstances``), with a deferred sync task's time in the
  triggerer cut out (the REST ``start_date`` survives a deferral, but a deferred task holds no slot); the
  cut is taken from the task's own log (``GET .../logs``): from the worker's "Pausing task as DEFERRED" line
  to the resumed worker segment's first line (see :func:`deferral_gap`). It must be <= the pool's slots;
* the ideal time ``calls x latency / slots`` for the calls made by pool tasks (and for all calls), and the
  run's wall time over it;
* isolation: for every account, ``coinstats_portfolios`` maps its connection to the portfolio id the
  sandbox derives from exactly its credentials, and every warehouse row of that portfolio (value, coins,
  transactions, all columns but ``loaded_at``) equals what the sandbox generates for exactly that portfolio,
  built through the provider's own transform; no row sits under any other portfolio id.

``python -m bench.load_accounts --accounts 100 --pool-slots 4 --latency-ms 50 --transactions 300 --json out.json``

``--executor celery`` runs the same on CeleryExecutor (Redis broker, two workers; see the harness).
``--dag floor`` runs Airflow's floor instead (``bench/coinstats_load_floor.py``: the same shape, tasks
that do nothing); ``--dag both`` runs the floor, then ours, back to back on one stack and reports our run
as a ratio to the floor.

Everything the script starts (PostgreSQL, the four Airflow components and their task processes, the
sandbox) is stopped when it ends, also on Ctrl-C / SIGTERM and when ``--max-wall`` runs out.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT / "plugins"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import httpx  # noqa: E402
import psycopg2  # noqa: E402

from bench._common import machine_info, print_machine, table  # noqa: E402
from coinstats_provider.warehouse.transform import TransactionKeyer, coin_rows, transaction_rows, value_row  # noqa: E402
from include.coinstats_sandbox import data as sandbox_data  # noqa: E402
from tests.helpers.airflow_stack import DAG_ID, AirflowStack, StackError  # noqa: E402
from tests.helpers.postgres_server import PostgresServer  # noqa: E402
from tests.helpers.redis_server import RedisServer  # noqa: E402

POOL = "coinstats_api"
#: Airflow's floor: a DAG of the same shape whose tasks do nothing (deployed beside dags/ on demand).
FLOOR_DAG = Path(__file__).resolve().parent / "coinstats_load_floor.py"
FLOOR_DAG_ID = FLOOR_DAG.stem
EXCHANGES = ("binance", "okx", "kraken")
PAGE_SIZE = 100  # the load operator's default page size
CURRENCY = "USD"
SYNC_TASK = "portfolio.sync"
#: Routes called by the triggerer (status polls of deferred sync tasks): outside the pool.
TRIGGERER_ROUTES = frozenset({"GET /portfolio/status"})
TERMINAL = ("success", "failed")
#: Seconds kept back from --max-wall for verification and teardown.
RESERVE_S = 150.0

TX_COLUMNS = (
    "transaction_key",
    "transaction_type",
    "occurred_at",
    "coin_id",
    "symbol",
    "amount",
    "total_worth_usd",
    "fee_amount",
    "fee_coin_id",
    "profit_usd",
    "portfolio_name",
    "payload_json",
)
COIN_COLUMNS = (
    "coin_id",
    "symbol",
    "name",
    "is_fiat",
    "amount",
    "price_usd",
    "price_btc",
    "value_usd",
    "profit_all_time_usd",
    "profit_percent_all_time_usd",
)
VALUE_COLUMNS = (
    "currency",
    "total_value",
    "defi_value",
    "total_cost",
    "unrealized_profit_loss",
    "unrealized_profit_loss_percent",
    "realized_profit_loss",
    "realized_profit_loss_percent",
    "all_time_profit_loss",
    "all_time_profit_loss_percent",
)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- accounts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """One exchange account: its Airflow connection and the credentials in it."""

    index: int
    conn_id: str
    exchange: str
    name: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)
    passphrase: str | None = field(default=None, repr=False)

    def connection_body(self) -> dict[str, Any]:
        """``POST /api/v2/connections`` body."""
        extra: dict[str, Any] = {"connection_id": self.exchange, "portfolio_name": self.name}
        if self.passphrase is not None:
            extra["passphrase"] = self.passphrase
        return {
            "connection_id": self.conn_id,
            "conn_type": "coinstats_exchange",
            "login": self.api_key,
            "password": self.api_secret,
            "extra": json.dumps(extra),
        }

    def portfolio_id(self, coinstats_api_key: str) -> str:
        """The id the sandbox derives from exactly these credentials."""
        return sandbox_data.portfolio_id(coinstats_api_key, self.exchange, self.api_key, self.api_secret)


def make_accounts(count: int) -> list[Account]:
    """``count`` accounts with distinct credentials, cycling binance / okx (+ passphrase) / kraken."""
    run = secrets.token_hex(3)
    accounts = []
    for i in range(count):
        exchange = EXCHANGES[i % len(EXCHANGES)]
        accounts.append(
            Account(
                index=i,
                conn_id=f"bench_load_{i:03d}_{exchange}",
                exchange=exchange,
                name=f"Load {i:03d} {exchange}",
                api_key=f"bench-{exchange}-key-{i:03d}-{run}-{secrets.token_hex(4)}",
                api_secret=f"bench-{exchange}-secret-{i:03d}-{run}-{secrets.token_hex(8)}",
                passphrase=f"bench-pass-{i:03d}-{secrets.token_hex(4)}" if exchange == "okx" else None,
            )
        )
    return accounts


# -- REST helpers --------------------------------------------------------------------------------


def all_task_instances(stack: AirflowStack, run_id: str, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
    """Every task instance of a run, paged (the API caps ``limit`` at ``[api] maximum_page_limit``)."""
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    items: list[dict[str, Any]] = []
    while True:
        body = stack.api("GET", path, params={"limit": 100, "offset": len(items), "order_by": "id"})
        page = list(body["task_instances"])
        items.extend(page)
        if not page or len(items) >= int(body["total_entries"]):
            return items


def ts(value: str | None) -> float | None:
    """ISO 8601 -> epoch seconds."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def log_lines(stack: AirflowStack, run_id: str, ti: Mapping[str, Any], dag_id: str = DAG_ID) -> list[dict[str, Any]]:
    """The structured log of a task instance's (last) try, as the REST API serves it."""
    body = stack.api(
        "GET",
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}",
        params={"map_index": ti["map_index"], "full_content": "true"},
        headers={"Accept": "application/json"},
    )
    return [line for line in body.get("content", []) if isinstance(line, dict)]


def deferral_gap(lines: Sequence[Mapping[str, Any]], start: float) -> tuple[float, float | None] | None:
    """(off, back) epoch seconds between which a deferred try was off the worker, from its log.

    Each worker segment of a task's log opens with ``::group::Pre Execute`` (the task runner's first
    line). The first segment ends with "Pausing task as DEFERRED" and its ``::endgroup::``: ``off``. The
    resumed segment's ``Pre Execute`` line comes a little after the supervisor marked the task running
    again, so ``back`` is that line minus the same lead the first segment had over ``start_date``;
    ``None`` when the try never resumed. ``None`` overall when the try did not defer.
    """
    pre: list[float] = []
    paused = off = None
    for line in lines:
        event = str(line.get("event", ""))
        stamp = ts(line.get("timestamp"))
        if stamp is None:
            continue
        if event.startswith("::group::Pre Execute"):
            pre.append(stamp)
        elif paused is None and event.startswith("Pausing task as DEFERRED"):
            paused = off = stamp
        elif paused is not None and off == paused and event.startswith("::endgroup::") and stamp - paused < 1:
            off = stamp
    if paused is None or off is None:
        return None
    resumed = [stamp for stamp in pre if stamp > paused]
    if not resumed:
        return off, None
    lead = max(0.0, pre[0] - start) if pre and pre[0] <= paused else 0.0
    return off, max(off, resumed[0] - lead)


def worker_segments(
    lines: Sequence[Mapping[str, Any]], start: float, end: float
) -> tuple[list[tuple[float, float]], bool]:
    """The parts of ``[start, end]`` a try spent on a worker, and whether a deferral was cut out."""
    gap = deferral_gap(lines, start)
    if gap is None or not start <= gap[0] <= end:
        return [(start, end)], False
    off, back = gap
    if back is None or back > end:
        return [(start, off)], True
    return [(start, off), (back, end)], True


# -- concurrency ---------------------------------------------------------------------------------


def max_overlap(intervals: Iterable[tuple[float, float]]) -> tuple[int, float | None]:
    """Most intervals open at one instant (an end and a start at the same instant do not overlap)."""
    events: list[tuple[float, int]] = []
    for start, end in intervals:
        events += [(start, 1), (end, -1)]
    events.sort()
    current = best = 0
    at: float | None = None
    for moment, delta in events:
        current += delta
        if current > best:
            best, at = current, moment
    return best, at


@dataclass
class PoolIntervals:
    """Running intervals of the pool's task instances (every try)."""

    intervals: list[tuple[float, float]] = field(default_factory=list)
    naive: list[tuple[float, float]] = field(default_factory=list)
    labelled: list[tuple[str, float, float]] = field(default_factory=list)
    tries: int = 0
    tries_from_log: int = 0
    tries_without_trace: list[str] = field(default_factory=list)
    deferred_cut: int = 0
    deferred_uncut: list[str] = field(default_factory=list)


def pool_intervals(
    stack: AirflowStack, run_id: str, tis: Sequence[Mapping[str, Any]], dag_id: str = DAG_ID
) -> PoolIntervals:
    """Intervals during which each try of each pool task instance was running on a worker.

    Earlier tries of retried task instances come from ``GET .../tries`` (TaskInstanceHistory), or from
    their logs when that has no row for them.
    """
    base = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    out = PoolIntervals()
    for ti in tis:
        if ti.get("pool") != POOL or ti.get("state") == "skipped":
            continue
        attempts: list[Mapping[str, Any]] = [ti]
        if int(ti.get("try_number") or 0) > 1:
            history = stack.api("GET", f"{base}/{ti['task_id']}/{ti['map_index']}/tries")["task_instances"]
            attempts = [h for h in history if h["try_number"] != ti["try_number"]] + [ti]
        listed = {int(a["try_number"]) for a in attempts}
        for missing in sorted(set(range(1, int(ti.get("try_number") or 1))) - listed):
            # A try the scheduler failed while it was queued has no TaskInstanceHistory row: take its
            # times from its log (first to last worker line).
            try:
                lines = log_lines(stack, run_id, {**ti, "try_number": missing}, dag_id)
            except StackError:  # neither a history row nor a log: the try never reached a worker
                out.tries_without_trace.append(f"{ti['task_id']}[{ti['map_index']}] try {missing}")
                continue
            worker = [line for line in lines if line.get("filename") != "triggerer_job_runner.py"]
            stamps = [t for t in (ts(line.get("timestamp")) for line in worker) if t is not None]
            if stamps:
                attempts.append({"try_number": missing, "_from_log": (min(stamps), max(stamps))})
                out.tries_from_log += 1
        for attempt in attempts:
            start, end = ts(attempt.get("start_date")), ts(attempt.get("end_date"))
            if "_from_log" in attempt:
                start, end = attempt["_from_log"]
            if start is None or end is None:
                continue
            out.tries += 1
            out.naive.append((start, end))
            label = f"{ti['task_id']}[{ti['map_index']}] try {attempt['try_number']}"
            if ti["task_id"] == SYNC_TASK:
                lines = log_lines(stack, run_id, {**ti, "try_number": attempt["try_number"]}, dag_id)
                pieces, cut = worker_segments(lines, start, end)
                if cut:
                    out.deferred_cut += 1
                else:
                    out.deferred_uncut.append(label)
            else:
                pieces = [(start, end)]
            out.intervals += pieces
            out.labelled += [(label, a, b) for a, b in pieces]
    return out


# -- run ---------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Pool counters sampled while the run went."""

    count: int = 0
    max: dict[str, int] = field(default_factory=dict)
    ti_running_max: int = 0
    timeouts: int = 0

    def add(self, pool: Mapping[str, Any]) -> None:
        self.count += 1
        for key in ("running_slots", "queued_slots", "occupied_slots", "deferred_slots", "scheduled_slots"):
            self.max[key] = max(self.max.get(key, 0), int(pool.get(key) or 0))


def run_once(
    stack: AirflowStack, conf: Mapping[str, Any], deadline: float, interval: float, dag_id: str = DAG_ID
) -> tuple[dict[str, Any], float, Samples, bool]:
    """Trigger the DAG, sample the pool until the run ends (or ``deadline``); (run, wall s, samples, finished)."""
    samples = Samples()
    started = time.monotonic()
    run = stack.trigger(conf, dag_id=dag_id)
    run_id = run["dag_run_id"]
    while True:
        stack.check_alive()
        try:
            samples.add(stack.api("GET", f"/pools/{POOL}"))
            run = dict(stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))
        except httpx.TimeoutException:  # an overloaded machine: the api-server answers late, ask again
            samples.timeouts += 1
            continue
        if run["state"] in TERMINAL:
            return run, time.monotonic() - started, samples, True
        if time.monotonic() >= deadline:
            return run, time.monotonic() - started, samples, False
        time.sleep(interval)


def phase_spans(tis: Sequence[Mapping[str, Any]], t0: float) -> dict[str, dict[str, float | int]]:
    """Per task id: instances, first start and last end (s after the run's start)."""
    spans: dict[str, dict[str, float | int]] = {}
    for ti in tis:
        start, end = ts(ti.get("start_date")), ts(ti.get("end_date"))
        entry = spans.setdefault(str(ti["task_id"]), {"tis": 0, "first_start_s": float("inf"), "last_end_s": 0.0})
        entry["tis"] = int(entry["tis"]) + 1
        if start is not None:
            entry["first_start_s"] = min(float(entry["first_start_s"]), round(start - t0, 1))
        if end is not None:
            entry["last_end_s"] = max(float(entry["last_end_s"]), round(end - t0, 1))
    return spans


def xcom_value(stack: AirflowStack, run_id: str, task_id: str, map_index: int = -1) -> Any:
    """A task's ``return_value`` XCom, decoded."""
    entry = stack.api(
        "GET",
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
        params={"map_index": map_index},
    )
    value = entry["value"]
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return json.loads(value)
        with contextlib.suppress(ValueError, SyntaxError):
            return ast.literal_eval(value)
    return value


# -- isolation -----------------------------------------------------------------------------------


def expected_portfolio(
    account: Account, pid: str, transactions: int, coins: int | None, day: dt.date
) -> dict[str, Any]:
    """What the warehouse must hold for this portfolio: the sandbox's data through the provider's transform."""
    exchange = sandbox_data.find_exchange(account.exchange)
    assert exchange is not None
    coin_count = coins if coins is not None else sandbox_data.default_coin_count(pid)
    spec = sandbox_data.PortfolioSpec(pid, coin_count, transactions, account.name, exchange.icon)
    items = as_served(_all_pages(lambda page: sandbox_data.coin_items(spec, page, PAGE_SIZE)))
    txs = as_served(_all_pages(lambda page: sandbox_data.transaction_items(spec, page, PAGE_SIZE, CURRENCY)))
    value = value_row(pid, day, CURRENCY, as_served(sandbox_data.portfolio_value(spec, CURRENCY)))
    return {
        "value": tuple(value[c] for c in VALUE_COLUMNS),
        "coins": sorted(tuple(row[c] for c in COIN_COLUMNS) for row in coin_rows(pid, day, items)),
        "transactions": sorted(
            tuple(row[c] for c in TX_COLUMNS) for row in transaction_rows(pid, txs, TransactionKeyer())
        ),
    }


def as_served(payload: Any) -> Any:
    """The sandbox's generated data as the hook sees it: sent as JSON, decoded with exact decimals."""
    if isinstance(payload, Iterator):
        payload = list(payload)
    return json.loads(json.dumps(payload), parse_float=Decimal)


def _all_pages(fetch: Any) -> Iterator[dict[str, Any]]:
    page = 1
    while True:
        items = fetch(page)
        yield from items
        if len(items) < PAGE_SIZE:
            return
        page += 1


def first_difference(got: Sequence[tuple[Any, ...]], want: Sequence[tuple[Any, ...]], columns: Sequence[str]) -> str:
    """The first differing column of the first differing row, as ``column: got != want``."""
    for row_got, row_want in zip(got, want, strict=False):
        for column, a, b in zip(columns, row_got, row_want, strict=True):
            if a != b:
                return f"{column}: {str(a)[:160]!r} != {str(b)[:160]!r}"
    return "row counts"


def verify_isolation(
    stack: AirflowStack, accounts: Sequence[Account], transactions: int, coins: int | None
) -> dict[str, Any]:
    """Compare the warehouse, per portfolio, with what the sandbox generates for exactly that portfolio."""
    api_key = stack.canaries["api_key"]
    expected_pid = {a.conn_id: a.portfolio_id(api_key) for a in accounts}
    by_pid = {expected_pid[a.conn_id]: a for a in accounts}
    problems: list[str] = []
    found: dict[str, Any] = {}
    with contextlib.closing(psycopg2.connect(stack.warehouse_dsn())) as conn, conn.cursor() as cur:
        cur.execute("SELECT portfolio_id, exchange_conn_id, connection_id FROM coinstats_portfolios")
        registry = {row[1]: (row[0], row[2]) for row in cur.fetchall()}
        for account in accounts:
            got = registry.get(account.conn_id)
            if got != (expected_pid[account.conn_id], account.exchange):
                problems.append(f"coinstats_portfolios[{account.conn_id}] = {got}, expected its own portfolio")
        extra_conns = sorted(set(registry) - set(expected_pid))
        if extra_conns:
            problems.append(f"coinstats_portfolios has unknown connections {extra_conns[:5]}")

        tables = {
            "value": ("coinstats_portfolio_values", VALUE_COLUMNS),
            "coins": ("coinstats_portfolio_coins", COIN_COLUMNS),
            "transactions": ("coinstats_portfolio_transactions", TX_COLUMNS),
        }
        rows: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
        days: set[str] = set()
        wrong_pid_rows = 0
        for dataset, (name, columns) in tables.items():
            select = ", ".join(
                ("portfolio_id", *(("snapshot_date::text",) if dataset != "transactions" else ()), *columns)
            )
            cur.execute(f"SELECT {select} FROM {name}")  # noqa: S608 (names are constants)
            grouped: dict[str, list[tuple[Any, ...]]] = {}
            for row in cur.fetchall():
                pid, rest = row[0], row[1:]
                if dataset != "transactions":
                    days.add(rest[0])
                    rest = rest[1:]
                grouped.setdefault(pid, []).append(tuple(rest))
            unknown = set(grouped) - set(by_pid)
            wrong_pid_rows += sum(len(grouped[pid]) for pid in unknown)
            if unknown:
                problems.append(f"{name}: rows under {len(unknown)} portfolio ids of no account")
            rows[dataset] = grouped
            found[name] = sum(len(v) for v in grouped.values())
    if len(days) != 1:
        problems.append(f"snapshot dates {sorted(days)} (expected one)")
    day = dt.date.fromisoformat(min(days)) if days else dt.date.today()

    checked = 0
    per_portfolio_counts: list[dict[str, Any]] = []
    for pid, account in by_pid.items():
        want = expected_portfolio(account, pid, transactions, coins, day)
        got_value = rows["value"].get(pid, [])
        got_coins = sorted(rows["coins"].get(pid, []))
        got_txs = sorted(rows["transactions"].get(pid, []))
        if got_value != [want["value"]]:
            problems.append(f"{account.conn_id}: value rows {len(got_value)} differ from the sandbox's")
        if got_coins != want["coins"]:
            ids_got = sorted(r[0] for r in got_coins)
            ids_want = sorted(r[0] for r in want["coins"])
            what = "ids" if ids_got != ids_want else "content"
            problems.append(f"{account.conn_id}: coins {len(got_coins)} vs {len(want['coins'])} ({what} differ)")
        if got_txs != want["transactions"]:
            problems.append(
                f"{account.conn_id}: transactions {len(got_txs)} vs {len(want['transactions'])} (content differs: "
                f"{first_difference(got_txs, want['transactions'], TX_COLUMNS)})"
            )
        per_portfolio_counts.append(
            {
                "conn_id": account.conn_id,
                "portfolio_id": pid,
                "coins": [len(got_coins), len(want["coins"])],
                "transactions": [len(got_txs), len(want["transactions"])],
            }
        )
        checked += 1
    return {
        "portfolios_checked": checked,
        "distinct_portfolio_ids": len(by_pid),
        "snapshot_dates": sorted(days),
        "rows_found": found,
        "rows_expected": {
            "coinstats_portfolio_values": len(by_pid),
            "coinstats_portfolio_coins": sum(c["coins"][1] for c in per_portfolio_counts),
            "coinstats_portfolio_transactions": sum(c["transactions"][1] for c in per_portfolio_counts),
        },
        "rows_under_wrong_portfolio": wrong_pid_rows,
        "problems": problems,
        "ok": not problems,
        "per_portfolio": per_portfolio_counts,
    }


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=100, help="exchange accounts (mapped connect tasks)")
    parser.add_argument("--pool-slots", type=int, default=4, help="slots of pool coinstats_api")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="sandbox latency per request")
    parser.add_argument("--transactions", type=int, default=300, help="transactions per portfolio")
    parser.add_argument("--coins", type=int, default=None, help="coins per portfolio (default: sandbox's 3..40)")
    parser.add_argument("--sync-seconds", type=float, default=1.0, help="how long a sandbox sync takes")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="conf sync_poll_seconds")
    parser.add_argument("--max-wall", type=float, default=900.0, help="hard limit for the whole script (s)")
    parser.add_argument("--sample-interval", type=float, default=2.0, help="s between pool samples")
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    parser.add_argument(
        "--executor", choices=("local", "celery"), default="local", help="LocalExecutor, or CeleryExecutor + 2 workers"
    )
    parser.add_argument("--worker-concurrency", type=int, default=4, help="task slots of each Celery worker")
    parser.add_argument(
        "--dag",
        choices=("ours", "floor", "both"),
        default="ours",
        help="the real DAG, Airflow's floor (same shape, tasks do nothing), or the floor then ours on one stack",
    )
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.pool_slots < 1:
        parser.error("--accounts and --pool-slots must be at least 1")
    return args


def setup_stack(stack: AirflowStack, accounts: Sequence[Account], pool_slots: int) -> None:
    """Create the accounts' connections and size the pool, through the REST API."""
    for account in accounts:
        stack.api("POST", "/connections", expect=201, json=account.connection_body())
    current = stack.api("GET", f"/pools/{POOL}")
    body = {
        "pool": POOL,
        "slots": pool_slots,
        "description": current.get("description"),
        "include_deferred": bool(current.get("include_deferred")),
    }
    pool = stack.api("PATCH", f"/pools/{POOL}", json=body)
    assert int(pool["slots"]) == pool_slots, pool
    print(f"{len(accounts)} connections created, pool {POOL} = {pool['slots']} slots")


def measure(
    stack: AirflowStack, args: argparse.Namespace, accounts: Sequence[Account], dag_id: str, deadline: float
) -> dict[str, Any]:
    """Trigger one run of ``dag_id`` over the accounts and measure it (isolation only for the real DAG)."""
    before = stack.sandbox.stats() if stack.sandbox else {}
    conf = {"exchange_conn_ids": [a.conn_id for a in accounts], "sync_poll_seconds": args.poll_seconds}
    load_before = os.getloadavg()
    print(f"running {dag_id} ...")
    run, wall, samples, finished = run_once(stack, conf, deadline, args.sample_interval, dag_id)
    load_after = os.getloadavg()
    run_id = run["dag_run_id"]
    if not finished:
        print(f"run {run_id} did not finish within the time left ({wall:.0f} s); marking it failed")
        with contextlib.suppress(StackError):
            stack.finish_run(run_id, dag_id=dag_id, timeout=60)
        run = dict(stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))
    after = stack.sandbox.stats() if stack.sandbox else {}
    tis = all_task_instances(stack, run_id, dag_id)
    result: dict[str, Any] = {
        "run": {
            "dag_id": dag_id,
            "run_id": run_id,
            "state": run["state"],
            "finished_in_time": finished,
            "wall_s": round(wall, 1),
            "run_start_end_s": _span(run.get("start_date"), run.get("end_date")),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        }
    }
    result.update(collect(stack, args, run, tis, before, after, samples, dag_id))
    ideal = result["ideal"]
    for key in ("pool_calls", "all_calls"):
        seconds = ideal[f"ideal_{key}_s"]
        ideal[f"ratio_wall_over_ideal_{key}"] = round(wall / seconds, 1) if seconds else None
    try:
        result["failures"] = failures(stack, run_id, tis, dag_id)
    except (StackError, KeyError, TypeError, ValueError) as err:
        result["failures"] = {"error": f"{type(err).__name__}: {err}"[:2000]}
    if dag_id == DAG_ID:
        print("verifying the warehouse against the sandbox's data ...")
        result["isolation"] = verify_isolation(stack, accounts, args.transactions, args.coins)
        if run["state"] != "success":
            result["isolation"]["ok"] = False
            result["isolation"]["problems"].insert(0, f"the run ended {run['state']}: the warehouse is partial")
    return result


def versus_floor(ours: Mapping[str, Any], floor: Mapping[str, Any]) -> dict[str, Any]:
    """Our run as a ratio to Airflow's floor: wall time, worker executions and pool slot-seconds."""

    def ratio(a: Any, b: Any) -> float | None:
        return round(float(a) / float(b), 2) if a and b else None

    return {
        "wall_s": [ours["run"]["wall_s"], floor["run"]["wall_s"]],
        "wall_ratio": ratio(ours["run"]["wall_s"], floor["run"]["wall_s"]),
        "worker_executions": [ours["tasks"]["worker_executions"], floor["tasks"]["worker_executions"]],
        "pool_busy_slot_s": [ours["ideal"]["pool_busy_slot_s"], floor["ideal"]["pool_busy_slot_s"]],
        "pool_busy_ratio": ratio(ours["ideal"]["pool_busy_slot_s"], floor["ideal"]["pool_busy_slot_s"]),
        "per_execution_s": [ours["ideal"]["pool_busy_per_execution_s"], floor["ideal"]["pool_busy_per_execution_s"]],
        "phases": {"ours": ours["tasks"]["phases"], "floor": floor["tasks"]["phases"]},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    signal.signal(signal.SIGTERM, _on_sigterm)
    info = machine_info()
    print_machine(info)
    accounts = make_accounts(args.accounts)
    sandbox_config = {
        "latency_ms": args.latency_ms,
        "transactions": args.transactions,
        "sync_seconds": args.sync_seconds,
        "coins": args.coins,
    }
    result: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    result["machine"] = info
    dags = {"ours": [DAG_ID], "floor": [FLOOR_DAG_ID], "both": [FLOOR_DAG_ID, DAG_ID]}[args.dag]
    with contextlib.ExitStack() as resources:
        pg = resources.enter_context(PostgresServer())
        redis = resources.enter_context(RedisServer()) if args.executor == "celery" else None
        stack = AirflowStack(
            pg,
            sandbox_config=sandbox_config,
            startup_timeout=300,
            executor="CeleryExecutor" if args.executor == "celery" else "LocalExecutor",
            redis=redis,
            worker_concurrency=args.worker_concurrency,
            extra_dags=[FLOOR_DAG] if FLOOR_DAG_ID in dags else [],
        )
        resources.enter_context(stack)
        result["startup_s"] = round(time.monotonic() - began, 1)
        print(f"stack up in {result['startup_s']} s (api-server {stack.base_url}, sandbox {stack.sandbox_url})")
        setup_stack(stack, accounts, args.pool_slots)
        deadline = began + args.max_wall - RESERVE_S
        runs = {dag_id: measure(stack, args, accounts, dag_id, deadline) for dag_id in dags}
    if DAG_ID in runs:
        result.update(runs[DAG_ID])
    if FLOOR_DAG_ID in runs:
        if DAG_ID in runs:
            result["floor"] = runs[FLOOR_DAG_ID]
            result["versus_floor"] = versus_floor(runs[DAG_ID], runs[FLOOR_DAG_ID])
        else:
            result.update(runs[FLOOR_DAG_ID])
    result["total_script_s"] = round(time.monotonic() - began, 1)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.json}")
    ok = all(r["run"]["state"] == "success" and r["concurrency"]["within_pool"] for r in runs.values())
    return 0 if ok and (DAG_ID not in runs or result["isolation"]["ok"]) else 1


def _span(start: str | None, end: str | None) -> float | None:
    a, b = ts(start), ts(end)
    return round(b - a, 1) if a is not None and b is not None else None


def collect(
    stack: AirflowStack,
    args: argparse.Namespace,
    run: Mapping[str, Any],
    tis: Sequence[Mapping[str, Any]],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    samples: Samples,
    dag_id: str = DAG_ID,
) -> dict[str, Any]:
    """Tasks, requests, credits, concurrency and the ideal time of one run."""
    run_id = run["dag_run_id"]
    states = Counter(str(ti["state"]) for ti in tis)
    by_task = Counter(str(ti["task_id"]) for ti in tis)
    pool_tis = [ti for ti in tis if ti.get("pool") == POOL]
    intervals = pool_intervals(stack, run_id, tis, dag_id)
    overlap, overlap_at = max_overlap(intervals.intervals)
    naive_overlap, _ = max_overlap(intervals.naive)
    ran = [ti for ti in tis if ti.get("start_date")]
    non_pool_tries = sum(int(ti["try_number"] or 1) for ti in ran if ti.get("pool") != POOL)
    executions = len(intervals.intervals) + non_pool_tries

    requests = Counter(after.get("requests", {})) - Counter(before.get("requests", {}))
    total_requests = sum(requests.values())
    triggerer_calls = sum(n for route, n in requests.items() if route in TRIGGERER_ROUTES)
    pool_calls = total_requests - triggerer_calls
    latency_s = args.latency_ms / 1000.0
    ideal_pool = pool_calls * latency_s / args.pool_slots
    ideal_all = total_requests * latency_s / args.pool_slots
    credits_sandbox = int(after.get("credits_used", 0)) - int(before.get("credits_used", 0))

    summary_credits: int | None = None
    if run["state"] == "success" and dag_id == DAG_ID:
        with contextlib.suppress(StackError, KeyError, TypeError):
            summary_credits = int(xcom_value(stack, run_id, "summary")["total_credits"])
    t0 = ts(run.get("start_date")) or 0.0
    out = {
        "tasks": {
            "task_instances": len(tis),
            "by_state": dict(states),
            "by_task": dict(by_task),
            "pool_task_instances": len(pool_tis),
            "worker_executions": executions,
            "pool_task_tries": intervals.tries,
            "deferred_tries": intervals.deferred_cut,
            "retries": sum(max(0, int(ti["try_number"]) - 1) for ti in ran),
            # Which worker ran each task instance's last try (one host on LocalExecutor).
            "by_hostname": dict(Counter(str(ti.get("hostname")) for ti in ran)),
            "phases": phase_spans(tis, t0),
        },
        "requests": {
            "total": total_requests,
            "by_route": dict(sorted(requests.items())),
            "by_pool_tasks": pool_calls,
            "by_triggerer": triggerer_calls,
            "responses": dict(Counter(after.get("responses", {})) - Counter(before.get("responses", {}))),
            "faults": after.get("faults", {}),
        },
        "credits": {
            "sandbox": credits_sandbox,
            "summary_task": summary_credits,
            "equal": summary_credits == credits_sandbox,
            "sandbox_minus_summary": None if summary_credits is None else credits_sandbox - summary_credits,
            "sync_calls_beyond_one_per_portfolio": requests.get("PATCH /portfolio/sync", 0) - args.accounts,
            "by_route": dict(
                sorted((Counter(after.get("credits_by_path", {})) - Counter(before.get("credits_by_path", {}))).items())
            ),
        },
        "concurrency": {
            "pool_slots": args.pool_slots,
            "max_running_pool_tasks": overlap,
            "at": dt.datetime.fromtimestamp(overlap_at, dt.UTC).isoformat() if overlap_at else None,
            "within_pool": overlap <= args.pool_slots,
            "deferrals_cut_out": intervals.deferred_cut,
            "tries_without_history_row_taken_from_log": intervals.tries_from_log,
            "tries_without_history_row_or_log": intervals.tries_without_trace,
            "sync_tis_without_a_cut": intervals.deferred_uncut,
            "naive_max_overlap_start_to_end": naive_overlap,
            "sampled_max": samples.max,
            "intervals_s_after_run_start": sorted(
                (label, round(a - t0, 2), round(b - t0, 2)) for label, a, b in intervals.labelled
            ),
            "samples": samples.count,
            "sample_timeouts": samples.timeouts,
        },
    }
    busy = sum(b - a for a, b in intervals.intervals)
    out["ideal"] = {
        "latency_ms": args.latency_ms,
        "pool_calls": pool_calls,
        "ideal_pool_calls_s": round(ideal_pool, 2),
        "all_calls": total_requests,
        "ideal_all_calls_s": round(ideal_all, 2),
        # Where the wall time goes: slot-seconds the pool's tasks spent running on workers, of which the
        # CoinStats calls themselves (calls x latency) are a small part; the rest is Airflow's per-task cost.
        "pool_busy_slot_s": round(busy, 1),
        "pool_busy_per_execution_s": round(busy / len(intervals.intervals), 2) if intervals.intervals else None,
        "pool_calls_share_of_busy": round(pool_calls * args.latency_ms / 1000 / busy, 3) if busy else None,
    }
    return out


def failures(
    stack: AirflowStack, run_id: str, tis: Sequence[Mapping[str, Any]], dag_id: str = DAG_ID
) -> dict[str, Any]:
    """Why task instances retried or failed: every try of each, its error lines, and the run's event log."""
    base = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    troubled = [ti for ti in tis if int(ti.get("try_number") or 0) > 1 or ti["state"] not in ("success", "skipped")]
    tries: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    for ti in troubled[:60]:
        if not ti.get("try_number"):
            tries.append({"task": f"{ti['task_id']}[{ti['map_index']}]", "state": ti["state"]})
            continue
        history = stack.api("GET", f"{base}/{ti['task_id']}/{ti['map_index']}/tries")["task_instances"]
        for attempt in history:
            entry: dict[str, Any] = {
                "task": f"{ti['task_id']}[{ti['map_index']}]",
                "try": attempt["try_number"],
                "state": attempt["state"],
                "start": attempt.get("start_date"),
                "end": attempt.get("end_date"),
            }
            if attempt["state"] != "success":
                with contextlib.suppress(StackError):
                    lines = log_lines(stack, run_id, {**ti, "try_number": attempt["try_number"]}, dag_id)
                    errors = [
                        f"{line.get('timestamp')} {line.get('level')} {str(line.get('event'))[:300]}"
                        + (f" {str(line.get('error_detail'))[:400]}" if line.get("error_detail") else "")
                        for line in lines
                        if str(line.get("level", "")).lower() in ("error", "warning", "critical")
                    ]
                    entry["errors"] = errors[-6:]
                    for line in lines:
                        if str(line.get("level", "")).lower() in ("error", "critical"):
                            reasons[str(line.get("event"))[:120]] += 1
            tries.append(entry)
    events: Counter[str] = Counter()
    notable: list[dict[str, Any]] = []
    offset = 0
    while True:
        body = stack.api(
            "GET", "/eventLogs", params={"dag_id": dag_id, "run_id": run_id, "limit": 100, "offset": offset}
        )
        page = body["event_logs"]
        for log in page:
            events[str(log["event"])] += 1
            if log["event"] not in ("running", "success", "skipped", "deferred", "trigger") and len(notable) < 40:
                notable.append(
                    {k: log.get(k) for k in ("when", "event", "task_id", "map_index", "try_number", "extra")}
                )
        offset += len(page)
        if not page or offset >= int(body["total_entries"]):
            break
    return {
        "troubled_task_instances": len(troubled),
        "error_events": dict(reasons.most_common(15)),
        "tries": tries,
        "event_log_counts": dict(events),
        "event_log_notable": notable,
    }


def report(result: Mapping[str, Any]) -> None:
    """Print the result table and the raw JSON."""
    args, run = result["args"], result["run"]
    tasks, req, cred = result.get("tasks", {}), result.get("requests", {}), result.get("credits", {})
    conc, ideal, iso = result.get("concurrency", {}), result.get("ideal", {}), result.get("isolation", {})
    wall = float(run["wall_s"])
    rows = [
        ("DAG / executor", f"{run.get('dag_id', DAG_ID)} / {args.get('executor', 'local')}"),
        ("accounts / pool slots / latency", f"{args['accounts']} / {args['pool_slots']} / {args['latency_ms']:g} ms"),
        ("run state", f"{run['state']}{'' if run['finished_in_time'] else ' (did NOT finish in time)'}"),
        ("wall time of the run (trigger -> end)", f"{wall:.1f} s (run start->end {run['run_start_end_s']} s)"),
        ("stack start-up", f"{result['startup_s']} s"),
        (
            "task instances / worker executions",
            f"{tasks.get('task_instances')} / {tasks.get('worker_executions')} "
            f"(event log 'running': {result.get('failures', {}).get('event_log_counts', {}).get('running')}) "
            f"(states {tasks.get('by_state')}; retries {tasks.get('retries')})",
        ),
        (
            "requests (sandbox)",
            f"{req.get('total')} = {req.get('by_pool_tasks')} by pool tasks + {req.get('by_triggerer')} status polls",
        ),
        (
            "credits: sandbox vs summary task",
            f"{cred.get('sandbox')} vs {cred.get('summary_task')} (difference "
            f"{cred.get('sandbox_minus_summary')}; PATCH /portfolio/sync calls beyond one per portfolio: "
            f"{cred.get('sync_calls_beyond_one_per_portfolio')})",
        ),
        (
            "max concurrent CoinStats-calling tasks",
            f"{conc.get('max_running_pool_tasks')} (≤ {args['pool_slots']}: {conc.get('within_pool')}; "
            f"sampled running_slots max {conc.get('sampled_max', {}).get('running_slots')}; "
            f"start->end without cutting deferrals: {conc.get('naive_max_overlap_start_to_end')})",
        ),
        (
            "ideal = calls x latency / slots",
            f"{ideal.get('ideal_pool_calls_s')} s (pool-task calls {ideal.get('pool_calls')}); "
            f"{ideal.get('ideal_all_calls_s')} s (all {ideal.get('all_calls')} calls)",
        ),
        (
            "ratio wall / ideal",
            f"{_ratio(wall, ideal.get('ideal_pool_calls_s'))} (pool-task calls); "
            f"{_ratio(wall, ideal.get('ideal_all_calls_s'))} (all calls)",
        ),
        (
            "pool tasks' time on workers",
            f"{ideal.get('pool_busy_slot_s')} slot-s over {args['pool_slots']} slots "
            f"({ideal.get('pool_busy_per_execution_s')} s per worker execution); CoinStats calls "
            f"(calls x latency) are {ideal.get('pool_calls_share_of_busy')} of it",
        ),
        (
            "isolation",
            f"ok={iso.get('ok')}: {iso.get('portfolios_checked', 0)} portfolios, rows {iso.get('rows_found')}, "
            f"under a wrong portfolio: {iso.get('rows_under_wrong_portfolio')}",
        ),
    ]
    print()
    print(table(("metric", "value"), rows))
    phases = tasks.get("phases", {})
    if phases:
        print()
        print(
            table(
                ("task", "TIs", "first start s", "last end s"),
                [(k, v["tis"], v["first_start_s"], v["last_end_s"]) for k, v in phases.items()],
            )
        )
    if req.get("by_route"):
        print()
        print(
            table(
                ("route", "requests", "credits"),
                [(r, n, cred.get("by_route", {}).get(r, 0)) for r, n in req["by_route"].items()],
            )
        )
    floor, versus = result.get("floor"), result.get("versus_floor")
    if floor and versus:
        print()
        print(f"Airflow's floor ({FLOOR_DAG_ID}, same shape, tasks do nothing), run just before ours on this stack:")
        print(
            table(
                ("metric", "ours", "floor", "ours / floor"),
                [
                    ("wall time (s)", *versus["wall_s"], versus["wall_ratio"]),
                    ("worker executions", *versus["worker_executions"], ""),
                    ("pool tasks' slot-seconds on workers", *versus["pool_busy_slot_s"], versus["pool_busy_ratio"]),
                    ("per worker execution (s)", *versus["per_execution_s"], ""),
                    ("task instances", tasks.get("task_instances"), floor["tasks"]["task_instances"], ""),
                    ("retries", tasks.get("retries"), floor["tasks"]["retries"], ""),
                    ("by worker", tasks.get("by_hostname"), floor["tasks"]["by_hostname"], ""),
                ],
            )
        )
        fphases = floor["tasks"]["phases"]
        print(
            table(
                ("task", "ours first start / last end s", "floor first start / last end s"),
                [
                    (k, f"{v['first_start_s']} / {v['last_end_s']}", _phase(fphases.get(k)))
                    for k, v in tasks.get("phases", {}).items()
                ],
            )
        )
    for problem in iso.get("problems", [])[:20]:
        print(f"PROBLEM: {problem}")
    trouble = result.get("failures", {})
    if trouble.get("troubled_task_instances"):
        print()
        print(f"task instances that retried or did not succeed: {trouble['troubled_task_instances']}")
        attempts = Counter((str(t["task"]).split("[")[0], t.get("try"), t["state"]) for t in trouble.get("tries", []))
        print(table(("task", "try", "state", "count"), [(*key, n) for key, n in sorted(attempts.items(), key=str)]))
        print(f"error log lines of those tries: {trouble.get('error_events')}")
        print(f"event log of the run: {trouble.get('event_log_counts')}")
    print()
    print("raw:")
    short = {"isolation": _short(iso), "concurrency": _short_concurrency(conc), "failures": "(see --json)"}
    if floor:
        short["floor"] = {k: v for k, v in floor.items() if k not in ("failures", "concurrency")}
    print(json.dumps({k: v for k, v in result.items() if k not in short} | short, default=str))


def _phase(span: Mapping[str, Any] | None) -> str:
    return f"{span['first_start_s']} / {span['last_end_s']}" if span else "-"


def _short(iso: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in iso.items() if k != "per_portfolio"}


def _short_concurrency(conc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in conc.items() if k != "intervals_s_after_run_start"}


def _ratio(wall: float, ideal: Any) -> str:
    return f"{wall / float(ideal):.1f}x" if ideal else "n/a"


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        raise SystemExit(130) from None
