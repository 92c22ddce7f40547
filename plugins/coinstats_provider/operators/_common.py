"""What the CoinStats operators share: fail-fast wrapping, budgets and credits across tries, templated values.

Private to :mod:`coinstats_provider.operators`; the DAG's plain ``@task`` steps use :func:`failing_fast` too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from airflow.sdk.exceptions import AirflowFailException

from coinstats_provider.exceptions import CoinStatsConfigError, CoinStatsError, is_retryable

if TYPE_CHECKING:
    from airflow.sdk import Context

    from coinstats_provider.credits import CreditMeter

__all__ = [
    "CREDITS_STATE_KEY",
    "CREDITS_XCOM_KEY",
    "PORTFOLIO_MAP_INDEX_TEMPLATE",
    "as_bool",
    "credits_spent_before",
    "fail_fast",
    "failing_fast",
    "log_credits_spent",
    "meter_across_tries",
    "parse_credit_budget",
    "push_credits_spent",
    "save_credits_spent",
    "with_map_index_template",
]

#: Task state store key: credits a task instance spent over all its tries (an int). Used by the connect
#: and load operators; the sync operator keeps its figure in its own state (``coinstats_sync``).
CREDITS_STATE_KEY = "coinstats_credits_spent"
#: XCom key of the credits a task instance spent over all its tries.
CREDITS_XCOM_KEY = "credits_spent"
#: Names the tasks of a mapped task group by their account instead of 0, 1, 2: the account's connection id
#: with the short portfolio id beside it (``coinstats_exchange_binance (3f2a9c1b)``), so a person finds "my
#: Binance account" in the grid; the whole portfolio id for a task given no ``account``.
PORTFOLIO_MAP_INDEX_TEMPLATE = (
    "{{ task.account ~ ' (' ~ task.portfolio_id[:8] ~ ')' if task.account is defined and task.account "
    "else task.portfolio_id }}"
)


class _Log(Protocol):
    def info(self, event: str, *args: Any) -> Any: ...


def with_map_index_template(kwargs: dict[str, Any], template: str) -> dict[str, Any]:
    """Return operator ``kwargs`` with ``map_index_template`` defaulting to ``template``.

    :param kwargs: Keyword arguments for ``BaseOperator`` (changed in place).
    :param template: The default map index template.
    """
    kwargs.setdefault("map_index_template", template)
    return kwargs


def as_bool(value: Any) -> bool:
    """Read a templated boolean (``True``, ``"true"``, ``"False"``, ``0``...).

    :param value: The rendered value.
    """
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def parse_credit_budget(value: Any, task_id: str) -> int | None:
    """Read a templated ``credit_budget``: ``None``, ``""`` or ``"None"`` for no limit, else whole credits.

    :param value: The rendered value (an int, or its text after rendering).
    :param task_id: The task, for the message.
    :raises CoinStatsConfigError: The value is not a number (non-retryable).
    """
    if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(float(str(value)))
    except (TypeError, ValueError, OverflowError):
        raise CoinStatsConfigError(
            f"Task {task_id}: credit_budget must be a whole number of credits or empty for no limit, "
            f"not {str(value)[:40]!r}. Fix the task's credit_budget (or the DAG's credit budget Param)."
        ) from None


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


def push_credits_spent(context: Context, spent: int) -> None:
    """Push the XCom ``credits_spent``: what the task instance spent over all its tries.

    :param context: Task context.
    :param spent: The credits.
    """
    context["ti"].xcom_push(key=CREDITS_XCOM_KEY, value=spent)


def log_credits_spent(log: _Log, spent: int, breakdown: str = "", *args: Any) -> None:
    """Log ``CoinStats credits spent by this task: <spent>``, then an optional breakdown.

    :param log: The task's logger.
    :param spent: The credits.
    :param breakdown: ``%``-format text appended to the line, e.g. ``" (%d by earlier tries)"``.
    :param args: Its arguments.
    """
    log.info("CoinStats credits spent by this task: %d" + breakdown, spent, *args)


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
