"""Bad-input matrix: every wrong input or failing answer, its message, whether it is retried, its credits.

Each case runs the real code path (an operator's ``execute`` with a fake task instance, the DAG's Params,
or a pipeline step) either with no network at all, with HTTP mocked by ``responses``, or end to end
against the local CoinStats sandbox. Every case asserts that

* the message names the cause and the fix (key phrases),
* it fails fast: ``AirflowFailException`` (no Airflow task retry) with at most one attempt at the
  failing request, or a Param rejected before a run starts,
* the credits spent: 0, with no HTTP request at all, wherever local validation can tell.

``docs/bad-input-matrix.md`` holds the resulting table; regenerate it with::

    .venv/bin/python -m tests.test_bad_input_matrix --write
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import functools
import logging
import re
import socket
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

# isort: off
from tests.conftest import BASE_URL, CANARIES, ROOT, SUPPORT, set_connection  # first: sets up Airflow's env

# isort: on
import pytest
import responses
import structlog
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, ParamValidationError, TaskDeferred

from coinstats_provider import hooks, pipeline
from coinstats_provider.credits import credit_cost
from coinstats_provider.exceptions import CoinStatsConfigError
from coinstats_provider.hooks import CoinStatsHook
from coinstats_provider.load_operator import LoadPortfolioOperator
from coinstats_provider.operators import ConnectExchangePortfolioOperator, failing_fast
from coinstats_provider.sync_operator import SyncPortfolioOperator
from include.coinstats_sandbox import SandboxConfig, SandboxServer

DOC = ROOT / "docs" / "bad-input-matrix.md"
REGENERATE = ".venv/bin/python -m tests.test_bad_input_matrix --write"
SNAPSHOT_TIME = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
UNKNOWN_PORTFOLIO = "0" * 24
#: Exchange credentials that embed the canaries, so the secret audit also covers the sandbox's special keys.
REJECTED_SECRET = f"rejected-{CANARIES['exchange_secret']}"
STUCK_SECRET = f"stuck-{CANARIES['exchange_secret']}"
WRONG_API_KEY = f"INVALID-{CANARIES['api_key']}"
FAST_EXTRA: dict[str, Any] = {"backoff_base": 0, "backoff_max": 0, "max_retries": 3, "timeout": 5}
DATA_TABLES = ("coinstats_portfolio_values", "coinstats_portfolio_coins", "coinstats_portfolio_transactions")


# -- running one case ------------------------------------------------------------------------------


class FakeTI:
    """Records ``xcom_push`` calls."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, Any]] = []

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed.append((key, value))


@dataclass
class Outcome:
    """What one case did.

    :param error: The exception the task (or Param validation, or pipeline step) raised.
    :param requests: HTTP requests sent.
    :param failed_requests: Requests answered with an error status (or not answered).
    :param credits: Credits charged: the sandbox's own accounting, or the CONTRACT cost of every 2xx
        answer of the mock.
    :param observed: Everything else the case produced (XComs, rendered template fields, trigger
        events, warehouse rows), for the secret audit.
    :param tables: Row count of every warehouse table afterwards.
    """

    error: BaseException | None
    requests: int
    failed_requests: int
    credits: int
    observed: list[Any] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)


