"""Crash test on the real stack: SIGKILL the task process of ``portfolio.load_transactions`` mid-load.

One run of ``coinstats_portfolio_sync`` for one exchange account of its own (a connection this test adds
through the REST API, so its portfolio is fresh whatever ran before) and ``datasets=["transactions"]``;
the sandbox serves enough transactions, slowly, for the load to take seconds. While the load has staged
rows in its warehouse session's TEMP table (nothing in the transactions table yet) and the sandbox has
served only some of the pages, the task process is found and SIGKILLed: the
``airflow worker -- <ti id>`` child of the LocalExecutor worker (its supervisor), which holds both the
sandbox connection and that warehouse connection. The rerun is Airflow's own, as after a real worker
crash: the supervisor reports the killed try failed, the TI goes ``up_for_retry`` (``retries=2``) and the
scheduler starts try 2 after the DAG's ``retry_delay`` (1 minute).

The loader commits each load as one transaction, so at kill time the portfolio has no committed row
(nothing partial is ever visible); afterwards the table holds exactly the sandbox's transactions, once.
The test's connection, its warehouse rows and the sandbox settings are removed again at the end, so the
other real-stack tests (which expect exactly their own three portfolios) are unaffected.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import psutil
import psycopg2
import pytest

from coinstats_provider.warehouse.schema import TABLES
from coinstats_provider.warehouse.transform import TransactionKeyer, transaction_rows
from include.coinstats_sandbox import data
from tests.helpers.airflow_stack import DAG_ID, AirflowStack, wait_until
from tests.helpers.canary import assert_no_fragment, new_canary

pytest_plugins = ["tests.helpers.postgres_server", "tests.helpers.airflow_stack"]
pytestmark = pytest.mark.slow

CONN_ID = "coinstats_exchange_crash_test"
EXCHANGE = "binance"
LOAD_TASK = "portfolio.load_transactions"
TXNS = "coinstats_portfolio_transactions"
PAGE_ROUTE = "GET /portfolio/transactions"
PAGE_SIZE = 100
TRANSACTIONS = 2050  # 21 pages
WAREHOUSE_BATCH = 500  # CoinStatsWarehouse's default batch_size: rows per INSERT inside the load's transaction
LATENCY_MS = 400.0
ACTIVE_RUN = ("queued", "running")
COLUMNS = [c for c in TABLES[TXNS].column_names if c != "loaded_at"]
Row = tuple[Any, ...]


def pages_served(stack: AirflowStack) -> int:
    """``GET /portfolio/transactions`` requests the sandbox has answered so far."""
    return int(stack.sandbox_server.stats()["requests"].get(PAGE_ROUTE, 0))


def sandbox_transactions(stack: AirflowStack, portfolio_id: str) -> Iterator[dict[str, Any]]:
    """Every transaction item of the portfolio, page by page, straight from the sandbox."""
    headers = {"X-API-KEY": stack.canaries["api_key"]}
    with httpx.Client(base_url=stack.sandbox_url, headers=headers, trust_env=False, timeout=30) as client:
        page = 1
        while True:
            params: dict[str, str | int] = {
                "portfolioId": portfolio_id,
                "currency": "USD",
                "page": page,
                "limit": PAGE_SIZE,
            }
            response = client.get("/portfolio/transactions", params=params)
            response.raise_for_status()
            # decoded like the hook does: exact decimals
            items: list[dict[str, Any]] = json.loads(response.content, parse_float=Decimal)["data"]
            yield from items
            if len(items) < PAGE_SIZE:
                return
            page += 1


def warehouse_rows(cur: Any, portfolio_id: str) -> list[Row]:
    """The portfolio's transaction rows without ``loaded_at``, sorted."""
    cur.execute(f"SELECT {', '.join(COLUMNS)} FROM {TXNS} WHERE portfolio_id = %s", (portfolio_id,))  # noqa: S608
    return sorted(cur.fetchall())


def committed_rows(cur: Any, portfolio_id: str) -> int:
    """Committed transaction rows of the portfolio (what any reader sees)."""
    cur.execute(f"SELECT count(*) FROM {TXNS} WHERE portfolio_id = %s", (portfolio_id,))  # noqa: S608
    return int(cur.fetchone()[0])


