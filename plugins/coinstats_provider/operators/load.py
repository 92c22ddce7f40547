"""LoadPortfolioOperator: stream one dataset of one portfolio from CoinStats into the warehouse."""

from __future__ import annotations

import ast
import datetime as dt
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from coinstats_provider.exceptions import CoinStatsConfigError, CoinStatsError, CoinStatsListChangedError
from coinstats_provider.hooks.connection import DEFAULT_CONN_NAME, DEFAULT_PAGE_SIZE
from coinstats_provider.models import CHART_TYPES, DEFAULT_CHART_TYPE, PORTFOLIO_KINDS
from coinstats_provider.operators import _transactions
from coinstats_provider.operators._common import (
    PORTFOLIO_MAP_INDEX_TEMPLATE,
    fail_fast,
    failing_fast,
    log_credits_spent,
    meter_across_tries,
    parse_credit_budget,
    push_credits_spent,
    with_map_index_template,
)
from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS, WAREHOUSE_CONN_NAME

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context
    from airflow.sdk.types import Logger

    from coinstats_provider.hooks.coinstats import CoinStatsHook
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse, ReconcileResult

#: Dataset -> the table it loads (the warehouse schema's map).
TABLES = DATASET_TABLES
PROGRESS_EVERY_PAGES = 10
#: Reads of one stream again, within one try, after CoinStats' list changed between page reads.
MAX_STREAM_RESTARTS = 2


def run_date(context: Context) -> dt.date | None:
    """The date a run is for: its data interval end, else its logical date, else its run-after time.

    :param context: Task context.
    """
    for key in ("data_interval_end", "logical_date"):
        value = context.get(key)
        if isinstance(value, dt.datetime):
            return value.date()
    dag_run = context.get("dag_run")
    run_after = getattr(dag_run, "run_after", None)
    if isinstance(run_after, dt.datetime):
        return run_after.date()
    return None


def snapshot_date(context: Context, log: Logger | None = None, *, now: dt.datetime | None = None) -> dt.date:
    """The date a ``value``/``coins`` snapshot is stamped with: the UTC date its data is fetched.

    CoinStats only serves a portfolio's current value and holdings, never past ones. Stamping them with
    the run's data-interval date would let a cleared or late old run overwrite that day's snapshot with
    today's numbers. So the snapshot carries the date the data was fetched: for the scheduled daily run
    (started at midnight UTC) that is its data-interval end, as before; for an old run it is today, the
    old day's snapshot is left as it was, and a warning says so. Skipping old runs instead would lose the
    data of a failed run that is retried or cleared after midnight.

    :param context: Task context.
    :param log: Logger for the warning when the date differs from the run's date.
    :param now: Current time (for tests); defaults to now in UTC.
    """
    fetched = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).date()
    scheduled = run_date(context)
    if log is not None and scheduled is not None and scheduled != fetched:
        log.warning(
            "This run is for %s, but CoinStats only serves current data: the snapshot is recorded under %s, the "
            "date it is fetched, and the snapshot of %s is left unchanged",
            scheduled,
            fetched,
            scheduled,
        )
    return fetched


def snapshot_window(context: Context, *, now: dt.datetime | None = None) -> tuple[dt.date, dt.date]:
    """The days ``GET /portfolio/snapshot/items`` is asked for: the run's data interval, start to end.

    A daily run for the interval ``[D-1 00:00, D 00:00)`` asks ``from=D-1&to=D`` (the snapshots are
    upserted, so the day both windows share is simply rewritten). Without a data interval (a manual run)
    the window is the run's date alone; without any date, today (UTC).

    :param context: Task context.
    :param now: Current time (for tests); defaults to now in UTC.
    """
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if isinstance(start, dt.datetime) and isinstance(end, dt.datetime):
        first, last = start.astimezone(dt.UTC).date(), end.astimezone(dt.UTC).date()
        if first <= last:
            return first, last
    day = run_date(context) or (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).date()
    return day, day


