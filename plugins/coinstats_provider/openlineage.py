"""OpenLineage for the CoinStats operators: their input and output datasets, built only on request.

Airflow's OpenLineage provider calls an operator's ``get_openlineage_facets_on_complete`` after a task
succeeded; the operators delegate here. Nothing in this module imports OpenLineage at import time, so a
deployment without ``apache-airflow-providers-openlineage`` pays nothing for it.

Dataset naming:

- CoinStats: namespace ``coinstats://<host>[:<port>]`` of the connection's base URL (for example
  ``coinstats://openapiv1.coinstats.app``), names ``exchange/<exchange id>``, ``portfolio/<portfolioId>``
  and ``portfolio/<portfolioId>/<dataset>``. A connection's API key, login or exchange credentials never
  appear: the base URL is validated to carry no credentials and only its host and port are used.
- Warehouse tables: the names Airflow's SQL providers use. PostgreSQL: namespace
  ``postgres://<host>:<port>``, name ``<database>.<schema>.<table>`` (from the Postgres hook's own
  OpenLineage methods). SQLite (whose hook names nothing): namespace ``sqlite://<absolute file path>``,
  name ``<table>``. Output tables carry the schema facet (columns and SQL types from
  :mod:`coinstats_provider.warehouse.schema`) and, when known, the output statistics facet (rows written).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS, DECIMAL, Dialect, spec

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset, OutputDataset

__all__ = [
    "WarehouseLocation",
    "coinstats_namespace",
    "connect_lineage",
    "load_lineage",
    "sync_lineage",
    "warehouse_location",
]

SCHEME = "coinstats"


def coinstats_namespace(base_url: str) -> str:
    """The OpenLineage namespace of a CoinStats API: ``coinstats://`` plus the base URL's host and port.

    :param base_url: The validated base URL of the ``coinstats`` connection (no credentials in it).
    """
    parts = urlsplit(base_url)
    host = parts.hostname or "unknown"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{SCHEME}://{host}{f':{parts.port}' if parts.port else ''}"


def portfolio_name(portfolio_id: str, dataset: str | None = None) -> str:
    """Dataset name of a portfolio, or of one of its datasets (``value``, ``coins``, ``transactions``).

    :param portfolio_id: The CoinStats portfolioId.
    :param dataset: One of :data:`~coinstats_provider.warehouse.schema.DATASETS`, or ``None``.
    """
    return f"portfolio/{portfolio_id}" + (f"/{dataset}" if dataset else "")


@dataclass(frozen=True)
class WarehouseLocation:
    """Where the warehouse tables live, in OpenLineage terms.

    :param namespace: ``postgres://host:port`` or ``sqlite://<path>``.
    :param prefix: Prefix of every table name (``<database>.<schema>.`` on PostgreSQL, empty on SQLite).
    :param dialect: ``sqlite`` or ``postgres`` (selects the SQL types of the schema facet).
    """

    namespace: str
    prefix: str
    dialect: Dialect

    def name(self, table: str) -> str:
        """The OpenLineage name of ``table``.

        :param table: A warehouse table of :mod:`coinstats_provider.warehouse.schema`.
        """
        return f"{self.prefix}{spec(table).name}"


def warehouse_location(warehouse_conn_id: str) -> WarehouseLocation:
    """Resolve the warehouse connection to its OpenLineage namespace and table-name prefix.

    PostgreSQL uses the hook's ``get_openlineage_database_info`` and current schema, exactly as
    common-sql's operators do; SQLite uses the absolute path of its database file.

    :param warehouse_conn_id: The warehouse connection (``sqlite`` or ``postgres``).
    """
    from coinstats_provider.warehouse.database import WarehouseDatabase

    database = WarehouseDatabase(warehouse_conn_id)
    hook: Any = database.hook
    connection = hook.get_connection(hook.get_conn_id())
    if database.dialect == "sqlite":
        path = connection.host or ""
        path = path if path in ("", ":memory:") else os.path.abspath(path)
        return WarehouseLocation(f"sqlite://{path}", "", "sqlite")
    info = hook.get_openlineage_database_info(connection)
    schema = hook.get_openlineage_default_schema() or "public"
    return WarehouseLocation(f"{info.scheme}://{info.authority}", f"{info.database}.{schema}.", "postgres")


def _input(namespace: str, name: str) -> InputDataset:
    from openlineage.client.event_v2 import InputDataset

    return InputDataset(namespace=namespace, name=name)


def _output(namespace: str, name: str, facets: dict[str, Any] | None = None, rows: int | None = None) -> OutputDataset:
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset

    output_facets: dict[str, Any] = {}
    if rows is not None:
        output_facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=rows
        )
    return OutputDataset(namespace=namespace, name=name, facets=facets or {}, outputFacets=output_facets)


def _lineage(inputs: Iterable[InputDataset], outputs: Iterable[OutputDataset]) -> OperatorLineage[Any, Any]:
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(inputs=list(inputs), outputs=list(outputs))


def table_schema_facet(table: str, dialect: Dialect) -> Any:
    """The OpenLineage schema facet of a warehouse table: its columns and the dialect's SQL types.

    :param table: A warehouse table of :mod:`coinstats_provider.warehouse.schema`.
    :param dialect: ``sqlite`` or ``postgres``.
    """
    from openlineage.client.facet_v2 import schema_dataset

    layout = spec(table)
    return schema_dataset.SchemaDatasetFacet(
        fields=[
            schema_dataset.SchemaDatasetFacetFields(
                name=column,
                type=layout.sql_type(column_type, dialect),
                description="exact decimal" if column_type == DECIMAL else None,
            )
            for column, column_type in layout.columns
        ]
    )


def load_lineage(
    base_url: str,
    portfolio_id: str,
    dataset: str,
    warehouse_conn_id: str,
    rows: int | None,
) -> OperatorLineage[Any, Any]:
    """Lineage of a load: the CoinStats dataset of a portfolio into its warehouse table.

    :param base_url: The ``coinstats`` connection's base URL.
    :param portfolio_id: The portfolio loaded.
    :param dataset: ``value``, ``coins`` or ``transactions`` (loads the table :data:`DATASET_TABLES` names).
    :param warehouse_conn_id: The warehouse connection.
    :param rows: Rows the load wrote (``None`` when unknown: no statistics facet).
    """
    table = DATASET_TABLES[dataset]
    location = warehouse_location(warehouse_conn_id)
    output = _output(
        location.namespace,
        location.name(table),
        {"schema": table_schema_facet(table, location.dialect)},
        rows,
    )
    return _lineage([_input(coinstats_namespace(base_url), portfolio_name(portfolio_id, dataset))], [output])


def connect_lineage(
    base_url: str, connection_id: str, portfolio_id: str, *, source: str = "exchange"
) -> OperatorLineage[Any, Any]:
    """Lineage of a connect: the account (exchange or blockchain id, never a credential or address) to its portfolio.

    :param base_url: The ``coinstats`` connection's base URL.
    :param connection_id: The CoinStats exchange id (``binance``, ``okx``, ...) or blockchain id (``ethereum``).
    :param portfolio_id: The portfolio CoinStats connected it to.
    :param source: ``exchange`` or ``blockchain``: what ``connection_id`` names.
    """
    namespace = coinstats_namespace(base_url)
    exchange = _input(namespace, f"{source}/{connection_id}")
    return _lineage([exchange], [_output(namespace, portfolio_name(portfolio_id))])


def sync_lineage(base_url: str, portfolio_id: str) -> OperatorLineage[Any, Any]:
    """Lineage of a sync: the portfolio refreshed into the datasets the loads read.

    :param base_url: The ``coinstats`` connection's base URL.
    :param portfolio_id: The portfolio synced.
    """
    namespace = coinstats_namespace(base_url)
    outputs = [_output(namespace, portfolio_name(portfolio_id, dataset)) for dataset in DATASETS]
    return _lineage([_input(namespace, portfolio_name(portfolio_id))], outputs)