def open_writer(cur: Any) -> tuple[int, int] | None:
    """``(backend pid, client port)`` of the load's session while it stages rows in its TEMP table.

    The loader stages streamed rows in a connection-private TEMP table and touches the transactions table
    only in the final, short merge transaction, so the session is recognised by its last statement.
    """
    cur.execute(
        "SELECT a.pid, a.client_port FROM pg_stat_activity a WHERE a.datname = current_database() "
        "AND a.pid <> pg_backend_pid() AND a.query LIKE %s",
        ("INSERT INTO pg_temp.coinstats_stage_rows %",),
    )
    rows = cur.fetchall()
    assert len(rows) <= 1, f"more than one writer: {rows}"
    return (int(rows[0][0]), int(rows[0][1])) if rows else None


def backend_alive(cur: Any, backend_pid: int) -> bool:
    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend_pid,))
    return bool(cur.fetchone()[0])


def title(proc: psutil.Process) -> str:
    """A process's title (its command line as ``setproctitle`` set it); empty once it has exited."""
    try:
        return " ".join(proc.cmdline()).strip()
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return ""


def task_process(stack: AirflowStack, ti_id: str, pg_port: int, writer_port: int) -> psutil.Process:
    """The process running the task instance ``ti_id``, identified beyond doubt.

    It is a descendant of this stack's scheduler titled ``airflow worker -- <ti id>`` (the task runner),
    whose parent is the LocalExecutor worker supervising that TI, and which is connected both to the
    sandbox and, through ``writer_port``, to the warehouse backend holding the uncommitted load.
    """
    scheduler = psutil.Process(stack.processes["scheduler"].pid)
    descendants = scheduler.children(recursive=True)
    found = [p for p in descendants if title(p) == f"airflow worker -- {ti_id}"]
    assert len(found) == 1, f"task processes for TI {ti_id}: {[(p.pid, p.ppid(), title(p)) for p in descendants]}"
    proc = found[0]
    parent = proc.parent()
    assert parent is not None
    assert title(parent) == f"airflow worker -- LocalExecutor: {ti_id}", title(parent)
    sandbox_port = int(stack.sandbox_url.rsplit(":", 1)[1])
    links = {(c.laddr.port, c.raddr.port) for c in proc.net_connections("tcp") if c.raddr}
    assert any(remote == sandbox_port for _, remote in links), f"no connection to the sandbox: {links}"
    assert (writer_port, pg_port) in links, f"the uncommitted load is not this process's: {links}"
    return proc


def assert_no_secret(secret_values: dict[str, str], where: str, text: str) -> None:
    assert_no_fragment(secret_values, text, where=where)