def selected_datasets(value: Any, task_id: str) -> frozenset[str] | None:
    """Read the ``datasets`` a run selected; ``None`` selects every dataset.

    Accepts a list, tuple or set of dataset names (the DAG renders its Param as a native list), its text
    as a JSON or Python list (a template rendered to text), or dataset names separated by commas.

    :param value: The rendered ``datasets`` argument.
    :param task_id: The task, for the message.
    :raises AirflowFailException: Anything else, or an unknown dataset name (retrying cannot help).
    """
    if value is None:
        return None
    names: Any = value
    if isinstance(value, str):
        text = value.strip()
        names = _list_text(text) if text.startswith("[") else [part.strip() for part in text.split(",")]
    if not isinstance(names, list | tuple | set | frozenset) or not all(isinstance(name, str) for name in names):
        names = None
    unknown = sorted(set(names or ()) - set(DATASETS))
    if names is None or unknown:
        cause = f"unknown dataset '{unknown[0]}'" if unknown else f"cannot read {str(value)[:60]!r}"
        raise AirflowFailException(
            f"Task {task_id}: datasets: {cause}. Give a list of dataset names from {', '.join(DATASETS)} "
            "(or one name); fix the task's datasets argument or the DAG's datasets Param."
        )
    return frozenset(names)


