"""Bad-input matrix: every wrong input or failing answer, its message, whether it is retried, its credits.

Each case runs the real code path (an operator's ``execute`` with a fake task instance and task state
store, the DAG's Params, a pipeline step, or the settings loader) either with no network at all, with
HTTP mocked by ``responses``, or end to end against the local CoinStats sandbox and its misbehaviour
switches. Every case asserts that

* the message names the cause and the fix (key phrases), and never echoes the offending content,
* it fails fast: ``AirflowFailException`` (no Airflow task retry) with at most one attempt at the
  failing request, or a Param rejected before a run starts; or, for the few faults a new try can
  cure (a list that keeps changing, a cut-off connect answer), a retryable error that goes to
  Airflow's task retry on purpose,
* the HTTP requests sent and the credits spent: 0, with no HTTP request at all, wherever local
  validation can tell,
* nothing is written on failure; the inputs the provider must survive (a garbled ``Retry-After``, a
  cut-off answer of a paid sync, text a database cannot store) succeed with the rows they load.

``docs/bad-input-matrix.md`` holds the resulting table; regenerate it with::

    .venv/bin/python -m tests.unit.test_bad_input_matrix --write
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import functools
import json
import logging
import math
import re
import socket
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
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

from coinstats_provider import pipeline
from coinstats_provider.credits import credit_cost
from coinstats_provider.exceptions import (
    CoinStatsConfigError,
    CoinStatsListChangedError,
    CoinStatsRedirectError,
    CoinStatsTruncatedAnswerError,
    is_retryable,
)
from coinstats_provider.hooks import support_cache
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.operators._common import failing_fast
from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator, ConnectWalletPortfolioOperator
from coinstats_provider.operators.load import LoadPortfolioOperator
from coinstats_provider.operators.sync import SyncPortfolioOperator
from coinstats_provider.warehouse.schema import DATASETS
from include.coinstats_sandbox import SandboxConfig, SandboxServer
from include.load_settings import SettingsError, parse_settings

DOC = ROOT / "docs" / "bad-input-matrix.md"
REGENERATE = ".venv/bin/python -m tests.unit.test_bad_input_matrix --write"
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


class FakeTaskStateStore:
    """Airflow's task state store (``context["task_state_store"]``) over a dict: what earlier tries left.

    :param values: The keys earlier tries of the task instance stored.
    """

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


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
    :param rows: Every row of every warehouse table afterwards.
    :param result: What the task (or step) returned when it succeeded.
    :param extra: Case-specific observations, e.g. requests per sandbox route or to a redirect target.
    :param replacements: Run-specific text (a sandbox's port, a temporary path) and what the table shows
        instead.
    """

    error: BaseException | None
    requests: int
    failed_requests: int
    credits: int
    observed: list[Any] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)
    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    result: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    replacements: dict[str, str] = field(default_factory=dict)


