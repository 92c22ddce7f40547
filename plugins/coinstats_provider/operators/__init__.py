"""Operators: connect an exchange account, sync a portfolio, load a dataset into the warehouse."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coinstats_provider._lazy import lazy_exports

if TYPE_CHECKING:
    from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator
    from coinstats_provider.operators.load import LoadPortfolioOperator
    from coinstats_provider.operators.sync import SyncPortfolioOperator

__all__ = ["ConnectExchangePortfolioOperator", "LoadPortfolioOperator", "SyncPortfolioOperator"]
__getattr__ = lazy_exports(
    __name__,
    {
        "ConnectExchangePortfolioOperator": "coinstats_provider.operators.connect",
        "LoadPortfolioOperator": "coinstats_provider.operators.load",
        "SyncPortfolioOperator": "coinstats_provider.operators.sync",
    },
)