def _list_text(text: str) -> Any:
    """A list written as JSON or as a Python literal (``None`` when it is neither)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


class LoadPortfolioOperator(BaseOperator):
    """Extract one dataset of a portfolio (``value``, ``coins``, ``transactions``, ``chart``, ``defi``,
    ``snapshot``) and load it exactly once.

    Pages flow from the hook's generators into the warehouse in batches, so memory does not grow with
    the number of rows. ``value`` and ``coins`` replace the portfolio's snapshot of the run's date;
    ``transactions`` mirror CoinStats: after a complete stream the portfolio's rows are exactly the
    transactions seen (keyed by CoinStats ids or identifying fields, see :mod:`coinstats_provider.warehouse.transform`);
    new ones are inserted, edited ones updated, vanished ones removed. Rows are staged while pages
    arrive and merged in one short database transaction, so a rerun (or a crash and rerun) leaves the
    table as after one run. ``chart`` (one chart type) and ``snapshot`` (the run's data interval) are
    upserted by key; ``defi`` replaces the portfolio's positions of the day like ``coins``, and is only
    served for wallet portfolios: for an exchange portfolio the task logs why and succeeds with 0 rows and
    0 credits, sending nothing. An item that cannot be stored exactly fails the task without retries.
    Returns ``{"portfolio_id", "dataset", "table", "rows", "pages", "credits_spent"}``, plus
    ``"inserted", "updated", "removed"`` for ``transactions``.

    ``transactions_mode="incremental"`` reads only the transactions since the newest one loaded minus
    ``transactions_overlap_hours`` and never deletes, with a full reconcile every ``full_every_days`` (and
    whenever an incremental read cannot be trusted); see :mod:`coinstats_provider.operators._transactions`.
    The transactions result then also carries ``"mode"``, ``"mode_requested"``, ``"mode_reason"``, ``"read"``,
    ``"credits_saved"`` and ``"full_read_credits"``.

    :param portfolio_id: The portfolio.
    :param dataset: One of :data:`~coinstats_provider.warehouse.schema.DATASETS`.
    :param datasets: Datasets selected for this run; the task skips (0 credits) when ``dataset`` is not in it.
    :param coinstats_conn_id: CoinStats connection.
    :param warehouse_conn_id: SQL connection (SQLite or PostgreSQL) of the warehouse.
    :param currency: Currency of values and transactions.
    :param page_size: Items per CoinStats page (1 to 100).
    :param credit_budget: Credits this task instance may spend over all its tries (what earlier tries spent
        is kept in the task state store); ``None`` for no limit. A mapping of dataset to credits (what
        :func:`~coinstats_provider.pipeline.plan_dataset_budgets` plans) gives this task its dataset's entry.
    :param hook_params: Keyword arguments for :class:`CoinStatsHook`.
    :param max_stream_restarts: How often one try reads a stream again from its first page when the list
        changed upstream between page reads (see :mod:`coinstats_provider.hooks.paging`).
    :param transactions_mode: ``full`` (the whole list, reconciled, every run) or ``incremental``.
    :param transactions_overlap_hours: How far before the newest loaded transaction an incremental read starts.
    :param full_every_days: Longest time between two full reconciles in incremental mode.
    :param account: The account (connection id) the portfolio belongs to; labels the task in the grid.
    :param chart_type: Chart of the ``chart`` dataset: ``24h``, ``1w``, ``1m``, ``3m``, ``6m``, ``1y`` or ``all``.
    :param portfolio_kind: ``exchange`` or ``wallet``: how the portfolio was connected (``defi`` needs a wallet).
    """

    template_fields: Sequence[str] = (
        "portfolio_id",
        "dataset",
        "datasets",
        "coinstats_conn_id",
        "warehouse_conn_id",
        "currency",
        "credit_budget",
        *_transactions.TEMPLATE_FIELDS,
        "account",
        "chart_type",
        "portfolio_kind",
    )
    ui_color = "#b5e3b0"

    def __init__(
        self,
        *,
        portfolio_id: str,
        dataset: str,
        datasets: Iterable[str] | str | None = None,
        coinstats_conn_id: str = DEFAULT_CONN_NAME,
        warehouse_conn_id: str = WAREHOUSE_CONN_NAME,
        currency: str = "USD",
        page_size: int = DEFAULT_PAGE_SIZE,
        credit_budget: int | str | Mapping[str, int | None] | None = None,
        hook_params: dict[str, Any] | None = None,
        max_stream_restarts: int = MAX_STREAM_RESTARTS,
        transactions_mode: str = _transactions.DEFAULT_MODE,
        transactions_overlap_hours: float | str = _transactions.DEFAULT_OVERLAP_HOURS,
        full_every_days: float | str = _transactions.DEFAULT_FULL_EVERY_DAYS,
        account: str | None = None,
        chart_type: str = DEFAULT_CHART_TYPE,
        portfolio_kind: str = "exchange",
        **kwargs: Any,
    ) -> None:
        super().__init__(**with_map_index_template(kwargs, PORTFOLIO_MAP_INDEX_TEMPLATE))
        self.portfolio_id = portfolio_id
        self.account = account
        self.dataset = dataset
        self.datasets = datasets
        self.coinstats_conn_id = coinstats_conn_id
        self.warehouse_conn_id = warehouse_conn_id
        self.currency = currency
        self.page_size = page_size
        self.credit_budget = credit_budget
        self.hook_params = hook_params or {}
        if max_stream_restarts < 0:
            raise ValueError("max_stream_restarts must be >= 0")
        self.max_stream_restarts = max_stream_restarts
        self.transactions_mode = transactions_mode
        self.transactions_overlap_hours = transactions_overlap_hours
        self.full_every_days = full_every_days
        self.chart_type = chart_type
        self.portfolio_kind = portfolio_kind
        self._pages = 0
        self._transactions: _transactions.TransactionsLoad | None = None

    @cached_property
    def hook(self) -> CoinStatsHook:
        """The CoinStats hook, limited to this task's credit budget."""
        from coinstats_provider.hooks.coinstats import CoinStatsHook  # built on first use, not at parse time

        budget = parse_credit_budget(self._own_budget(), self.task_id)
        return CoinStatsHook(self.coinstats_conn_id, credit_budget=budget, **self.hook_params)

    def _own_budget(self) -> Any:
        """This dataset's budget: ``credit_budget`` itself, or its entry when it maps datasets to budgets."""
        if isinstance(self.credit_budget, Mapping):
            return self.credit_budget.get(self.dataset)
        return self.credit_budget

    def _selected(self) -> bool:
        chosen = selected_datasets(self.datasets, self.task_id)
        return chosen is None or self.dataset in chosen

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage[Any, Any]:
        """OpenLineage: the portfolio's CoinStats dataset in, its warehouse table out (schema, rows written).

        :param task_instance: The finished task instance (unused).
        """
        from coinstats_provider.openlineage import load_lineage

        rows = getattr(self, "_lineage_rows", None)
        return load_lineage(self.hook.settings.base_url, self.portfolio_id, self.dataset, self.warehouse_conn_id, rows)

    def execute(self, context: Context) -> dict[str, Any]:
        """Extract and load; log progress and credits; return a small summary."""
        if self.dataset not in DATASETS:
            raise AirflowFailException(f"Unknown dataset '{self.dataset}'; choose from {', '.join(DATASETS)}.")
        if not self._selected():
            raise AirflowSkipException(f"Dataset '{self.dataset}' is not selected for this run.")
        self._check_arguments()
        if self.dataset == "defi" and self.portfolio_kind != "wallet":
            return self._defi_not_served(context)
        with failing_fast(f"Loading {self.dataset} of portfolio {self.portfolio_id}"):
            # Reads the connection; this try may only spend what earlier tries left of the budget.
            meter_across_tries(self.hook.credits, context)
        day = snapshot_date(context, self.log)
        self._window = snapshot_window(context)
        if self.dataset == "snapshot":
            self.log.info("Snapshots of portfolio %s from %s to %s", self.portfolio_id, *self._window)
        from coinstats_provider.warehouse import transform  # at run time, not at parse time
        from coinstats_provider.warehouse.loader import CoinStatsWarehouse

        warehouse = CoinStatsWarehouse(self.warehouse_conn_id)
        warehouse.ensure_schema()
        self._pages = 0
        self._reconciled: ReconcileResult | None = None
        self._transactions = self._transactions_load(warehouse) if self.dataset == "transactions" else None
        self._outcome: _transactions.TransactionsOutcome | None = None
        try:
            rows = self._load_whole(warehouse, day)
        except CoinStatsError as err:
            raise fail_fast(err, f"Loading {self.dataset} of portfolio {self.portfolio_id}") from err
        except transform.InvalidItemError as err:
            raise AirflowFailException(
                f"Loading {self.dataset} of portfolio {self.portfolio_id} failed and retrying cannot help: {err}. "
                "CoinStats returned a value that cannot be stored exactly; nothing was written. Correct or remove "
                "that item in CoinStats (or report the API response), then rerun."
            ) from None
        finally:
            # The meter exists here: meter_across_tries() read the connection before the load began.
            push_credits_spent(context, self.hook.credits_spent)
            log_credits_spent(self.log, self.hook.credits_spent)
        table = TABLES[self.dataset]
        if self.dataset == "chart":
            self.log.info("Chart type %s of portfolio %s: %d points upserted", self.chart_type, self.portfolio_id, rows)
        self._lineage_rows = rows  # reported to OpenLineage as the rows written
        self.log.info(
            "Loaded %d %s rows of portfolio %s into %s (snapshot %s)", rows, self.dataset, self.portfolio_id, table, day
        )
        result: dict[str, Any] = {
            "portfolio_id": self.portfolio_id,
            "dataset": self.dataset,
            "table": table,
            "rows": rows,
            "pages": self._pages,
            "credits_spent": self.hook.credits.spent,
        }
        if self._reconciled is not None:
            changes = self._reconciled
            result.update(inserted=changes.inserted, updated=changes.updated, removed=changes.removed)
            self.log.info(
                "Transactions of portfolio %s now mirror CoinStats: %d inserted, %d updated, %d removed, %d unchanged",
                self.portfolio_id,
                changes.inserted,
                changes.updated,
                changes.removed,
                changes.unchanged,
            )
        if self._outcome is not None:
            result.update(self._outcome.result())
        return result

    def _transactions_load(self, warehouse: CoinStatsWarehouse) -> _transactions.TransactionsLoad:
        """The transactions load of this try, its settings checked (a bad one fails without retries)."""
        try:
            mode, overlap, every = _transactions.check_settings(
                self.transactions_mode, self.transactions_overlap_hours, self.full_every_days, self.task_id
            )
        except ValueError as err:
            raise AirflowFailException(str(err)) from None
        return _transactions.TransactionsLoad(
            self.hook,
            warehouse,
            self.portfolio_id,
            currency=self.currency,
            page_size=self.page_size,
            mode=mode,
            overlap=dt.timedelta(hours=overlap),
            full_every=dt.timedelta(days=every),
            log=self.log,
        )

    def _check_arguments(self) -> None:
        """Refuse a portfolio kind or chart type CoinStats does not know, before anything is spent."""
        if self.portfolio_kind not in PORTFOLIO_KINDS:
            raise CoinStatsConfigError(
                f"Task {self.task_id}: portfolio_kind {str(self.portfolio_kind)[:20]!r} is unknown; use "
                f"{' or '.join(PORTFOLIO_KINDS)} (how the portfolio was connected)."
            )
        if self.dataset == "chart" and self.chart_type not in CHART_TYPES:
            from coinstats_provider.hooks.coinstats import check_chart_type

            with failing_fast(f"Loading chart of portfolio {self.portfolio_id}"):
                check_chart_type(self.chart_type)

    def _defi_not_served(self, context: Context) -> dict[str, Any]:
        """Succeed without a call: CoinStats serves DeFi positions for wallet portfolios only."""
        self.log.info(
            "Not loading defi of portfolio %s: it is an %s portfolio, and CoinStats serves DeFi positions "
            "(GET /portfolio/defi, 400 credits) for wallet portfolios only. Nothing was sent, 0 credits spent; "
            "connect the address as a wallet portfolio to load its positions, or leave defi out of datasets.",
            self.portfolio_id,
            self.portfolio_kind,
        )
        push_credits_spent(context, 0)
        return {
            "portfolio_id": self.portfolio_id,
            "dataset": self.dataset,
            "table": TABLES[self.dataset],
            "rows": 0,
            "pages": 0,
            "credits_spent": 0,
            "not_served": f"defi is served for wallet portfolios only, not {self.portfolio_kind} ones",
        }

    def _load_whole(self, warehouse: CoinStatsWarehouse, day: dt.date) -> int:
        """Run :meth:`_load`; read the stream again when CoinStats' list changed between two page reads.

        Nothing is written by an abandoned stream (rows are only staged), so reading again is safe; it
        costs the pages already read. After ``max_stream_restarts`` the error goes to Airflow's retry.
        """
        for restart in range(self.max_stream_restarts + 1):
            try:
                return self._load(warehouse, day)
            except CoinStatsListChangedError as err:
                if restart == self.max_stream_restarts:
                    raise CoinStatsListChangedError(
                        f"Loading {self.dataset} of portfolio {self.portfolio_id}: {err} It changed during all "
                        f"{restart + 1} reads of this try and nothing was written; Airflow's retry reads it again. "
                        "If it keeps changing (CoinStats still syncing the account), raise max_stream_restarts "
                        "or the task's retry delay."
                    ) from err
                self.log.warning(
                    "%s of portfolio %s changed upstream while it was read; nothing was written, reading it "
                    "again from the first page (%d of %d)",
                    self.dataset,
                    self.portfolio_id,
                    restart + 1,
                    self.max_stream_restarts,
                )
        raise AssertionError("unreachable")

    def _load(self, warehouse: CoinStatsWarehouse, day: dt.date) -> int:
        from coinstats_provider.warehouse import transform

        pid = self.portfolio_id
        if self.dataset == "value":
            value = self.hook.get_portfolio_value(pid, currency=self.currency)
            return warehouse.replace_snapshot(
                TABLES["value"], pid, day, [transform.value_row(pid, day, self.currency, value)]
            )
        if self.dataset == "coins":
            items = self._items(self.hook.iter_portfolio_coins(pid, page_size=self.page_size))
            return warehouse.replace_snapshot(TABLES["coins"], pid, day, transform.coin_rows(pid, day, items))
        if self.dataset == "chart":
            points = self.hook.get_portfolio_chart(pid, self.chart_type)
            return warehouse.upsert_history(TABLES["chart"], pid, transform.chart_rows(pid, self.chart_type, points))
        if self.dataset == "defi":
            defi = self.hook.get_portfolio_defi(pid)
            return warehouse.replace_snapshot(TABLES["defi"], pid, day, transform.defi_rows(pid, day, defi))
        if self.dataset == "snapshot":
            first, last = self._window
            pages = self.hook.iter_portfolio_snapshots(pid, date_from=first, date_to=last, page_size=self.page_size)
            return warehouse.upsert_history(TABLES["snapshot"], pid, transform.snapshot_rows(pid, self._items(pages)))
        assert self._transactions is not None
        self._outcome = self._transactions.run(self._items)
        self._reconciled = self._outcome.changes
        return self._outcome.stored

    def _items(self, pages: Iterator[list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        """Flatten pages lazily, logging progress every few pages."""
        seen = 0
        for page in pages:
            self._pages += 1
            seen += len(page)
            if self._pages % PROGRESS_EVERY_PAGES == 0:
                self.log.info(
                    "%s of portfolio %s: %d pages, %d rows so far, %d credits so far",
                    self.dataset,
                    self.portfolio_id,
                    self._pages,
                    seen,
                    self.hook.credits.spent,
                )
            yield from page
