"""Hooks: the CoinStats API client (``coinstats``) and exchange-account connections (``exchange``)."""

from __future__ import annotations

from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.exchange import CoinStatsExchangeHook

__all__ = ["CoinStatsExchangeHook", "CoinStatsHook"]
