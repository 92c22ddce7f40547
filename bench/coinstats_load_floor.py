"""Airflow's own floor for ``coinstats_portfolio_sync``: a DAG of the same shape whose tasks do nothing.

Same task ids, mapping, pool, retries and trigger rules as the real DAG: ``resolve_accounts`` →
``connect_exchange_portfolio`` (mapped over the accounts, pool ``coinstats_api``) and
``connect_wallet_portfolio`` (mapped over ``wallet_accounts``: none) → ``register_portfolios`` →
``portfolios_to_prune`` → ``prune_removed_portfolio`` (mapped over none) → ``record_pruned``; the branch
``select_datasets``; the mapped ``portfolio`` group (``sync``, which defers once for one poll interval, as
the real sync defers once to the triggerer, then one load per dataset, all in the pool, the unselected
ones skipped by the scheduler) → ``summary``; plus ``remaining_accounts_conf`` (skipped) and
``continue_with_remaining_accounts`` (skipped with it). No task calls CoinStats or touches the warehouse:
the run's wall time is what Airflow itself needs for this many task instances and executions.

``bench/load_accounts.py --dag both`` deploys this file beside ``dags/`` and runs it back to back with the
real DAG on the same stack. It is not part of the project's DAGs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import DAG, BaseOperator, Context, Param, XComArg, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowSkipException

from coinstats_provider.warehouse.schema import DATASETS, DEFAULT_DATASETS

DAG_ID = "coinstats_load_floor"
POOL = "coinstats_api"


class DeferOnceOperator(BaseOperator):
    """Defers once for one poll interval, then returns: the real sync's two executions and its first poll.

    :param poll_seconds: How long the trigger waits (the real sync's first status poll comes after one
        interval; a trigger that fires at once would also hit Airflow's race on resumed deferred tasks,
        apache/airflow#67287, far more often than a real sync does).
    """

    template_fields: Sequence[str] = ("poll_seconds",)

    def __init__(self, *, poll_seconds: float | str = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poll_seconds = poll_seconds

    def execute(self, context: Context) -> None:
        """Hand the task to the triggerer.

        :param context: The task context.
        """
        wait = dt.timedelta(seconds=float(self.poll_seconds))
        self.defer(trigger=TimeDeltaTrigger(wait), method_name="execute_complete")

    def execute_complete(self, context: Context, event: Any = None) -> dict[str, Any]:
        """Resume after the trigger fired.

        :param context: The task context.
        :param event: The trigger's event.
        """
        return {"credits": 0}


with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["coinstats", "bench"],
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=1)},
    params={
        "exchange_conn_ids": Param([], type="array"),
        "sync_poll_seconds": Param(30, type="number"),
        "datasets": Param(list(DEFAULT_DATASETS), type="array"),
    },
) as dag:

    @task
    def resolve_accounts() -> list[str]:
        """The accounts from the Param, as they are."""
        return list(get_current_context()["params"]["exchange_conn_ids"])

    @task
    def remaining_accounts_conf() -> dict[str, Any]:
        """Always skipped: every account fits into this run."""
        raise AirflowSkipException("Every account fits into this run.")

    accounts = resolve_accounts()
    follow_up = remaining_accounts_conf()
    accounts >> follow_up
    follow_up >> EmptyOperator(task_id="continue_with_remaining_accounts")

    @task
    def wallet_accounts() -> list[str]:
        """No wallets: the wallet connect maps to zero tasks, as in a run of exchanges only."""
        return []

    wallets = wallet_accounts()
    accounts >> wallets

    @task(pool=POOL)
    def connect_exchange_portfolio(exchange_conn_id: str) -> str:
        """A portfolio id made from the connection id.

        :param exchange_conn_id: The account.
        """
        return f"floor-{exchange_conn_id}"

    @task(pool=POOL)
    def connect_wallet_portfolio(wallet_conn_id: str) -> str:
        """Never runs (zero wallets).

        :param wallet_conn_id: The wallet.
        """
        return f"floor-{wallet_conn_id}"

    portfolio_ids = connect_exchange_portfolio.expand(exchange_conn_id=accounts)
    wallet_portfolios = connect_wallet_portfolio.expand(wallet_conn_id=wallets)

    @task(trigger_rule="none_failed")
    def register_portfolios(
        exchange_conn_ids: list[str], portfolio_ids: list[str], wallet_conn_ids: list[str], wallet_portfolios: Any
    ) -> list[dict[str, Any]]:
        """The per-portfolio kwargs of the group, as the real task returns them.

        :param exchange_conn_ids: The accounts.
        :param portfolio_ids: Their portfolio ids.
        :param wallet_conn_ids: The wallets (none).
        :param wallet_portfolios: Their portfolio ids (none).
        """
        return [
            {"portfolio_id": pid, "sync_budget": None, "load_budget": None, "kind": "exchange", "account": conn_id}
            for conn_id, pid in zip(exchange_conn_ids, portfolio_ids, strict=True)
        ]

    registered = register_portfolios(accounts, portfolio_ids, wallets, wallet_portfolios)  # type: ignore[arg-type]

    @task
    def portfolios_to_prune() -> list[dict[str, str]]:
        """Nothing to prune: the prune task maps to zero tasks."""
        return []

    to_prune = portfolios_to_prune()
    registered >> to_prune

    @task(pool=POOL)
    def prune_removed_portfolio(portfolio_id: str) -> None:
        """Never runs (nothing to prune).

        :param portfolio_id: The portfolio.
        """

    pruned = prune_removed_portfolio.expand_kwargs(to_prune)

    @task(trigger_rule="none_failed")
    def record_pruned(results: Any) -> list[dict[str, Any]]:
        """Nothing was pruned.

        :param results: The prune tasks' results (none).
        """
        return []

    recorded = record_pruned(pruned)

    @task.branch
    def select_datasets() -> list[str]:
        """The selected datasets' loads, as the real branch returns them; the others are skipped unstarted."""
        selected = get_current_context()["params"]["datasets"]
        return [f"portfolio.load_{dataset}" for dataset in DATASETS if dataset in selected]

    selected = select_datasets()
    accounts >> selected

    @task_group(group_id="portfolio")
    def sync_and_load(
        portfolio_id: str, sync_budget: int | None, load_budget: int | None, kind: str, account: str
    ) -> None:
        """One deferring no-op, then one no-op load per dataset.

        :param portfolio_id: The portfolio.
        :param sync_budget: Unused.
        :param load_budget: Unused.
        :param kind: Unused.
        :param account: Unused.
        """
        sync = DeferOnceOperator(task_id="sync", pool=POOL, poll_seconds="{{ params.sync_poll_seconds }}")
        for dataset in DATASETS:

            @task(task_id=f"load_{dataset}", pool=POOL)
            def load(portfolio_id: str) -> dict[str, Any]:
                return {"portfolio_id": portfolio_id, "rows": 0, "credits": 0}

            [sync, selected] >> load(portfolio_id)

    sync_and_load.expand_kwargs(registered)

    @task(trigger_rule="none_failed")
    def summary(syncs: list[Any], loads: list[Any]) -> dict[str, Any]:
        """How many results came back.

        :param syncs: The syncs' results.
        :param loads: The loads' results, one list per dataset.
        """
        return {"portfolios": len(list(syncs)), "total_credits": 0}

    def group_results(task_id: str) -> Any:  # an XComArg, typed as what the summary receives
        """The return values of one task of the ``portfolio`` group over every portfolio.

        :param task_id: The task's id inside the group.
        """
        return XComArg(dag.get_task(f"portfolio.{task_id}"))

    recorded >> summary(group_results("sync"), [group_results(f"load_{dataset}") for dataset in DATASETS])