class Env:
    """Connections, warehouse and observations of one case; undone by ``monkeypatch``.

    :param monkeypatch: Sets ``AIRFLOW_CONN_*`` and the cache directory.
    :param tmp: A fresh directory for the support cache and the SQLite warehouse.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
        self.monkeypatch = monkeypatch
        self.warehouse_path = tmp / "warehouse.db"
        self.observed: list[Any] = []
        monkeypatch.setenv("COINSTATS_CACHE_DIR", str(tmp / "cache"))
        hooks._SUPPORT_CACHE.clear()
        set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(self.warehouse_path))
        self.coinstats()
        self.exchange("ex_binance")

    def coinstats(self, **overrides: Any) -> None:
        """(Re)define ``coinstats_default``: canary API key, fast retries, real base URL."""
        fields: dict[str, Any] = {"conn_type": "coinstats", "password": CANARIES["api_key"], "extra": FAST_EXTRA}
        fields.update(overrides)
        set_connection(self.monkeypatch, "coinstats_default", **fields)

    def exchange(
        self,
        conn_id: str,
        connection_id: str = "binance",
        *,
        login: str = CANARIES["exchange_key"],
        password: str = CANARIES["exchange_secret"],
        conn_type: str = "coinstats_exchange",
        **extra: Any,
    ) -> None:
        """Define an exchange connection carrying canary credentials."""
        set_connection(
            self.monkeypatch,
            conn_id,
            conn_type=conn_type,
            login=login,
            password=password,
            extra={"connection_id": connection_id, **extra},
        )

    def warehouse_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table of the warehouse file (empty when nothing created it)."""
        if not self.warehouse_path.exists():
            return {}
        db = sqlite3.connect(self.warehouse_path)
        try:
            names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {name: db.execute(f'SELECT * FROM "{name}"').fetchall() for name in names}  # noqa: S608
        finally:
            db.close()


def capture(action: Callable[[], object]) -> BaseException | None:
    """Run ``action`` and return what it raised."""
    try:
        action()
    except Exception as err:
        return err
    return None


async def _events(trigger: Any) -> list[Any]:
    return [event async for event in trigger.run()]


def execute(env: Env, op: BaseOperator) -> Any:
    """Render the template fields and run ``execute`` as the task runner would; run a deferral's trigger inline."""
    ti = FakeTI()
    context = cast(Any, {"ti": ti, "data_interval_end": SNAPSHOT_TIME, "params": {}})
    try:
        op.render_template_fields(context)
        try:
            return op.execute(context)
        except TaskDeferred as deferred:
            env.observed.append(deferred.trigger.serialize())
            events = asyncio.run(_events(deferred.trigger))
            assert len(events) == 1, "a trigger yields exactly one event"
            env.observed.append(events[0].payload)
            return getattr(op, deferred.method_name)(context, events[0].payload)
    finally:
        env.observed.extend([ti.pushed, {name: getattr(op, name) for name in op.template_fields}])


def _finish(env: Env, error: BaseException | None, requests: int, failed: int, credits: int) -> Outcome:
    rows = env.warehouse_rows()
    env.observed.append(rows)
    return Outcome(error, requests, failed, credits, env.observed, {t: len(r) for t, r in rows.items()})


def local(env: Env, action: Callable[[], object]) -> Outcome:
    """Run a case that must not send anything: every HTTP request or socket connect is recorded and refused."""
    attempts: list[object] = []

    def refuse(_sock: socket.socket, address: object) -> None:
        attempts.append(address)
        raise ConnectionRefusedError("network access in a case that local validation must catch")

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock, pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        error = capture(action)
        calls = len(mock.calls) + len(attempts)
    return _finish(env, error, calls, calls, 0)


