"""Operator extra links."""

from __future__ import annotations

from coinstats_provider.links.portfolio import CoinStatsPortfolioLink

__all__ = ["CoinStatsPortfolioLink"]
