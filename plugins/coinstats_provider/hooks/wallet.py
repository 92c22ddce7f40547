"""CoinStatsWalletHook: reads one wallet account from a ``coinstats_wallet`` connection.

It sends nothing itself; validation against ``GET /wallet/blockchains`` goes through
:class:`~coinstats_provider.hooks.CoinStatsHook`.

A wallet address is not a secret, but it is personal (anyone can read its whole history on-chain), so
the provider never logs it whole at INFO or above, nor puts it in an error message: it shows
:func:`short_address` (``0x12…cdef``) instead.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from airflow.sdk import BaseHook

from coinstats_provider.exceptions import CoinStatsConfigError, CoinStatsError, CoinStatsValidationError
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.connection import parse_extra
from coinstats_provider.hooks.errors import redact
from coinstats_provider.models import SupportedBlockchain

_EVM = re.compile(r"0x[0-9a-fA-F]{40}")
_BASE58 = "[1-9A-HJ-NP-Za-km-z]"
#: Address formats of the blockchains whose format is unambiguous; other chains only need a non-empty,
#: single-word address. Bitcoin also takes extended public keys (xpub/ypub/zpub), which CoinStats tracks.
ADDRESS_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    **dict.fromkeys(
        ("ethereum", "polygon", "binance_smart", "arbitrum", "optimism", "base", "avalanche", "fantom"),
        (_EVM, "0x followed by 40 hexadecimal digits"),
    ),
    "bitcoin": (
        re.compile(rf"[13]{_BASE58}{{25,34}}|bc1[02-9ac-hj-np-z]{{8,87}}|[xyz]pub{_BASE58}{{107,108}}"),
        "a legacy (1...), P2SH (3...) or bech32 (bc1...) address, or an xpub/ypub/zpub key",
    ),
    "solana": (re.compile(rf"{_BASE58}{{32,44}}"), "32 to 44 base58 characters"),
}
_MAX_ADDRESS = 256


def short_address(address: str) -> str:
    """The address as logs and messages show it: its first 4 and last 4 characters, e.g. ``0x12…cdef``.

    :param address: A wallet address (shorter ones are shown as ``…`` only).
    """
    address = address.strip()
    return f"{address[:4]}…{address[-4:]}" if len(address) > 12 else "…"


@dataclass(frozen=True)
class WalletAccount:
    """One wallet, as read from its Airflow connection.

    :param conn_id: The Airflow connection id.
    :param connection_id: CoinStats blockchain id, e.g. ``ethereum``.
    :param portfolio_name: Optional portfolio display name.
    :param address: The wallet address (kept out of ``repr``).
    """

    conn_id: str
    connection_id: str
    portfolio_name: str | None
    address: str = field(repr=False)

    @property
    def shown(self) -> str:
        """The address as logs show it (:func:`short_address`)."""
        return short_address(self.address)

    def check_address(self) -> None:
        """Check the address locally: non-empty, one word, and well-formed where the chain's format is known.

        :raises CoinStatsValidationError: A malformed address (nothing is sent).
        """
        if not self.address:
            raise CoinStatsValidationError(
                f"Wallet connection '{self.conn_id}' has no address: put the wallet address in its Login field. "
                "Nothing was connected."
            )
        if len(self.address) > _MAX_ADDRESS or any(ch.isspace() for ch in self.address):
            raise CoinStatsValidationError(
                f"Wallet connection '{self.conn_id}' has an address ({self.shown}) with spaces or longer than "
                f"{_MAX_ADDRESS} characters; put exactly one address in its Login field. Nothing was connected."
            )
        known = ADDRESS_FORMATS.get(self.connection_id.lower())
        if known is not None and not known[0].fullmatch(self.address):
            raise CoinStatsValidationError(
                f"Wallet connection '{self.conn_id}' has an address ({self.shown}) that is not a "
                f"'{self.connection_id}' address: expected {known[1]}. Fix its Login field (or the extra "
                "'connection_id' if the blockchain is wrong). Nothing was connected."
            )

    def blockchain(self, supported: Sequence[SupportedBlockchain]) -> SupportedBlockchain:
        """The blockchain of this wallet in ``GET /wallet/blockchains``, after checking the address.

        :param supported: The supported blockchains.
        :raises CoinStatsValidationError: Unknown blockchain id, or a malformed address.
        """
        by_id = {b.connection_id: b for b in supported}
        found = by_id.get(self.connection_id) or {b.lower(): c for b, c in by_id.items()}.get(
            self.connection_id.strip().lower()
        )
        if found is None:
            ids = sorted(by_id)
            nearest = difflib.get_close_matches(self.connection_id.lower(), ids, n=5, cutoff=0.4)
            shown = ", ".join(nearest) if nearest else ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
            raise CoinStatsValidationError(
                f"Wallet connection '{self.conn_id}' names CoinStats blockchain '{self.connection_id[:60]}', "
                f"which GET /wallet/blockchains does not list. Nearest supported ids: {shown}. Fix the extra "
                "'connection_id' (or the operator's connection_id argument). Nothing was connected."
            )
        WalletAccount(self.conn_id, found.connection_id, self.portfolio_name, self.address).check_address()
        return found


class CoinStatsWalletHook(BaseHook):
    """Reads a wallet account (``coinstats_wallet`` connection).

    Login is the wallet address, extra ``connection_id`` the CoinStats blockchain id (from
    ``GET /wallet/blockchains``, e.g. ``ethereum``, ``bitcoin``, ``solana``), optional extra
    ``portfolio_name``.

    :param wallet_conn_id: Airflow connection of type ``coinstats_wallet``.
    :param coinstats_conn_id: CoinStats connection used by :meth:`test_connection`; defaults to the
        extra ``coinstats_conn_id`` or ``coinstats_default``.
    """

    conn_name_attr = "wallet_conn_id"
    default_conn_name = "coinstats_wallet_default"
    conn_type = "coinstats_wallet"
    hook_name = "CoinStats wallet"

    def __init__(self, wallet_conn_id: str = default_conn_name, coinstats_conn_id: str | None = None) -> None:
        super().__init__()
        self.wallet_conn_id = wallet_conn_id
        self.coinstats_conn_id = coinstats_conn_id

    def get_conn(self) -> WalletAccount:
        """Return the account (see :meth:`get_account`)."""
        return self.get_account()

    def get_account(self, connection_id: str | None = None, portfolio_name: str | None = None) -> WalletAccount:
        """Read the wallet connection and check the address locally (no request is sent).

        :param connection_id: Overrides the extra ``connection_id``.
        :param portfolio_name: Overrides the extra ``portfolio_name``.
        """
        conn = self.get_connection(self.wallet_conn_id)
        if conn.conn_type and conn.conn_type != self.conn_type:
            raise CoinStatsConfigError(
                f"Connection '{conn.conn_id}' has conn_type '{conn.conn_type}', expected 'coinstats_wallet'. "
                "Wallets are coinstats_wallet connections (Login = wallet address, extra connection_id = "
                "CoinStats blockchain id)."
            )
        extra = parse_extra(conn)
        chain = (connection_id or str(extra.get("connection_id") or "")).strip()
        if not chain:
            raise CoinStatsConfigError(
                f"Wallet connection '{conn.conn_id}' does not say which blockchain it is on: set its extra "
                '"connection_id" to a CoinStats blockchain id such as "ethereum" (see GET /wallet/blockchains).'
            )
        name = portfolio_name if portfolio_name is not None else extra.get("portfolio_name")
        account = WalletAccount(
            conn_id=conn.conn_id,
            connection_id=chain,
            portfolio_name=str(name) if name else None,
            address=(conn.login or "").strip(),
        )
        account.check_address()
        return account

    def test_connection(self) -> tuple[bool, str]:
        """Check the blockchain id and the address against ``GET /wallet/blockchains``; connects nothing."""
        address = ""
        try:
            account = self.get_account()
            address = account.address
            conn_id = self.coinstats_conn_id or str(
                parse_extra(self.get_connection(self.wallet_conn_id)).get("coinstats_conn_id")
                or CoinStatsHook.default_conn_name
            )
            chain = account.blockchain(CoinStatsHook(conn_id).get_supported_blockchains())
        except CoinStatsError as err:
            return False, redact(str(err), (address,))
        except Exception as err:
            return False, f"{type(err).__name__}: {redact(str(err), (address,))}"
        return True, (
            f"Blockchain '{chain.connection_id}' ({chain.name}) is supported and the address {account.shown} is "
            "well-formed. Nothing was connected."
        )
