"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point.

The ``conn-fields`` bounds and defaults of the ``coinstats`` connection are the ones the hook enforces
(``coinstats_provider.hooks.connection``); ``tests/unit/test_provider_info.py`` keeps the two equal.
"""

from __future__ import annotations

from typing import Any

from coinstats_provider import DISTRIBUTION_NAME, __version__

INTEGRATION = "CoinStats"


def get_provider_info() -> dict[str, Any]:
    """Return the provider info dict (integration, modules, connection types with their UI form, extra links)."""
    # Long by nature: one declarative literal, the provider.yaml that Airflow reads, in a single place.
    return {
        "package-name": DISTRIBUTION_NAME,
        "name": "CoinStats",
        "description": "Connect exchange accounts and wallets to CoinStats portfolios, sync them, load them into SQL.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://openapi.coinstats.app",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "coinstats_provider.hooks.coinstats_base",
                    "coinstats_provider.hooks.coinstats",
                    "coinstats_provider.hooks.exchange",
                    "coinstats_provider.hooks.wallet",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "coinstats_provider.operators.connect",
                    "coinstats_provider.operators.sync",
                    "coinstats_provider.operators.load",
                    "coinstats_provider.operators.delete",
                ],
            }
        ],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["coinstats_provider.sensors.sync"]}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": ["coinstats_provider.triggers.sync"]}],
        "extra-links": ["coinstats_provider.links.portfolio.CoinStatsPortfolioLink"],
        "connection-types": [
            {
                "connection-type": "coinstats",
                "hook-class-name": "coinstats_provider.hooks.coinstats.CoinStatsHook",
                "hook-name": "CoinStats",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login"],
                    "relabeling": {"host": "Base URL", "password": "CoinStats API key"},
                    "placeholders": {
                        "host": "https://openapiv1.coinstats.app",
                        "port": "(optional; or put it in the Base URL)",
                        "password": "X-API-KEY from https://openapi.coinstats.app",
                    },
                },
                "conn-fields": {
                    "timeout": {
                        "label": "Request timeout (seconds)",
                        "description": "Timeout of every HTTP request.",
                        "schema": {"type": ["number", "null"], "minimum": 0.001, "maximum": 3600, "default": 30},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries per request on 429, 5xx, timeouts and connection errors.",
                        "schema": {"type": ["integer", "null"], "minimum": 0, "maximum": 20, "default": 5},
                    },
                    "backoff_base": {
                        "label": "Backoff base (seconds)",
                        "description": "Base of the retry delay; doubles per retry (with jitter) up to the cap.",
                        "schema": {"type": ["number", "null"], "minimum": 0, "maximum": 3600, "default": 1},
                    },
                    "backoff_max": {
                        "label": "Backoff cap (seconds)",
                        "description": "Longest wait between two tries, a Retry-After answer included.",
                        "schema": {"type": ["number", "null"], "minimum": 0, "maximum": 86400, "default": 60},
                    },
                    "credit_budget": {
                        "label": "Credit budget per task",
                        "description": "Fail before a call that would spend more CoinStats credits than this.",
                        "schema": {"type": ["integer", "null"], "minimum": 0, "maximum": 1_000_000_000_000},
                    },
                    "support_cache_ttl": {
                        "label": "Exchange list cache (seconds)",
                        "description": "How long GET /exchange/support is cached in memory and on disk; 0 disables.",
                        "schema": {"type": ["number", "null"], "minimum": 0, "maximum": 2_592_000, "default": 3600},
                    },
                },
            },
            {
                "connection-type": "coinstats_exchange",
                "hook-class-name": "coinstats_provider.hooks.exchange.CoinStatsExchangeHook",
                "hook-name": "CoinStats exchange account",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "port"],
                    "relabeling": {"login": "Exchange API key", "password": "Exchange API secret"},
                    "placeholders": {
                        "login": "apiKey of a read-only exchange API key",
                        "password": "apiSecret",
                        "extra": '{"any_other_field": "as named by GET /exchange/support"}',
                    },
                },
                "conn-fields": {
                    "connection_id": {
                        "label": "CoinStats exchange id",
                        "description": "connectionId from GET /exchange/support, e.g. binance, okx, kraken.",
                        "schema": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_.-]+$"},
                    },
                    "portfolio_name": {
                        "label": "Portfolio name",
                        "description": "Optional display name of the CoinStats portfolio.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "passphrase": {
                        "label": "Passphrase",
                        "description": "Only for exchanges that list a passphrase field (OKX, KuCoin, Bitget, ...).",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "coinstats_conn_id": {
                        "label": "CoinStats connection id",
                        "description": "CoinStats connection used to test this account (default coinstats_default).",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            },
            {
                "connection-type": "coinstats_wallet",
                "hook-class-name": "coinstats_provider.hooks.wallet.CoinStatsWalletHook",
                "hook-name": "CoinStats wallet",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "port", "password"],
                    "relabeling": {"login": "Wallet address"},
                    "placeholders": {
                        "login": "0x... (ethereum), bc1... (bitcoin), base58 (solana)",
                        "extra": '{"connection_id": "ethereum"}',
                    },
                },
                "conn-fields": {
                    "connection_id": {
                        "label": "CoinStats blockchain id",
                        "description": "connectionId from GET /wallet/blockchains, e.g. ethereum, bitcoin, solana.",
                        "schema": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_.-]+$"},
                    },
                    "portfolio_name": {
                        "label": "Portfolio name",
                        "description": "Optional display name of the CoinStats portfolio.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "coinstats_conn_id": {
                        "label": "CoinStats connection id",
                        "description": "CoinStats connection used to test this wallet (default coinstats_default).",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            },
        ],
    }
