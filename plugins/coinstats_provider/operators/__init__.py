"""Operators: connect an exchange account, sync a portfolio, load a dataset into the warehouse."""

from __future__ import annotations

from coinstats_provider.operators.connect import ConnectExchangePortfolioOperator
from coinstats_provider.operators.load import LoadPortfolioOperator
from coinstats_provider.operators.sync import SyncPortfolioOperator

__all__ = ["ConnectExchangePortfolioOperator", "LoadPortfolioOperator", "SyncPortfolioOperator"]
