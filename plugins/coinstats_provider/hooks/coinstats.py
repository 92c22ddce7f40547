"""CoinStatsHook: the CoinStats API endpoints, on the transport of :class:`CoinStatsBaseHook`."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from datetime import date, datetime
from typing import Any

from coinstats_provider.credits import credit_cost
from coinstats_provider.exceptions import (
    CoinStatsConfigError,
    CoinStatsError,
    CoinStatsResponseError,
    CoinStatsTruncatedAnswerError,
)
from coinstats_provider.hooks import date_filter, paging, support_cache, sync_wait
from coinstats_provider.hooks.coinstats_base import CoinStatsBaseHook
from coinstats_provider.hooks.connection import DEFAULT_CONN_NAME, DEFAULT_PAGE_SIZE
from coinstats_provider.hooks.errors import redact
from coinstats_provider.hooks.paging import DEFAULT_MAX_PAGES, PagedRoute, iter_pages
from coinstats_provider.models import (
    CHART_TYPES,
    ConnectResult,
    ConnectStatus,
    CreditUsage,
    SupportedBlockchain,
    SupportedExchange,
    SyncStatus,
)

#: Most pages of ``GET /portfolio/snapshot/items`` one stream reads (500 credits each).
SNAPSHOT_MAX_PAGES = 20


class CoinStatsHook(CoinStatsBaseHook):
    """Client for the CoinStats OpenAPI: exchange and wallet connect, delete, credit usage, sync and reads.

    Retries, redirects, credit accounting and the "paid write never re-sent" policy live in
    :class:`~coinstats_provider.hooks.coinstats_base.CoinStatsBaseHook`.

    :param coinstats_conn_id: Airflow connection of type ``coinstats``.
    :param timeout: Seconds per request; overrides the connection extra ``timeout``.
    :param max_retries: Retries per request; overrides the connection extra ``max_retries``.
    :param credit_budget: Maximum credits this hook may spend; overrides extra ``credit_budget``.
    """

    conn_name_attr = "coinstats_conn_id"
    default_conn_name = DEFAULT_CONN_NAME
    conn_type = "coinstats"
    hook_name = "CoinStats"

    # -- exchange connection ---------------------------------------------------------------------

    def get_supported_exchanges(self) -> list[SupportedExchange]:
        """Return ``GET /exchange/support`` (1 credit), cached in-process and on disk.

        The list is public and the same for every API key, so it is cached per base URL for the
        connection extra ``support_cache_ttl`` seconds (default 3600; 0 disables): a mapped run pays
        one credit per worker machine and hour instead of one per task. The disk copy lives in
        ``COINSTATS_CACHE_DIR`` or ``<tempdir>/coinstats-provider-<uid>`` (0700, owned by this user);
        any cache problem falls back to the network.
        """
        settings = self.settings
        return support_cache.supported_exchanges(
            settings.base_url, settings.support_cache_ttl, lambda: self.request("GET", "/exchange/support")
        )

    def connect_exchange_portfolio(
        self, connection_id: str, connection_fields: Mapping[str, str], name: str | None = None
    ) -> ConnectResult:
        """Connect an exchange account as a CoinStats portfolio (``POST /portfolio/exchange``, 10 credits).

        :param connection_id: CoinStats exchange id, e.g. ``binance``.
        :param connection_fields: Credentials keyed as ``GET /exchange/support`` lists them.
        :param name: Optional portfolio display name.
        """
        body: dict[str, Any] = {"connectionId": connection_id, "connectionFields": dict(connection_fields)}
        if name:
            body["name"] = name
        # POST /portfolio/exchange is idempotent on the CoinStats side: the same credentials answer
        # "existing" with the same portfolioId, so retrying after a timeout or 5xx is safe and cannot
        # create a second portfolio. A 2xx whose body is cut off is not re-sent (it was paid): it raises
        # CoinStatsTruncatedAnswerError, and the next try reconnects on purpose (the only way to learn the id).
        return self._connect("/portfolio/exchange", body, connection_id, tuple(connection_fields.values()))

    def _connect(
        self, path: str, body: Mapping[str, Any], connection_id: str, secrets: tuple[str, ...]
    ) -> ConnectResult:
        """Send one connect (``POST /portfolio/exchange`` or ``/portfolio/wallet``) and validate its answer.

        A 2xx whose body is cut off is never re-sent by the hook (it was paid); it raises a retryable
        :class:`CoinStatsTruncatedAnswerError`, so the task's next try reconnects on purpose: the only way to
        learn the portfolioId, and CoinStats answers ``existing`` the second time.

        :param path: The connect route.
        :param body: The JSON body.
        :param connection_id: The CoinStats exchange or blockchain id sent.
        :param secrets: Values in the body (besides the API key) to redact from every message.
        """
        try:
            data = self.request("POST", path, json_body=body, secrets=secrets)
        except CoinStatsTruncatedAnswerError as err:
            raise CoinStatsTruncatedAnswerError(
                f"CoinStats accepted the connect (POST {path} answered {err.status}) but its answer "
                f"was cut off or unreadable ({err.problem}), so the portfolioId is unknown. The portfolio exists "
                "on CoinStats; the hook does not send a paid write twice. The task's next try (or a rerun) "
                f"reconnects for {credit_cost('POST', path)} credits and CoinStats answers 'existing' with the "
                "same portfolioId.",
                cause=err.cause,
                retryable=True,
                status=err.status,
                problem=err.problem,
            ) from None
        return self._connect_result(path, data, connection_id, secrets)

    def _connect_result(self, path: str, data: Any, connection_id: str, secrets: tuple[str, ...]) -> ConnectResult:
        """Validate a ``ConnectPortfolioResponseDto`` (the answer of both connects).

        :param path: ``/portfolio/exchange`` or ``/portfolio/wallet``, for messages.
        :param data: Decoded JSON body.
        :param connection_id: The CoinStats exchange or blockchain id that was sent.
        :param secrets: Values (besides the API key) to redact from messages.
        """
        secrets = (self.settings.api_key, *secrets)
        if not isinstance(data, dict):
            raise CoinStatsResponseError(f"CoinStats POST {path} answered with a non-object body.")
        portfolio_id = data.get("portfolioId")
        if not isinstance(portfolio_id, str) or not portfolio_id.strip():
            raise CoinStatsResponseError(
                f"CoinStats POST {path} answered without a portfolioId; nothing can be synced. "
                "Retry later or contact CoinStats support."
            )
        raw_status = data.get("status")
        if raw_status not in {s.value for s in ConnectStatus}:
            shown = redact(str(raw_status), secrets)[:40]
            raise CoinStatsResponseError(
                f"CoinStats POST {path} answered an unknown status '{shown}' (expected 'connected' or 'existing')."
            )
        status = ConnectStatus(raw_status)
        answered_id = data.get("connectionId")
        if isinstance(answered_id, str) and answered_id != connection_id:
            self.log.warning(
                "CoinStats answered connectionId %r for a %r connect; keeping %r",
                redact(answered_id, secrets)[:40],
                connection_id,
                connection_id,
            )
        return ConnectResult(portfolio_id=portfolio_id, connection_id=connection_id, status=status)

    # -- wallet connection -----------------------------------------------------------------------

    def get_supported_blockchains(self) -> list[SupportedBlockchain]:
        """Return ``GET /wallet/blockchains`` (1 credit), cached like :meth:`get_supported_exchanges`.

        Same cache policy and connection extra ``support_cache_ttl``; the disk copy is a separate file.
        """
        settings = self.settings
        return support_cache.supported_blockchains(
            settings.base_url, settings.support_cache_ttl, lambda: self.request("GET", "/wallet/blockchains")
        )

    def connect_wallet_portfolio(self, connection_id: str, address: str, name: str | None = None) -> ConnectResult:
        """Connect a wallet address as a CoinStats portfolio (``POST /portfolio/wallet``, 40 credits).

        Idempotent like the exchange connect: the same address and blockchain answer ``existing`` with the
        same portfolioId (INFERRED, CONTRACT §4.1), so a retry after a timeout or 5xx is safe. The address
        is personal: it is redacted from every error message (``***``).

        :param connection_id: CoinStats blockchain id from ``GET /wallet/blockchains``, e.g. ``ethereum``.
        :param address: The wallet address.
        :param name: Optional portfolio display name.
        """
        if not address.strip():
            raise CoinStatsConfigError("connect_wallet_portfolio needs a wallet address; nothing was connected.")
        body: dict[str, Any] = {"address": address, "connectionId": connection_id}
        if name:
            body["name"] = name
        return self._connect("/portfolio/wallet", body, connection_id, (address,))

    # -- off-boarding ----------------------------------------------------------------------------

    def delete_portfolio(self, portfolio_id: str) -> None:
        """Delete an API-created portfolio (``DELETE /portfolio/{portfolioId}``, 10 credits).

        A 2xx answer proves the deletion, whatever its body (none is documented); it is never re-sent.

        :param portfolio_id: The portfolio to delete.
        """
        from urllib.parse import quote

        if not portfolio_id or not portfolio_id.strip():
            raise CoinStatsConfigError("delete_portfolio needs a portfolio_id; nothing was deleted.")
        self.request("DELETE", f"/portfolio/{quote(portfolio_id, safe='')}", need_body=False)

    # -- usage and connection test ---------------------------------------------------------------

    def get_credit_usage(self) -> CreditUsage:
        """Return ``GET /usage/credits`` (no stated cost)."""
        data = self.request("GET", "/usage/credits")
        try:
            return CreditUsage(
                total_credits=float(data["totalCredits"]),
                used_credits=float(data["usedCredits"]),
                remaining_credits=float(data["remainingCredits"]),
                subscription=redact(str(data.get("subscription") or "unknown"), (self.settings.api_key,))[:40],
            )
        except (KeyError, TypeError, ValueError):
            raise CoinStatsResponseError("CoinStats GET /usage/credits answered an unexpected body.") from None

    def test_connection(self) -> tuple[bool, str]:
        """Check the API key with a free authenticated call; never raises, never echoes a secret."""
        try:
            usage = self.get_credit_usage()
        except CoinStatsError as err:
            return False, str(err)
        except Exception as err:
            secrets = (self.__dict__["settings"].api_key,) if "settings" in self.__dict__ else ()
            return False, f"{type(err).__name__}: {redact(str(err), secrets)}"
        return True, (
            f"Connected to CoinStats at {self.settings.base_url}: {usage.remaining_credits:,.0f} of "
            f"{usage.total_credits:,.0f} credits left ({usage.subscription})."
        )

    # -- sync ------------------------------------------------------------------------------------

    def trigger_portfolio_sync(self, portfolio_id: str) -> None:
        """Start a sync of one portfolio (``PATCH /portfolio/sync``, 30 credits).

        :param portfolio_id: The portfolio; required, because without it CoinStats syncs every
            portfolio at 10x the cost.
        """
        if not portfolio_id:
            raise CoinStatsConfigError(
                "trigger_portfolio_sync needs a portfolio_id (without it CoinStats "
                "syncs every portfolio at 10x credits)."
            )
        # A 2xx answer means the sync started; a truncated body must not start (and pay for) a second one.
        data = self.request("PATCH", "/portfolio/sync", params={"portfolioId": portfolio_id}, need_body=False)
        if isinstance(data, dict) and data.get("success") is False:
            raise CoinStatsResponseError(f"CoinStats refused to sync portfolio {portfolio_id} (success=false).")

    @staticmethod
    def parse_sync_status(data: Any, secrets: Collection[str] = ()) -> SyncStatus:
        """Validate a ``GET /portfolio/status`` body.

        :param data: Decoded JSON body.
        :param secrets: Values to redact from the error message.
        """
        raw = data.get("status") if isinstance(data, dict) else None
        if raw not in {s.value for s in SyncStatus}:
            raise CoinStatsResponseError(
                f"CoinStats GET /portfolio/status answered an unknown status '{redact(str(raw), secrets)[:40]}' "
                "(expected 'syncing' or 'synced')."
            )
        return SyncStatus(raw)

    def get_portfolio_sync_status(self, portfolio_id: str) -> SyncStatus:
        """Return the sync status of a portfolio (``GET /portfolio/status``, 3 credits).

        :param portfolio_id: The portfolio.
        """
        data = self.request("GET", "/portfolio/status", params={"portfolioId": portfolio_id})
        return self.parse_sync_status(data, (self.settings.api_key,))

    async def aget_portfolio_sync_status(self, portfolio_id: str) -> SyncStatus:
        """Async :meth:`get_portfolio_sync_status`, for triggers.

        :param portfolio_id: The portfolio.
        """
        data = await self.arequest("GET", "/portfolio/status", params={"portfolioId": portfolio_id})
        return self.parse_sync_status(data, (self.settings.api_key,))

    # -- extract ---------------------------------------------------------------------------------

    def get_portfolio_value(self, portfolio_id: str, currency: str = "USD") -> dict[str, Any]:
        """Return ``GET /portfolio/value`` (10 credits), numbers decoded exactly (``Decimal``).

        :param portfolio_id: The portfolio.
        :param currency: Currency of the figures.
        """
        params = {"portfolioId": portfolio_id, "currency": currency}
        data = self.request("GET", "/portfolio/value", params=params, exact_numbers=True)
        if not isinstance(data, dict):
            raise CoinStatsResponseError("CoinStats GET /portfolio/value answered with a non-object body.")
        return data

    def _pages(
        self, route: PagedRoute, params: Mapping[str, Any], page_size: int, start_page: int, max_pages: int
    ) -> Iterator[list[dict[str, Any]]]:
        def fetch(page: int, limit: int) -> Any:
            return self.request("GET", route.path, params={**params, "page": page, "limit": limit}, exact_numbers=True)

        return iter_pages(fetch, route, page_size=page_size, start_page=start_page, max_pages=max_pages)

    def iter_portfolio_coins(
        self,
        portfolio_id: str,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        start_page: int = 1,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of ``GET /portfolio/coins`` (8 credits per page) until the end is proven.

        Paging checks (server caps, repeated pages, a list that shifts): :mod:`coinstats_provider.hooks.paging`.

        :param portfolio_id: The portfolio.
        :param page_size: Items per page (``limit``), 1 to 100.
        :param start_page: First page to fetch (1-based).
        :param max_pages: Most pages to read.
        """
        params = {"portfolioId": portfolio_id}
        return self._pages(paging.COINS, params, page_size, start_page, max_pages)

    def iter_portfolio_transactions(
        self,
        portfolio_id: str,
        *,
        currency: str = "USD",
        page_size: int = DEFAULT_PAGE_SIZE,
        start_page: int = 1,
        max_pages: int = DEFAULT_MAX_PAGES,
        since: datetime | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of ``GET /portfolio/transactions`` (4 credits per page) until the end is proven.

        Raises :class:`~coinstats_provider.exceptions.CoinStatsListChangedError` when the list shifts
        between page reads (see :mod:`coinstats_provider.hooks.paging`); restart the stream then.

        :param portfolio_id: The portfolio.
        :param currency: Required by CoinStats on this route.
        :param page_size: Items per page (``limit``), 1 to 100.
        :param start_page: First page to fetch (1-based).
        :param max_pages: Most pages to read.
        :param since: Only transactions from this moment on (the undocumented ``from`` filter, see
            :mod:`coinstats_provider.hooks.date_filter`); raises
            :class:`~coinstats_provider.exceptions.CoinStatsFilterIgnoredError` when an answer shows the
            filter was not applied. ``None`` reads the whole list.
        """
        params = {"portfolioId": portfolio_id, "currency": currency or "USD"}
        if since is None:
            return self._pages(paging.TRANSACTIONS, params, page_size, start_page, max_pages)
        params["from"] = date_filter.from_param(since)
        pages = self._pages(paging.TRANSACTIONS, params, page_size, start_page, max_pages)
        return date_filter.filtered_pages(pages, since, path=paging.TRANSACTIONS.path)

    def get_portfolio_chart(self, portfolio_id: str, chart_type: str) -> list[list[Any]]:
        """Return the points of ``GET /portfolio/chart`` (10 credits): ``[timestamp, USD, BTC, ETH]`` each.

        The chart type is checked before the call (a wrong one would still be charged). Points are returned
        as CoinStats sent them, numbers exact (``Decimal``); whether a timestamp is in seconds or
        milliseconds is decided by :func:`coinstats_provider.warehouse.transform.chart_rows`.

        :param portfolio_id: The portfolio.
        :param chart_type: One of ``24h``, ``1w``, ``1m``, ``3m``, ``6m``, ``1y``, ``all``.
        :raises CoinStatsConfigError: On another chart type (nothing is sent).
        """
        check_chart_type(chart_type)
        params = {"portfolioId": portfolio_id, "type": chart_type}
        data = self.request("GET", "/portfolio/chart", params=params, exact_numbers=True)
        points = data.get("result") if isinstance(data, dict) else None
        if not isinstance(points, list):
            raise CoinStatsResponseError("CoinStats GET /portfolio/chart answered without a list under 'result'.")
        return points

    def get_portfolio_defi(self, portfolio_id: str) -> dict[str, Any]:
        """Return ``GET /portfolio/defi`` (400 credits): ``{"totalAssets", "protocols": [...]}``.

        CoinStats serves DeFi positions for wallet portfolios only (those from ``POST /portfolio/wallet``);
        callers decide before paying (see :class:`~coinstats_provider.operators.load.LoadPortfolioOperator`).

        :param portfolio_id: A wallet portfolio.
        """
        data = self.request("GET", "/portfolio/defi", params={"portfolioId": portfolio_id}, exact_numbers=True)
        if not isinstance(data, dict):
            raise CoinStatsResponseError("CoinStats GET /portfolio/defi answered with a non-object body.")
        protocols = data.get("protocols")
        if protocols is None:
            # INFERRED: a wallet without positions may omit the list; the schema marks it required.
            return {**data, "protocols": []}
        if not isinstance(protocols, list):
            raise CoinStatsResponseError("CoinStats GET /portfolio/defi answered 'protocols' that is not a list.")
        return data

    def iter_portfolio_snapshots(
        self,
        portfolio_id: str,
        *,
        date_from: date,
        date_to: date,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_pages: int = SNAPSHOT_MAX_PAGES,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of ``GET /portfolio/snapshot/items`` (500 credits per page) between two days.

        CoinStats answers ``{"result": [...]}`` in chronological order and no paging meta (CONTRACT §3):
        whether the route really pages is not documented, so it is read like the other paged routes
        (a short page ends the stream; a repeated page is refused instead of paid for again).

        :param portfolio_id: The portfolio.
        :param date_from: First day (``from``, ``YYYY-MM-DD``).
        :param date_to: Last day (``to``, ``YYYY-MM-DD``).
        :param page_size: Items per page (``limit``), 1 to 100.
        :param max_pages: Most pages to read (each costs 500 credits).
        :raises CoinStatsConfigError: When ``date_from`` is after ``date_to`` (nothing is sent).
        """
        if date_from > date_to:
            raise CoinStatsConfigError(
                f"Snapshot window from {date_from.isoformat()} to {date_to.isoformat()} is empty: 'from' is after "
                "'to'. Pass the earlier day as date_from."
            )
        params = {"portfolioId": portfolio_id, "from": date_from.isoformat(), "to": date_to.isoformat()}
        return self._pages(paging.SNAPSHOTS, params, page_size, 1, max_pages)

    # -- waiting for a sync ----------------------------------------------------------------------

    def wait_for_sync(
        self, portfolio_id: str, *, deadline: float, poll_interval: float, max_polls: int | None = None
    ) -> sync_wait.SyncWaitResult:
        """Poll the sync status on this thread until ``synced``, the deadline or ``max_polls`` (3 credits a poll).

        The poll policy is :mod:`coinstats_provider.hooks.sync_wait`'s, shared with :meth:`await_sync`.

        :param portfolio_id: The portfolio being synced.
        :param deadline: Epoch seconds after which the wait ends with ``timeout``.
        :param poll_interval: Seconds between polls (the first one too).
        :param max_polls: Polls this wait may make; ``None`` for no limit.
        """
        return sync_wait.wait_for_sync(
            self, portfolio_id, deadline=deadline, poll_interval=poll_interval, max_polls=max_polls
        )

    async def await_sync(
        self,
        portfolio_id: str,
        *,
        deadline: float,
        poll_interval: float,
        max_polls: int | None = None,
        earlier_polls: int = 0,
        resumed: bool = False,
    ) -> sync_wait.SyncWaitResult:
        """Async :meth:`wait_for_sync` for triggers; CoinStats charges each poll at most once.

        :param portfolio_id: The portfolio being synced.
        :param deadline: Epoch seconds after which the wait ends with ``timeout``.
        :param poll_interval: Seconds between polls (the first one too).
        :param max_polls: Polls the whole wait may make, ``earlier_polls`` included; ``None`` for no limit.
        :param earlier_polls: Polls earlier incarnations of this wait may have made.
        :param resumed: This wait takes over one begun earlier (a rebuilt trigger).
        """
        return await sync_wait.await_sync(
            self,
            portfolio_id,
            deadline=deadline,
            poll_interval=poll_interval,
            max_polls=max_polls,
            earlier_polls=earlier_polls,
            resumed=resumed,
        )


def check_chart_type(chart_type: Any) -> str:
    """Return ``chart_type`` when CoinStats knows it, else raise before anything is paid.

    :param chart_type: The requested chart type.
    :raises CoinStatsConfigError: Naming the allowed values.
    """
    if chart_type not in CHART_TYPES:
        shown = str(chart_type)[:20]
        raise CoinStatsConfigError(
            f"Chart type {shown!r} is not one CoinStats serves. Choose one of {', '.join(CHART_TYPES)} "
            "(the DAG's chart_type Param or the operator's chart_type argument)."
        )
    return str(chart_type)
