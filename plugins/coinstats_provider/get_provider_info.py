"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point.

The ``conn-fields`` bounds and defaults of the ``coinstats`` connection come from the constants the hook
validates against (``hooks/connection_limits.py``); ``tests/unit/test_provider_info.py`` checks that the
hook accepts each bound and rejects the nearest value outside it. Airflow imports this module while it
initialises its configuration, so nothing imported here may import Airflow (a test checks).
"""

from __future__ import annotations

from typing import Any

from coinstats_provider import DISTRIBUTION_NAME, __version__
from coinstats_provider.hooks import connection_limits as settings

INTEGRATION = "CoinStats"
#: Modules holding sensors (``BaseSensorOperator`` subclasses); the ``sensors`` section lists them.
SENSOR_MODULES: tuple[str, ...] = ("coinstats_provider.sensors.sync",)


def _section(modules: tuple[str, ...]) -> list[dict[str, Any]]:
    """A modules section of the provider info: one entry for the integration, none without modules.

    :param modules: Dotted module names.
    """
    return [{"integration-name": INTEGRATION, "python-modules": list(modules)}] if modules else []


def _bounded(name: str, default: float | None = None, *, integer: bool = False) -> dict[str, Any]:
    """JSON schema of a numeric ``coinstats`` extra, with the bounds the hook enforces.

    :param name: The extra, a key of ``EXTRA_RANGES`` or ``max_retries``.
    :param default: The hook's default, shown in the form (``None``: no default).
    :param integer: Whether the extra is an integer.
    """
    low, high = settings.MAX_RETRIES_RANGE if name == "max_retries" else settings.EXTRA_RANGES[name]
    schema: dict[str, Any] = {"type": ["integer" if integer else "number", "null"], "minimum": low, "maximum": high}
    if default is not None:
        schema["default"] = default
    return schema


def get_provider_info() -> dict[str, Any]:
    """Return the provider info (integration, modules, connection types with their UI form, extra links)."""
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
        "triggers": [{"integration-name": INTEGRATION, "python-modules": ["coinstats_provider.triggers.sync"]}],
        "sensors": _section(SENSOR_MODULES),
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
                        "schema": _bounded("timeout", settings.DEFAULT_TIMEOUT),
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries per request on 429, 5xx, timeouts and connection errors.",
                        "schema": _bounded("max_retries", settings.DEFAULT_MAX_RETRIES, integer=True),
                    },
                    "backoff_base": {
                        "label": "Backoff base (seconds)",
                        "description": "Base of the retry delay; doubles per retry (with jitter) up to the cap.",
                        "schema": _bounded("backoff_base", settings.DEFAULT_BACKOFF_BASE),
                    },
                    "backoff_max": {
                        "label": "Backoff cap (seconds)",
                        "description": "Longest wait between two tries, a Retry-After answer included.",
                        "schema": _bounded("backoff_max", settings.DEFAULT_BACKOFF_MAX),
                    },
                    "credit_budget": {
                        "label": "Credit budget per task",
                        "description": "Fail before a call that would spend more CoinStats credits than this.",
                        "schema": _bounded("credit_budget", integer=True),
                    },
                    "support_cache_ttl": {
                        "label": "Exchange list cache (seconds)",
                        "description": "How long GET /exchange/support is cached in memory and on disk; 0 disables.",
                        "schema": _bounded("support_cache_ttl", settings.DEFAULT_SUPPORT_CACHE_TTL),
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