def mocked(env: Env, register: Callable[[responses.RequestsMock], None], action: Callable[[], object]) -> Outcome:
    """Run a case against HTTP answers mocked with ``responses``; credits are the cost of every 2xx answer."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        register(mock)
        error = capture(action)
        calls = list(mock.calls)
    credits = failed = 0
    for call in calls:
        status = getattr(call.response, "status_code", None)
        if status is not None and 200 <= status < 300:
            url = urlsplit(str(call.request.url))
            path = url.path.removeprefix(urlsplit(BASE_URL).path)
            credits += credit_cost(str(call.request.method), path, dict(parse_qsl(url.query)))
        else:
            failed += 1
    return _finish(env, error, len(calls), failed, credits)


def sandboxed(
    env: Env,
    action: Callable[[str], object],
    *,
    connect: tuple[str, str] | None = None,
    conn: dict[str, Any] | None = None,
    **config: Any,
) -> Outcome:
    """Run a case end to end against the local sandbox (API key = the canary).

    :param action: Gets the portfolioId connected by ``connect`` (or an unknown id).
    :param connect: ``(apiKey, apiSecret)`` of a binance account connected first; not counted.
    :param conn: Overrides of the ``coinstats_default`` connection for ``action``.
    :param config: :class:`SandboxConfig` fields.
    """
    settings = {"api_keys": (CANARIES["api_key"],), "quiet": True, "sync_seconds": 0.2, **config}
    with SandboxServer(SandboxConfig(**settings)) as sandbox:
        env.coinstats(host=sandbox.base_url)
        portfolio_id = UNKNOWN_PORTFOLIO
        if connect is not None:
            fields = {"apiKey": connect[0], "apiSecret": connect[1]}
            portfolio_id = CoinStatsHook().connect_exchange_portfolio("binance", fields).portfolio_id
        if conn:
            env.coinstats(host=sandbox.base_url, **conn)
        before = sandbox.stats()
        error = capture(lambda: action(portfolio_id))
        after = sandbox.stats()

    def total(stats: dict[str, Any], key: str, *, failed: bool = False) -> int:
        return sum(n for status, n in stats[key].items() if not failed or status != "200")

    return _finish(
        env,
        error,
        total(after, "requests") - total(before, "requests"),
        total(after, "responses", failed=True) - total(before, "responses", failed=True),
        after["credits_used"] - before["credits_used"],
    )


# -- building blocks of the cases ------------------------------------------------------------------


def connect_op(env: Env, exchange_conn_id: str = "ex_binance") -> object:
    return execute(env, ConnectExchangePortfolioOperator(task_id="connect", exchange_conn_id=exchange_conn_id))


def sync_op(env: Env, portfolio_id: str = "pf-1", **kwargs: Any) -> object:
    kwargs.setdefault("deferrable", False)
    kwargs.setdefault("poll_interval", 0.01)
    return execute(env, SyncPortfolioOperator(task_id="sync", portfolio_id=portfolio_id, **kwargs))


def load_op(env: Env, dataset: str, portfolio_id: str = "pf-1", **kwargs: Any) -> object:
    return execute(
        env, LoadPortfolioOperator(task_id=f"load_{dataset}", portfolio_id=portfolio_id, dataset=dataset, **kwargs)
    )


@functools.cache
def portfolio_sync_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "coinstats_portfolio_sync.py"))
    assert bag.import_errors == {}
    return bag.dags["coinstats_portfolio_sync"]


def validate_params(conf: dict[str, Any]) -> dict[str, Any]:
    """Validate a run conf against the DAG's Params, as creating a DAG run does (before any task runs)."""
    params = copy.deepcopy(portfolio_sync_dag().params)
    for key, value in conf.items():
        params[key] = value
    return cast(dict[str, Any], params.validate())


def error_json(status: int, message: str, path: str) -> dict[str, Any]:
    return {"statusCode": status, "message": message, "requestId": f"req-{status}-0001", "path": path}


