"""Operators that connect exchange accounts and wallets to CoinStats; they orchestrate, the hooks talk HTTP."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from coinstats_provider.exceptions import CoinStatsError
from coinstats_provider.hooks.connection import DEFAULT_CONN_NAME
from coinstats_provider.links.portfolio import CoinStatsPortfolioLink, portfolio_url
from coinstats_provider.models import ConnectResult, ConnectStatus
from coinstats_provider.operators._common import (
    fail_fast,
    log_credits_spent,
    meter_across_tries,
    push_credits_spent,
    save_credits_spent,
    with_map_index_template,
)

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from coinstats_provider.hooks.coinstats import CoinStatsHook

__all__ = [
    "MAP_INDEX_TEMPLATE",
    "WALLET_MAP_INDEX_TEMPLATE",
    "ConnectExchangePortfolioOperator",
    "ConnectWalletPortfolioOperator",
]

#: Shows the exchange connection id instead of 0, 1, 2 for mapped connect tasks.
MAP_INDEX_TEMPLATE = "{{ task.exchange_conn_id }}"
#: Shows the wallet connection id instead of 0, 1, 2 for mapped wallet connect tasks.
WALLET_MAP_INDEX_TEMPLATE = "{{ task.wallet_conn_id }}"


class _ConnectPortfolioOperator(BaseOperator):
    """What both connect operators share: budget across tries, fail-fast errors, the XCom contract.

    Subclasses read their account and connect it in :meth:`_connect`. Returns the portfolioId and pushes
    ``portfolio_url``, ``connection_id``, ``status`` and ``credits_spent``.
    """

    ui_color = "#f6c244"
    operator_extra_links = (CoinStatsPortfolioLink(),)
    #: How messages name the account, e.g. ``exchange connection``.
    account_kind = "account"
    #: What the account is in OpenLineage dataset names (``exchange/<id>``, ``blockchain/<id>``).
    lineage_source = "exchange"
    #: Names mapped tasks by their account connection instead of 0, 1, 2.
    default_map_index_template = "{{ task.account_conn_id }}"

    def __init__(
        self,
        *,
        coinstats_conn_id: str = DEFAULT_CONN_NAME,
        connection_id: str | None = None,
        portfolio_name: str | None = None,
        hook_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**with_map_index_template(kwargs, self.default_map_index_template))
        self.coinstats_conn_id = coinstats_conn_id
        self.connection_id = connection_id
        self.portfolio_name = portfolio_name
        self.hook_params = hook_params or {}

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """Like :meth:`BaseOperator.partial`; mapped tasks are named by their account connection id."""
        return super().partial(**with_map_index_template(kwargs, cls.default_map_index_template))

    @property
    def account_conn_id(self) -> str:
        """The Airflow connection of the account."""
        raise NotImplementedError

    @cached_property
    def hook(self) -> CoinStatsHook:
        """The CoinStats hook (built on first use, never at parse time)."""
        from coinstats_provider.hooks.coinstats import CoinStatsHook

        return CoinStatsHook(self.coinstats_conn_id, **self.hook_params)

    def _connect(self) -> tuple[ConnectResult, str]:
        """Read and validate the account, connect it; return the result and how logs name the account."""
        raise NotImplementedError

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage[Any, Any] | None:
        """OpenLineage: the account (exchange or blockchain id, never a credential or address) in, the portfolio out.

        :param task_instance: The finished task instance (unused).
        """
        if not hasattr(self, "_lineage_ids"):
            return None
        from coinstats_provider.openlineage import connect_lineage

        return connect_lineage(self.hook.settings.base_url, *self._lineage_ids, source=self.lineage_source)

    def execute(self, context: Context) -> str:
        """Validate the account, connect it, push XComs and return the portfolioId."""
        ti = context["ti"]
        metered = False  # whether the credit meter exists (the CoinStats connection was read)
        try:
            meter = self.hook.credits  # reads the CoinStats connection
            metered = True
            # The budget left is what earlier tries did not spend.
            meter_across_tries(meter, context)
            result, shown = self._connect()
            # The link goes out first, so it works even if anything after this fails.
            ti.xcom_push(key=CoinStatsPortfolioLink.xcom_key, value=portfolio_url(result.portfolio_id))
        except CoinStatsError as err:
            raise fail_fast(err, f"Connecting {self.account_kind} '{self.account_conn_id}'") from err
        finally:
            if metered:
                meter = self.hook.credits
                save_credits_spent(context, meter.spent)
                log_credits_spent(self.log, meter.spent, " (%d by earlier tries)", meter.earlier)
        if result.status is ConnectStatus.CONNECTED:
            self.log.info(
                "Connected '%s' (%s) as new CoinStats portfolio %s", self.account_conn_id, shown, result.portfolio_id
            )
        else:
            self.log.info(
                "'%s' (%s) was already connected: existing CoinStats portfolio %s",
                self.account_conn_id,
                shown,
                result.portfolio_id,
            )
        self._lineage_ids = (result.connection_id, result.portfolio_id)  # reported to OpenLineage
        ti.xcom_push(key="connection_id", value=result.connection_id)
        ti.xcom_push(key="status", value=result.status.value)
        push_credits_spent(context, self.hook.credits_spent)
        return result.portfolio_id


class ConnectExchangePortfolioOperator(_ConnectPortfolioOperator):
    """Connect one exchange account to CoinStats (``POST /portfolio/exchange``) and return its portfolioId.

    Idempotent: ``connected`` (new portfolio) and ``existing`` (same portfolioId as before) are both
    success. The exchange fields are validated against ``GET /exchange/support`` before the 10-credit
    connect call is spent. Pushes ``portfolio_url`` (for the "CoinStats portfolio" link), ``connection_id``,
    ``status`` and ``credits_spent`` as extra XComs; ``credits_spent`` covers every try of the task
    instance, and a retry only spends what earlier tries left of the budget (kept in the task state store
    under :data:`~coinstats_provider.operators._common.CREDITS_STATE_KEY`).

    :param exchange_conn_id: ``coinstats_exchange`` connection holding the exchange credentials.
    :param coinstats_conn_id: ``coinstats`` connection holding the CoinStats API key.
    :param connection_id: CoinStats exchange id; overrides the connection's extra ``connection_id``.
    :param portfolio_name: Portfolio name; overrides the connection's extra ``portfolio_name``.
    :param hook_params: Extra keyword arguments for :class:`CoinStatsHook` (``timeout``, ``max_retries``,
        ``credit_budget``).
    """

    template_fields: Sequence[str] = (
        "exchange_conn_id",
        "coinstats_conn_id",
        "connection_id",
        "portfolio_name",
    )
    account_kind = "exchange connection"
    default_map_index_template = MAP_INDEX_TEMPLATE

    def __init__(self, *, exchange_conn_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exchange_conn_id = exchange_conn_id

    @property
    def account_conn_id(self) -> str:
        """The exchange connection."""
        return self.exchange_conn_id

    def _connect(self) -> tuple[ConnectResult, str]:
        from coinstats_provider.hooks.exchange import CoinStatsExchangeHook

        account = CoinStatsExchangeHook(self.exchange_conn_id).get_account(
            connection_id=self.connection_id or None, portfolio_name=self.portfolio_name or None
        )
        fields = account.connection_fields(self.hook.get_supported_exchanges())
        result = self.hook.connect_exchange_portfolio(account.connection_id, fields, account.portfolio_name)
        return result, result.connection_id


class ConnectWalletPortfolioOperator(_ConnectPortfolioOperator):
    """Connect one wallet address to CoinStats (``POST /portfolio/wallet``, 40 credits) and return its portfolioId.

    The same contract as :class:`ConnectExchangePortfolioOperator`: idempotent (``existing`` is success,
    same portfolioId), the same XComs, the budget across tries. Before the 40 credits are spent the
    address is checked locally (non-empty, and well-formed where the chain's format is unambiguous, see
    :data:`~coinstats_provider.hooks.wallet.ADDRESS_FORMATS`) and the blockchain id against
    ``GET /wallet/blockchains`` (1 credit, cached). Logs show the address shortened (``0x12…cdef``).

    :param wallet_conn_id: ``coinstats_wallet`` connection: Login = address, extra ``connection_id``.
    :param coinstats_conn_id: ``coinstats`` connection holding the CoinStats API key.
    :param connection_id: CoinStats blockchain id; overrides the connection's extra ``connection_id``.
    :param portfolio_name: Portfolio name; overrides the connection's extra ``portfolio_name``.
    :param hook_params: Extra keyword arguments for :class:`CoinStatsHook` (``timeout``, ``max_retries``,
        ``credit_budget``).
    """

    template_fields: Sequence[str] = (
        "wallet_conn_id",
        "coinstats_conn_id",
        "connection_id",
        "portfolio_name",
    )
    ui_color = "#f6d776"
    account_kind = "wallet connection"
    lineage_source = "blockchain"
    default_map_index_template = WALLET_MAP_INDEX_TEMPLATE

    def __init__(self, *, wallet_conn_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wallet_conn_id = wallet_conn_id

    @property
    def account_conn_id(self) -> str:
        """The wallet connection."""
        return self.wallet_conn_id

    def _connect(self) -> tuple[ConnectResult, str]:
        from coinstats_provider.hooks.wallet import CoinStatsWalletHook

        account = CoinStatsWalletHook(self.wallet_conn_id).get_account(
            connection_id=self.connection_id or None, portfolio_name=self.portfolio_name or None
        )
        chain = account.blockchain(self.hook.get_supported_blockchains())
        result = self.hook.connect_wallet_portfolio(chain.connection_id, account.address, account.portfolio_name)
        return result, f"{result.connection_id} {account.shown}"
