"""The SQL warehouse: table layout, transactional loader, and API-payload-to-row transforms.

:mod:`~coinstats_provider.warehouse.schema` names the tables and the dataset each loads;
:mod:`~coinstats_provider.warehouse.loader` writes them (connections in
:mod:`~coinstats_provider.warehouse.database`, DDL and migrations in
:mod:`~coinstats_provider.warehouse.migrations`); :mod:`~coinstats_provider.warehouse.transform` builds
rows from API payloads (value rules in :mod:`~coinstats_provider.warehouse.values`, transaction keys in
:mod:`~coinstats_provider.warehouse.keys`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coinstats_provider._lazy import lazy_exports

if TYPE_CHECKING:
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse, ReconcileResult
    from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS, TABLES, TableSpec

__all__ = ["DATASETS", "DATASET_TABLES", "TABLES", "CoinStatsWarehouse", "ReconcileResult", "TableSpec"]
__getattr__ = lazy_exports(
    __name__,
    {
        "CoinStatsWarehouse": "coinstats_provider.warehouse.loader",
        "DATASETS": "coinstats_provider.warehouse.schema",
        "DATASET_TABLES": "coinstats_provider.warehouse.schema",
        "ReconcileResult": "coinstats_provider.warehouse.loader",
        "TABLES": "coinstats_provider.warehouse.schema",
        "TableSpec": "coinstats_provider.warehouse.schema",
    },
)
