"""Operator extra link from a connect task to CoinStats' portfolio tracker (see ``PORTFOLIO_URL``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink
from airflow.sdk.bases.xcom import BaseXCom

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

#: Where the link points. CoinStats documents no web URL for a single portfolio created through the API
#: (POST /portfolio/exchange): its docs name only https://coinstats.app/portfolio (the signed-in
#: account's portfolio tracker, linked from the share-token instructions) and share links
#: https://coinstats.app/p/<share token>, which need a token the API does not return. So the link opens
#: the portfolio tracker; the portfolioId is in the task's return value. A template with a
#: ``{portfolio_id}`` placeholder can be passed to :func:`portfolio_url` once such a URL exists.
PORTFOLIO_URL = "https://coinstats.app/portfolio"


def portfolio_url(portfolio_id: str, template: str = PORTFOLIO_URL) -> str:
    """Return the CoinStats web page for a portfolio (see :data:`PORTFOLIO_URL`).

    :param portfolio_id: The portfolio.
    :param template: URL, optionally with a ``{portfolio_id}`` placeholder (filled URL-quoted).
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
