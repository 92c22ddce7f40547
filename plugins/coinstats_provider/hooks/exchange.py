"""CoinStatsExchangeHook: reads one exchange account from a ``coinstats_exchange`` connection.

It sends nothing itself; validation against ``GET /exchange/support`` goes through
:class:`~coinstats_provider.hooks.CoinStatsHook`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from coinstats_provider.exceptions import CoinStatsConfigError, CoinStatsError, CoinStatsValidationError
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.connection import parse_extra
from coinstats_provider.hooks.errors import redact
from coinstats_provider.models import SupportedExchange

#: Extra keys that configure the account rather than being exchange credential fields.
RESERVED_EXTRA_KEYS = frozenset({"connection_id", "portfolio_name", "coinstats_conn_id"})
#: Where each well-known CoinStats field key lives on the Airflow connection.
FIELD_LOCATIONS = {"apiKey": "the Login field", "apiSecret": "the Password field"}


@dataclass(frozen=True)
class ExchangeAccount:
    """Credentials of one exchange account, as read from its Airflow connection.

    :param conn_id: The Airflow connection id.
    :param connection_id: CoinStats exchange id, e.g. ``binance``.
    :param portfolio_name: Optional portfolio display name.
    :param credentials: Candidate ``connectionFields`` values keyed by CoinStats field key.
    """

    conn_id: str
    connection_id: str
    portfolio_name: str | None
    credentials: Mapping[str, str] = field(repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every credential value, for redaction."""
        return tuple(v for v in self.credentials.values() if v)

    def connection_fields(self, supported: Sequence[SupportedExchange]) -> dict[str, str]:
        """Build ``connectionFields`` for this account, validated against ``GET /exchange/support``.

        :param supported: The supported exchanges.
        :raises CoinStatsValidationError: unknown exchange id, or required fields missing.
        """
        exchange = _find_exchange(self.connection_id, supported)
        if exchange is None:
            ids = sorted(e.connection_id for e in supported)
            nearest = difflib.get_close_matches(self.connection_id.lower(), ids, n=5, cutoff=0.4)
            shown = ", ".join(nearest) if nearest else ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
            raise CoinStatsValidationError(
                f"Exchange connection '{self.conn_id}' names CoinStats exchange '{self.connection_id[:60]}', "
                f"which GET /exchange/support does not list. Nearest supported ids: {shown}. Fix the extra "
                "'connection_id' (or the operator's connection_id argument). Nothing was connected."
            )
        missing = [key for key in exchange.field_keys if not self.credentials.get(key)]
        if missing:
            where = "; ".join(f"'{key}' in {FIELD_LOCATIONS.get(key, f'extra key {key!r}')}" for key in missing)
            raise CoinStatsValidationError(
                f"Exchange connection '{self.conn_id}' lacks field(s) that CoinStats requires for "
                f"'{exchange.connection_id}': {', '.join(missing)}. Set {where}. Nothing was connected."
            )
        return {key: self.credentials[key] for key in exchange.field_keys}


def _find_exchange(connection_id: str, supported: Sequence[SupportedExchange]) -> SupportedExchange | None:
    by_id = {e.connection_id: e for e in supported}
    if connection_id in by_id:
        return by_id[connection_id]
    folded = {e.connection_id.lower(): e for e in supported}
    return folded.get(connection_id.strip().lower())


class CoinStatsExchangeHook(BaseHook):
    """Reads an exchange account (``coinstats_exchange`` connection).

    Login is the exchange ``apiKey``, Password the ``apiSecret``; extra ``connection_id`` is the CoinStats
    exchange id, optional extra ``portfolio_name``, and any further exchange field (e.g. ``passphrase``)
    is an extra key named exactly like the ``key`` that ``GET /exchange/support`` lists.

    :param exchange_conn_id: Airflow connection of type ``coinstats_exchange``.
    :param coinstats_conn_id: CoinStats connection used by :meth:`test_connection`; defaults to the
        extra ``coinstats_conn_id`` or ``coinstats_default``.
    """

    conn_name_attr = "exchange_conn_id"
    default_conn_name = "coinstats_exchange_default"
    conn_type = "coinstats_exchange"
    hook_name = "CoinStats exchange account"

    def __init__(self, exchange_conn_id: str = default_conn_name, coinstats_conn_id: str | None = None) -> None:
        super().__init__()
        self.exchange_conn_id = exchange_conn_id
        self.coinstats_conn_id = coinstats_conn_id

    def get_conn(self) -> ExchangeAccount:
        """Return the account (see :meth:`get_account`)."""
        return self.get_account()

    def get_account(self, connection_id: str | None = None, portfolio_name: str | None = None) -> ExchangeAccount:
        """Read and locally validate the exchange connection; every credential is registered as a secret.

        :param connection_id: Overrides the extra ``connection_id``.
        :param portfolio_name: Overrides the extra ``portfolio_name``.
        """
        conn = self.get_connection(self.exchange_conn_id)
        if conn.conn_type and conn.conn_type != self.conn_type:
            raise CoinStatsConfigError(
                f"Connection '{conn.conn_id}' has conn_type '{conn.conn_type}', expected "
                "'coinstats_exchange'. Exchange accounts are coinstats_exchange connections "
                "(Login = API key, Password = API secret)."
            )
        extra = parse_extra(conn)
        credentials: dict[str, str] = {}
        if conn.login:
            credentials["apiKey"] = conn.login
        if conn.password:
            credentials["apiSecret"] = conn.password
        for key, value in extra.items():
            if key not in RESERVED_EXTRA_KEYS and value not in (None, ""):
                credentials[str(key)] = value if isinstance(value, str) else _scalar(conn.conn_id, key, value)
        for value in credentials.values():
            mask_secret(value)
        exchange_id = (connection_id or str(extra.get("connection_id") or "")).strip()
        if not exchange_id:
            raise CoinStatsConfigError(
                f"Exchange connection '{conn.conn_id}' does not say which exchange it is: set its extra "
                '"connection_id" to a CoinStats exchange id such as "binance" (see GET /exchange/support).'
            )
        name = portfolio_name if portfolio_name is not None else extra.get("portfolio_name")
        return ExchangeAccount(
            conn_id=conn.conn_id,
            connection_id=exchange_id,
            portfolio_name=str(name) if name else None,
            credentials=credentials,
        )

    def test_connection(self) -> tuple[bool, str]:
        """Check the exchange id and required fields against ``GET /exchange/support``; connects nothing."""
        secrets: tuple[str, ...] = ()
        try:
            account = self.get_account()
            secrets = account.secrets
            conn_id = self.coinstats_conn_id or str(
                parse_extra(self.get_connection(self.exchange_conn_id)).get("coinstats_conn_id")
                or CoinStatsHook.default_conn_name
            )
            coinstats = CoinStatsHook(conn_id)
            secrets = (*secrets, coinstats.settings.api_key)
            fields = account.connection_fields(coinstats.get_supported_exchanges())
        except CoinStatsError as err:
            return False, str(err)
        except Exception as err:
            return False, f"{type(err).__name__}: {redact(str(err), secrets)}"
        return True, (
            f"Exchange '{account.connection_id}' is supported and all {len(fields)} required fields "
            f"({', '.join(fields)}) are set. Nothing was connected."
        )


def _scalar(conn_id: str, key: str, value: Any) -> str:
    if isinstance(value, (int, float, bool)):
        return str(value)
    raise CoinStatsConfigError(
        f"Extra key '{key}' of exchange connection '{conn_id}' must be a string, not {type(value).__name__}."
    )
