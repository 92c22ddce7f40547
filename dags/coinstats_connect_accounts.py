"""Connect several exchange accounts to CoinStats and hand their portfolioIds downstream.

Each exchange account is one ``coinstats_exchange`` connection; the operator is mapped over them.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator

EXCHANGE_CONN_IDS = [
    "coinstats_exchange_binance",
    "coinstats_exchange_okx",
    "coinstats_exchange_kraken",
]

with DAG(
    dag_id="coinstats_connect_accounts",
    schedule=None,
    catchup=False,
    tags=["coinstats", "example"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=1)},
):
    connect = ConnectExchangePortfolioOperator.partial(
        task_id="connect_exchange_portfolio",
        coinstats_conn_id="coinstats_default",
    ).expand(exchange_conn_id=EXCHANGE_CONN_IDS)

    @task
    def report_portfolios(ids: list[str]) -> list[str]:
        """Receive every mapped portfolioId as one list."""
        for portfolio_id in ids:
            print(f"CoinStats portfolio ready: {portfolio_id}")
        return sorted(ids)

    report_portfolios(connect.output)
