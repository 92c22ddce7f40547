"""`coinstats_portfolio_sync` with a wallet next to an exchange, then off-boarding, in real `dag.test()` runs.

Run 1 syncs an exchange and a wallet (one Param, two connect operators by connection type), run 2 drops
the wallet from the list with ``prune_removed_accounts`` on: the wallet's portfolio (created by this DAG)
is deleted on the sandbox and marked in ``coinstats_portfolios``; a portfolio registered as ``existing``
(not created by this DAG) whose account left the list is marked removed but never deleted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coinstats_provider.hooks.coinstats import CoinStatsHook
from include.coinstats_sandbox import SandboxConfig, SandboxServer
from include.coinstats_sandbox.data import portfolio_id, wallet_portfolio_id
from tests.conftest import CANARIES, ROOT, assert_no_canary, set_connection
from tests.integration.test_pipeline_e2e import states, summary_of, xcoms

pytestmark = pytest.mark.slow

DAG_ID = "coinstats_portfolio_sync"
EXCHANGE = "coinstats_exchange_binance"
WALLET = "coinstats_wallet_eth"
OTHER = "coinstats_exchange_kraken"
ADDRESS = "0x" + "c0ffee00" * 5


@pytest.fixture(scope="module")
def dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exchange_conn: Any) -> Iterator[SandboxServer]:
    config = SandboxConfig(api_keys=(CANARIES["api_key"],), sync_seconds=0.3, transactions=60, quiet=True)
    with SandboxServer(config) as server:
        set_connection(
            monkeypatch,
            "coinstats_default",
            conn_type="coinstats",
            host=server.base_url,
            password=CANARIES["api_key"],
            extra={"timeout": 2, "max_retries": 3, "backoff_base": 0.01, "backoff_max": 0.05},
        )
        set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(tmp_path / "wh.db"))
        set_connection(
            monkeypatch,
            WALLET,
            conn_type="coinstats_wallet",
            login=ADDRESS,
            extra={"connection_id": "ethereum", "portfolio_name": "Cold wallet"},
        )
        exchange_conn(EXCHANGE, "binance")
        exchange_conn(OTHER, "kraken")
        yield server


def portfolios(path: Path) -> dict[str, dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return {row["portfolio_id"]: dict(row) for row in db.execute("SELECT * FROM coinstats_portfolios")}
    finally:
        db.close()


def test_wallet_and_exchange_then_prune(
    airflow_db: Path, dag: Any, sandbox: SandboxServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Worker polling: every poll is counted as made (a trigger resumed late counts the polls it may have missed).
    conf = {"sync_poll_seconds": 0.2, "sync_timeout_minutes": 1, "datasets": ["value", "coins"], "deferrable": False}
    wallet_pid = wallet_portfolio_id(CANARIES["api_key"], "ethereum", ADDRESS)
    exchange_pid = portfolio_id(CANARIES["api_key"], "binance", CANARIES["exchange_key"], CANARIES["exchange_secret"])
    kraken_pid = portfolio_id(CANARIES["api_key"], "kraken", CANARIES["exchange_key"], CANARIES["exchange_secret"])
    # A portfolio that existed before this DAG saw it: its first connect by the DAG answers "existing".
    CoinStatsHook().connect_exchange_portfolio(
        "kraken", {"apiKey": CANARIES["exchange_key"], "apiSecret": CANARIES["exchange_secret"]}
    )

    first = dag.test(run_conf={**conf, "account_conn_ids": [EXCHANGE, WALLET, OTHER]})

    assert first.state == "success", states(first)
    summary = summary_of(first)
    by_pid = {p["portfolio_id"]: p for p in summary["portfolios"]}
    assert set(by_pid) == {exchange_pid, wallet_pid, kraken_pid}
    assert by_pid[wallet_pid]["connection_id"] == "ethereum"
    assert by_pid[wallet_pid]["rows"]["coinstats_portfolio_values"] == 1
    assert summary["total_credits"] == sandbox.stats()["credits_used"] - 10  # the pre-existing kraken connect
    # The wallet costs its own calls only: blockchain list (1) + connect (40) + what any portfolio costs.
    assert sandbox.stats()["credits_by_path"]["POST /portfolio/wallet"] == 40
    rows = portfolios(tmp_path / "wh.db")
    assert rows[wallet_pid]["kind"] == "wallet"
    assert rows[wallet_pid]["account_conn_id"] == WALLET
    assert rows[wallet_pid]["exchange_conn_id"] is None
    assert rows[wallet_pid]["created_by"] == DAG_ID
    assert (rows[exchange_pid]["kind"], rows[exchange_pid]["created_by"]) == ("exchange", DAG_ID)
    assert rows[kraken_pid]["created_by"] is None  # CoinStats answered "existing": not created here
    # Per-portfolio tasks are labelled by their account, the short portfolio id beside it.
    labels = {ti.rendered_map_index for ti in first.get_task_instances() if ti.task_id == "portfolio.sync"}
    assert f"{WALLET} ({wallet_pid[:8]})" in labels
    assert f"{EXCHANGE} ({exchange_pid[:8]})" in labels
    first_out = capfd.readouterr()
    assert ADDRESS not in first_out.out + first_out.err  # the address is personal: shown shortened only

    before = sandbox.stats()["credits_used"]
    second = dag.test(run_conf={**conf, "account_conn_ids": [EXCHANGE], "prune_removed_accounts": True})

    assert second.state == "success", states(second)
    assert not sandbox.app.has_portfolio(wallet_pid)
    assert sandbox.app.has_portfolio(kraken_pid)  # never deletes a portfolio this DAG did not create
    assert sandbox.app.has_portfolio(exchange_pid)
    pruned = summary_of(second)["pruned"]
    assert pruned == [{"portfolio_id": wallet_pid, "account": WALLET, "deleted": True, "credits_spent": 10}]
    assert summary_of(second)["total_credits"] == sandbox.stats()["credits_used"] - before
    assert sandbox.stats()["credits_by_path"]["DELETE /portfolio/{portfolioId}"] == 10
    rows = portfolios(tmp_path / "wh.db")
    assert rows[wallet_pid]["removed_at"]
    assert rows[wallet_pid]["deleted_at"]
    assert rows[kraken_pid]["removed_at"]
    assert rows[kraken_pid]["deleted_at"] is None
    assert rows[exchange_pid]["removed_at"] is None
    assert xcoms(second)[("register_portfolios", -1, "prune")] == [{"portfolio_id": wallet_pid, "account": WALLET}]
    out = capfd.readouterr()
    assert_no_canary(out.out, out.err)
