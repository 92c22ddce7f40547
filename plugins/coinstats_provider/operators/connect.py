"""Operators that connect exchange accounts to CoinStats; they orchestrate, the hooks talk HTTP."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from coinstats_provider.exceptions import CoinStatsError
from coinstats_provider.hooks.connection import DEFAULT_CONN_NAME
from coinstats_provider.links.portfolio import CoinStatsPortfolioLink, portfolio_url
from coinstats_provider.models import ConnectStatus
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

__all__ = ["MAP_INDEX_TEMPLATE", "ConnectExchangePortfolioOperator"]

#: Shows the exchange connection id instead of 0, 1, 2 for mapped connect tasks.
MAP_INDEX_TEMPLATE = "{{ task.exchange_conn_id }}"


class ConnectExchangePortfolioOperator(BaseOperator):
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
    ui_color = "#f6c244"
    operator_extra_links = (CoinStatsPortfolioLink(),)

    def __init__(
        self,
        *,
        exchange_conn_id: str,
        coinstats_conn_id: str = DEFAULT_CONN_NAME,
        connection_id: str | None = None,
        portfolio_name: str | None = None,
        hook_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**with_map_index_template(kwargs, MAP_INDEX_TEMPLATE))
        self.exchange_conn_id = exchange_conn_id
        self.coinstats_conn_id = coinstats_conn_id
        self.connection_id = connection_id
        self.portfolio_name = portfolio_name
        self.hook_params = hook_params or {}

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """Like :meth:`BaseOperator.partial`; mapped tasks are named by their exchange connection id."""
        return super().partial(**with_map_index_template(kwargs, MAP_INDEX_TEMPLATE))

    @cached_property
    def hook(self) -> CoinStatsHook:
        """The CoinStats hook (built on first use, never at parse time)."""
        from coinstats_provider.hooks.coinstats import CoinStatsHook

        return CoinStatsHook(self.coinstats_conn_id, **self.hook_params)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage[Any, Any] | None:
        """OpenLineage: the exchange account (its exchange id, never a credential) in, the portfolio out.

        :param task_instance: The finished task instance (unused).
        """
        if not hasattr(self, "_lineage_ids"):
            return None
        from coinstats_provider.openlineage import connect_lineage

        return connect_lineage(self.hook.settings.base_url, *self._lineage_ids)

    def execute(self, context: Context) -> str:
        """Validate the account, connect it, push XComs and return the portfolioId."""
        ti = context["ti"]
        metered = False  # whether the credit meter exists (the CoinStats connection was read)
        try:
            meter = self.hook.credits  # reads the CoinStats connection
            metered = True
            # The budget left is what earlier tries did not spend.
            meter_across_tries(meter, context)
            from coinstats_provider.hooks.exchange import CoinStatsExchangeHook

            account = CoinStatsExchangeHook(self.exchange_conn_id).get_account(
                connection_id=self.connection_id or None, portfolio_name=self.portfolio_name or None
            )
            fields = account.connection_fields(self.hook.get_supported_exchanges())
            result = self.hook.connect_exchange_portfolio(account.connection_id, fields, account.portfolio_name)
            # The link goes out first, so it works even if anything after this fails.
            ti.xcom_push(key=CoinStatsPortfolioLink.xcom_key, value=portfolio_url(result.portfolio_id))
        except CoinStatsError as err:
            raise fail_fast(err, f"Connecting exchange connection '{self.exchange_conn_id}'") from err
        finally:
            if metered:
                meter = self.hook.credits
                save_credits_spent(context, meter.spent)
                log_credits_spent(self.log, meter.spent, " (%d by earlier tries)", meter.earlier)
        if result.status is ConnectStatus.CONNECTED:
            self.log.info(
                "Connected '%s' (%s) as new CoinStats portfolio %s",
                self.exchange_conn_id,
                result.connection_id,
                result.portfolio_id,
            )
        else:
            self.log.info(
                "'%s' (%s) was already connected: existing CoinStats portfolio %s",
                self.exchange_conn_id,
                result.connection_id,
                result.portfolio_id,
            )
        self._lineage_ids = (result.connection_id, result.portfolio_id)  # reported to OpenLineage
        ti.xcom_push(key="connection_id", value=result.connection_id)
        ti.xcom_push(key="status", value=result.status.value)
        push_credits_spent(context, self.hook.credits_spent)
        return result.portfolio_id