def test_sigkill_mid_load_then_retry_is_exactly_once(airflow_stack: AirflowStack) -> None:
    stack = airflow_stack
    wait_until(
        "the DAG to have no active run",
        lambda: not any(run["state"] in ACTIVE_RUN for run in stack.dag_runs()),
        timeout=360,
        check=stack.check_alive,
    )
    login, password = (new_canary(f"CRS{part}") for part in ("K", "S"))
    all_secrets = {**stack.canaries, f"{CONN_ID}.login": login, f"{CONN_ID}.password": password}
    portfolio_id = data.portfolio_id(stack.canaries["api_key"], EXCHANGE, login, password)
    changes: dict[str, Any] = {"transactions": TRANSACTIONS, "latency_ms": LATENCY_MS}
    original = {key: getattr(stack.sandbox_server.config, key) for key in changes}
    pages_per_load = TRANSACTIONS // PAGE_SIZE + 1
    run_id: str | None = None
    started = time.monotonic()
    conn = psycopg2.connect(stack.warehouse_dsn())
    conn.autocommit = True
    cur = conn.cursor()
    try:
        stack.api(
            "POST",
            "/connections",
            expect=201,
            json={
                "connection_id": CONN_ID,
                "conn_type": "coinstats_exchange",
                "login": login,
                "password": password,
                "extra": json.dumps({"connection_id": EXCHANGE, "portfolio_name": "Crash test"}),
            },
        )
        stack.sandbox_server.update(**changes)
        pages_before = pages_served(stack)
        run_id = str(
            stack.trigger({"exchange_conn_ids": [CONN_ID], "datasets": ["transactions"], "sync_poll_seconds": 1})[
                "dag_run_id"
            ]
        )

        def run_is_active() -> None:
            stack.check_alive()
            assert stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"] in ACTIVE_RUN

        backend_pid, writer_port = wait_until(
            "the load to hold uncommitted rows",
            lambda: open_writer(cur),
            timeout=240,
            interval=0.2,
            check=run_is_active,
        )
        (ti,) = [t for t in stack.task_instances(run_id) if t["task_id"] == LOAD_TASK]
        assert (ti["state"], ti["try_number"], ti["map_index"]) == ("running", 1, 0)
        proc = task_process(stack, ti["id"], stack.postgres.port, writer_port)
        proc.send_signal(signal.SIGKILL)
        assert not psutil.wait_procs([proc], timeout=10)[1], "the task process survived SIGKILL"
        killed_at_page = pages_served(stack) - pages_before
        rows_at_kill = committed_rows(cur, portfolio_id)
        stack.sandbox_server.update(latency_ms=original["latency_ms"])  # the retry may run at full speed
        wait_until(
            "PostgreSQL to end the killed load's session", lambda: not backend_alive(cur, backend_pid), timeout=30
        )
        rows_after_abort = committed_rows(cur, portfolio_id)
        print(f"killed after {killed_at_page}/{pages_per_load} pages; committed rows at kill: {rows_at_kill}")

        final = stack.wait_for_run(run_id, timeout=400)
        seconds = time.monotonic() - started
        tis = stack.task_instances(run_id)
        assert final["state"] == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]
        print(f"run {run_id} (kill + retry) succeeded; test took {seconds:.0f}s")

        # The kill really happened mid-load: pages left to fetch, batches written but not committed.
        assert WAREHOUSE_BATCH // PAGE_SIZE <= killed_at_page < pages_per_load
        assert rows_at_kill == rows_after_abort == 0
        tries = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{LOAD_TASK}/0/tries")
        states = {t["try_number"]: t["state"] for t in tries["task_instances"]}
        print(f"load_transactions tries: {states}")
        assert states[1] in ("up_for_retry", "failed"), states
        assert states[2] == "success", states
        killed_log = stack.task_log(run_id, LOAD_TASK, 1, 0)
        assert "Process terminated by signal" in killed_log
        assert "SIGKILL" in killed_log
        assert_no_secret(all_secrets, "the killed try's log", killed_log)
        retry_log = stack.task_log(run_id, LOAD_TASK, 2, 0)
        assert f"Loaded {TRANSACTIONS} transactions rows of portfolio {portfolio_id}" in retry_log
        assert_no_secret(all_secrets, "the retry's log", retry_log)
        # The retry fetched every page again (plus, at most, the page in flight when the process died).
        assert 0 <= pages_served(stack) - pages_before - killed_at_page - pages_per_load <= 1

        # Exactly once: the rows a clean load of the sandbox's transactions produces, no more, no less.
        rows = warehouse_rows(cur, portfolio_id)
        expected = sorted(
            tuple(row.get(c) for c in COLUMNS)
            for row in transaction_rows(portfolio_id, sandbox_transactions(stack, portfolio_id), TransactionKeyer())
        )
        assert len(expected) == TRANSACTIONS
        assert len(rows) == TRANSACTIONS
        assert len({row[COLUMNS.index("transaction_key")] for row in rows}) == TRANSACTIONS
        assert rows == expected
    finally:
        if run_id is not None and stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"] in ACTIVE_RUN:
            stack.finish_run(run_id)
        stack.sandbox_server.update(**original)
        stack.api("DELETE", f"/connections/{CONN_ID}", expect=(204, 404))
        for table in TABLES:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
            if cur.fetchone()[0]:
                cur.execute(f"DELETE FROM {table} WHERE portfolio_id = %s", (portfolio_id,))  # noqa: S608
        conn.close()
