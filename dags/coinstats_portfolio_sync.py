"""Daily CoinStats portfolio sync: connect exchange accounts, sync each portfolio, load it exactly once.

``resolve_accounts`` → ``connect_exchange_portfolio`` (mapped) → ``register_portfolios`` → per portfolio
(mapped group): ``sync`` (deferrable wait) → ``load_value`` / ``load_coins`` / ``load_transactions`` (and
the opt-in ``load_chart`` / ``load_defi`` / ``load_snapshot``, skipped unless selected) → ``summary``.
Accounts come from the ``exchange_conn_ids`` Param or, when it is empty, from the Variable
``coinstats_exchange_conn_ids`` read at run time. Accounts beyond ``[core] max_map_length`` go to a
follow-up run of this DAG (``continue_with_remaining_accounts``).
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Asset, Param, XComArg, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowSkipException

from coinstats_provider import pipeline
from coinstats_provider.models import CHART_TYPES, DEFAULT_CHART_TYPE
from coinstats_provider.operators._common import failing_fast
from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator
from coinstats_provider.operators.load import LoadPortfolioOperator
from coinstats_provider.operators.sync import SyncPortfolioOperator
from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS, DEFAULT_DATASETS

DAG_ID = "coinstats_portfolio_sync"
COINSTATS_CONN_ID = "coinstats_default"
WAREHOUSE_CONN_ID = "coinstats_warehouse"
# Every CoinStats-calling task takes a slot of this pool (create it: airflow_settings.yaml / load_settings).
POOL = os.environ.get("COINSTATS_POOL", "coinstats_api")
# The Params' JSON Schema dialect. Airflow checks each Param's schema against its dialect's meta-schema
# dozens of times per parse; draft-07's is a quarter of the cost of the default 2020-12 one.
DRAFT_07: dict[str, Any] = {"$schema": "http://json-schema.org/draft-07/schema#"}
# One Asset per warehouse table (SQLite or PostgreSQL), so downstream DAGs can be scheduled on the data.
ASSETS = {dataset: Asset(name=table) for dataset, table in DATASET_TABLES.items()}

with DAG(
    dag_id=DAG_ID,
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["coinstats"],
    doc_md=__doc__,
    render_template_as_native_obj=True,
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=1)},
    params={
        "exchange_conn_ids": Param(
            [],
            type="array",
            items={"type": "string", "pattern": r"^[A-Za-z0-9_.\-]+$"},
            title="Exchange connections",
            description="coinstats_exchange connection ids to sync. Empty: the Variable "
            "coinstats_exchange_conn_ids (a JSON list) is used.",
            **DRAFT_07,
        ),
        "datasets": Param(
            list(DEFAULT_DATASETS),
            type="array",
            items={"type": "string", "enum": list(DATASETS)},
            minItems=1,
            uniqueItems=True,
            title="Datasets",
            description="What to extract and load for each portfolio. Credits per portfolio and run: value 10, "
            "coins 8 a page, transactions 4 a page, chart 10, defi 400 (wallets only), snapshot 500 a page.",
            **DRAFT_07,
        ),
        "chart_type": Param(
            DEFAULT_CHART_TYPE,
            type="string",
            enum=list(CHART_TYPES),
            title="Chart type",
            description="Range of the chart dataset (GET /portfolio/chart?type=...).",
            **DRAFT_07,
        ),
        "sync_timeout_minutes": Param(
            30,
            type="number",
            minimum=0.05,
            maximum=24 * 60,
            title="Sync wait timeout (minutes)",
            description="How long to wait for CoinStats to finish syncing a portfolio.",
            **DRAFT_07,
        ),
        "sync_poll_seconds": Param(
            30,
            type="number",
            minimum=0.1,
            maximum=3600,
            title="Sync status poll interval (seconds)",
            description="Each status poll costs 3 credits.",
            **DRAFT_07,
        ),
        "credit_budget": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            title="Credit budget of the run",
            description="Fail before any call that would spend more CoinStats credits than this. Empty: no cap.",
            **DRAFT_07,
        ),
        "deferrable": Param(
            True,
            type="boolean",
            title="Wait in the triggerer",
            description="Off: poll on the worker (for deployments without a triggerer).",
            **DRAFT_07,
        ),
    },
) as dag:

    @task
    def resolve_accounts() -> list[str]:
        """This run's batch of exchange connections (Param, else the Variable, read now, not at parse time).

        More accounts than one run can map ([core] max_map_length) are not an error: the rest is pushed as
        XCom ``remaining`` and handed to a follow-up run by ``continue_with_remaining_accounts``.
        """
        from airflow.sdk import Variable, conf

        context = get_current_context()
        params = context["params"]
        with failing_fast("Resolving the exchange accounts"):
            conn_ids = pipeline.resolve_accounts(
                params["exchange_conn_ids"], lambda: Variable.get(pipeline.ACCOUNTS_VARIABLE, default=None)
            )
            batch, remaining = pipeline.split_batch(conn_ids, conf.getint("core", "max_map_length", fallback=1024))
            pipeline.check_budget_covers(params["credit_budget"], len(batch), params["datasets"])
            plan, costly = pipeline.cost_plan(len(batch), params["datasets"], params["credit_budget"])
        print(f"WARNING: {plan}" if costly else plan)
        if remaining:
            print(f"{len(conn_ids)} accounts: this run syncs {len(batch)}, a follow-up run the other {len(remaining)}")
        context["ti"].xcom_push(key="remaining", value=remaining)
        return batch

    @task
    def remaining_accounts_conf() -> dict[str, Any]:
        """Conf of the follow-up run for the accounts this run could not map; skipped when there are none."""
        context = get_current_context()
        remaining = context["ti"].xcom_pull(task_ids="resolve_accounts", key="remaining")
        if not remaining:
            raise AirflowSkipException("Every account fits into this run.")
        return {**{key: context["params"][key] for key in context["params"]}, "exchange_conn_ids": remaining}

    accounts = resolve_accounts()
    follow_up_conf = remaining_accounts_conf()
    accounts >> follow_up_conf  # it reads the XCom "remaining" that resolve_accounts pushes
    # With max_active_runs=1 the follow-up run starts when this one has finished.
    TriggerDagRunOperator(
        task_id="continue_with_remaining_accounts",
        trigger_dag_id=DAG_ID,
        conf=follow_up_conf,  # type: ignore[arg-type]
    )
    connect = ConnectExchangePortfolioOperator.partial(
        task_id="connect_exchange_portfolio", coinstats_conn_id=COINSTATS_CONN_ID, pool=POOL
    ).expand(exchange_conn_id=accounts)

    @task
    def register_portfolios(exchange_conn_ids: list[str], portfolio_ids: list[str]) -> list[dict[str, Any]]:
        """Write coinstats_portfolios and plan each portfolio's share of the credit budget."""
        context = get_current_context()
        ti, params = context["ti"], context["params"]

        def connect_result(index: int, key: str) -> Any:
            return ti.xcom_pull(task_ids="connect_exchange_portfolio", key=key, map_indexes=index)

        with failing_fast("Registering the portfolios"):
            records = pipeline.register_portfolios(
                WAREHOUSE_CONN_ID,
                [
                    {
                        "exchange_conn_id": conn_id,
                        "portfolio_id": portfolio_id,
                        **{key: connect_result(index, key) for key in ("connection_id", "status", "credits_spent")},
                    }
                    for index, (conn_id, portfolio_id) in enumerate(zip(exchange_conn_ids, portfolio_ids, strict=True))
                ],
            )
            sync_budget, load_budget = pipeline.plan_dataset_budgets(
                params["credit_budget"],
                sum(r["credits_spent"] for r in records),
                len({r["portfolio_id"] for r in records}),
                params["datasets"],
                params["sync_timeout_minutes"] * 60,
                params["sync_poll_seconds"],
            )
        ti.xcom_push(key="accounts", value=records)
        return pipeline.portfolio_work(records, sync_budget, load_budget)

    registered = register_portfolios(accounts, connect.output)  # type: ignore[arg-type]

    @task_group(group_id="portfolio")
    def sync_and_load(
        portfolio_id: str, sync_budget: int | None, load_budget: dict[str, int] | None, kind: str = "exchange"
    ) -> None:
        """Sync one portfolio, then load each selected dataset."""
        sync = SyncPortfolioOperator(
            task_id="sync",
            portfolio_id=portfolio_id,
            coinstats_conn_id=COINSTATS_CONN_ID,
            sync_timeout="{{ params.sync_timeout_minutes * 60 }}",
            poll_interval="{{ params.sync_poll_seconds }}",
            credit_budget=sync_budget,
            deferrable="{{ params.deferrable }}",
            pool=POOL,
        )
        for dataset in DATASETS:
            load = LoadPortfolioOperator(
                task_id=f"load_{dataset}",
                portfolio_id=portfolio_id,
                dataset=dataset,
                datasets="{{ params.datasets }}",
                coinstats_conn_id=COINSTATS_CONN_ID,
                warehouse_conn_id=WAREHOUSE_CONN_ID,
                credit_budget=load_budget,
                chart_type="{{ params.chart_type }}",
                portfolio_kind=kind,
                outlets=[ASSETS[dataset]],
                pool=POOL,
            )
            sync >> load

    sync_and_load.expand_kwargs(registered)

    def group_results(task_id: str) -> Any:  # an XComArg, typed as what the summary receives
        """The return values of one task of the ``portfolio`` group over every portfolio.

        :param task_id: The task's id inside the group.
        """
        return XComArg(dag.get_task(f"portfolio.{task_id}"))

    @task(trigger_rule="none_failed", multiple_outputs=False)
    def summary(syncs: list[Any], loads: list[Any]) -> dict[str, Any]:
        """Per portfolio: connected/existing, rows per table, credits; and the run's credit total."""
        ti = get_current_context()["ti"]
        accounts = ti.xcom_pull(task_ids="register_portfolios", key="accounts")
        result = pipeline.summarize(accounts, syncs, loads)
        print(pipeline.format_summary(result))
        return result

    summary(group_results("sync"), [group_results(f"load_{dataset}") for dataset in DATASETS])
