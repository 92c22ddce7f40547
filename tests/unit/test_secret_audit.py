"""Secret audit: no credential ever shows up in a log, XCom, rendered field, exception, trigger event or table.

Unique canary values (``CANARIES``) stand in for the CoinStats API key and the exchange apiKey, apiSecret
and passphrase. The success path and every failure path of the bad-input matrix run with them; then task
logs (``capfd`` and the unmasked ``logs`` fixture), XComs, rendered template fields, trigger events,
exception texts (str, repr, args, the chain and the traceback) and every warehouse table are searched.
Nothing is masked here (and nothing is under ``dag.test()``), so any hit is a real leak.
"""

from __future__ import annotations

import logging
import sqlite3
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import responses

from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator
from coinstats_provider.operators.load import LoadPortfolioOperator
from coinstats_provider.operators.sync import SyncPortfolioOperator
from include.coinstats_sandbox import SandboxConfig, SandboxServer
from include.coinstats_sandbox.data import portfolio_id
from tests.conftest import BASE_URL, CANARIES, ROOT, assert_no_canary, set_connection
from tests.unit.test_bad_input_matrix import CASES, Case, Env, execute, mocked, sandboxed

DAG_ID = "coinstats_portfolio_sync"
#: An error message in which CoinStats echoes the API key (the only secret sync and load calls send).
ECHO = f"Bad request for key {CANARIES['api_key']} (X-API-KEY: {CANARIES['api_key']})"
#: Airflow's own DEBUG line in ``dag.test()``: ``InProcessSupervisorComms.send`` logs every request to the
#: in-process supervisor with its body, including ``MaskSecret(value=<the secret>)`` (the real supervisor
#: logs "body omitted" for those). It is Airflow core's, triggered by every ``mask_secret()`` call (and by
#: Airflow masking connection passwords itself), not by the provider; it is excluded and counted.
INPROCESS_MASK_SECRET_LINE = "Sending request msg=MaskSecret("


def exception_texts(exc: BaseException | None) -> list[str]:
    """str, repr and args of an exception and of everything chained to it, plus its formatted traceback."""
    texts: list[str] = []
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *(repr(arg) for arg in current.args)]
        texts += [repr(value) for key, value in vars(current).items() if not key.startswith("__")]
        stack += [current.__cause__, current.__context__]
    if exc is not None:
        texts.append("".join(traceback.format_exception(exc)))
    return texts


def log_texts(
    logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], *, skip: str | None = None
) -> list[Any]:
    """Everything logged: each record's message, raw msg and args, and every captured stdout/stderr line.

    :param skip: Leave out the lines and records that contain this text.
    """
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if skip is None or skip not in line]
    texts: list[Any] = [*lines]
    for record in logs.records:
        message = record.getMessage()
        if skip is None or skip not in message:
            texts += [message, record.msg, record.args, record.exc_text]
    return texts


