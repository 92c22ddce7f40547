"""Typed results returned by :class:`~coinstats_provider.hooks.CoinStatsHook`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: ``type`` values of ``GET /portfolio/chart`` (CONTRACT §4), shortest first.
CHART_TYPES: tuple[str, ...] = ("24h", "1w", "1m", "3m", "6m", "1y", "all")
#: Chart type loaded when none is chosen.
DEFAULT_CHART_TYPE = "1m"
#: Kinds of portfolio: connected from an exchange account or from a blockchain wallet address.
PORTFOLIO_KINDS: tuple[str, ...] = ("exchange", "wallet")


class ConnectStatus(StrEnum):
    """``status`` of ``POST /portfolio/exchange`` and ``POST /portfolio/wallet``; both values mean success."""

    CONNECTED = "connected"
    EXISTING = "existing"


class SyncStatus(StrEnum):
    """``status`` of ``GET /portfolio/status``."""

    SYNCING = "syncing"
    SYNCED = "synced"


@dataclass(frozen=True)
class SupportedExchange:
    """One entry of ``GET /exchange/support``.

    :param connection_id: CoinStats exchange id, e.g. ``binance``.
    :param name: Display name.
    :param field_keys: Keys required inside ``connectionFields``, e.g. ``("apiKey", "apiSecret")``.
    :param field_labels: Display label per key.
    """

    connection_id: str
    name: str
    field_keys: tuple[str, ...]
    field_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConnectResult:
    """Result of ``POST /portfolio/exchange``.

    :param portfolio_id: CoinStats portfolio id (opaque string).
    :param connection_id: CoinStats exchange id the portfolio belongs to.
    :param status: ``connected`` (new portfolio) or ``existing``.
    """

    portfolio_id: str
    connection_id: str
    status: ConnectStatus


@dataclass(frozen=True)
class CreditUsage:
    """Result of ``GET /usage/credits`` for the current billing period."""

    total_credits: float
    used_credits: float
    remaining_credits: float
    subscription: str


class PortfolioKind(StrEnum):
    """What a CoinStats portfolio tracks: an exchange account or a wallet address."""

    EXCHANGE = "exchange"
    WALLET = "wallet"


@dataclass(frozen=True)
class SupportedBlockchain:
    """One entry of ``GET /wallet/blockchains``.

    :param connection_id: CoinStats blockchain id to connect a wallet with, e.g. ``ethereum``.
    :param name: Display name.
    :param chain: The chain family CoinStats names (e.g. ``ethereum`` for an EVM network), if given.
    """

    connection_id: str
    name: str
    chain: str | None = None
