"""Triggers: wait for a CoinStats sync in the triggerer."""

from __future__ import annotations

from coinstats_provider.triggers.sync import PortfolioSyncTrigger

__all__ = ["PortfolioSyncTrigger"]
