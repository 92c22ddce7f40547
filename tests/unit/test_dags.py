"""DAG integrity and a real in-process Airflow run of the mapped connect example."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS, DEFAULT_DATASETS
from tests.conftest import BASE_URL, CANARIES, ROOT, SUPPORT, assert_no_canary

DAGS = ROOT / "dags"


def _dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dagbag_imports_without_errors() -> None:
    bag = _dagbag()
    assert bag.import_errors == {}
    assert "coinstats_connect_accounts" in bag.dag_ids
    for dag_id in bag.dag_ids:
        assert bag.dags[dag_id].tags, f"{dag_id} has no tags"


def test_no_network_at_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise AssertionError("network access at DAG parse time")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    bag = _dagbag()
    assert bag.import_errors == {}
    assert attempts == []


@pytest.mark.slow
def test_mapped_connect_runs_in_airflow(
    airflow_db: Path,
    coinstats_conn: Callable[..., None],
    exchange_conn: Callable[..., None],
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Three exchange accounts through `dag.test()`: one portfolioId each, handed downstream as a list."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    exchange_conn("coinstats_exchange_binance", "binance")
    exchange_conn("coinstats_exchange_okx", "okx", passphrase=CANARIES["passphrase"])
    exchange_conn("coinstats_exchange_kraken", "kraken")
    dag = _dagbag().dags["coinstats_connect_accounts"]

    def connect(request: Any) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body)
        assert request.headers["X-API-KEY"] == CANARIES["api_key"]
        answer = {"portfolioId": f"pf-{body['connectionId']}", "connectionId": body["connectionId"]}
        return 200, {}, json.dumps({**answer, "status": "connected"})

    with responses.RequestsMock() as rsps:
        rsps.get(f"{BASE_URL}/exchange/support", json=SUPPORT)
        rsps.add_callback("POST", f"{BASE_URL}/portfolio/exchange", callback=connect)
        run = dag.test()
        posts = [c for c in rsps.calls if c.request.method == "POST"]
        okx_body = next(json.loads(c.request.body) for c in posts if b'"okx"' in c.request.body)

    assert run.state == "success"
    assert len(posts) == 3
    assert okx_body["connectionFields"]["passphrase"] == CANARIES["passphrase"]
    tis = {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances()}
    assert {ti.rendered_map_index for (task, _), ti in tis.items() if task == "connect_exchange_portfolio"} == {
        "coinstats_exchange_binance",
        "coinstats_exchange_okx",
        "coinstats_exchange_kraken",
    }
    with create_session() as session:
        rows = session.execute(
            select(XComModel.task_id, XComModel.map_index, XComModel.key, XComModel.value).where(
                XComModel.run_id == run.run_id, XComModel.dag_id == run.dag_id
            )
        ).all()
    values = {(r.task_id, r.map_index, r.key): r.value for r in rows}
    ids = {v for (task, _, key), v in values.items() if task == "connect_exchange_portfolio" and key == "return_value"}
    assert ids == {"pf-binance", "pf-okx", "pf-kraken"}
    assert sorted(values[("report_portfolios", -1, "return_value")]) == [
        "pf-binance",
        "pf-kraken",
        "pf-okx",
    ]
    out, err = capfd.readouterr()
    assert "pf-okx" in out + err
    assert_no_canary(out, err, rows)


def test_main_dag_shape_pool_and_assets() -> None:
    dag = _dagbag().dags["coinstats_portfolio_sync"]
    assert dag.timetable.expression == "0 0 * * *"  # @daily
    assert dag.catchup is False
    assert set(dag.params) == {
        "account_conn_ids",
        "exchange_conn_ids",
        "prune_removed_accounts",
        "datasets",
        "chart_type",
        "sync_timeout_minutes",
        "sync_poll_seconds",
        "credit_budget",
        "deferrable",
        "transactions_mode",
        "transactions_overlap_hours",
        "full_every_days",
    }
    # The opt-in datasets are in the enum, not in the default selection.
    assert dag.params["datasets"] == list(DEFAULT_DATASETS)
    assert dag.params.get_param("datasets").schema["items"]["enum"] == list(DATASETS)
    assert dag.params["chart_type"] == "1m"
    assert dag.params.get_param("chart_type").schema["enum"] == ["24h", "1w", "1m", "3m", "6m", "1y", "all"]
    calling = [
        "connect_exchange_portfolio",
        "connect_wallet_portfolio",
        "prune_removed_portfolio",
        "portfolio.sync",
        *(f"portfolio.load_{d}" for d in DATASETS),
    ]
    for task_id in calling:
        assert dag.get_task(task_id).pool == "coinstats_api", task_id
    for dataset, table in DATASET_TABLES.items():
        outlets = dag.get_task(f"portfolio.load_{dataset}").outlets
        assert [asset.name for asset in outlets] == [table]
    # The summary reads the sync and load results of the mapped group through explicit references.
    loads = {f"portfolio.load_{d}" for d in DATASETS}
    assert dag.get_task("summary").upstream_task_ids == {"portfolio.sync", *loads, "record_pruned"}
    assert dag.get_task("summary").trigger_rule == "none_failed"
    for task_id in loads:
        assert dag.get_task(task_id).upstream_task_ids == {"portfolio.sync", "register_portfolios", "select_datasets"}
    # The branch before the loads lets the scheduler skip unselected loads without starting them.
    assert dag.get_task("select_datasets").inherits_from_skipmixin
    assert dag.get_task("select_datasets").downstream_task_ids == loads
    assert dag.get_task("select_datasets").upstream_task_ids == {"resolve_accounts"}
    assert dag.get_task("register_portfolios").upstream_task_ids == {
        "resolve_accounts",
        "wallet_accounts",
        "connect_exchange_portfolio",
        "connect_wallet_portfolio",
    }
    # A kind without accounts maps to zero (skipped) connect tasks: registering must still run.
    assert dag.get_task("register_portfolios").trigger_rule == "none_failed"
    assert dag.get_task("record_pruned").trigger_rule == "none_failed"
    assert dag.get_task("summary").upstream_task_ids >= {"record_pruned"}
    # The follow-up conf reads resolve_accounts' XCom "remaining": it must run after it, or it would skip.
    assert "resolve_accounts" in dag.get_task("remaining_accounts_conf").upstream_task_ids
    assert dag.get_task("continue_with_remaining_accounts").upstream_task_ids == {"remaining_accounts_conf"}


def test_the_load_floor_has_the_shape_of_the_real_dag() -> None:
    """``bench/coinstats_load_floor.py`` is only a fair floor while its tasks, edges, pools and rules match."""
    from airflow.dag_processing.dagbag import DagBag

    floor_bag = DagBag(str(ROOT / "bench" / "coinstats_load_floor.py"))
    assert floor_bag.import_errors == {}
    floor = floor_bag.dags["coinstats_load_floor"]
    real = _dagbag().dags["coinstats_portfolio_sync"]

    def shape(dag: Any) -> dict[str, Any]:
        return {
            t.task_id: (
                sorted(t.upstream_task_ids),
                t.pool,
                str(t.trigger_rule),
                t.inherits_from_skipmixin,
                t.get_needs_expansion(),
                t.retries,
            )
            for t in dag.tasks
        }

    assert shape(floor) == shape(real)
