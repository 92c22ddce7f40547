"""OpenLineage on the real path: ``airflow dags test coinstats_portfolio_sync`` with the file transport.

The OpenLineage provider is configured only through environment variables (``[openlineage] transport``),
exactly as a deployment would; the events it writes are read back and checked: CoinStats datasets in,
warehouse tables out with their schema and row counts, and no secret anywhere.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS, DEFAULT_DATASETS, spec
from include.coinstats_sandbox import SandboxConfig, SandboxServer
from tests.conftest import CANARIES, ROOT
from tests.helpers.lineage import assert_no_canary_fragment, completed_datasets, read_events

pytestmark = pytest.mark.slow

DAG_ID = "coinstats_portfolio_sync"
ACCOUNTS = {"coinstats_exchange_binance": "binance", "coinstats_exchange_okx": "okx"}


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    config = SandboxConfig(api_keys=(CANARIES["api_key"],), sync_seconds=0.3, transactions=120, quiet=True)
    with SandboxServer(config) as server:
        yield server


def _env(sandbox: SandboxServer, warehouse: Path, events: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    conns: dict[str, Any] = {
        "coinstats_default": {
            "conn_type": "coinstats",
            "host": sandbox.base_url,
            "password": CANARIES["api_key"],
            "extra": {"timeout": 5, "max_retries": 3, "backoff_base": 0.01, "backoff_max": 0.05},
        },
        "coinstats_warehouse": {"conn_type": "sqlite", "host": str(warehouse)},
    }
    for conn_id, exchange in ACCOUNTS.items():
        extra: dict[str, Any] = {"connection_id": exchange}
        if exchange == "okx":
            extra["passphrase"] = CANARIES["passphrase"]
        conns[conn_id] = {
            "conn_type": "coinstats_exchange",
            "login": CANARIES["exchange_key"],
            "password": CANARIES["exchange_secret"],
            "extra": extra,
        }
    env.update({f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(fields) for conn_id, fields in conns.items()})
    env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps({"type": "file", "log_file_path": str(events), "append": True})
    env["AIRFLOW__OPENLINEAGE__NAMESPACE"] = "coinstats_e2e"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins")])
    return env


def test_dags_test_emits_lineage_without_secrets(airflow_db: Path, sandbox: SandboxServer, tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.db"
    events_file = tmp_path / "openlineage.jsonl"
    conf = {"exchange_conn_ids": list(ACCOUNTS), "sync_poll_seconds": 0.2, "sync_timeout_minutes": 1}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)],
        cwd=ROOT,
        env=_env(sandbox, warehouse, events_file),
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = events_file.read_text()
    events = read_events(events_file)
    # No secret, nor any 8-character piece of one, in any event (nor in what the run printed).
    assert_no_canary_fragment(text)
    assert_no_canary_fragment(proc.stdout + proc.stderr)

    namespace = f"coinstats://127.0.0.1:{urlsplit(sandbox.base_url).port}"
    inputs, outputs = completed_datasets(events, "inputs"), completed_datasets(events, "outputs")
    job = f"{DAG_ID}.connect_exchange_portfolio"
    assert sorted(d["name"] for d in inputs[job]) == [f"exchange/{e}" for e in sorted(ACCOUNTS.values())]
    portfolios = sorted(d["name"].removeprefix("portfolio/") for d in outputs[job])
    assert len(portfolios) == 2
    assert {d["namespace"] for d in inputs[job] + outputs[job]} == {namespace}
    sync_outputs = sorted(d["name"] for d in outputs[f"{DAG_ID}.portfolio.sync"])
    assert sync_outputs == sorted(f"portfolio/{p}/{ds}" for p in portfolios for ds in DATASETS)

    sqlite_namespace = f"sqlite://{warehouse}"
    db = sqlite3.connect(warehouse)
    try:
        for dataset in DEFAULT_DATASETS:  # the run's selection; the opt-in loads are skipped
            table = DATASET_TABLES[dataset]
            job = f"{DAG_ID}.portfolio.load_{dataset}"
            assert sorted(d["name"] for d in inputs[job]) == sorted(f"portfolio/{p}/{dataset}" for p in portfolios)
            assert {d["namespace"] for d in inputs[job]} == {namespace}
            written = [d for d in outputs[job]]
            assert [(d["namespace"], d["name"]) for d in written] == [(sqlite_namespace, table)] * 2
            fields = [(f["name"], f["type"]) for f in written[0]["facets"]["schema"]["fields"]]
            assert fields == [(c, spec(table).sql_type(t, "sqlite")) for c, t in spec(table).columns]
            # rowCount per load = that portfolio's rows in the table; together they are the table.
            row_counts = sorted(d["outputFacets"]["outputStatistics"]["rowCount"] for d in written)
            per_portfolio = sorted(
                n
                for (n,) in db.execute(f"SELECT COUNT(*) FROM {table} GROUP BY portfolio_id")  # noqa: S608
            )
            assert row_counts == per_portfolio
            assert all(n > 0 for n in row_counts)
    finally:
        db.close()
