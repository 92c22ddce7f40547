"""Operator extra links."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coinstats_provider._lazy import lazy_exports

if TYPE_CHECKING:
    from coinstats_provider.links.portfolio import CoinStatsPortfolioLink

__all__ = ["CoinStatsPortfolioLink"]
__getattr__ = lazy_exports(
    __name__,
    {"CoinStatsPortfolioLink": "coinstats_provider.links.portfolio"},
)