# -- the cases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row of the matrix.

    :param id: Test id.
    :param title: What is wrong, for the table.
    :param run: Runs the case in an :class:`Env`.
    :param phrases: Must all appear in the message: the cause and the fix.
    :param credits: Credits the case spends.
    :param requests: HTTP requests it sends (0: caught by local validation).
    :param failed_requests: Requests that fail (at most 1: the failing call is never repeated).
    :param error: Type of the raised exception.
    :param via: ``local``, ``responses`` or ``sandbox``.
    """

    id: str
    title: str
    run: Callable[[Env], Outcome]
    phrases: tuple[str, ...]
    credits: int
    requests: int
    failed_requests: int
    error: type[BaseException] = AirflowFailException
    via: str = "local"


def _missing_api_key(env: Env) -> Outcome:
    env.coinstats(password=None)
    return local(env, lambda: sync_op(env))


def _blank_api_key(env: Env) -> Outcome:
    env.coinstats(password="   ")
    return local(env, lambda: connect_op(env))


def _wrong_conn_type(env: Env) -> Outcome:
    env.coinstats(conn_type="postgres")
    return local(env, lambda: load_op(env, "value"))


def _wrong_exchange_conn_type(env: Env) -> Outcome:
    env.exchange("ex_binance", conn_type="coinstats")
    return local(env, lambda: connect_op(env))


def _malformed_extra(env: Env) -> Outcome:
    env.coinstats(extra='{"timeout": 30,}')
    return local(env, lambda: sync_op(env))


def _invalid_base_url(env: Env) -> Outcome:
    env.coinstats(host="ftp://openapiv1.coinstats.app")
    return local(env, lambda: connect_op(env))


def _sync_timeout_not_a_number(env: Env) -> Outcome:
    return local(env, lambda: sync_op(env, sync_timeout="thirty minutes"))


def _unknown_dataset(env: Env) -> Outcome:
    return local(env, lambda: load_op(env, "balances"))


def _support(mock: responses.RequestsMock) -> None:
    mock.get(f"{BASE_URL}/exchange/support", json=SUPPORT)
    mock.post(f"{BASE_URL}/portfolio/exchange", json={"portfolioId": "pf-1", "status": "connected"})


def _unknown_exchange(env: Env) -> Outcome:
    env.exchange("ex_binance", connection_id="binanse")
    return mocked(env, _support, lambda: connect_op(env))


def _missing_passphrase(env: Env) -> Outcome:
    env.exchange("ex_okx", connection_id="okx")
    return mocked(env, _support, lambda: connect_op(env, "ex_okx"))


def _params(conf: dict[str, Any]) -> Callable[[Env], Outcome]:
    return lambda env: local(env, lambda: validate_params(conf))


def _invalid_api_key(env: Env) -> Outcome:
    return sandboxed(env, lambda _pid: connect_op(env), conn={"password": WRONG_API_KEY})


def _exchange_credentials_rejected(env: Env) -> Outcome:
    env.exchange("ex_binance", password=REJECTED_SECRET)
    return sandboxed(env, lambda _pid: connect_op(env))


def _forbidden(env: Env) -> Outcome:
    def register(mock: responses.RequestsMock) -> None:
        mock.get(
            f"{BASE_URL}/portfolio/value", status=403, json=error_json(403, "Forbidden resource", "/portfolio/value")
        )

    return mocked(env, register, lambda: load_op(env, "value"))


def _wrong_base_path(env: Env) -> Outcome:
    env.coinstats(host=f"{BASE_URL}/v9")

    def register(mock: responses.RequestsMock) -> None:
        body = error_json(404, "Cannot GET /v9/exchange/support", "/v9/exchange/support")
        mock.get(f"{BASE_URL}/v9/exchange/support", status=404, json=body)

    return mocked(env, register, lambda: connect_op(env))


def _sync_unknown_portfolio(env: Env) -> Outcome:
    return sandboxed(env, lambda pid: sync_op(env, pid))


def _status_unknown_portfolio(env: Env) -> Outcome:
    def register(mock: responses.RequestsMock) -> None:
        mock.patch(f"{BASE_URL}/portfolio/sync", json={"success": True})
        body = error_json(404, "Portfolio not found", "/portfolio/status")
        mock.get(f"{BASE_URL}/portfolio/status", status=404, json=body)

    return mocked(env, register, lambda: sync_op(env))


def _load_unknown_portfolio(env: Env) -> Outcome:
    return sandboxed(env, lambda pid: load_op(env, "value", pid))


def _credits_exhausted(env: Env) -> Outcome:
    # Connecting costs 10 of the 35 credits; the 30-credit sync no longer fits.
    return sandboxed(
        env, lambda pid: sync_op(env, pid), connect=(CANARIES["exchange_key"], CANARIES["exchange_secret"]), credits=35
    )


def _not_synced(env: Env) -> Outcome:
    # The first sync after connecting takes an hour, so the transactions are not synced yet.
    return sandboxed(
        env,
        lambda pid: load_op(env, "transactions", pid),
        connect=(CANARIES["exchange_key"], CANARIES["exchange_secret"]),
        sync_seconds=3600.0,
    )


STUCK = (CANARIES["exchange_key"], STUCK_SECRET)


def _sync_timeout_on_worker(env: Env) -> Outcome:
    return sandboxed(env, lambda pid: sync_op(env, pid, sync_timeout=0.05, poll_interval=1), connect=STUCK)


def _sync_timeout_in_trigger(env: Env) -> Outcome:
    return sandboxed(
        env, lambda pid: sync_op(env, pid, sync_timeout=0.05, poll_interval=1, deferrable=True), connect=STUCK
    )


def _sync_poll_budget(env: Env) -> Outcome:
    return sandboxed(env, lambda pid: sync_op(env, pid, sync_timeout=60, credit_budget=33), connect=STUCK)


def _budget_exceeded_mid_load(env: Env) -> Outcome:
    return sandboxed(
        env,
        lambda pid: load_op(env, "coins", pid, page_size=2, credit_budget=20),
        connect=(CANARIES["exchange_key"], CANARIES["exchange_secret"]),
        coins=10,
    )


def _resolve_accounts(ids: list[str]) -> object:
    """What the DAG's ``resolve_accounts`` task does (no Variable set)."""
    with failing_fast("Resolving the exchange accounts"):
        return pipeline.resolve_accounts(ids, lambda: None)


