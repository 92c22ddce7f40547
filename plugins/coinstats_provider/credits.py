"""CoinStats credit costs (CONTRACT §4.5) and a per-hook meter that enforces an optional budget."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from coinstats_provider.exceptions import CoinStatsCreditBudgetExceeded

#: Credits per request the hook sends, by (method, path) (CONTRACT §4.5). ``/usage/credits`` has no stated
#: cost and is treated as free.
CREDIT_COSTS: Mapping[tuple[str, str], int] = {
    ("GET", "/exchange/support"): 1,
    ("POST", "/portfolio/exchange"): 10,
    ("GET", "/wallet/blockchains"): 1,
    ("POST", "/portfolio/wallet"): 40,
    ("DELETE", "/portfolio/{portfolioId}"): 10,
    ("GET", "/portfolio/status"): 3,
    ("PATCH", "/portfolio/sync"): 30,
    ("GET", "/portfolio/value"): 10,
    ("GET", "/portfolio/coins"): 8,
    ("GET", "/portfolio/transactions"): 4,
    ("GET", "/portfolio/chart"): 10,
    ("GET", "/portfolio/defi"): 400,
    ("GET", "/portfolio/snapshot/items"): 500,
    ("GET", "/usage/credits"): 0,
}

#: Routes whose path carries a parameter: (method, path prefix) -> the key of :data:`CREDIT_COSTS`.
_PATH_TEMPLATES: Mapping[tuple[str, str], tuple[str, str]] = {
    ("DELETE", "/portfolio/"): ("DELETE", "/portfolio/{portfolioId}"),
}

#: Routes that cost 10x when called without ``portfolioId`` ("all portfolios").
_ALL_PORTFOLIOS_MULTIPLIED = frozenset({("PATCH", "/portfolio/sync")})

#: ``GET /exchange/support``.
SUPPORT_COST = CREDIT_COSTS[("GET", "/exchange/support")]
#: ``POST /portfolio/exchange`` (connect one exchange account).
CONNECT_COST = CREDIT_COSTS[("POST", "/portfolio/exchange")]
#: ``GET /wallet/blockchains`` (the blockchains a wallet can be connected on).
BLOCKCHAINS_COST = CREDIT_COSTS[("GET", "/wallet/blockchains")]
#: ``POST /portfolio/wallet`` (connect one wallet address).
WALLET_CONNECT_COST = CREDIT_COSTS[("POST", "/portfolio/wallet")]
#: ``DELETE /portfolio/{portfolioId}`` (delete one API-created portfolio).
DELETE_COST = CREDIT_COSTS[("DELETE", "/portfolio/{portfolioId}")]
#: ``PATCH /portfolio/sync`` of one portfolio (with ``portfolioId``; without it the cost is 10x).
SYNC_COST = CREDIT_COSTS[("PATCH", "/portfolio/sync")]
#: ``GET /portfolio/status``: one sync status poll.
POLL_COST = CREDIT_COSTS[("GET", "/portfolio/status")]
#: ``GET /portfolio/value``.
VALUE_COST = CREDIT_COSTS[("GET", "/portfolio/value")]
#: One page of ``GET /portfolio/coins``.
COINS_PAGE_COST = CREDIT_COSTS[("GET", "/portfolio/coins")]
#: One page of ``GET /portfolio/transactions``.
TRANSACTIONS_PAGE_COST = CREDIT_COSTS[("GET", "/portfolio/transactions")]
#: ``GET /portfolio/chart`` (one chart type).
CHART_COST = CREDIT_COSTS[("GET", "/portfolio/chart")]
#: ``GET /portfolio/defi`` (wallet portfolios only).
DEFI_COST = CREDIT_COSTS[("GET", "/portfolio/defi")]
#: One page of ``GET /portfolio/snapshot/items``.
SNAPSHOT_PAGE_COST = CREDIT_COSTS[("GET", "/portfolio/snapshot/items")]


def route_key(method: str, path: str) -> tuple[str, str]:
    """The :data:`CREDIT_COSTS` key of a request: ``DELETE /portfolio/abc`` is ``DELETE /portfolio/{portfolioId}``.

    :param method: HTTP method.
    :param path: API path without query string, with its parameters filled in.
    """
    method = method.upper()
    for (template_method, prefix), key in _PATH_TEMPLATES.items():
        rest = path.removeprefix(prefix)
        if method == template_method and rest != path and rest and "/" not in rest:
            return key
    return method, path


def credit_cost(method: str, path: str, params: Mapping[str, Any] | None = None) -> int:
    """Return the credits one request costs.

    :param method: HTTP method.
    :param path: API path without query string.
    :param params: Query parameters; a missing ``portfolioId`` on sync multiplies the cost by 10.
    """
    key = route_key(method, path)
    try:
        base = CREDIT_COSTS[key]
    except KeyError:
        raise ValueError(f"No credit cost is known for {method} {path}; add it to CREDIT_COSTS") from None
    if key in _ALL_PORTFOLIOS_MULTIPLIED and not (params or {}).get("portfolioId"):
        return base * 10
    return base


class CreditMeter:
    """Counts the credits a hook spends and refuses a call that would exceed ``budget``.

    A request counts as spent when CoinStats answered 2xx (whether failed requests are billed is not
    documented); failed attempts that were retried are counted in ``retries``.

    A task's budget covers all tries of its task instance: :meth:`carry_over` starts the meter at what
    earlier tries spent, so :attr:`spent` is the task instance's total and a try only gets what is left.

    :param budget: Maximum credits this meter may spend; ``None`` means unlimited.
    """

    def __init__(self, budget: int | None = None) -> None:
        if budget is not None and budget < 0:
            raise ValueError("credit budget must be >= 0")
        self.budget = budget
        #: Credits charged against the budget: earlier tries' (see :meth:`carry_over`) plus this meter's calls.
        self.spent = 0
        #: Part of :attr:`spent` that earlier tries of the task instance spent.
        self.earlier = 0
        self.calls: Counter[str] = Counter()
        self.retries = 0
        #: Called with :attr:`spent` after every answered (paid) request, e.g. to persist it.
        self.on_spend: Callable[[int], None] | None = None

    @property
    def remaining(self) -> int | None:
        """Credits left under the budget, or ``None`` when unlimited."""
        return None if self.budget is None else self.budget - self.spent

    @property
    def spent_this_try(self) -> int:
        """Credits this meter's own calls spent (without earlier tries)."""
        return self.spent - self.earlier

    def carry_over(
        self, earlier: int, on_spend: Callable[[int], None] | None = None, *, state_key: str = "coinstats_credits_spent"
    ) -> None:
        """Count what earlier tries of the task instance spent against the budget, then check something is left.

        :param earlier: Credits earlier tries spent (from Airflow's task state store).
        :param on_spend: Called with the new total after every paid request.
        :param state_key: Task state store key holding ``earlier``, named in the error message.
        :raises CoinStatsCreditBudgetExceeded: When earlier tries used up the whole budget (fail fast).
        """
        if earlier < 0:
            raise ValueError("credits spent by earlier tries must be >= 0")
        self.spent += earlier - self.earlier
        self.earlier = earlier
        self.on_spend = on_spend
        if earlier and self.budget is not None and self.spent >= self.budget:
            raise CoinStatsCreditBudgetExceeded(
                f"Credit budget used up: earlier tries of this task spent {self.spent} of its budget of "
                f"{self.budget} credits, so this try cannot send a paid request. Retrying cannot help: raise "
                "the budget (the DAG's credit budget Param or connection extra 'credit_budget') in a new DAG "
                f"run, or delete the task state key '{state_key}' of this task instance to grant it a fresh "
                "budget."
            )

    def check(self, method: str, path: str, cost: int) -> None:
        """Raise :class:`CoinStatsCreditBudgetExceeded` if ``cost`` does not fit the budget.

        :param method: HTTP method of the call about to be sent.
        :param path: Its path.
        :param cost: Its credit cost.
        """
        if self.budget is not None and self.spent + cost > self.budget:
            earlier = f", {self.earlier} of them by earlier tries of this task" if self.earlier else ""
            raise CoinStatsCreditBudgetExceeded(
                f"Credit budget exceeded: {method} {path} costs {cost} credits, {self.spent} of the "
                f"budget of {self.budget} are already spent{earlier}. The call was not sent. Raise the budget "
                "(connection extra 'credit_budget' or the DAG's credit budget Param) or sync fewer datasets."
            )

    def record(self, method: str, path: str, cost: int) -> None:
        """Count one answered (2xx) request.

        :param method: HTTP method.
        :param path: API path.
        :param cost: Credits it cost.
        """
        self.spent += cost
        self.calls[" ".join(route_key(method, path))] += 1
        if self.on_spend is not None:
            self.on_spend(self.spent)
