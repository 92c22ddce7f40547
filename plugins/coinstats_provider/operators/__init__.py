"""Operators: connect an exchange account or a wallet, sync a portfolio, load a dataset, delete a portfolio."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coinstats_provider._lazy import lazy_exports

if TYPE_CHECKING:
    from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator, ConnectWalletPortfolioOperator
    from coinstats_provider.operators.delete import DeletePortfolioOperator
    from coinstats_provider.operators.load import LoadPortfolioOperator
    from coinstats_provider.operators.sync import SyncPortfolioOperator

__all__ = [
    "ConnectExchangePortfolioOperator",
    "ConnectWalletPortfolioOperator",
    "DeletePortfolioOperator",
    "LoadPortfolioOperator",
    "SyncPortfolioOperator",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "ConnectExchangePortfolioOperator": "coinstats_provider.operators.connect",
        "ConnectWalletPortfolioOperator": "coinstats_provider.operators.connect",
        "DeletePortfolioOperator": "coinstats_provider.operators.delete",
        "LoadPortfolioOperator": "coinstats_provider.operators.load",
        "SyncPortfolioOperator": "coinstats_provider.operators.sync",
    },
)