class Env:
    """Connections, warehouse and observations of one case; undone by ``monkeypatch``.

    :param monkeypatch: Sets ``AIRFLOW_CONN_*`` and the cache directory.
    :param tmp: A fresh directory for the support cache and the SQLite warehouse.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
        self.monkeypatch = monkeypatch
        self.tmp = tmp
        self.warehouse_path = tmp / "warehouse.db"
        self.observed: list[Any] = []
        #: Task state store of the task instance (what earlier tries stored); ``None``: no store.
        self.task_state: dict[str, Any] | None = None
        self.result: Any = None
        self.extra: dict[str, Any] = {}
        self.replacements: dict[str, str] = {}
        monkeypatch.setenv("COINSTATS_CACHE_DIR", str(tmp / "cache"))
        support_cache.clear()
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
    if env.task_state is not None:
        context["task_state_store"] = FakeTaskStateStore(env.task_state)
    try:
        op.render_template_fields(context)
        try:
            env.result = op.execute(context)
        except TaskDeferred as deferred:
            env.observed.append(deferred.trigger.serialize())
            events = asyncio.run(_events(deferred.trigger))
            assert len(events) == 1, "a trigger yields exactly one event"
            env.observed.append(events[0].payload)
            env.result = getattr(op, deferred.method_name)(context, events[0].payload)
        return env.result
    finally:
        env.observed.extend([ti.pushed, {name: getattr(op, name) for name in op.template_fields}])


def _finish(env: Env, error: BaseException | None, requests: int, failed: int, credits: int) -> Outcome:
    rows = env.warehouse_rows()
    env.observed.append(rows)
    if env.result is not None:
        env.observed.append(env.result)
    return Outcome(
        error,
        requests,
        failed,
        credits,
        env.observed,
        {t: len(r) for t, r in rows.items()},
        rows,
        env.result,
        env.extra,
        env.replacements,
    )


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
    prepare: Callable[[SandboxServer], None] | None = None,
    **config: Any,
) -> Outcome:
    """Run a case end to end against the local sandbox (API key = the canary).

    :param action: Gets the portfolioId connected by ``connect`` (or an unknown id).
    :param connect: ``(apiKey, apiSecret)`` of a binance account connected first; not counted.
    :param conn: Overrides of the ``coinstats_default`` connection for ``action``.
    :param prepare: Called with the running sandbox after ``connect``, before ``action`` (e.g. to re-arm
        a switch on every request).
    :param config: :class:`SandboxConfig` fields.
    """
    settings = {"api_keys": (CANARIES["api_key"],), "quiet": True, "sync_seconds": 0.2, **config}
    with SandboxServer(SandboxConfig(**settings)) as sandbox:
        env.replacements[sandbox.base_url] = "http://127.0.0.1:<sandbox port>"
        env.coinstats(host=sandbox.base_url)
        portfolio_id = UNKNOWN_PORTFOLIO
        if connect is not None:
            fields = {"apiKey": connect[0], "apiSecret": connect[1]}
            portfolio_id = CoinStatsHook().connect_exchange_portfolio("binance", fields).portfolio_id
        if conn:
            env.coinstats(host=sandbox.base_url, **conn)
        if prepare is not None:
            prepare(sandbox)
        before = sandbox.stats()
        error = capture(lambda: action(portfolio_id))
        after = sandbox.stats()

    def total(stats: dict[str, Any], key: str, *, failed: bool = False) -> int:
        return sum(n for status, n in stats[key].items() if not failed or status != "200")

    def diff(key: str) -> dict[str, int]:
        changed = {name: n - before[key].get(name, 0) for name, n in after[key].items()}
        return {name: n for name, n in changed.items() if n}

    env.extra["requests_by_route"] = diff("requests")
    env.extra["credits_by_route"] = diff("credits_by_path")
    env.extra["switches"] = diff("switches")
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
    :param error: Type of the raised exception; ``None`` when the input must be survived (the task succeeds).
    :param via: ``local``, ``responses`` or ``sandbox``.
    :param rows: Rows of the data tables afterwards (only a succeeding case writes any).
    :param absent: Must not appear in the message (the offending value or other item content).
    :param check: Further assertions on the outcome.
    """

    id: str
    title: str
    run: Callable[[Env], Outcome]
    phrases: tuple[str, ...]
    credits: int
    requests: int
    failed_requests: int
    error: type[BaseException] | None = AirflowFailException
    via: str = "local"
    rows: dict[str, int] = field(default_factory=dict)
    absent: tuple[str, ...] = ()
    check: Callable[[Outcome], None] | None = None


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
GOOD = (CANARIES["exchange_key"], CANARIES["exchange_secret"])


def _sync_timeout_on_worker(env: Env) -> Outcome:
    return sandboxed(env, lambda pid: sync_op(env, pid, sync_timeout=0.05, poll_interval=1), connect=STUCK)