def _no_accounts(env: Env) -> Outcome:
    return local(env, lambda: _resolve_accounts([]))


def _budget_too_small(env: Env) -> Outcome:
    # What the DAG's register_portfolios task does for one portfolio, three datasets, 11 credits already
    # spent connecting it and a run budget of 60.
    def plan() -> object:
        with failing_fast("Registering the portfolios"):
            return pipeline.plan_budgets(60, 11, 1, 3, 1800, 30)

    return local(env, plan)


CASES: tuple[Case, ...] = (
    Case(
        "missing-api-key",
        "CoinStats connection without API key (Password empty)",
        _missing_api_key,
        ("has no CoinStats API key", "Put the key in its Password field"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "blank-api-key",
        "CoinStats API key is only whitespace",
        _blank_api_key,
        ("has no CoinStats API key", "Put the key in its Password field"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "wrong-conn-type",
        "CoinStats connection has conn_type postgres",
        _wrong_conn_type,
        ("conn_type 'postgres', expected 'coinstats'", "Create it as a CoinStats connection"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "wrong-exchange-conn-type",
        "exchange connection has conn_type coinstats",
        _wrong_exchange_conn_type,
        ("conn_type 'coinstats', expected 'coinstats_exchange'", "Login = API key, Password = API secret"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "malformed-extra",
        "connection extra is not valid JSON",
        _malformed_extra,
        ("is not valid JSON", "Fix it to a JSON object"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "invalid-base-url",
        "connection host is not an http(s) URL (ftp://...)",
        _invalid_base_url,
        ("has an invalid host", "expected a base URL such as https://openapiv1.coinstats.app"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "sync-timeout-not-a-number",
        "operator argument sync_timeout='thirty minutes'",
        _sync_timeout_not_a_number,
        ("sync_timeout and poll_interval must be numbers of seconds",),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "unknown-dataset",
        "load operator dataset='balances'",
        _unknown_dataset,
        ("Unknown dataset 'balances'", "choose from value, coins, transactions"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "param-datasets-value",
        "Param datasets=['balances']",
        _params({"datasets": ["balances"]}),
        ("Invalid input for param datasets", "'balances' is not one of ['value', 'coins', 'transactions']"),
        credits=0,
        requests=0,
        failed_requests=0,
        error=ParamValidationError,
    ),
    Case(
        "param-datasets-type",
        "Param datasets='coins' (a string, not a list)",
        _params({"datasets": "coins"}),
        ("Invalid input for param datasets", "'coins' is not of type 'array'"),
        credits=0,
        requests=0,
        failed_requests=0,
        error=ParamValidationError,
    ),
    Case(
        "param-timeout-type",
        "Param sync_timeout_minutes='ten'",
        _params({"sync_timeout_minutes": "ten"}),
        ("Invalid input for param sync_timeout_minutes", "'ten' is not of type 'number'"),
        credits=0,
        requests=0,
        failed_requests=0,
        error=ParamValidationError,
    ),
    Case(
        "unknown-exchange",
        "exchange connection_id 'binanse' (typo)",
        _unknown_exchange,
        ("'binanse', which GET /exchange/support does not list", "Nearest supported ids: binance", "Fix the extra"),
        credits=1,
        requests=1,
        failed_requests=0,
        via="responses",
    ),
    Case(
        "missing-passphrase",
        "okx account without passphrase",
        _missing_passphrase,
        ("lacks field(s) that CoinStats requires for 'okx': passphrase", "Set 'passphrase' in extra key"),
        credits=1,
        requests=1,
        failed_requests=0,
        via="responses",
    ),
    Case(
        "401-invalid-api-key",
        "CoinStats answers 401: API key invalid",
        _invalid_api_key,
        ("401", "is invalid", "generate a new key at https://openapi.coinstats.app and update the connection"),
        credits=0,
        requests=1,
        failed_requests=1,
        via="sandbox",
    ),
    Case(
        "401-exchange-credentials",
        "CoinStats answers 401: exchange rejected the exchange credentials",
        _exchange_credentials_rejected,
        ("401", "Exchange credentials expired", "create a new read-only API key on the exchange"),
        credits=1,
        requests=2,
        failed_requests=1,
        via="sandbox",
    ),
    Case(
        "403-forbidden",
        "CoinStats answers 403 on GET /portfolio/value",
        _forbidden,
        ("403", "plan does not include this endpoint", "upgrade the CoinStats plan"),
        credits=0,
        requests=1,
        failed_requests=1,
        via="responses",
    ),
    Case(
        "404-wrong-base-path",
        "connection host has a wrong path (404 on GET /exchange/support)",
        _wrong_base_path,
        ("404", "Cannot GET /v9/exchange/support", "check the host (base URL) of connection 'coinstats_default'"),
        credits=0,
        requests=1,
        failed_requests=1,
        via="responses",
    ),
    Case(
        "404-sync",
        "unknown portfolio: 404 on PATCH /portfolio/sync",
        _sync_unknown_portfolio,
        ("404", "Portfolio not found", "connect the exchange again"),
        credits=0,
        requests=1,
        failed_requests=1,
        via="sandbox",
    ),
    Case(
        "404-status",
        "portfolio gone while syncing: 404 on GET /portfolio/status",
        _status_unknown_portfolio,
        ("404", "Portfolio not found", "connect the exchange again"),
        credits=30,
        requests=2,
        failed_requests=1,
        via="responses",
    ),
    Case(
        "404-load",
        "unknown portfolio: 404 on GET /portfolio/value",
        _load_unknown_portfolio,
        ("404", "Portfolio not found", "connect the exchange again"),
        credits=0,
        requests=1,
        failed_requests=1,
        via="sandbox",
    ),
    Case(
        "406-credits",
        "account out of credits: 406 on PATCH /portfolio/sync",
        _credits_exhausted,
        ("406", "no credits left", "upgrade the plan or wait for the renewal", "Retrying cannot help"),
        credits=0,
        requests=1,
        failed_requests=1,
        via="sandbox",
    ),
    Case(
        "409-not-synced",
        "transactions loaded before the sync finished: 409",
        _not_synced,
        ("409", "Transactions not synced", "Trigger a portfolio sync and wait until GET /portfolio/status says synced"),
        credits=0,
        requests=1,
        failed_requests=1,
        via="sandbox",
    ),
    Case(
        "sync-timeout-worker",
        "sync never finishes (deferrable=False, sync_timeout 0.05 s)",
        _sync_timeout_on_worker,
        ("did not finish within 0.05 s", "Raise the sync timeout (Param sync_timeout_minutes)"),
        credits=33,
        requests=2,
        failed_requests=0,
        via="sandbox",
    ),
    Case(
        "sync-timeout-trigger",
        "sync never finishes (deferred to PortfolioSyncTrigger, sync_timeout 0.05 s)",
        _sync_timeout_in_trigger,
        ("did not finish within 0.05 s", "Raise the sync timeout (Param sync_timeout_minutes)"),
        credits=33,
        requests=2,
        failed_requests=0,
        via="sandbox",
    ),
    Case(
        "sync-poll-budget",
        "sync still running when the task's credit budget (33) is used up",
        _sync_poll_budget,
        ("would exceed the credit budget of 33 credits", "Raise the budget or the poll interval"),
        credits=33,
        requests=2,
        failed_requests=0,
        via="sandbox",
    ),
    Case(
        "budget-exceeded-mid-load",
        "load credit budget (20) runs out after 2 pages of coins",
        _budget_exceeded_mid_load,
        ("Credit budget exceeded", "16 of the budget of 20 are already spent", "The call was not sent", "Raise"),
        credits=16,
        requests=2,
        failed_requests=0,
        via="sandbox",
    ),
    Case(
        "no-accounts",
        "no exchange_conn_ids Param and no Variable",
        _no_accounts,
        ("No exchange accounts to sync", "pass the Param 'exchange_conn_ids'", "or set the Variable"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "budget-too-small",
        "run credit budget 60 for 1 portfolio x 3 datasets",
        _budget_too_small,
        ("leaves 49 credits per portfolio", "at least 63", "Raise the budget or sync fewer accounts"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
)


@contextmanager
def case_env() -> Iterator[Env]:
    """An :class:`Env` outside pytest (for :func:`main`)."""
    with pytest.MonkeyPatch.context() as monkeypatch, tempfile.TemporaryDirectory() as tmp:
        yield Env(monkeypatch, Path(tmp))
    hooks._SUPPORT_CACHE.clear()


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    outcome = case.run(Env(monkeypatch, tmp_path))
    error = outcome.error

    assert error is not None, f"{case.id} did not fail"
    assert isinstance(error, case.error), f"{case.id} raised {type(error).__name__}: {error}"
    message = str(error)
    for phrase in case.phrases:
        assert phrase in message, f"{case.id}: {phrase!r} missing from {message!r}"
    # Fail fast: never an Airflow task retry, never a repeated attempt at the failing request.
    assert outcome.failed_requests == case.failed_requests <= 1
    assert outcome.requests == case.requests
    assert outcome.credits == case.credits
    if case.requests == 0:
        assert outcome.credits == 0
    # A failed task writes nothing: the warehouse's data tables stay empty (rolled back).
    assert all(outcome.tables.get(table, 0) == 0 for table in DATA_TABLES), outcome.tables


def test_cases_cover_the_brief() -> None:
    assert len(CASES) >= 15
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.via for c in CASES} == {"local", "responses", "sandbox"}


@pytest.mark.parametrize(
    "step",
    [
        pytest.param(lambda: pipeline.resolve_accounts([], lambda: None), id="resolve_accounts"),
        pytest.param(lambda: pipeline.plan_budgets(60, 11, 1, 3, 1800, 30), id="plan_budgets"),
    ],
)
def test_config_errors_are_never_retried_by_airflow(step: Callable[[], object]) -> None:
    """Raised from any plain ``@task`` (even without ``failing_fast``), a config error fails without retries."""
    error = capture(step)
    assert isinstance(error, CoinStatsConfigError)
    assert isinstance(error, AirflowFailException)


def test_operators_report_the_credits_they_spent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The credits_spent XCom of a failing task matches what the sandbox charged."""
    outcome = _budget_exceeded_mid_load(Env(monkeypatch, tmp_path))
    pushed = dict(next(o for o in outcome.observed if isinstance(o, list) and o and isinstance(o[0], tuple)))
    assert pushed == {"credits_spent": 16} == {"credits_spent": outcome.credits}


@pytest.mark.slow
def test_dag_test_rejects_bad_params_before_a_run(airflow_db: Path) -> None:
    """``dag.test(run_conf=...)`` refuses a wrong Param before any DAG run (or task) exists."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    dag = portfolio_sync_dag()

    def runs() -> int:
        with create_session() as session:
            return int(session.scalar(select(func.count()).where(DagRun.dag_id == dag.dag_id)) or 0)

    before = runs()
    with pytest.raises(ParamValidationError, match="'balances' is not one of"):
        dag.test(run_conf={"datasets": ["balances"], "exchange_conn_ids": ["coinstats_exchange_binance"]})
    assert runs() == before


def test_doc_is_current() -> None:
    """``docs/bad-input-matrix.md`` shows the table these cases produce now."""
    assert DOC.exists(), f"run: {REGENERATE}"
    assert markdown_table(run_all()) in DOC.read_text(), f"docs/bad-input-matrix.md is stale; run: {REGENERATE}"


# -- the table -------------------------------------------------------------------------------------


def run_all() -> list[tuple[Case, Outcome]]:
    """Run every case outside pytest's fixtures."""
    results = []
    for case in CASES:
        with case_env() as env:
            results.append((case, case.run(env)))
    return results


def _message(error: BaseException | None) -> str:
    text = str(error).splitlines()[0] if error is not None else "(no error)"
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", text)
    return text.replace("|", "\\|")


def _retried(case: Case, outcome: Outcome) -> str:
    if isinstance(outcome.error, ParamValidationError):
        return "no: rejected before the run starts"
    if not isinstance(outcome.error, AirflowFailException):
        return f"YES: {type(outcome.error).__name__} is retried by Airflow"
    if outcome.requests == 0:
        return "no: AirflowFailException, nothing sent"
    attempts = "1 attempt" if outcome.failed_requests else "no failed request"
    return f"no: AirflowFailException, {attempts}"


def markdown_table(results: list[tuple[Case, Outcome]]) -> str:
    """The matrix as a Markdown table."""
    lines = [
        "| # | case | via | message | retried? | HTTP requests | credits spent |",
        "|---|------|-----|---------|----------|---------------|---------------|",
    ]
    for number, (case, outcome) in enumerate(results, 1):
        lines.append(
            f"| {number} | `{case.id}`: {case.title} | {case.via} | {_message(outcome.error)} | "
            f"{_retried(case, outcome)} | {outcome.requests} | {outcome.credits} |"
        )
    return "\n".join(lines) + "\n"


HEADER = """# Bad-input matrix

Every wrong input and failing answer the CoinStats provider is tested against, with the message the user
sees, whether anything is retried, how many HTTP requests were sent and how many CoinStats credits were
spent. Generated from `tests/test_bad_input_matrix.py` (each row is one parametrized case there, which
asserts the key phrases of the message, the fail-fast behaviour and the credits); `test_doc_is_current`
fails when this table is stale.

Regenerate:

```
{command}
```

* **via**: `local` = no network (any request would be recorded and refused), `responses` = HTTP mocked,
  `sandbox` = end to end against `include/coinstats_sandbox` (the credits column is then the sandbox's
  own accounting; otherwise the contract cost of every 2xx answer).
* **retried?**: `AirflowFailException` means Airflow does not retry the task; the failing request itself
  is sent at most once (the hook retries only 429/5xx/timeouts, none of which occur here).
* A case's message is the exception text of the task (first line for Param validation errors); UUIDs
  are shown as `<uuid>`.

"""


FOOTER = """
Notes:

* `budget-too-small` is raised by the `register_portfolios` step, i.e. after the mapped connect tasks
  have already spent up to 11 credits per account (shown in the message as "11 spent"); the step itself
  spends nothing. Checking a lower bound (accounts x (11 + 55)) in `resolve_accounts` would fail before
  any credit is spent; that needs a change to `dags/coinstats_portfolio_sync.py`.
* `no-accounts` and `budget-too-small` run in plain `@task` steps, which wrap them
  in `failing_fast(...)` like the DAG does; `CoinStatsConfigError` is also an `AirflowFailException`, so
  they fail without Airflow retries even without that wrapper.
* More accounts than `[core] max_map_length` are not an error: the run syncs the first batch and hands
  the rest to a follow-up run (`tests/test_pipeline_e2e.py::test_accounts_beyond_max_map_length_go_to_a_follow_up_run`).
"""


def main(argv: list[str] | None = None) -> int:
    """Print the matrix document (or write it to ``docs/bad-input-matrix.md`` with ``--write``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    # Only the document on stdout: silence the operators' and Airflow's log lines.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    logging.disable(logging.CRITICAL)
    document = HEADER.format(command=REGENERATE) + markdown_table(run_all()) + FOOTER
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(document)
        print(f"wrote {DOC}", file=sys.stderr)
    else:
        print(document, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
