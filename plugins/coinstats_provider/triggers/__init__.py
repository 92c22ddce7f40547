"""Triggers: wait for a CoinStats sync in the triggerer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coinstats_provider._lazy import lazy_exports

if TYPE_CHECKING:
    from coinstats_provider.triggers.sync import PortfolioSyncTrigger

__all__ = ["PortfolioSyncTrigger"]
__getattr__ = lazy_exports(
    __name__,
    {"PortfolioSyncTrigger": "coinstats_provider.triggers.sync"},
)
