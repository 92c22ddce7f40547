"""LoadPortfolioOperator: stream one dataset of one portfolio from CoinStats into the warehouse."""

from __future__ import annotations

import ast
import datetime as dt
import json
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from coinstats_provider.exceptions import CoinStatsError, CoinStatsListChangedError
from coinstats_provider.hooks.connection import DEFAULT_CONN_NAME, DEFAULT_PAGE_SIZE
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
    """Extract one dataset (``value``, ``coins`` or ``transactions``) of a portfolio and load it exactly once.

    Pages flow from the hook's generators into the warehouse in batches, so memory does not grow with
    the number of rows. ``value`` and ``coins`` replace the portfolio's snapshot of the run's date;
    ``transactions`` mirror CoinStats: after a complete stream the portfolio's rows are exactly the
    transactions seen (keyed by CoinStats ids or identifying fields, see :mod:`coinstats_provider.warehouse.transform`);
    new ones are inserted, edited ones updated, vanished ones removed. Rows are staged while pages
    arrive and merged in one short database transaction, so a rerun (or a crash and rerun) leaves the
    table as after one run. An item that cannot be stored exactly fails the task without retries.
    Returns ``{"portfolio_id", "dataset", "table", "rows", "pages", "credits_spent"}``, plus
    ``"inserted", "updated", "removed"`` for ``transactions``.

    :param portfolio_id: The portfolio.
    :param dataset: ``value``, ``coins`` or ``transactions``.
    :param datasets: Datasets selected for this run; the task skips (0 credits) when ``dataset`` is not in it.
    :param coinstats_conn_id: CoinStats connection.
    :param warehouse_conn_id: SQL connection (SQLite or PostgreSQL) of the warehouse.
    :param currency: Currency of values and transactions.
    :param page_size: Items per CoinStats page (1 to 100).
    :param credit_budget: Credits this task instance may spend over all its tries (what earlier tries spent
        is kept in the task state store); ``None`` for no limit.
    :param hook_params: Keyword arguments for :class:`CoinStatsHook`.
    :param max_stream_restarts: How often one try reads a stream again from its first page when the list
        changed upstream between page reads (see :mod:`coinstats_provider.hooks.paging`).
    """

    template_fields: Sequence[str] = (
        "portfolio_id",
        "dataset",
        "datasets",
        "coinstats_conn_id",
        "warehouse_conn_id",
        "currency",
        "credit_budget",
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
        credit_budget: int | str | None = None,
        hook_params: dict[str, Any] | None = None,
        max_stream_restarts: int = MAX_STREAM_RESTARTS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**with_map_index_template(kwargs, PORTFOLIO_MAP_INDEX_TEMPLATE))
        self.portfolio_id = portfolio_id
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
        self._pages = 0

    @cached_property
    def hook(self) -> CoinStatsHook:
        """The CoinStats hook, limited to this task's credit budget."""
        from coinstats_provider.hooks.coinstats import CoinStatsHook  # built on first use, not at parse time

        budget = parse_credit_budget(self.credit_budget, self.task_id)
        return CoinStatsHook(self.coinstats_conn_id, credit_budget=budget, **self.hook_params)

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
        with failing_fast(f"Loading {self.dataset} of portfolio {self.portfolio_id}"):
            # Reads the connection; this try may only spend what earlier tries left of the budget.
            meter_across_tries(self.hook.credits, context)
        day = snapshot_date(context, self.log)
        from coinstats_provider.warehouse import transform  # at run time, not at parse time
        from coinstats_provider.warehouse.loader import CoinStatsWarehouse

        warehouse = CoinStatsWarehouse(self.warehouse_conn_id)
        warehouse.ensure_schema()
        self._pages = 0
        self._reconciled: ReconcileResult | None = None
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
        return result

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
        pages = self.hook.iter_portfolio_transactions(pid, currency=self.currency, page_size=self.page_size)
        rows = transform.transaction_rows(pid, self._items(pages), transform.TransactionKeyer())
        self._reconciled = warehouse.reconcile_transactions(pid, rows)
        return self._reconciled.total

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
