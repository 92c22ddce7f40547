"""Hooks: the CoinStats API client, exchange-account and wallet connections.

``coinstats`` (endpoints) on ``coinstats_base`` (transport), with ``connection`` (settings), ``errors``
(answer to typed exception), ``attempt``, ``support_cache`` and ``paging``; ``exchange`` reads exchange accounts,
``wallet`` wallets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coinstats_provider._lazy import lazy_exports

if TYPE_CHECKING:
    from coinstats_provider.hooks.coinstats import CoinStatsHook
    from coinstats_provider.hooks.exchange import CoinStatsExchangeHook
    from coinstats_provider.hooks.wallet import CoinStatsWalletHook

__all__ = ["CoinStatsExchangeHook", "CoinStatsHook", "CoinStatsWalletHook"]
__getattr__ = lazy_exports(
    __name__,
    {
        "CoinStatsExchangeHook": "coinstats_provider.hooks.exchange",
        "CoinStatsHook": "coinstats_provider.hooks.coinstats",
        "CoinStatsWalletHook": "coinstats_provider.hooks.wallet",
    },
)
