"""The whole `coinstats_portfolio_sync` DAG in a real in-process Airflow run against the sandbox.

Covers: reruns leave the tables identical (SQLite and PostgreSQL), injected faults change nothing, the
deferrable and the worker-polling wait, the timeout path, pagination edges, empty portfolios, credit
totals equal to what the sandbox charged, and the credit budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coinstats_provider.warehouse.schema import DATASETS, DEFAULT_DATASETS
from include.coinstats_sandbox import SandboxConfig, SandboxServer
from tests.conftest import CANARIES, ROOT, assert_no_canary, set_connection
from tests.helpers.postgres_server import PostgresServer

# One PostgreSQL server per test session, shared with every module that lists this plugin.
pytest_plugins = ["tests.helpers.postgres_server"]

pytestmark = pytest.mark.slow

DAG_ID = "coinstats_portfolio_sync"
ACCOUNTS = ["coinstats_exchange_binance", "coinstats_exchange_okx", "coinstats_exchange_kraken"]
TABLES = (
    "coinstats_portfolios",
    "coinstats_portfolio_values",
    "coinstats_portfolio_coins",
    "coinstats_portfolio_transactions",
)
VOLATILE = ("loaded_at", "updated_at", "last_connect_status")


@pytest.fixture(scope="module")
def dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    config = SandboxConfig(api_keys=(CANARIES["api_key"],), sync_seconds=0.5, transactions=250, quiet=True)
    with SandboxServer(config) as server:
        yield server


@pytest.fixture
def accounts(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, exchange_conn: Callable[..., None]) -> list[str]:
    set_connection(
        monkeypatch,
        "coinstats_default",
        conn_type="coinstats",
        host=sandbox.base_url,
        password=CANARIES["api_key"],
        extra={"timeout": 1.5, "max_retries": 10, "backoff_base": 0.01, "backoff_max": 0.05},
    )
    exchange_conn(ACCOUNTS[0], "binance")
    exchange_conn(ACCOUNTS[1], "okx", passphrase=CANARIES["passphrase"])
    exchange_conn(ACCOUNTS[2], "kraken")
    return ACCOUNTS


@pytest.fixture
def sqlite_warehouse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.db"
    set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(path))
    return path


def run(dag: Any, accounts: list[str], **conf: Any) -> Any:
    """One `dag.test()` run with fast polling; returns the DagRun."""
    run_conf = {"exchange_conn_ids": accounts, "sync_poll_seconds": 0.2, "sync_timeout_minutes": 1, **conf}
    return dag.test(run_conf=run_conf)


def xcoms(dag_run: Any) -> dict[tuple[str, int, str], Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(XComModel.task_id, XComModel.map_index, XComModel.key, XComModel.value).where(
                XComModel.run_id == dag_run.run_id, XComModel.dag_id == DAG_ID
            )
        ).all()
    return {(r.task_id, r.map_index, r.key): r.value for r in rows}


def summary_of(dag_run: Any) -> dict[str, Any]:
    value = xcoms(dag_run)[("summary", -1, "return_value")]
    assert isinstance(value, dict)
    return value


def states(dag_run: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for ti in dag_run.get_task_instances():
        found.setdefault(ti.task_id, []).append(str(ti.state))
    return found


def warehouse_tables() -> dict[str, list[tuple[Any, ...]]]:
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse
    from coinstats_provider.warehouse.schema import TABLES as SPECS

    warehouse = CoinStatsWarehouse()
    return {t: warehouse.fetch_table(t, exclude=[c for c, _ in SPECS[t].columns if c in VOLATILE]) for t in TABLES}


def test_reruns_and_faults_leave_sqlite_tables_identical(
    airflow_db: Path,
    dag: Any,
    accounts: list[str],
    sandbox: SandboxServer,
    sqlite_warehouse: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    first = run(dag, accounts)
    assert first.state == "success", states(first)
    # The opt-in datasets are not selected: the scheduler skipped their loads, none was started.
    for dataset in set(DATASETS) - set(DEFAULT_DATASETS):
        tis = [ti for ti in first.get_task_instances() if ti.task_id == f"portfolio.load_{dataset}"]
        assert [(ti.state, ti.try_number) for ti in tis] == [("skipped", 0)], dataset
    summary = summary_of(first)
    assert {p["status"] for p in summary["portfolios"]} == {"connected"}
    assert summary["rows"] == {
        "coinstats_portfolio_values": 3,
        "coinstats_portfolio_coins": sum(p["rows"]["coinstats_portfolio_coins"] for p in summary["portfolios"]),
        "coinstats_portfolio_transactions": 750,
    }
    # Our credit count equals what CoinStats (the sandbox) charged, call for call.
    charged = sandbox.stats()["credits_used"]
    assert summary["total_credits"] == charged
    after_first = warehouse_tables()
    assert len(after_first["coinstats_portfolio_transactions"]) == 750
    first_out = capfd.readouterr().out + caplog.text
    assert "running trigger in line" in first_out  # the wait deferred to a trigger
    caplog.clear()

    second = run(dag, accounts, deferrable=False)
    assert second.state == "success", states(second)
    assert {p["status"] for p in summary_of(second)["portfolios"]} == {"existing"}
    assert summary_of(second)["total_credits"] == sandbox.stats()["credits_used"] - charged
    assert warehouse_tables() == after_first
    second_out = capfd.readouterr().out + caplog.text
    assert "running trigger in line" not in second_out  # polled on the worker instead
    caplog.clear()

    sandbox.update(faults=0.3, slow_seconds=2.0)
    before = sandbox.stats()
    third = run(dag, accounts)
    after = sandbox.stats()
    assert third.state == "success", states(third)
    assert warehouse_tables() == after_first
    faults = sum(after["faults"].values()) - sum(before["faults"].values())
    requests_made = sum(after["requests"].values()) - sum(before["requests"].values())
    print(
        f"faulty run: {requests_made} requests, {faults} faults injected, {summary_of(third)['total_credits']} credits"
    )
    assert faults >= 3
    third_out = capfd.readouterr()
    assert_no_canary(
        first_out, second_out, third_out.out, third_out.err, caplog.text, xcoms(first), xcoms(third), after_first
    )


def test_reruns_leave_postgres_tables_identical(
    airflow_db: Path,
    dag: Any,
    accounts: list[str],
    sandbox: SandboxServer,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = postgres_server.create_database("warehouse_e2e")
    monkeypatch.setenv("AIRFLOW_CONN_COINSTATS_WAREHOUSE", postgres_server.conn_json(database))
    first = run(dag, accounts)
    assert first.state == "success", states(first)
    after_first = warehouse_tables()
    assert len(after_first["coinstats_portfolio_transactions"]) == 750
    sandbox.update(faults=0.3, slow_seconds=2.0)
    second = run(dag, accounts)
    assert second.state == "success", states(second)
    assert warehouse_tables() == after_first


def test_sync_that_never_finishes_fails_at_its_deadline(
    airflow_db: Path,
    dag: Any,
    monkeypatch: pytest.MonkeyPatch,
    accounts: list[str],
    sqlite_warehouse: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    set_connection(
        monkeypatch,
        "coinstats_exchange_stuck",
        conn_type="coinstats_exchange",
        login="stuck-account-key",
        password="stuck-account-secret",
        extra={"connection_id": "binance"},
    )
    dag_run = run(dag, ["coinstats_exchange_stuck"], sync_timeout_minutes=0.05, sync_poll_seconds=0.5)
    assert dag_run.state == "failed"
    found = states(dag_run)
    assert found["portfolio.sync"] == ["failed"]
    assert found["portfolio.load_transactions"] == ["upstream_failed"]
    out = caplog.text + capfd.readouterr().out
    assert "did not finish within 3 s" in out
    assert "Raise the sync timeout" in out


def test_pagination_edges_and_empty_portfolio(
    airflow_db: Path,
    dag: Any,
    monkeypatch: pytest.MonkeyPatch,
    accounts: list[str],
    sandbox: SandboxServer,
    sqlite_warehouse: Path,
) -> None:
    sandbox.update(transactions=200)  # exactly two full pages of 100
    set_connection(
        monkeypatch,
        "coinstats_exchange_empty",
        conn_type="coinstats_exchange",
        login="empty-account-key",
        password="empty-account-secret",
        extra={"connection_id": "kraken"},
    )
    dag_run = run(dag, ["coinstats_exchange_binance", "coinstats_exchange_empty"])
    assert dag_run.state == "success", states(dag_run)
    loads = {
        (v["portfolio_id"], v["dataset"]): v
        for (task, _, key), v in xcoms(dag_run).items()
        if task.startswith("portfolio.load_") and key == "return_value"
    }
    by_rows = sorted(v["rows"] for (_, dataset), v in loads.items() if dataset == "transactions")
    assert by_rows == [0, 200]
    full = next(v for (_, dataset), v in loads.items() if dataset == "transactions" and v["rows"] == 200)
    assert full["pages"] == 2
    assert full["credits_spent"] == 3 * 4
    empty = next(v for (_, dataset), v in loads.items() if dataset == "transactions" and v["rows"] == 0)
    assert empty["pages"] == 0
    assert empty["credits_spent"] == 4
    assert sorted(v["rows"] for (_, dataset), v in loads.items() if dataset == "value") == [1, 1]


def test_credit_budget_stops_the_run_before_overspending(
    airflow_db: Path,
    dag: Any,
    accounts: list[str],
    sandbox: SandboxServer,
    sqlite_warehouse: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    too_small = run(dag, accounts[:1], credit_budget=30)
    assert too_small.state == "failed"
    assert states(too_small)["resolve_accounts"] == ["failed"]
    assert sandbox.stats()["credits_used"] == 0  # stopped before the first call
    assert "Nothing was spent" in caplog.text + capfd.readouterr().out

    spent_before = sandbox.stats()["credits_used"]
    tight = run(dag, accounts[:1], credit_budget=70)
    assert tight.state == "failed"
    assert sandbox.stats()["credits_used"] - spent_before <= 70
    assert "credit budget" in (caplog.text + capfd.readouterr().out).lower()

    spent_before = sandbox.stats()["credits_used"]
    enough = run(dag, accounts[:1], credit_budget=400)
    assert enough.state == "success", states(enough)
    total = summary_of(enough)["total_credits"]
    assert total == sandbox.stats()["credits_used"] - spent_before <= 400


def test_accounts_beyond_max_map_length_go_to_a_follow_up_run(
    airflow_db: Path,
    dag: Any,
    monkeypatch: pytest.MonkeyPatch,
    accounts: list[str],
    sandbox: SandboxServer,
    sqlite_warehouse: Path,
) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "2")
    first = run(dag, accounts, datasets=["value"])
    assert first.state == "success", states(first)
    assert states(first)["continue_with_remaining_accounts"] == ["success"]
    assert sorted(p["exchange_conn_ids"][0] for p in summary_of(first)["portfolios"]) == sorted(accounts[:2])
    with create_session() as session:
        follow_up = session.scalars(
            select(DagRun).where(DagRun.dag_id == DAG_ID).order_by(DagRun.id.desc()).limit(1)
        ).one()
    assert follow_up.run_id != first.run_id
    assert follow_up.conf["account_conn_ids"] == accounts[2:]
    assert follow_up.conf["exchange_conn_ids"] == []
    assert follow_up.conf["prune_removed_accounts"] is False  # it sees only part of the list
    assert follow_up.conf["datasets"] == ["value"]  # the other Params carry over

    second = run(dag, follow_up.conf["account_conn_ids"], datasets=["value"])
    assert second.state == "success", states(second)
    assert states(second)["continue_with_remaining_accounts"] == ["skipped"]
    assert len(warehouse_tables()["coinstats_portfolio_values"]) == 3


def test_incremental_second_run_reads_only_new_transactions(
    airflow_db: Path, dag: Any, accounts: list[str], sandbox: SandboxServer, sqlite_warehouse: Path
) -> None:
    from tests.integration.test_incremental_e2e import stored, truth

    incremental = {"transactions_mode": "incremental", "datasets": ["transactions"]}
    first = run(dag, accounts, **incremental)
    assert first.state == "success", states(first)
    plan = xcoms(first)[("register_portfolios", -1, "transactions_plan")]
    assert {(p["mode"], p["reason"]) for p in plan} == {("full", "first load of this portfolio (no sync state)")}
    pids = [p["portfolio_id"] for p in summary_of(first)["portfolios"]]
    assert len(pids) == 3
    for pid in pids:
        assert stored(pid) == truth(sandbox, pid)
        sandbox.app.add_transactions(pid, 5)
    read_before = sandbox.stats()["credits_by_path"]["GET /portfolio/transactions"]

    second = run(dag, accounts, **incremental)
    assert second.state == "success", states(second)
    plan = xcoms(second)[("register_portfolios", -1, "transactions_plan")]
    assert {(p["mode"], p["reason"]) for p in plan} == {("incremental", "since the newest loaded transaction")}
    summary = summary_of(second)
    for entry in summary["portfolios"]:
        mode = entry["transactions_mode"]
        assert (mode["mode"], mode["mode_requested"]) == ("incremental", "incremental")
        # 250 stored transactions are 3 pages (12 credits) in full; the window and the 5 new ones fit one page
        assert (mode["full_read_credits"], mode["credits_saved"]) == (12, 8)
        assert entry["transactions"] == {"inserted": 5, "updated": 0, "removed": 0}
        assert stored(entry["portfolio_id"]) == truth(sandbox, entry["portfolio_id"])
    assert summary["credits_saved"] == 24
    # what CoinStats (the sandbox) charged for the transactions reads: one page per portfolio
    assert sandbox.stats()["credits_by_path"]["GET /portfolio/transactions"] - read_before == 3 * 4
