"""Operators that connect exchange accounts to CoinStats; they orchestrate, the hooks talk HTTP."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from coinstats_provider.credits import CreditMeter
from coinstats_provider.exceptions import CoinStatsError, is_retryable
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.exchange import CoinStatsExchangeHook
from coinstats_provider.links.portfolio import CoinStatsPortfolioLink, portfolio_url
from coinstats_provider.models import ConnectStatus

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Shows the exchange connection id instead of 0, 1, 2 for mapped connect tasks.
MAP_INDEX_TEMPLATE = "{{ task.exchange_conn_id }}"
#: Task state store key: credits a task instance spent over all its tries (an int). Used by the connect
#: and load operators; the sync operator keeps its figure in its own state (``coinstats_sync``).
CREDITS_STATE_KEY = "coinstats_credits_spent"


def credits_spent_before(context: Context, key: str = CREDITS_STATE_KEY) -> int:
    """Credits earlier tries of this task instance spent, from Airflow's task state store.

    The store keeps its keys across the tries of one task instance, so a retry only gets what is left
    of the task's budget. No store (an older Airflow, a test context) or an unreadable value counts 0.

    :param context: Task context.
    :param key: Task state store key holding the figure.
    """
    store = context.get("task_state_store")
    value: Any = store.get(key) if store is not None else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    return int(value)


def save_credits_spent(context: Context, spent: int, key: str = CREDITS_STATE_KEY) -> None:
    """Store what this task instance has spent over all its tries (no-op without a task state store).

    :param context: Task context.
    :param spent: Credits spent by every try so far.
    :param key: Task state store key.
    """
    store = context.get("task_state_store")
    if store is not None:
        store.set(key, spent)


def meter_across_tries(meter: CreditMeter, context: Context) -> CreditMeter:
    """Charge ``meter`` with what earlier tries spent and persist its total after every paid request.

    Afterwards ``meter.spent`` is the task instance's total over all tries, and a try can only spend
    what is left of the budget.

    :param meter: The hook's credit meter (``hook.credits``).
    :param context: Task context holding ``task_state_store``.
    :raises CoinStatsCreditBudgetExceeded: Earlier tries used up the budget (non-retryable).
    """
    meter.carry_over(credits_spent_before(context), lambda spent: save_credits_spent(context, spent))
    return meter


@contextmanager
def failing_fast(task: str) -> Iterator[None]:
    """Run a block of task code, turning non-retryable provider errors into ``AirflowFailException``.

    :param task: Short description of the step, for the message.
    """
    try:
        yield
    except CoinStatsError as err:
        raise fail_fast(err, task) from err


def fail_fast(err: CoinStatsError, task: str) -> BaseException:
    """Return the exception a task should raise for ``err``.

    Retryable errors are raised as they are, so Airflow's task retries apply; every other error becomes
    :class:`AirflowFailException`, so no retry spends credits on a request that cannot succeed.

    :param err: The provider error.
    :param task: Short description of what failed, for the message.
    """
    if is_retryable(err):
        return err
    return AirflowFailException(f"{task} failed and retrying cannot help: {err}")


class ConnectExchangePortfolioOperator(BaseOperator):
    """Connect one exchange account to CoinStats (``POST /portfolio/exchange``) and return its portfolioId.

    Idempotent: ``connected`` (new portfolio) and ``existing`` (same portfolioId as before) are both
    success. The exchange fields are validated against ``GET /exchange/support`` before the 10-credit
    connect call is spent. Pushes ``portfolio_url`` (for the "CoinStats portfolio" link), ``connection_id``,
    ``status`` and ``credits_spent`` as extra XComs; ``credits_spent`` covers every try of the task
    instance, and a retry only spends what earlier tries left of the budget (kept in the task state store
    under :data:`CREDITS_STATE_KEY`).

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
        coinstats_conn_id: str = CoinStatsHook.default_conn_name,
        connection_id: str | None = None,
        portfolio_name: str | None = None,
        hook_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("map_index_template", MAP_INDEX_TEMPLATE)
        super().__init__(**kwargs)
        self.exchange_conn_id = exchange_conn_id
        self.coinstats_conn_id = coinstats_conn_id
        self.connection_id = connection_id
        self.portfolio_name = portfolio_name
        self.hook_params = hook_params or {}

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """Like :meth:`BaseOperator.partial`; mapped tasks are named by their exchange connection id."""
        kwargs.setdefault("map_index_template", MAP_INDEX_TEMPLATE)
        return super().partial(**kwargs)

    @cached_property
    def hook(self) -> CoinStatsHook:
        """The CoinStats hook (built on first use, never at parse time)."""
        return CoinStatsHook(self.coinstats_conn_id, **self.hook_params)

    def execute(self, context: Context) -> str:
        """Validate the account, connect it, push XComs and return the portfolioId."""
        ti = context["ti"]
        try:
            # Reads the CoinStats connection; the budget left is what earlier tries did not spend.
            meter_across_tries(self.hook.credits, context)
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
            if "hook" in self.__dict__ and "credits" in self.hook.__dict__:
                save_credits_spent(context, self.hook.credits.spent)
                meter = self.hook.credits
                self.log.info(
                    "CoinStats credits spent by this task: %d (%d by earlier tries)", meter.spent, meter.earlier
                )
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
        ti.xcom_push(key="connection_id", value=result.connection_id)
        ti.xcom_push(key="status", value=result.status.value)
        ti.xcom_push(key="credits_spent", value=self.hook.credits.spent)
        return result.portfolio_id
