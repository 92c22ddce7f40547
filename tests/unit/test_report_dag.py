"""The report DAG's shape: scheduled on exactly the Assets the sync DAG's loads emit, plain SQL via common-sql."""

from __future__ import annotations

from typing import Any

import pytest

from coinstats_provider.warehouse.schema import DATASET_TABLES, REPORT_TABLE, WAREHOUSE_CONN_NAME
from tests.conftest import ROOT

REPORT_DAG = "coinstats_portfolio_report"


@pytest.fixture(scope="module")
def bag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    found = DagBag(dag_folder=str(ROOT / "dags"))
    assert found.import_errors == {}
    return found


def test_report_is_scheduled_on_the_assets_the_sync_loads_emit(bag: Any) -> None:
    from airflow.sdk import Asset

    sync, report = bag.dags["coinstats_portfolio_sync"], bag.dags[REPORT_DAG]
    emitted = {(o.name, o.uri) for task in sync.tasks for o in task.outlets if isinstance(o, Asset)}
    assert {name for name, _ in emitted} == set(DATASET_TABLES.values())
    # Any one of the tables it reads (AssetAny): the run after the last load of a sync sees all of it.
    read = {DATASET_TABLES[dataset] for dataset in ("value", "coins", "transactions")}
    assert type(report.timetable.asset_condition).__name__ == "AssetAny"
    assert {(a.name, a.uri) for a in report.timetable.asset_condition.objects} == {
        (name, uri) for name, uri in emitted if name in read
    }
    assert report.max_active_runs == 1
    assert not report.catchup


def test_report_runs_its_sql_files_on_the_warehouse(bag: Any) -> None:
    from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator

    report = bag.dags[REPORT_DAG]
    assert [t.task_id for t in report.topological_sort()] == ["create_report_table", "build_report"]
    sql = ROOT / "include" / "sql" / "coinstats_report"
    for task, file in zip(report.topological_sort(), ("create.sql", "build.sql"), strict=True):
        assert isinstance(task, SQLExecuteQueryOperator)
        assert task.conn_id == WAREHOUSE_CONN_NAME
        assert task.sql == (sql / file).read_text()  # the file, read when the DAG is parsed
    assert report.params["report_table"] == REPORT_TABLE
    assert [o.name for o in report.get_task("build_report").outlets] == [REPORT_TABLE]


def test_sql_files_name_no_table_but_through_params() -> None:
    from coinstats_provider.warehouse.schema import TABLES

    for path in (ROOT / "include" / "sql" / "coinstats_report").glob("*.sql"):
        text = path.read_text()
        assert "{{ params.report_table }}" in text
        assert REPORT_TABLE not in text
        assert not [t for t in TABLES if t in text], path.name
