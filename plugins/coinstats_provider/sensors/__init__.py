"""Sensors: wait for a CoinStats portfolio sync started elsewhere."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coinstats_provider._lazy import lazy_exports

if TYPE_CHECKING:
    from coinstats_provider.sensors.sync import CoinStatsPortfolioSyncedSensor

__all__ = ["CoinStatsPortfolioSyncedSensor"]
__getattr__ = lazy_exports(
    __name__,
    {"CoinStatsPortfolioSyncedSensor": "coinstats_provider.sensors.sync"},
)
