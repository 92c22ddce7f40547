"""Daily CoinStats portfolio sync: connect exchange accounts and wallets, sync each portfolio, load it once.

``resolve_accounts`` → ``connect_exchange_portfolio`` / ``connect_wallet_portfolio`` (mapped, by connection
type) → ``register_portfolios`` → per portfolio (mapped group, labelled by account): ``sync`` (deferrable
wait) → ``load_value`` / ``load_coins`` / ``load_transactions`` (and
the opt-in ``load_chart`` / ``load_defi`` / ``load_snapshot``; ``select_datasets`` has the scheduler skip
the loads of unselected datasets without starting them) → ``summary``.
Accounts come from the
``account_conn_ids`` Param (and the older ``exchange_conn_ids``) or, when both are empty, from the Variable
``coinstats_account_conn_ids`` (else the older ``coinstats_exchange_conn_ids``) read at run time. Accounts
beyond ``[core] max_map_length`` go to a follow-up run of this DAG (``continue_with_remaining_accounts``).
With ``prune_removed_accounts`` on, portfolios this DAG created for accounts no longer listed are deleted
on CoinStats (``prune_removed_portfolio``) and marked in ``coinstats_portfolios`` (``record_pruned``).
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
from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator, ConnectWalletPortfolioOperator
from coinstats_provider.operators.delete import DeletePortfolioOperator
from coinstats_provider.operators.load import LoadPortfolioOperator
from coinstats_provider.operators.sync import SyncPortfolioOperator
from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS, DEFAULT_DATASETS
from coinstats_provider.warehouse.sync_state import (
    DEFAULT_FULL_EVERY_DAYS,
    DEFAULT_MODE,
    DEFAULT_OVERLAP_HOURS,
    MODES,
)

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
        "account_conn_ids": Param(
            [],
            type="array",
            items={"type": "string", "pattern": r"^[A-Za-z0-9_.\-]+$"},
            title="Accounts",
            description="coinstats_exchange and coinstats_wallet connection ids to sync. Empty: the Variable "
            "coinstats_account_conn_ids (a JSON list) is used, else coinstats_exchange_conn_ids.",
            **DRAFT_07,
        ),
        "exchange_conn_ids": Param(
            [],
            type="array",
            items={"type": "string", "pattern": r"^[A-Za-z0-9_.\-]+$"},
            title="Exchange connections (older name)",
            description="Kept for runs that still pass it: added to Accounts (exchange or wallet ids alike).",
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
        "transactions_mode": Param(
            DEFAULT_MODE,
            type="string",
            enum=list(MODES),
            title="Transactions mode",
            description="full: the whole list every run (the table equals CoinStats after each run). incremental: "
            "only the transactions since the newest one loaded (minus the overlap), inserts and updates only, "
            "with a full reconcile every full_every_days.",
            **DRAFT_07,
        ),
        "transactions_overlap_hours": Param(
            DEFAULT_OVERLAP_HOURS,
            type="number",
            minimum=0,
            maximum=24 * 366,
            title="Incremental overlap (hours)",
            description="An incremental read starts this long before the newest transaction already loaded.",
            **DRAFT_07,
        ),
        "full_every_days": Param(
            DEFAULT_FULL_EVERY_DAYS,
            type="number",
            exclusiveMinimum=0,
            maximum=366,
            title="Full reconcile every (days)",
            description="Incremental mode reads the whole list (and picks up deletions) at least this often.",
            **DRAFT_07,
        ),
        "prune_removed_accounts": Param(
            False,
            type="boolean",
            title="Delete portfolios of removed accounts",
            description="On: delete on CoinStats (10 credits each) the portfolios this DAG created for accounts "
            "no longer listed, and mark them in coinstats_portfolios. Never deletes a portfolio it did not create.",
            **DRAFT_07,
        ),
    },
) as dag:

    @task
    def resolve_accounts() -> list[str]:
        """This run's batch of exchange accounts (Params, else the Variable, read now, not at parse time).

        The batch's wallets go to XCom ``wallet`` (``wallet_accounts`` hands them on). More accounts than one
        run can map ([core] max_map_length) are not an error: the rest is pushed as XCom ``remaining`` and
        handed to a follow-up run by ``continue_with_remaining_accounts``. Every listed account goes to XCom
        ``listed`` (what pruning keeps).
        """
        from airflow.sdk import Variable, conf

        context = get_current_context()
        params = context["params"]
        with failing_fast("Resolving the accounts"):
            conn_ids = pipeline.resolve_account_ids(
                params["account_conn_ids"],
                params["exchange_conn_ids"],
                lambda name: Variable.get(name, default=None),
            )
            batch, remaining = pipeline.split_batch(conn_ids, conf.getint("core", "max_map_length", fallback=1024))
            kinds = pipeline.split_by_kind(batch, _conn_type)
            pipeline.check_budget_covers(
                params["credit_budget"], len(kinds["exchange"]), params["datasets"], wallets=len(kinds["wallet"])
            )
            plan, costly = pipeline.cost_plan(len(batch), params["datasets"], params["credit_budget"])
        print(f"WARNING: {plan}" if costly else plan)
        if remaining:
            print(f"{len(conn_ids)} accounts: this run syncs {len(batch)}, a follow-up run the other {len(remaining)}")
        context["ti"].xcom_push(key="remaining", value=remaining)
        context["ti"].xcom_push(key="listed", value=conn_ids)
        context["ti"].xcom_push(key="wallet", value=kinds["wallet"])
        return kinds["exchange"]

    @task
    def wallet_accounts() -> list[str]:
        """This run's batch of wallet accounts (Airflow maps only over a task's return value)."""
        return list(get_current_context()["ti"].xcom_pull(task_ids="resolve_accounts", key="wallet") or [])

    def _conn_type(conn_id: str) -> str | None:
        """The conn_type of a connection, ``None`` when it does not exist (called at run time only)."""
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return BaseHook.get_connection(conn_id).conn_type
        except AirflowNotFoundException:
            return None

    @task
    def remaining_accounts_conf() -> dict[str, Any]:
        """Conf of the follow-up run for the accounts this run could not map; skipped when there are none."""
        context = get_current_context()
        remaining = context["ti"].xcom_pull(task_ids="resolve_accounts", key="remaining")
        if not remaining:
            raise AirflowSkipException("Every account fits into this run.")
        # The follow-up run only holds part of the list, so it must not prune the accounts it does not see.
        return {
            **{key: context["params"][key] for key in context["params"]},
            "account_conn_ids": remaining,
            "exchange_conn_ids": [],
            "prune_removed_accounts": False,
        }

    accounts = resolve_accounts()
    follow_up_conf = remaining_accounts_conf()
    accounts >> follow_up_conf  # it reads the XCom "remaining" that resolve_accounts pushes
    # With max_active_runs=1 the follow-up run starts when this one has finished.
    TriggerDagRunOperator(
        task_id="continue_with_remaining_accounts",
        trigger_dag_id=DAG_ID,
        conf=follow_up_conf,  # type: ignore[arg-type]
    )

    wallets = wallet_accounts()
    accounts >> wallets
    connect = ConnectExchangePortfolioOperator.partial(
        task_id="connect_exchange_portfolio", coinstats_conn_id=COINSTATS_CONN_ID, pool=POOL
    ).expand(exchange_conn_id=accounts)
    connect_wallets = ConnectWalletPortfolioOperator.partial(
        task_id="connect_wallet_portfolio", coinstats_conn_id=COINSTATS_CONN_ID, pool=POOL
    ).expand(wallet_conn_id=wallets)

    # none_failed: a kind with no account maps to zero connect tasks, which Airflow marks skipped.
    @task(trigger_rule="none_failed")
    def register_portfolios(
        exchange_conn_ids: list[str], portfolio_ids: list[str], wallet_conn_ids: list[str], wallet_portfolios: list[str]
    ) -> list[dict[str, Any]]:
        """Write coinstats_portfolios, pick what to prune and plan each portfolio's share of the credit budget."""
        context = get_current_context()
        ti, params = context["ti"], context["params"]

        def connected(task_id: str, kind: str, conn_ids: list[str], pids: list[str]) -> list[dict[str, Any]]:
            def result(index: int, key: str) -> Any:
                return ti.xcom_pull(task_ids=task_id, key=key, map_indexes=index)

            return [
                {
                    "account": conn_id,
                    "kind": kind,
                    "portfolio_id": portfolio_id,
                    **{key: result(index, key) for key in ("connection_id", "status", "credits_spent")},
                }
                for index, (conn_id, portfolio_id) in enumerate(zip(conn_ids, pids or [], strict=True))
            ]

        with failing_fast("Registering the portfolios"):
            records = pipeline.register_portfolios(
                WAREHOUSE_CONN_ID,
                [
                    *connected("connect_exchange_portfolio", "exchange", exchange_conn_ids, portfolio_ids),
                    *connected("connect_wallet_portfolio", "wallet", wallet_conn_ids, wallet_portfolios),
                ],
                created_by=DAG_ID,
            )
            prune: list[dict[str, str]] = []
            if params["prune_removed_accounts"]:
                listed = ti.xcom_pull(task_ids="resolve_accounts", key="listed") or []
                prune = pipeline.prune_candidates(
                    WAREHOUSE_CONN_ID, DAG_ID, set(listed), {r["portfolio_id"] for r in records}
                )
                print(f"Pruning {len(prune)} portfolio(s) of accounts no longer listed")
            sync_budget, load_budget = pipeline.plan_dataset_budgets(
                params["credit_budget"],
                sum(r["credits_spent"] for r in records) + pipeline.pruning_cost(prune),
                len({r["portfolio_id"] for r in records}),
                params["datasets"],
                params["sync_timeout_minutes"] * 60,
                params["sync_poll_seconds"],
            )
        ti.xcom_push(key="accounts", value=records)
        ti.xcom_push(key="prune", value=prune)
        if "transactions" in params["datasets"]:
            plan_transactions(records, params)
        return pipeline.portfolio_work(records, sync_budget, load_budget)

    def plan_transactions(records: list[Any], params: Any) -> None:
        """Print and push (XCom ``transactions_plan``) which transactions read each portfolio's load plans."""
        with failing_fast("Planning the transactions reads"):
            plan = pipeline.plan_transactions(
                WAREHOUSE_CONN_ID,
                [r["portfolio_id"] for r in records],
                mode=params["transactions_mode"],
                overlap_hours=params["transactions_overlap_hours"],
                full_every_days=params["full_every_days"],
            )
        print(pipeline.format_transactions_plan(plan))
        get_current_context()["ti"].xcom_push(key="transactions_plan", value=plan)

    registered = register_portfolios(accounts, connect.output, wallets, connect_wallets.output)  # type: ignore[arg-type]

    @task
    def portfolios_to_prune() -> list[dict[str, str]]:
        """The portfolios ``register_portfolios`` chose to delete (Airflow maps only over a return value)."""
        return list(get_current_context()["ti"].xcom_pull(task_ids="register_portfolios", key="prune") or [])

    to_prune = portfolios_to_prune()
    registered >> to_prune
    pruned = DeletePortfolioOperator.partial(
        task_id="prune_removed_portfolio",
        coinstats_conn_id=COINSTATS_CONN_ID,
        hook_params={"credit_budget": pipeline.pruning_cost([None])},
        pool=POOL,
    ).expand_kwargs(to_prune)

    @task(trigger_rule="none_failed")
    def record_pruned(results: list[Any]) -> list[dict[str, Any]]:
        """Mark every deleted portfolio in coinstats_portfolios (``deleted_at``)."""
        with failing_fast("Recording the pruned portfolios"):
            return pipeline.record_deletions(WAREHOUSE_CONN_ID, results)

    recorded = record_pruned(pruned.output)  # type: ignore[arg-type]

    @task.branch
    def select_datasets() -> list[str]:
        """The load tasks of the datasets this run selects; Airflow's scheduler skips the others.

        Skipped here, once per run, an unselected load never starts: no worker process and no pool slot
        per portfolio (a load also skips itself when it is not selected, if it is ever started).
        """
        selected = get_current_context()["params"]["datasets"]
        return [f"portfolio.load_{dataset}" for dataset in DATASETS if dataset in selected]

    selected = select_datasets()
    accounts >> selected

    @task_group(group_id="portfolio")
    def sync_and_load(
        portfolio_id: str,
        sync_budget: int | None,
        load_budget: dict[str, int] | None,
        kind: str,
        account: str,
    ) -> None:
        """Sync one portfolio, then load each selected dataset; the tasks are labelled by ``account``."""
        sync = SyncPortfolioOperator(
            task_id="sync",
            portfolio_id=portfolio_id,
            account=account,
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
                account=account,
                chart_type="{{ params.chart_type }}",
                portfolio_kind=kind,
                outlets=[ASSETS[dataset]],
                pool=POOL,
                transactions_mode="{{ params.transactions_mode }}",
                transactions_overlap_hours="{{ params.transactions_overlap_hours }}",
                full_every_days="{{ params.full_every_days }}",
            )
            [sync, selected] >> load

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
        result = pipeline.with_pruned(result, ti.xcom_pull(task_ids="record_pruned"))
        print(pipeline.format_summary(result))
        return result

    recorded >> summary(group_results("sync"), [group_results(f"load_{dataset}") for dataset in DATASETS])