def sqlite_tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of a SQLite file."""
    db = sqlite3.connect(path)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: db.execute(f'SELECT * FROM "{name}"').fetchall() for name in names}  # noqa: S608
    finally:
        db.close()


# -- every failure path of the matrix --------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matrix_failure_leaks_no_canary(
    case: Case,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    outcome = case.run(Env(monkeypatch, tmp_path))

    assert (outcome.error is None) == (case.error is None)  # a few cases are inputs the task survives
    assert outcome.observed, "nothing was collected to search"
    assert_no_canary(*exception_texts(outcome.error), *outcome.observed, *log_texts(logs, capfd))


# -- CoinStats echoing the API key back ------------------------------------------------------------


def _error(status: int) -> dict[str, Any]:
    return {"status": status, "json": {"statusCode": status, "message": ECHO, "requestId": CANARIES["api_key"]}}


ECHO_CASES: list[Any] = [
    pytest.param("sync", "PATCH", "/portfolio/sync", _error(status), id=f"sync-{status}")
    for status in (400, 401, 403, 404, 406, 409, 503)
] + [
    pytest.param("status", "GET", "/portfolio/status", _error(404), id="status-404"),
    pytest.param("status", "GET", "/portfolio/status", {"json": {"status": ECHO}}, id="status-unknown-value"),
    pytest.param("value", "GET", "/portfolio/value", _error(401), id="value-401"),
    pytest.param("value", "GET", "/portfolio/value", {"body": ECHO}, id="value-malformed-json"),
    pytest.param(
        "coins", "GET", "/portfolio/coins", {"body": requests.ConnectionError(ECHO)}, id="coins-connection-error"
    ),
    pytest.param("coins", "GET", "/portfolio/coins", {"json": {"result": ECHO}}, id="coins-not-a-list"),
    pytest.param("transactions", "GET", "/portfolio/transactions", _error(409), id="transactions-409"),
]


@pytest.mark.parametrize(("task", "method", "path", "answer"), ECHO_CASES)
def test_echoed_api_key_is_redacted(
    task: str,
    method: str,
    path: str,
    answer: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    env = Env(monkeypatch, tmp_path)
    env.coinstats(extra={"backoff_base": 0, "backoff_max": 0, "max_retries": 1, "timeout": 5})

    def register(mock: responses.RequestsMock) -> None:
        if task == "status":
            mock.patch(f"{BASE_URL}/portfolio/sync", json={"success": True})
        mock.add(method, f"{BASE_URL}{path}", **answer)

    def action() -> object:
        if task in ("sync", "status"):
            op: Any = SyncPortfolioOperator(task_id="sync", portfolio_id="pf-1", deferrable=False, poll_interval=0.01)
        else:
            op = LoadPortfolioOperator(task_id="load", portfolio_id="pf-1", dataset=task)
        return execute(env, op)

    outcome = mocked(env, register, action)

    assert outcome.error is not None
    texts = [*exception_texts(outcome.error), *outcome.observed, *log_texts(logs, capfd)]
    assert_no_canary(*texts)
    if "json" in answer and "statusCode" in answer["json"]:
        assert "***" in str(outcome.error), "the echoed key was redacted, not dropped"


def test_trigger_redacts_an_echoed_api_key(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The deferred wait (httpx in the trigger): the event stored for the task carries no secret."""
    env = Env(monkeypatch, tmp_path)
    sent: list[str] = []

    async def answer(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        sent.append(request.headers["X-API-KEY"])
        body = {"statusCode": 401, "message": ECHO, "requestId": CANARIES["api_key"]}
        return httpx.Response(401, json=body, request=request)

    monkeypatch.setattr(httpx.AsyncClient, "send", answer)

    def register(mock: responses.RequestsMock) -> None:
        mock.patch(f"{BASE_URL}/portfolio/sync", json={"success": True})

    op = SyncPortfolioOperator(task_id="sync", portfolio_id="pf-1", poll_interval=0.01)
    outcome = mocked(env, register, lambda: execute(env, op))

    assert sent == [CANARIES["api_key"]]
    events = [o for o in outcome.observed if isinstance(o, dict) and o.get("status") == "error"]
    assert len(events) == 1
    assert "***" in events[0]["message"]
    assert_no_canary(*exception_texts(outcome.error), *outcome.observed, *log_texts(logs, capfd))


# -- the success path, operator by operator --------------------------------------------------------


def test_operator_success_path_leaks_no_canary(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Connect (okx, with passphrase), sync (deferred and on the worker) and load all three datasets."""
    env = Env(monkeypatch, tmp_path)
    env.exchange("ex_okx", "okx", passphrase=CANARIES["passphrase"])
    results: list[Any] = []

    def action(_pid: str) -> None:
        pid = execute(env, ConnectExchangePortfolioOperator(task_id="connect", exchange_conn_id="ex_okx"))
        results.append(pid)
        for deferrable in (True, False):
            op = SyncPortfolioOperator(task_id="sync", portfolio_id=pid, poll_interval=0.1, deferrable=deferrable)
            results.append(execute(env, op))
        for dataset in ("value", "coins", "transactions"):
            results.append(execute(env, LoadPortfolioOperator(task_id="load", portfolio_id=pid, dataset=dataset)))

    outcome = sandboxed(env, action, transactions=150, sync_seconds=0.15)

    assert outcome.error is None
    # The sandbox only accepts the canary API key, and the portfolioId is derived from the exchange key and secret:
    # the real secrets were sent.
    assert results[0] == portfolio_id(CANARIES["api_key"], "okx", CANARIES["exchange_key"], CANARIES["exchange_secret"])
    assert [r["rows"] for r in results[3:]] == [1, outcome.tables["coinstats_portfolio_coins"], 150]
    assert_no_canary(*results, *outcome.observed, *log_texts(logs, capfd))


# -- one whole DAG run -----------------------------------------------------------------------------


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    config = SandboxConfig(api_keys=(CANARIES["api_key"],), sync_seconds=0.3, transactions=150, quiet=True)
    with SandboxServer(config) as server:
        yield server


def _run_rows(run_id: str) -> dict[str, list[Any]]:
    """Every metadata DB row that belongs to the run (tables with dag_id and run_id), plus the trigger table."""
    from airflow import settings
    from sqlalchemy import MetaData, select

    engine = settings.engine
    assert engine is not None
    metadata = MetaData()
    metadata.reflect(bind=engine)
    found: dict[str, list[Any]] = {}
    with engine.connect() as connection:
        for name, table in metadata.tables.items():
            if name == "trigger":
                found[name] = list(connection.execute(select(table)).all())
            elif {"dag_id", "run_id"} <= set(table.columns.keys()):
                query = select(table).where(table.c.dag_id == DAG_ID, table.c.run_id == run_id)
                found[name] = list(connection.execute(query).all())
    return found


@pytest.mark.slow
def test_whole_dag_run_leaks_no_canary(
    airflow_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sandbox: SandboxServer,
    exchange_conn: Callable[..., None],
    logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """``coinstats_portfolio_sync`` through ``dag.test()`` against the sandbox, with a SQLite warehouse."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    warehouse = tmp_path / "warehouse.db"
    set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(warehouse))
    set_connection(
        monkeypatch,
        "coinstats_default",
        conn_type="coinstats",
        host=sandbox.base_url,
        password=CANARIES["api_key"],
        extra={"timeout": 5, "max_retries": 3, "backoff_base": 0.01, "backoff_max": 0.05},
    )
    exchange_conn("coinstats_exchange_binance", "binance")
    exchange_conn("coinstats_exchange_okx", "okx", passphrase=CANARIES["passphrase"])
    dag = DagBag(dag_folder=str(ROOT / "dags" / "coinstats_portfolio_sync.py")).dags[DAG_ID]

    run = dag.test(
        run_conf={
            "exchange_conn_ids": ["coinstats_exchange_binance", "coinstats_exchange_okx"],
            "sync_poll_seconds": 0.2,
            "sync_timeout_minutes": 1,
            "credit_budget": 5000,
        }
    )

    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    with create_session() as session:
        xcoms = session.execute(
            select(XComModel.task_id, XComModel.key, XComModel.value).where(
                XComModel.dag_id == DAG_ID, XComModel.run_id == run.run_id
            )
        ).all()
        rendered = session.execute(
            select(RenderedTaskInstanceFields.task_id, RenderedTaskInstanceFields.rendered_fields).where(
                RenderedTaskInstanceFields.dag_id == DAG_ID, RenderedTaskInstanceFields.run_id == run.run_id
            )
        ).all()
    run_rows = _run_rows(run.run_id)
    tables = sqlite_tables(warehouse)
    skipped = [r for r in logs.records if INPROCESS_MASK_SECRET_LINE in r.getMessage()]
    texts = log_texts(logs, capfd, skip=INPROCESS_MASK_SECRET_LINE)

    # The search covered real data: the secrets were used (sandbox accepts only the canary key; the
    # portfolioIds derive from the exchange key and secret), rows were loaded, fields rendered, logs captured.
    expected_pids = {
        portfolio_id(CANARIES["api_key"], exchange, CANARIES["exchange_key"], CANARIES["exchange_secret"])
        for exchange in ("binance", "okx")
    }
    assert {row[0] for row in tables["coinstats_portfolios"]} == expected_pids
    assert len(tables["coinstats_portfolio_transactions"]) == 300
    assert {"connect_exchange_portfolio", "portfolio.sync", "portfolio.load_coins"} <= {r.task_id for r in rendered}
    assert any(r.key == "return_value" and r.task_id == "summary" for r in xcoms)
    assert run_rows["xcom"]
    assert run_rows["task_instance"]
    assert "credits spent by this task" in "\n".join(str(t) for t in texts)
    assert_no_canary(*texts, xcoms, rendered, run_rows, tables)
    # Only Airflow's in-process MaskSecret debug lines were left out, all from its supervisor module.
    assert {r.name for r in skipped} <= {"airflow.sdk.execution_time.supervisor"}


# -- wallet addresses: not secret, but personal ------------------------------------------------------


def _info_texts(logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> list[Any]:
    """Every log record at INFO or above, and everything printed (task logs show INFO and above)."""
    out, err = capfd.readouterr()
    texts: list[Any] = [out, err]
    for record in logs.records:
        if record.levelno >= logging.INFO:
            texts += [record.getMessage(), record.exc_text]
    return texts


@pytest.mark.parametrize("answer", ["connected", "rejected"])
def test_wallet_address_never_whole_at_info(
    answer: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The policy: a wallet address is shown as ``0x12…cdef`` at INFO and above, in XComs and in errors.

    The connect succeeds against the sandbox, or CoinStats answers 400 echoing the address back.
    """
    from coinstats_provider.operators.connect import ConnectWalletPortfolioOperator
    from tests.unit.test_bad_input_matrix import WALLET_ADDRESS

    env = Env(monkeypatch, tmp_path)
    set_connection(
        monkeypatch,
        "wallet_eth",
        conn_type="coinstats_wallet",
        login=WALLET_ADDRESS,
        extra={"connection_id": "ethereum"},
    )
    op = ConnectWalletPortfolioOperator(task_id="connect_wallet", wallet_conn_id="wallet_eth")
    error: BaseException | None = None
    if answer == "connected":
        outcome = sandboxed(env, lambda _pid: execute(env, op))
        error = outcome.error
        assert error is None
    else:

        def register(mock: responses.RequestsMock) -> None:
            mock.get(f"{BASE_URL}/wallet/blockchains", json=[{"connectionId": "ethereum", "name": "Ethereum"}])
            body = {"statusCode": 400, "message": f"Invalid address {WALLET_ADDRESS} for ethereum"}
            mock.post(f"{BASE_URL}/portfolio/wallet", status=400, json=body)

        outcome = mocked(env, register, lambda: execute(env, op))
        error = outcome.error
        assert error is not None
    texts = [*_info_texts(logs, capfd), *exception_texts(error), *outcome.observed]
    assert [t for t in texts if WALLET_ADDRESS in repr(t)] == []
    shown = f"{WALLET_ADDRESS[:4]}…{WALLET_ADDRESS[-4:]}"
    if answer == "connected":
        assert any(shown in str(t) for t in texts), "the shortened address names the wallet in the task log"
