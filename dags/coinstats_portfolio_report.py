"""Daily portfolio report, built whenever ``coinstats_portfolio_sync`` loads the warehouse.

Scheduled on the warehouse Assets the sync DAG's loads emit (data-aware scheduling: any of the value,
coins or transactions tables updated), it runs plain SQL through common-sql (``include/sql/coinstats_report``)
on the same warehouse connection, SQLite or PostgreSQL: one row per portfolio and snapshot date with the
total value, its change against the previous snapshot, the coin count and the transactions of that day.
Each run rebuilds the latest reported day and adds every day not reported yet, in one transaction, so a
rerun (or a run per load of a mapped sync) leaves the table as after one run.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import DAG, Asset

from coinstats_provider.warehouse.schema import (
    COINS_TABLE,
    DATASET_TABLES,
    REPORT_TABLE,
    TRANSACTIONS_TABLE,
    VALUES_TABLE,
    WAREHOUSE_CONN_NAME,
)

DAG_ID = "coinstats_portfolio_report"
SQL_DIR = Path(__file__).resolve().parents[1] / "include" / "sql"
#: The Assets of the tables the report reads, as the sync DAG's load tasks emit them (same names, so the
#: same Assets): value, coins and transactions (the opt-in datasets' tables do not change the report).
WAREHOUSE_ASSETS = [Asset(name=DATASET_TABLES[dataset]) for dataset in ("value", "coins", "transactions")]

with DAG(
    dag_id=DAG_ID,
    # Any load refreshes the report: the run after the last load of a sync sees all of it.
    schedule=WAREHOUSE_ASSETS[0] | WAREHOUSE_ASSETS[1] | WAREHOUSE_ASSETS[2],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["coinstats"],
    doc_md=__doc__,
    template_searchpath=[str(SQL_DIR)],
    params={
        "report_table": REPORT_TABLE,
        "values_table": VALUES_TABLE,
        "coins_table": COINS_TABLE,
        "transactions_table": TRANSACTIONS_TABLE,
    },
    default_args={"retries": 2, "retry_delay": dt.timedelta(seconds=30)},
):
    create_report_table = SQLExecuteQueryOperator(
        task_id="create_report_table",
        conn_id=WAREHOUSE_CONN_NAME,
        sql="coinstats_report/create.sql",
        do_xcom_push=False,
    )
    build_report = SQLExecuteQueryOperator(
        task_id="build_report",
        conn_id=WAREHOUSE_CONN_NAME,
        sql="coinstats_report/build.sql",
        split_statements=True,
        do_xcom_push=False,
        outlets=[Asset(name=REPORT_TABLE)],
    )
    create_report_table >> build_report
