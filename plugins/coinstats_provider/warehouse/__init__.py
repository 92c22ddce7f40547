"""The SQL warehouse: table layout, transactional loader, and API-payload-to-row transforms.

:mod:`~coinstats_provider.warehouse.schema` names the tables and the dataset each loads;
:mod:`~coinstats_provider.warehouse.loader` writes them (connections in
:mod:`~coinstats_provider.warehouse.database`, DDL and migrations in
:mod:`~coinstats_provider.warehouse.migrations`); :mod:`~coinstats_provider.warehouse.transform` builds
rows from API payloads (value rules in :mod:`~coinstats_provider.warehouse.values`, transaction keys in
:mod:`~coinstats_provider.warehouse.keys`).
"""

from __future__ import annotations

from coinstats_provider.warehouse.loader import CoinStatsWarehouse, ReconcileResult
from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS, TABLES, TableSpec

__all__ = ["DATASETS", "DATASET_TABLES", "TABLES", "CoinStatsWarehouse", "ReconcileResult", "TableSpec"]
