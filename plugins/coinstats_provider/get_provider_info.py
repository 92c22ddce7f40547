"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from coinstats_provider import __version__


def get_provider_info() -> dict[str, Any]:
    """Return the provider info dict (connection types with their UI form, extra links, versions)."""
    return {
        "package-name": "airflow-provider-coinstats",
        "name": "CoinStats",
        "description": "Connect exchange accounts to CoinStats portfolios, sync them and load them into SQL.",
        "versions": [__version__],
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
                        "schema": {"type": ["number", "null"], "minimum": 1, "default": 30},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries per request on 429, 5xx, timeouts and connection errors.",
                        "schema": {"type": ["integer", "null"], "minimum": 0, "maximum": 20, "default": 5},
                    },
                    "credit_budget": {
                        "label": "Credit budget per task",
                        "description": "Fail before a call that would spend more CoinStats credits than this.",
                        "schema": {"type": ["integer", "null"], "minimum": 0},
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
        ],
    }
