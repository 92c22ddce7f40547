"""OpenLineage facets of the operators: datasets, namespaces, schema and row counts, no secrets, no cost.

The facets are built the way Airflow's OpenLineage provider asks for them (``get_openlineage_facets_on_complete``
on the finished operator) and serialised with OpenLineage's own serde, as a transport would send them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coinstats_provider.openlineage import coinstats_namespace, warehouse_location
from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator
from coinstats_provider.operators.load import LoadPortfolioOperator
from coinstats_provider.operators.sync import SyncPortfolioOperator
from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS, spec
from tests.conftest import CANARIES, ROOT, set_connection
from tests.helpers.lineage import assert_no_canary_fragment, secret_fragments

PID = "pf-77"


def serialised(lineage: Any) -> str:
    """The lineage's datasets as the OpenLineage client serialises them for a transport."""
    from openlineage.client.serde import Serde

    return json.dumps([Serde.to_dict(d) for d in [*lineage.inputs, *lineage.outputs]])


@pytest.fixture
def sqlite_warehouse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "wh.db"
    set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(path))
    return path


@pytest.mark.parametrize(
    ("base_url", "namespace"),
    [
        ("https://openapiv1.coinstats.app", "coinstats://openapiv1.coinstats.app"),
        ("http://127.0.0.1:8765", "coinstats://127.0.0.1:8765"),
        ("https://proxy.example.com:8443/coinstats", "coinstats://proxy.example.com:8443"),
        ("http://[::1]:8765", "coinstats://[::1]:8765"),
    ],
)
def test_coinstats_namespace_is_host_and_port(base_url: str, namespace: str) -> None:
    assert coinstats_namespace(base_url) == namespace


@pytest.mark.parametrize("dataset", DATASETS)
def test_load_reports_endpoint_in_and_table_out_with_schema_and_rows(
    coinstats_conn: Any, sqlite_warehouse: Path, dataset: str
) -> None:
    op = LoadPortfolioOperator(task_id=f"load_{dataset}", portfolio_id=PID, dataset=dataset)
    op._lineage_rows = 42  # what execute records after a load
    lineage = op.get_openlineage_facets_on_complete(None)

    [source] = lineage.inputs
    assert (source.namespace, source.name) == ("coinstats://openapiv1.coinstats.app", f"portfolio/{PID}/{dataset}")
    [table] = lineage.outputs
    assert (table.namespace, table.name) == (f"sqlite://{sqlite_warehouse}", DATASET_TABLES[dataset])
    layout = spec(DATASET_TABLES[dataset])
    assert [(f.name, f.type) for f in table.facets["schema"].fields] == [
        (column, layout.sql_type(column_type, "sqlite")) for column, column_type in layout.columns
    ]
    assert table.outputFacets["outputStatistics"].rowCount == 42
    assert_no_canary_fragment(serialised(lineage))


def test_load_without_rows_has_no_statistics(coinstats_conn: Any, sqlite_warehouse: Path) -> None:
    op = LoadPortfolioOperator(task_id="load_value", portfolio_id=PID, dataset="value")
    [table] = op.get_openlineage_facets_on_complete(None).outputs
    assert table.outputFacets == {}


def test_load_execute_records_the_rows_it_wrote(coinstats_conn: Any, sqlite_warehouse: Path) -> None:
    import responses

    from tests.conftest import BASE_URL

    op = LoadPortfolioOperator(task_id="load_value", portfolio_id=PID, dataset="value")

    class TI:
        def xcom_push(self, key: str, value: Any) -> None: ...

    with responses.RequestsMock() as mock:
        mock.get(BASE_URL + "/portfolio/value", json={"totalValue": 5, "defiValue": 0, "totalCost": 1})
        op.execute({"ti": TI()})  # type: ignore[typeddict-item]
    [table] = op.get_openlineage_facets_on_complete(None).outputs
    assert table.outputFacets["outputStatistics"].rowCount == 1


def test_connect_reports_exchange_in_portfolio_out_and_no_credential(coinstats_conn: Any, exchange_conn: Any) -> None:
    exchange_conn("coinstats_exchange_okx", "okx", passphrase=CANARIES["passphrase"])
    op = ConnectExchangePortfolioOperator(task_id="connect", exchange_conn_id="coinstats_exchange_okx")
    assert op.get_openlineage_facets_on_complete(None) is None  # nothing connected yet: nothing to report
    op._lineage_ids = ("okx", PID)
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("coinstats://openapiv1.coinstats.app", "exchange/okx")]
    assert [d.name for d in lineage.outputs] == [f"portfolio/{PID}"]
    assert_no_canary_fragment(serialised(lineage))


