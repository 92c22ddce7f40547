"""Airflow's own floor for ``coinstats_portfolio_sync``: a DAG of the same shape whose tasks do nothing.

Same task ids, mapping, pool, retries and trigger rules as the real DAG: ``resolve_accounts`` →
``connect_exchange_portfolio`` (mapped over the accounts, pool ``coinstats_api``) → ``register_portfolios``
→ the mapped ``portfolio`` group (``sync``, which defers once to a trigger that fires at once, as the real
sync defers once to the triggerer, then ``load_value`` / ``load_coins`` / ``load_transactions``, all in
the pool) → ``summary``; plus ``remaining_accounts_conf`` (skipped) and
``continue_with_remaining_accounts`` (skipped with it). No task calls CoinStats or touches the warehouse:
the run's wall time is what Airflow itself needs for this many task instances and executions.

``bench/load_accounts.py --dag both`` deploys this file beside ``dags/`` and runs it back to back with the
real DAG on the same stack. It is not part of the project's DAGs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import DAG, BaseOperator, Context, Param, XComArg, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowSkipException

DAG_ID = "coinstats_load_floor"
POOL = "coinstats_api"


class DeferOnceOperator(BaseOperator):
    """Defers once to a trigger that fires immediately, then returns: the real sync's two executions."""

    def execute(self, context: Context) -> None:
        """Hand the task to the triggerer.

        :param context: The task context.
        """
        self.defer(trigger=TimeDeltaTrigger(dt.timedelta(0)), method_name="execute_complete")

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

    @task(pool=POOL)
    def connect_exchange_portfolio(exchange_conn_id: str) -> str:
        """A portfolio id made from the connection id.

        :param exchange_conn_id: The account.
        """
        return f"floor-{exchange_conn_id}"

    portfolio_ids = connect_exchange_portfolio.expand(exchange_conn_id=accounts)

    @task
    def register_portfolios(exchange_conn_ids: list[str], portfolio_ids: list[str]) -> list[dict[str, Any]]:
        """The per-portfolio kwargs of the group, as the real task returns them.

        :param exchange_conn_ids: The accounts.
        :param portfolio_ids: Their portfolio ids.
        """
        return [{"portfolio_id": pid, "sync_budget": None, "load_budget": None} for pid in portfolio_ids]

    @task_group(group_id="portfolio")
    def sync_and_load(portfolio_id: str, sync_budget: int | None, load_budget: int | None) -> None:
        """One deferring no-op, then three no-op loads.

        :param portfolio_id: The portfolio.
        :param sync_budget: Unused.
        :param load_budget: Unused.
        """
        sync = DeferOnceOperator(task_id="sync", pool=POOL)
        for dataset in ("value", "coins", "transactions"):

            @task(task_id=f"load_{dataset}", pool=POOL)
            def load(portfolio_id: str) -> dict[str, Any]:
                return {"portfolio_id": portfolio_id, "rows": 0, "credits": 0}

            sync >> load(portfolio_id)

    sync_and_load.expand_kwargs(register_portfolios(accounts, portfolio_ids))  # type: ignore[arg-type]

    @task(trigger_rule="none_failed")
    def summary(syncs: list[Any], values: list[Any], coins: list[Any], transactions: list[Any]) -> dict[str, Any]:
        """How many results came back.

        :param syncs: The syncs' results.
        :param values: The value loads' results.
        :param coins: The coin loads' results.
        :param transactions: The transaction loads' results.
        """
        return {"portfolios": len(list(syncs)), "total_credits": 0}

    def group_results(task_id: str) -> Any:  # an XComArg, typed as what the summary receives
        """The return values of one task of the ``portfolio`` group over every portfolio.

        :param task_id: The task's id inside the group.
        """
        return XComArg(dag.get_task(f"portfolio.{task_id}"))

    summary(*(group_results(name) for name in ("sync", "load_value", "load_coins", "load_transactions")))