def _sync_timeout_in_trigger(env: Env) -> Outcome:
    # 1 s, not 0.05 s: a trigger that starts after its deadline takes itself for a rebuilt one and counts the
    # deadline poll as made, so on a loaded machine a shorter timeout would change the row.
    return sandboxed(
        env, lambda pid: sync_op(env, pid, sync_timeout=1, poll_interval=1, deferrable=True), connect=STUCK
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


def _resolve_accounts(ids: list[str], credit_budget: int | None = None, datasets: int = 3) -> object:
    """Run the DAG's own ``resolve_accounts`` task for a run conf (no Variable set, default max_map_length)."""
    from airflow.sdk import Variable

    conf = {"exchange_conn_ids": ids, "credit_budget": credit_budget, "datasets": list(DATASETS)[:datasets]}
    context = {"params": validate_params(conf), "ti": SimpleNamespace(xcom_push=lambda key, value: None)}
    resolve = portfolio_sync_dag().get_task("resolve_accounts").python_callable
    exchange = {"conn_type": "coinstats_exchange", "extra": {"connection_id": "binance"}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(resolve.__globals__, "get_current_context", lambda: context)
        patch.setattr(Variable, "get", lambda key, default=None: default)
        for conn_id in ids:  # the accounts exist, as in a user's deployment (split by connection type)
            patch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(exchange))
        return resolve()


def _no_accounts(env: Env) -> Outcome:
    return local(env, lambda: _resolve_accounts([]))


def _budget_too_small(env: Env) -> Outcome:
    # What a user runs: the DAG's resolve_accounts task passes a run budget of 74 for one account and three
    # datasets (above the lower bound of 66), then the connect task needed a second try (its first answer was
    # cut: 1 + 10 + 10 = 21 credits), and register_portfolios splits what is left as the DAG does.
    def run() -> object:
        batch = _resolve_accounts(["coinstats_exchange_binance"], 74, 3)
        with failing_fast("Registering the portfolios"):
            return pipeline.plan_dataset_budgets(74, 21, len(cast(list[str], batch)), list(DATASETS)[:3], 1800, 30)

    return local(env, run)


# -- trust cases: redirects, plain http, extras, Retry-After, cut answers, items, lists, budgets, settings --


def _redirected(
    env: Env, action: Callable[[str], object], route: str, status: int, connect: tuple[str, str] | None = None
) -> Outcome:
    """Run ``action`` while the sandbox answers ``route`` with a redirect to a second sandbox (the other host)."""
    with SandboxServer(SandboxConfig(api_keys=(CANARIES["api_key"],), quiet=True)) as other:
        env.replacements[other.base_url] = "http://127.0.0.1:<other port>"
        outcome = sandboxed(
            env, action, connect=connect, redirect_to=other.base_url, redirect_status=status, redirect_routes=(route,)
        )
        outcome.extra["other_host_requests"] = sum(other.stats()["requests"].values())
    return outcome


def _redirect_connect(env: Env) -> Outcome:
    return _redirected(env, lambda _pid: connect_op(env), "/portfolio/exchange", 307)


def _redirect_paged_read(env: Env) -> Outcome:
    return _redirected(env, lambda pid: load_op(env, "coins", pid, page_size=2), "/portfolio/coins", 308, connect=GOOD)


def _check_redirect(outcome: Outcome) -> None:
    assert isinstance(outcome.error, AirflowFailException)
    assert isinstance(outcome.error.__cause__, CoinStatsRedirectError)
    assert outcome.extra["other_host_requests"] == 0, "the redirect was followed"
    assert outcome.extra["switches"] == {"redirect": 1}
    assert outcome.extra["credits_by_route"].keys() <= {"GET /exchange/support"}


def _plain_http_host(env: Env) -> Outcome:
    env.coinstats(host="http://openapiv1.coinstats.app")
    return local(env, lambda: connect_op(env))


def _extra(**values: Any) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        env.coinstats(extra={**FAST_EXTRA, **values})
        return local(env, lambda: sync_op(env))

    return run


VALUE_BODY: dict[str, Any] = {"totalValue": 1234.5, "totalCost": 1000, "unrealizedProfitLoss": 234.5}


def _retry_after_not_ascii(env: Env) -> Outcome:
    def register(mock: responses.RequestsMock) -> None:
        body = error_json(429, "Rate limit exceeded", "/portfolio/value")
        mock.get(f"{BASE_URL}/portfolio/value", status=429, json=body, headers={"Retry-After": "\u00b2"})
        mock.get(f"{BASE_URL}/portfolio/value", json=VALUE_BODY)

    return mocked(env, register, lambda: load_op(env, "value"))


def _sync_answer_cut(env: Env) -> Outcome:
    # sync_seconds=0: the first status poll already says synced, so the credits do not depend on timing.
    return sandboxed(
        env,
        lambda pid: sync_op(env, pid),
        connect=GOOD,
        sync_seconds=0.0,
        cut_routes=("/portfolio/sync",),
        cut_count=1,
    )


def _check_sync_answer_cut(outcome: Outcome) -> None:
    assert outcome.extra["switches"] == {"cut": 1}
    assert outcome.extra["requests_by_route"] == {"PATCH /portfolio/sync": 1, "GET /portfolio/status": 1}
    assert outcome.extra["credits_by_route"]["PATCH /portfolio/sync"] == 30
    assert outcome.result == {"portfolio_id": outcome.result["portfolio_id"], "polls": 1, "credits_spent": 33}


def _connect_answer_cut(env: Env) -> Outcome:
    return sandboxed(env, lambda _pid: connect_op(env), cut_routes=("/portfolio/exchange",), cut_count=1)


def _check_connect_answer_cut(outcome: Outcome) -> None:
    assert isinstance(outcome.error, CoinStatsTruncatedAnswerError)
    assert is_retryable(outcome.error), "a new try may connect again: CoinStats answers 'existing'"
    assert outcome.extra["requests_by_route"] == {"GET /exchange/support": 1, "POST /portfolio/exchange": 1}
    assert outcome.extra["credits_by_route"] == {"GET /exchange/support": 1, "POST /portfolio/exchange": 10}


#: Marks the content of a transaction; it must never appear in an error message.
ITEM_MARKER = "memo-4c1d-item-content"


def _transaction(day: int, count: Any, **changes: Any) -> dict[str, Any]:
    """A ``TransactionItemDto`` dated 2026-02-``day`` (newest first when ``day`` falls)."""
    item: dict[str, Any] = {
        "transactionType": "buy",
        "date": f"2026-02-{day:02d}T12:00:00.000Z",
        "coinData": {"identifier": "bitcoin", "symbol": "BTC", "count": count, "totalWorth": 1000},
        "note": ITEM_MARKER,
    }
    item.update(changes)
    return item


def _transactions_answer(*items: dict[str, Any]) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        def register(mock: responses.RequestsMock) -> None:
            body = {"data": list(items), "meta": {"page": 1, "limit": 100}}
            mock.get(f"{BASE_URL}/portfolio/transactions", json=body)

        return mocked(env, register, lambda: load_op(env, "transactions"))

    return run


def _stored_text(outcome: Outcome) -> list[str]:
    rows = outcome.rows.get("coinstats_portfolio_transactions", [])
    return [value for row in rows for value in row if isinstance(value, str)]


def _check_sanitised(outcome: Outcome) -> None:
    texts = _stored_text(outcome)
    assert not any("\x00" in text for text in texts), "a NUL byte was stored"
    assert not any(re.search("[\ud800-\udfff]", text) for text in texts), "a lone surrogate was stored"
    assert "B\ufffdTC" in texts, "the lone surrogate was not replaced by U+FFFD"
    assert "memo-nul" in "".join(texts)


def _check_huge_amount(outcome: Outcome) -> None:
    assert "1" + "0" * 400 in _stored_text(outcome), "1e400 was not stored digit for digit"


def _list_changes_on_every_read(env: Env) -> Outcome:
    def rearm_on_every_read(sandbox: SandboxServer) -> None:
        app = sandbox.app
        handle_api = app.handle_api

        def handle(method: str, path: str, query: dict[str, str], body: bytes, api_key: str | None) -> Any:
            if path == "/portfolio/transactions":
                app.arm_shift()  # one new transaction at the head after every read of page 1
            return handle_api(method, path, query, body, api_key)

        env.monkeypatch.setattr(app, "handle_api", handle)

    return sandboxed(
        env,
        lambda pid: load_op(env, "transactions", pid, page_size=5),
        connect=GOOD,
        prepare=rearm_on_every_read,
        sync_seconds=0.0,
        transactions=10,
        shift_after_page=1,
    )


def _check_list_changed(outcome: Outcome) -> None:
    assert isinstance(outcome.error, CoinStatsListChangedError)
    assert is_retryable(outcome.error)
    # The first read and MAX_STREAM_RESTARTS (2) more, each: page 1 (shifts), page 2, page 1 again (shifts).
    assert outcome.extra["switches"] == {"shift": 6}
    assert outcome.extra["requests_by_route"] == {"GET /portfolio/transactions": 9}


def _budget_spent_by_earlier_tries(env: Env) -> Outcome:
    env.task_state = {"coinstats_credits_spent": 20}
    return local(env, lambda: load_op(env, "value", credit_budget=20))


SETTINGS_URI = f"coinstats://:{CANARIES['api_key']}@openapiv1.coinstats.app"


def _settings_uri_and_fields(env: Env) -> Outcome:
    path = env.tmp / "airflow_settings.yaml"
    path.write_text(
        "airflow:\n"
        "  connections:\n"
        "    - conn_id: coinstats_default\n"
        f"      conn_uri: {SETTINGS_URI}\n"
        "      conn_host: openapiv1.coinstats.app\n"
    )
    env.replacements[str(env.tmp)] = "<tmp>"
    return local(env, lambda: parse_settings(path))


def _budget_below_minimum(env: Env) -> Outcome:
    # What the DAG's resolve_accounts task does: one account, three datasets, a run budget of 60.
    return local(env, lambda: _resolve_accounts(["coinstats_exchange_binance"], 60, 3))


# -- wallet cases ------------------------------------------------------------------------------------

#: A wallet address: not a secret, but personal, so no message may show it whole.
WALLET_ADDRESS = "0x" + "f00dbabe42" * 4
BLOCKCHAINS = [{"connectionId": "ethereum", "name": "Ethereum", "icon": "i", "chain": "ethereum"}]


def _wallet_op(env: Env, login: str, chain: str = "ethereum") -> object:
    set_connection(
        env.monkeypatch, "wallet_eth", conn_type="coinstats_wallet", login=login, extra={"connection_id": chain}
    )
    return execute(env, ConnectWalletPortfolioOperator(task_id="connect_wallet", wallet_conn_id="wallet_eth"))


def _unknown_blockchain(env: Env) -> Outcome:
    def register(mock: responses.RequestsMock) -> None:
        mock.get(f"{BASE_URL}/wallet/blockchains", json=BLOCKCHAINS)
        mock.post(f"{BASE_URL}/portfolio/wallet", json={"portfolioId": "pf-w", "status": "connected"})

    return mocked(env, register, lambda: _wallet_op(env, WALLET_ADDRESS, "etherium"))


def _empty_address(env: Env) -> Outcome:
    return local(env, lambda: _wallet_op(env, ""))


def _malformed_address(env: Env) -> Outcome:
    return local(env, lambda: _wallet_op(env, WALLET_ADDRESS[:-3]))


WALLET_CASES: tuple[Case, ...] = (
    Case(
        "unknown-blockchain",
        "wallet connection_id 'etherium' (typo)",
        _unknown_blockchain,
        ("'etherium', which GET /wallet/blockchains does not list", "Nearest supported ids: ethereum", "Fix the extra"),
        credits=1,
        requests=1,
        failed_requests=0,
        via="responses",
        absent=(WALLET_ADDRESS,),
    ),
    Case(
        "empty-address",
        "wallet connection without address (Login empty)",
        _empty_address,
        ("has no address", "put the wallet address in its Login field"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "malformed-address",
        "ethereum wallet address 3 digits short",
        _malformed_address,
        ("is not a 'ethereum' address", "expected 0x followed by 40 hexadecimal digits", "Fix its Login field"),
        credits=0,
        requests=0,
        failed_requests=0,
        absent=(WALLET_ADDRESS[:-3],),
    ),
)


def _defi_on_exchange(env: Env) -> Outcome:
    return local(env, lambda: load_op(env, "defi", portfolio_kind="exchange"))


def _check_defi_not_served(outcome: Outcome) -> None:
    result = outcome.result
    assert isinstance(result, dict)
    assert (result["rows"], result["credits_spent"]) == (0, 0)
    assert "wallet portfolios only" in result["not_served"]


def _chart_type_not_in_enum(env: Env) -> Outcome:
    return local(env, lambda: load_op(env, "chart", chart_type="2y"))


def _budget_below_snapshot(env: Env) -> Outcome:
    # resolve_accounts for one account, the default datasets plus snapshot, budget 550 (566 needed).
    def check() -> object:
        with failing_fast("Resolving the exchange accounts"):
            return pipeline.check_budget_covers(550, 1, ["value", "coins", "transactions", "snapshot"])

    return local(env, check)


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
        (
            "Invalid input for param datasets",
            "'balances' is not one of ['value', 'coins', 'transactions', 'chart', 'defi', 'snapshot']",
        ),
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
        "sync never finishes (deferred to PortfolioSyncTrigger, sync_timeout 1 s)",
        _sync_timeout_in_trigger,
        ("did not finish within 1 s", "Raise the sync timeout (Param sync_timeout_minutes)"),
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
        ("No accounts to sync", "pass the Param 'account_conn_ids'", "or set the Variable"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "budget-too-small",
        "run credit budget 74 for 1 account x 3 datasets passes the pre-check; the connect took 2 tries (21 credits)",
        _budget_too_small,
        ("leaves 53 credits per portfolio", "(21 spent)", "at least 55", "select fewer datasets or sync fewer"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "budget-below-minimum",
        "run credit budget 60 for 1 account x 3 datasets (checked before connecting)",
        _budget_below_minimum,
        ("cannot cover 1 account(s)", "at least 66 credits (66 in all)", "Nothing was spent", "Raise the budget"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "redirect-connect-307",
        "CoinStats (or a proxy) answers 307 to POST /portfolio/exchange, pointing at another host",
        _redirect_connect,
        ("307 on /portfolio/exchange", "redirects are never followed", "were not sent there", "Set the host"),
        credits=1,
        requests=2,
        failed_requests=1,
        via="sandbox",
        absent=(CANARIES["exchange_secret"], "/portfolio/exchange?"),
        check=_check_redirect,
    ),
    Case(
        "redirect-paged-read-308",
        "CoinStats (or a proxy) answers 308 to GET /portfolio/coins, pointing at another host",
        _redirect_paged_read,
        ("308 on /portfolio/coins", "redirects are never followed", "Set the host of connection 'coinstats_default'"),
        credits=0,
        requests=1,
        failed_requests=1,
        via="sandbox",
        absent=("portfolioId=",),
        check=_check_redirect,
    ),
    Case(
        "plain-http-host",
        "connection host is http:// on a non-loopback host",
        _plain_http_host,
        ("uses plain http:// for host openapiv1.coinstats.app", "Use https://openapiv1.coinstats.app as the host"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "extra-timeout-nan",
        "connection extra timeout: NaN",
        _extra(timeout=math.nan),
        ("Extra 'timeout'", "must be a finite number from 0.001 to 3600, got NaN", "Fix the connection extra"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "extra-backoff-max-infinity",
        "connection extra backoff_max: Infinity",
        _extra(backoff_max=math.inf),
        ("Extra 'backoff_max'", "must be a finite number from 0 to 86400, got Infinity", "Fix the connection extra"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "extra-max-retries-boolean",
        "connection extra max_retries: true",
        _extra(max_retries=True),
        ("Extra 'max_retries'", "must be an integer between 0 and 20, got true", "Fix the connection extra"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "retry-after-not-ascii",
        "429 with Retry-After: \u00b2 (a non-ASCII digit) on GET /portfolio/value",
        _retry_after_not_ascii,
        (),
        credits=10,
        requests=2,
        failed_requests=1,
        error=None,
        via="responses",
        rows={"coinstats_portfolio_values": 1},
    ),
    Case(
        "sync-answer-cut",
        "2xx answer of PATCH /portfolio/sync cut off on the wire",
        _sync_answer_cut,
        (),
        credits=33,
        requests=2,
        failed_requests=0,
        error=None,
        via="sandbox",
        check=_check_sync_answer_cut,
    ),
    Case(
        "connect-answer-cut",
        "2xx answer of POST /portfolio/exchange cut off on the wire",
        _connect_answer_cut,
        (
            "accepted the connect",
            "the portfolioId is unknown",
            "does not send a paid write twice",
            "answers 'existing'",
        ),
        credits=11,
        requests=2,
        failed_requests=0,
        error=CoinStatsTruncatedAnswerError,
        via="sandbox",
        check=_check_connect_answer_cut,
    ),
    Case(
        "transaction-amount-nan",
        'transaction #1 has coinData.count "NaN"',
        _transactions_answer(_transaction(2, "0.5"), _transaction(1, "NaN")),
        ("portfolio transactions item #1", "field 'coinData.count' is not a number", "nothing was written"),
        credits=4,
        requests=1,
        failed_requests=0,
        via="responses",
        absent=("NaN", ITEM_MARKER),
    ),
    Case(
        "transaction-amount-1e400",
        'transaction #1 has coinData.count "1e400" (a string): finite, stored digit for digit',
        _transactions_answer(_transaction(2, "0.5"), _transaction(1, "1e400")),
        (),
        credits=4,
        requests=1,
        failed_requests=0,
        error=None,
        via="responses",
        rows={"coinstats_portfolio_transactions": 2},
        check=_check_huge_amount,
    ),
    Case(
        "transaction-text-unstorable",
        "transaction with a NUL byte in its note and a lone surrogate in coinData.symbol",
        _transactions_answer(
            _transaction(2, "0.5"),
            _transaction(
                1,
                "0.25",
                note="memo-nul\x00x",
                coinData={"identifier": "bitcoin", "symbol": "B\ud800TC", "count": "0.25", "totalWorth": 500},
            ),
        ),
        (),
        credits=4,
        requests=1,
        failed_requests=0,
        error=None,
        via="responses",
        rows={"coinstats_portfolio_transactions": 2},
        check=_check_sanitised,
    ),
    Case(
        "list-changes-every-read",
        "transaction list gains a transaction after every read of page 1",
        _list_changes_on_every_read,
        ("/portfolio/transactions changed while it was read", "added or removed upstream between page reads"),
        credits=36,
        requests=9,
        failed_requests=0,
        error=CoinStatsListChangedError,
        via="sandbox",
        check=_check_list_changed,
    ),
    Case(
        "budget-spent-by-earlier-tries",
        "load credit budget (20) already spent by earlier tries (task state store)",
        _budget_spent_by_earlier_tries,
        (
            "earlier tries of this task spent 20 of its budget of 20 credits",
            "Retrying cannot help: raise the budget",
            "delete the task state key 'coinstats_credits_spent'",
        ),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "settings-uri-and-fields",
        "airflow_settings.yaml connection with conn_uri and conn_host",
        _settings_uri_and_fields,
        ("connection 'coinstats_default' sets conn_uri and also conn_host", "Keep one form"),
        credits=0,
        requests=0,
        failed_requests=0,
        error=SettingsError,
        absent=(CANARIES["api_key"], SETTINGS_URI),
    ),
    Case(
        "defi-on-exchange-portfolio",
        "dataset defi for an exchange portfolio (CoinStats serves DeFi for wallets only)",
        _defi_on_exchange,
        (),
        credits=0,
        requests=0,
        failed_requests=0,
        error=None,
        check=_check_defi_not_served,
    ),
    Case(
        "chart-type-not-in-enum",
        "chart_type '2y' (not one of 24h, 1w, 1m, 3m, 6m, 1y, all)",
        _chart_type_not_in_enum,
        ("Chart type '2y' is not one CoinStats serves", "Choose one of 24h, 1w, 1m, 3m, 6m, 1y, all"),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
    Case(
        "budget-cannot-cover-snapshot",
        "credit budget 550 for one account with datasets value, coins, transactions, snapshot",
        _budget_below_snapshot,
        (
            "The credit budget of 550 cannot cover 1 account(s)",
            "snapshot alone costs 500 per portfolio",
            "Raise the budget, select fewer datasets",
        ),
        credits=0,
        requests=0,
        failed_requests=0,
    ),
)


CASES = (*CASES, *WALLET_CASES)
CASES_BY_ID: dict[str, Case] = {case.id: case for case in CASES}


@contextmanager
def case_env() -> Iterator[Env]:
    """An :class:`Env` outside pytest (for :func:`main`)."""
    with pytest.MonkeyPatch.context() as monkeypatch, tempfile.TemporaryDirectory() as tmp:
        yield Env(monkeypatch, Path(tmp))
    support_cache.clear()


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    outcome = case.run(Env(monkeypatch, tmp_path))
    error = outcome.error

    if case.error is None:
        assert error is None, f"{case.id} must be survived but raised {type(error).__name__}: {error}"
        assert outcome.result is not None
    else:
        assert error is not None, f"{case.id} did not fail"
        assert isinstance(error, case.error), f"{case.id} raised {type(error).__name__}: {error}"
        message = str(error)
        for phrase in case.phrases:
            assert phrase in message, f"{case.id}: {phrase!r} missing from {message!r}"
        for text in case.absent:
            assert text not in message, f"{case.id}: the message echoes {text!r}"
        # Either fail fast (no Airflow task retry) or retryable on purpose, never both.
        assert isinstance(error, AirflowFailException | ParamValidationError | SettingsError) != is_retryable(error)
    # The failing request is never repeated (only a 429/5xx/transport error is retried by the hook).
    assert outcome.failed_requests == case.failed_requests <= 1
    assert outcome.requests == case.requests
    assert outcome.credits == case.credits
    if case.requests == 0:
        assert outcome.credits == 0
    # A failed task writes nothing (rolled back); a survived input loads its rows.
    assert case.error is None or not case.rows
    written = {table: outcome.tables.get(table, 0) for table in DATA_TABLES}
    assert written == {table: case.rows.get(table, 0) for table in DATA_TABLES}, outcome.tables
    if case.check is not None:
        case.check(outcome)


def test_cases_cover_the_brief() -> None:
    assert len(CASES) >= 15
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.via for c in CASES} == {"local", "responses", "sandbox"}
    survived = {c.id for c in CASES if c.error is None}
    assert survived == {
        "retry-after-not-ascii",
        "sync-answer-cut",
        "transaction-amount-1e400",
        "transaction-text-unstorable",
        "defi-on-exchange-portfolio",
    }
    assert all(CASES_BY_ID[i].rows or CASES_BY_ID[i].check for i in survived), "a survived case must show its effect"


@pytest.mark.parametrize(
    "step",
    [
        pytest.param(lambda: pipeline.resolve_accounts([], lambda: None), id="resolve_accounts"),
        pytest.param(lambda: pipeline.check_budget_covers(60, 1, 3), id="check_budget_covers"),
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
    """``docs/bad-input-matrix.md`` is exactly the document these cases produce now (header, table, notes)."""
    assert DOC.exists(), f"run: {REGENERATE}"
    assert DOC.read_text() == document(run_all()), f"docs/bad-input-matrix.md is stale; run: {REGENERATE}"


# -- the table -------------------------------------------------------------------------------------


def run_all() -> list[tuple[Case, Outcome]]:
    """Run every case outside pytest's fixtures."""
    results = []
    for case in CASES:
        with case_env() as env:
            results.append((case, case.run(env)))
    return results


def _summary(result: Any) -> str:
    """A task's return value for the table, without the portfolio id (it differs between runs)."""
    if isinstance(result, dict):
        shown = {k: v for k, v in result.items() if k not in ("portfolio_id", "dataset", "table")}
        return ", ".join(f"{key}={value}" for key, value in shown.items())
    return repr(result)


def _message(outcome: Outcome) -> str:
    error = outcome.error
    text = f"(no error) returns {_summary(outcome.result)}" if error is None else str(error).splitlines()[0]
    for raw in sorted(outcome.replacements, key=len, reverse=True):
        text = text.replace(raw, outcome.replacements[raw])
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", text)
    return text.replace("|", "\\|")


def _retried(case: Case, outcome: Outcome) -> str:
    error = outcome.error
    if error is None:
        if outcome.failed_requests:
            return f"n/a: the task succeeds; the hook retried {outcome.failed_requests} failed request"
        return "n/a: the task succeeds"
    if isinstance(error, ParamValidationError):
        return "no: rejected before the run starts"
    if isinstance(error, SettingsError):
        return "no: the admin command stops before writing anything"
    if is_retryable(error):
        return f"yes, on purpose: {type(error).__name__} is retryable, so Airflow's task retry applies"
    if not isinstance(error, AirflowFailException):
        return f"YES: {type(error).__name__} is retried by Airflow"
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
            f"| {number} | `{case.id}`: {case.title} | {case.via} | {_message(outcome)} | "
            f"{_retried(case, outcome)} | {outcome.requests} | {outcome.credits} |"
        )
    return "\n".join(lines) + "\n"


HEADER = """# Bad-input matrix

Every wrong input and failing answer the CoinStats provider is tested against, with the message the user
sees, whether anything is retried, how many HTTP requests were sent and how many CoinStats credits were
spent. It also lists the odd inputs the provider must survive rather than fail on (a garbled
`Retry-After`, a cut-off answer of a paid sync, numbers and text at the edge of what can be stored):
their rows show what the task returns. Generated from `tests/unit/test_bad_input_matrix.py` (each row is one
parametrized case there, which asserts the key phrases of the message, what it must not echo, the
fail-fast or retry behaviour, the requests, the credits and the rows written); `test_doc_is_current`
fails when this table is stale.

Regenerate:

```
{command}
```

* **via**: `local` = no network (any request would be recorded and refused), `responses` = HTTP mocked,
  `sandbox` = end to end against `include/coinstats_sandbox` and its misbehaviour switches (the credits
  column is then the sandbox's own accounting; otherwise the contract cost of every 2xx answer).
* **retried?**: `AirflowFailException` means Airflow does not retry the task; the failing request itself
  is sent at most once (the hook retries only 429/5xx/timeouts/unreadable answers of reads, and never a
  paid write it got a 2xx for). "yes, on purpose" marks the two faults a new try can cure: such errors
  are raised as they are (retryable), so Airflow's task retries apply. "n/a" rows succeed.
* A case's message is the exception text of the task (first line for Param validation errors), or
  `(no error)` and what the task returns; UUIDs are shown as `<uuid>`, the ports of the sandboxes as
  `<sandbox port>` / `<other port>` and a temporary folder as `<tmp>`.

"""


FOOTER = """
Notes:

* The run's credit budget is checked twice. `resolve_accounts` checks a lower bound before anything is
  spent (`budget-below-minimum`: accounts x (10 + the cheapest sync and load) + 1 for
  `GET /exchange/support` each, as every connect task may pay for the exchange list). `register_portfolios`
  splits what connecting left (`budget-too-small`); it fails only when connecting cost more than that
  bound, i.e. a connect task needed another try: its first answer was cut, so the next try connected again
  for 10 more credits. A budget below the bound never gets that far (`budget-below-minimum`).
* `no-accounts`, `budget-below-minimum` and `budget-too-small` run the DAG's own `resolve_accounts` task
  (its Python function, with the run's validated Params), and `budget-too-small` then the budget split of
  `register_portfolios`, wrapped in `failing_fast(...)` as the DAG does; `CoinStatsConfigError` is also an
  `AirflowFailException`, so they fail without Airflow retries even without that wrapper.
* Redirects (`redirect-*`): the target is a second local sandbox, which must receive no request; the
  message shows only scheme, host and port of the `Location`. The 1 credit of `redirect-connect-307` is
  the `GET /exchange/support` before the connect; the redirected call costs nothing.
* `connect-answer-cut`: 11 credits = 1 for `GET /exchange/support` + 10 for the connect CoinStats served.
  The hook never re-sends it; the task's next try connects again (10 credits) and CoinStats answers
  `existing` with the same portfolioId. `sync-answer-cut`: the 30-credit sync is sent once, then one
  3-credit status poll finds it synced.
* `list-changes-every-read`: the sandbox's shift switch is re-armed on every read, so each read of the
  stream (the first and `max_stream_restarts` = 2 more within the try) sees page 1 change: 3 x (page 1,
  page 2, page 1 again) = 9 requests, 36 credits, nothing written; the error then goes to Airflow's retry.
* `transaction-amount-1e400`: amounts are decoded and stored as exact decimals, so `1e400` is a finite
  number (401 digits, within the 1000-digit limit) and is stored digit for digit; only values that are
  not finite numbers (`"NaN"`, `"Infinity"`, booleans, text) or longer than 1000 digits are refused.
* `transaction-text-unstorable`: NUL characters are removed and lone surrogates become U+FFFD, in the
  text columns and in `payload_json`; the rows load.
* `settings-uri-and-fields` is raised by `python -m include.load_settings` (exit status 2) before anything
  is written; the message never shows the URI or its password.
* Wallets (`unknown-blockchain`, `empty-address`, `malformed-address`): the address is checked locally
  before anything is sent (non-empty, one word, and the chain's format where it is unambiguous: EVM
  chains, bitcoin, solana); only the blockchain id needs `GET /wallet/blockchains` (1 credit, cached), and
  no 40-credit connect is sent. Messages show the address shortened (`0xf0…be42`), never whole.
* More accounts than `[core] max_map_length` are not an error: the run syncs the first batch and hands
  the rest to a follow-up run
  (`tests/integration/test_pipeline_e2e.py::test_accounts_beyond_max_map_length_go_to_a_follow_up_run`).
"""


def document(results: list[tuple[Case, Outcome]]) -> str:
    """The whole of ``docs/bad-input-matrix.md``: header, table and notes."""
    return HEADER.format(command=REGENERATE) + markdown_table(results) + FOOTER


def main(argv: list[str] | None = None) -> int:
    """Print the matrix document (or write it to ``docs/bad-input-matrix.md`` with ``--write``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    # Only the document on stdout: silence the operators' and Airflow's log lines.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    logging.disable(logging.CRITICAL)
    text = document(run_all())
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
        print(f"wrote {DOC}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
