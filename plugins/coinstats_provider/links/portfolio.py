"""Operator extra link from a connect task to its portfolio in CoinStats."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink
from airflow.sdk.bases.xcom import BaseXCom

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

#: CoinStats web page of a portfolio. The API documents no per-portfolio web URL; this opens the
#: portfolio page of the signed-in CoinStats account with the id as a query parameter.
PORTFOLIO_URL = "https://coinstats.app/portfolio/?portfolioId={portfolio_id}"


def portfolio_url(portfolio_id: str, template: str = PORTFOLIO_URL) -> str:
    """Return the CoinStats web URL of a portfolio.

    :param portfolio_id: The portfolio.
    :param template: URL template with a ``{portfolio_id}`` placeholder.
    """
    return template.format(portfolio_id=quote(portfolio_id, safe=""))


class CoinStatsPortfolioLink(BaseOperatorLink):
    """ "CoinStats portfolio" button on connect tasks, read from the task's ``portfolio_url`` XCom."""

    name = "CoinStats portfolio"
    xcom_key = "portfolio_url"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        """Return the URL pushed by the task, or an empty string before it ran.

        :param operator: The operator.
        :param ti_key: The task instance.
        """
        value = BaseXCom.get_value(ti_key=ti_key, key=self.xcom_key)  # type: ignore[arg-type]
        return str(value) if value else ""