def test_sync_reports_portfolio_in_and_its_datasets_out(coinstats_conn: Any) -> None:
    lineage = SyncPortfolioOperator(task_id="sync", portfolio_id=PID).get_openlineage_facets_on_complete(None)
    assert [d.name for d in lineage.inputs] == [f"portfolio/{PID}"]
    assert [d.name for d in lineage.outputs] == [f"portfolio/{PID}/{d}" for d in DATASETS]
    assert_no_canary_fragment(serialised(lineage))


def test_postgres_names_follow_the_postgres_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    set_connection(
        monkeypatch,
        "wh_pg",
        conn_type="postgres",
        host="db.internal",
        login="etl",
        password=CANARIES["api_key"],
        schema="analytics",
    )
    # The current schema is what PostgreSQL reports (a query); the rest comes from the connection.
    monkeypatch.setattr(PostgresHook, "get_openlineage_default_schema", lambda self: "reporting")
    location = warehouse_location("wh_pg")
    assert location.namespace == "postgres://db.internal:5432"
    assert location.name("coinstats_portfolio_values") == "analytics.reporting.coinstats_portfolio_values"
    assert location.dialect == "postgres"
    assert_no_canary_fragment(repr(location))


def test_fragment_check_catches_a_partial_leak() -> None:
    leaked = "namespace coinstats://x name " + CANARIES["exchange_secret"][5:14]
    with pytest.raises(AssertionError, match="leaked"):
        assert_no_canary_fragment(leaked)
    assert len(secret_fragments(["abcdefghij"])) == 3


#: Hides the OpenLineage provider and client (their modules and their distributions, as if never installed),
#: then imports every provider module and parses the DAGs.
_HIDDEN = """
import importlib, importlib.metadata, pkgutil, sys
import importlib_metadata


def without_openlineage(find):
    def distributions(**kwargs):
        for dist in find(**kwargs):
            name = (dist.metadata["Name"] or "").lower().replace("_", "-")
            if not (name.startswith("openlineage") or name == "apache-airflow-providers-openlineage"):
                yield dist
    return distributions


for metadata in (importlib.metadata, importlib_metadata):
    metadata.distributions = without_openlineage(metadata.distributions)

class HideOpenLineage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "openlineage" or name.startswith("airflow.providers.openlineage"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)")
        return None

sys.meta_path.insert(0, HideOpenLineage())
import coinstats_provider
for module in pkgutil.walk_packages(coinstats_provider.__path__, "coinstats_provider."):
    importlib.import_module(module.name)
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert bag.import_errors == {}, bag.import_errors
assert len(bag.dags) >= 2, sorted(bag.dags)
loaded = sorted(n for n in sys.modules if n.split(".")[0] == "openlineage" or "providers.openlineage" in n)
assert not loaded, loaded
print("ok", len(bag.dags))
"""

#: With OpenLineage installed: importing the operators and parsing the DAGs imports none of it.
_INSTALLED = """
import sys
import airflow.sdk
before = {n for n in sys.modules if n.split(".")[0] == "openlineage" or "providers.openlineage" in n}
import coinstats_provider.openlineage, coinstats_provider.operators.load, coinstats_provider.operators.connect
import coinstats_provider.operators.sync
import runpy
for dag_file in sys.argv[1:]:
    runpy.run_path(dag_file)
after = {n for n in sys.modules if n.split(".")[0] == "openlineage" or "providers.openlineage" in n}
assert after == before, sorted(after - before)
print("ok")
"""


def python(script: str, *args: str) -> str:
    """Run ``script`` in a fresh interpreter of this venv; return its stdout (fail with its stderr)."""
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_without_the_openlineage_provider_everything_imports_and_parses() -> None:
    assert python(_HIDDEN, str(ROOT / "dags")).splitlines()[-1].startswith("ok")


def test_operators_and_dags_import_no_openlineage_code() -> None:
    assert python(_INSTALLED, *sorted(str(p) for p in (ROOT / "dags").glob("*.py"))).splitlines()[-1] == "ok"
