"""CoinStats credit costs (CONTRACT §4.5) and a per-hook meter that enforces an optional budget."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from coinstats_provider.exceptions import CoinStatsCreditBudgetExceeded

#: Credits per request, by (method, path). ``/usage/credits`` has no stated cost and is treated as free.
CREDIT_COSTS: Mapping[tuple[str, str], int] = {
    ("GET", "/exchange/support"): 1,
    ("POST", "/portfolio/exchange"): 10,
    ("GET", "/exchange/status"): 3,
    ("PATCH", "/exchange/sync"): 20,
    ("GET", "/portfolio/status"): 3,
    ("PATCH", "/portfolio/sync"): 30,
    ("GET", "/portfolio/value"): 10,
    ("GET", "/portfolio/coins"): 8,
    ("GET", "/portfolio/transactions"): 4,
    ("GET", "/usage/credits"): 0,
}

#: Routes that cost 10x when called without ``portfolioId`` ("all portfolios").
_ALL_PORTFOLIOS_MULTIPLIED = frozenset({("PATCH", "/portfolio/sync")})


def credit_cost(method: str, path: str, params: Mapping[str, Any] | None = None) -> int:
    """Return the credits one request costs.

    :param method: HTTP method.
    :param path: API path without query string.
    :param params: Query parameters; a missing ``portfolioId`` on sync multiplies the cost by 10.
    """
    key = (method.upper(), path)
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

    :param budget: Maximum credits this meter may spend; ``None`` means unlimited.
    """

    def __init__(self, budget: int | None = None) -> None:
        if budget is not None and budget < 0:
            raise ValueError("credit budget must be >= 0")
        self.budget = budget
        self.spent = 0
        self.calls: Counter[str] = Counter()
        self.retries = 0

    @property
    def remaining(self) -> int | None:
        """Credits left under the budget, or ``None`` when unlimited."""
        return None if self.budget is None else self.budget - self.spent

    def check(self, method: str, path: str, cost: int) -> None:
        """Raise :class:`CoinStatsCreditBudgetExceeded` if ``cost`` does not fit the budget.

        :param method: HTTP method of the call about to be sent.
        :param path: Its path.
        :param cost: Its credit cost.
        """
        if self.budget is not None and self.spent + cost > self.budget:
            raise CoinStatsCreditBudgetExceeded(
                f"Credit budget exceeded: {method} {path} costs {cost} credits, {self.spent} of the "
                f"budget of {self.budget} are already spent. The call was not sent. Raise the budget "
                "(connection extra 'credit_budget' or the DAG's credit budget Param) or sync fewer datasets."
            )

    def record(self, method: str, path: str, cost: int) -> None:
        """Count one answered (2xx) request.

        :param method: HTTP method.
        :param path: API path.
        :param cost: Credits it cost.
        """
        self.spent += cost
        self.calls[f"{method} {path}"] += 1
