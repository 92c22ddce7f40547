"""The SQL warehouse: table layout, transactional loader, and API-payload-to-row transforms."""

from __future__ import annotations

from coinstats_provider.warehouse.loader import TABLES, CoinStatsWarehouse, ReconcileResult

__all__ = ["TABLES", "CoinStatsWarehouse", "ReconcileResult"]
