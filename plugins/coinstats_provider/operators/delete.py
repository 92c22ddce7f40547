"""DeletePortfolioOperator: delete an API-created CoinStats portfolio (off-boarding an account)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from coinstats_provider.credits import DELETE_COST
from coinstats_provider.exceptions import CoinStatsError, CoinStatsNotFoundError
from coinstats_provider.hooks.connection import DEFAULT_CONN_NAME
from coinstats_provider.operators._common import (
    PORTFOLIO_MAP_INDEX_TEMPLATE,
    fail_fast,
    log_credits_spent,
    meter_across_tries,
    push_credits_spent,
    save_credits_spent,
    with_map_index_template,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from coinstats_provider.hooks.coinstats import CoinStatsHook

__all__ = ["DELETE_COST", "DeletePortfolioOperator"]


class DeletePortfolioOperator(BaseOperator):
    """Delete one CoinStats portfolio (``DELETE /portfolio/{portfolioId}``, 10 credits).

    CoinStats deletes only portfolios created through the API (the connects), and deleting a ``parent``
    portfolio also deletes its linked child accounts (CONTRACT §4.3). A 404 means the portfolio is
    already gone (deleted earlier, or by another try of this task): the operator succeeds with
    ``deleted=False`` instead of failing, so a retry after a lost answer does not fail the run.

    Returns ``{"portfolio_id", "account", "deleted", "credits_spent"}`` and pushes ``credits_spent`` (all tries of
    the task instance; a retry only spends what earlier tries left of the budget).

    :param portfolio_id: The portfolio to delete.
    :param coinstats_conn_id: CoinStats connection.
    :param account: The account (connection id) the portfolio belonged to; only labels the task.
    :param hook_params: Extra keyword arguments for :class:`CoinStatsHook` (``timeout``, ``max_retries``,
        ``credit_budget``).
    """

    template_fields: Sequence[str] = ("portfolio_id", "coinstats_conn_id", "account")
    ui_color = "#f4a6a6"

    def __init__(
        self,
        *,
        portfolio_id: str,
        coinstats_conn_id: str = DEFAULT_CONN_NAME,
        account: str | None = None,
        hook_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**with_map_index_template(kwargs, PORTFOLIO_MAP_INDEX_TEMPLATE))
        self.portfolio_id = portfolio_id
        self.coinstats_conn_id = coinstats_conn_id
        self.account = account
        self.hook_params = hook_params or {}

    @cached_property
    def hook(self) -> CoinStatsHook:
        """The CoinStats hook (built on first use, never at parse time)."""
        from coinstats_provider.hooks.coinstats import CoinStatsHook

        return CoinStatsHook(self.coinstats_conn_id, **self.hook_params)

    def execute(self, context: Context) -> dict[str, Any]:
        """Delete the portfolio; a portfolio that is already gone counts as done."""
        deleted = True
        metered = False
        try:
            meter = self.hook.credits
            metered = True
            meter_across_tries(meter, context)
            try:
                self.hook.delete_portfolio(self.portfolio_id)
            except CoinStatsNotFoundError:
                deleted = False
                self.log.warning(
                    "CoinStats portfolio %s does not exist (any more) for this API key; nothing to delete",
                    self.portfolio_id,
                )
        except CoinStatsError as err:
            raise fail_fast(err, f"Deleting CoinStats portfolio {self.portfolio_id}") from err
        finally:
            if metered:
                save_credits_spent(context, self.hook.credits.spent)
                log_credits_spent(self.log, self.hook.credits.spent)
        if deleted:
            self.log.info("Deleted CoinStats portfolio %s (%s)", self.portfolio_id, self.account or "no account given")
        spent = self.hook.credits_spent
        push_credits_spent(context, spent)
        return {"portfolio_id": self.portfolio_id, "account": self.account, "deleted": deleted, "credits_spent": spent}
