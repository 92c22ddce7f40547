"""Run-level steps of the portfolio sync pipeline: resolve accounts, register portfolios, plan, summarise.

Pure functions (plus the warehouse write in :func:`register_portfolios`) called by the DAG's ``@task``
steps, so the DAG file only declares.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence, Sized
from typing import Any, TypedDict

from coinstats_provider.credits import (
    BLOCKCHAINS_COST,
    CHART_COST,
    COINS_PAGE_COST,
    CONNECT_COST,
    DEFI_COST,
    DELETE_COST,
    POLL_COST,
    SNAPSHOT_PAGE_COST,
    SUPPORT_COST,
    SYNC_COST,
    TRANSACTIONS_PAGE_COST,
    VALUE_COST,
    WALLET_CONNECT_COST,
)
from coinstats_provider.exceptions import CoinStatsConfigError
from coinstats_provider.hooks.connection import DEFAULT_PAGE_SIZE
from coinstats_provider.warehouse.schema import DATASET_TABLES, DATASETS, DEFAULT_DATASETS, PORTFOLIOS_TABLE

#: The older Variable of the accounts list (exchange connections only at first; still read).
ACCOUNTS_VARIABLE = "coinstats_exchange_conn_ids"
#: The Variable of the accounts list: exchange and wallet connection ids.
ACCOUNT_IDS_VARIABLE = "coinstats_account_conn_ids"
#: Connection type of each account kind.
ACCOUNT_CONN_TYPES: Mapping[str, str] = {"coinstats_exchange": "exchange", "coinstats_wallet": "wallet"}
_CONN_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")
#: The least a portfolio can cost after connecting: sync, one poll, value, one page of coins and of
#: transactions.
MIN_CREDITS_PER_PORTFOLIO = SYNC_COST + POLL_COST + VALUE_COST + COINS_PAGE_COST + TRANSACTIONS_PAGE_COST


#: The least one load of each dataset costs: its one call, or its first page (CONTRACT §4.5).
DATASET_MIN_CREDITS: Mapping[str, int] = {
    "value": VALUE_COST,
    "coins": COINS_PAGE_COST,
    "transactions": TRANSACTIONS_PAGE_COST,
    "chart": CHART_COST,
    "defi": DEFI_COST,
    "snapshot": SNAPSHOT_PAGE_COST,
}
#: Datasets whose cost per portfolio makes a run without a credit budget worth a warning up front.
EXPENSIVE_DATASETS: frozenset[str] = frozenset(d for d, cost in DATASET_MIN_CREDITS.items() if cost >= 100)
#: Extra datasets for a run costing about ``EXPENSIVE_WARNING_CREDITS`` or more get a warning without a budget.
EXPENSIVE_WARNING_CREDITS = 1000


class AccountRecord(TypedDict):
    """One connected account (exchange or wallet), as :func:`register_portfolios` returns it.

    :param exchange_conn_id: The account's connection (the key keeps its first name; a wallet's too).
    :param portfolio_id: The CoinStats portfolio it is connected to.
    :param connection_id: The CoinStats exchange or blockchain id.
    :param status: ``connected`` or ``existing``.
    :param credits_spent: Credits its connect task spent.
    :param kind: ``exchange`` or ``wallet``.
    :param account: The account's connection id (the same as ``exchange_conn_id``).
    """

    exchange_conn_id: str
    portfolio_id: str
    connection_id: str
    status: str
    credits_spent: int
    kind: str
    account: str


#: Keys an account record must carry (``credits_spent`` may be missing or ``None``: 0; ``account`` may stand
#: for ``exchange_conn_id``; ``kind`` defaults to ``exchange``).
_ACCOUNT_KEYS = ("exchange_conn_id", "portfolio_id", "connection_id", "status")


def min_credits_per_portfolio(datasets: int | Collection[str]) -> int:
    """The least one portfolio needs after connecting.

    :param datasets: The selected dataset names (each load needs its own least cost, see
        :data:`DATASET_MIN_CREDITS`), or, as before, only their number (the loads then share their budget
        equally, so each must afford the dearest of the default datasets).
    """
    if not isinstance(datasets, int):
        return SYNC_COST + POLL_COST + sum(DATASET_MIN_CREDITS[d] for d in _dataset_names(datasets))
    if not datasets:
        return SYNC_COST + POLL_COST
    # The value call is the dearest single call a load task must be able to afford.
    return max(MIN_CREDITS_PER_PORTFOLIO, SYNC_COST + POLL_COST + datasets * VALUE_COST)


def resolve_accounts(param_value: Any, read_variable: Callable[[], str | None]) -> list[str]:
    """Return the exchange connection ids of this run: the Param, else the Variable (read at run time).

    :param param_value: Value of the ``exchange_conn_ids`` Param (list, JSON text or comma-separated text).
    :param read_variable: Returns the raw ``coinstats_exchange_conn_ids`` Variable, or ``None`` if unset.
    """
    ids = _as_list(param_value, "Param 'exchange_conn_ids'")
    source = "Param 'exchange_conn_ids'"
    if not ids:
        raw = read_variable()
        source = f"Variable '{ACCOUNTS_VARIABLE}'"
        ids = _as_list(raw, source) if raw else []
    if not ids:
        raise CoinStatsConfigError(
            "No exchange accounts to sync: pass the Param 'exchange_conn_ids' (a list of coinstats_exchange "
            f"connection ids) or set the Variable '{ACCOUNTS_VARIABLE}' to a JSON list such as "
            '["coinstats_exchange_binance"].'
        )
    return _unique_conn_ids(ids, source)


def _unique_conn_ids(ids: list[Any], source: str) -> list[str]:
    """``ids`` without repeats, each checked to be a connection id.

    :param ids: The raw list.
    :param source: Where it came from, for the message.
    """
    unique: list[str] = []
    for conn_id in ids:
        if not isinstance(conn_id, str) or not _CONN_ID.match(conn_id):
            raise CoinStatsConfigError(
                f"{source} holds {str(conn_id)[:60]!r}, which is not a connection id (letters, digits, _ . -)."
            )
        if conn_id not in unique:
            unique.append(conn_id)
    return unique


def resolve_account_ids(
    account_param: Any, exchange_param: Any, read_variable: Callable[[str], str | None]
) -> list[str]:
    """Return this run's account connection ids (exchange and wallet): the Params, else a Variable.

    The Params ``account_conn_ids`` and the older ``exchange_conn_ids`` are merged (in that order); when
    both are empty, the Variable ``coinstats_account_conn_ids`` is read, else the older
    ``coinstats_exchange_conn_ids`` (at run time, never at parse time).

    :param account_param: Value of the ``account_conn_ids`` Param (list, JSON text or comma-separated text).
    :param exchange_param: Value of the older ``exchange_conn_ids`` Param, in the same forms.
    :param read_variable: Returns the raw Variable of that name, or ``None`` if unset.
    """
    ids = [*_as_list(account_param, "Param 'account_conn_ids'"), *_as_list(exchange_param, "Param 'exchange_conn_ids'")]
    source = "Params 'account_conn_ids'/'exchange_conn_ids'"
    for name in (ACCOUNT_IDS_VARIABLE, ACCOUNTS_VARIABLE):
        if ids:
            break
        raw = read_variable(name)
        source = f"Variable '{name}'"
        ids = _as_list(raw, source) if raw else []
    if not ids:
        raise CoinStatsConfigError(
            "No accounts to sync: pass the Param 'account_conn_ids' (a list of coinstats_exchange and "
            f"coinstats_wallet connection ids) or set the Variable '{ACCOUNT_IDS_VARIABLE}' (or the older "
            f"'{ACCOUNTS_VARIABLE}') to a JSON list such as "
            '["coinstats_exchange_binance", "coinstats_wallet_eth"].'
        )
    return _unique_conn_ids(ids, source)


def split_by_kind(conn_ids: Sequence[str], conn_type_of: Callable[[str], str | None]) -> dict[str, list[str]]:
    """Split account connections by kind (``exchange``, ``wallet``), keeping their order.

    :param conn_ids: The accounts.
    :param conn_type_of: Returns a connection's conn_type (``None`` when the connection does not exist).
    :raises CoinStatsConfigError: A connection is missing or of another type (nothing was spent).
    """
    kinds: dict[str, list[str]] = {kind: [] for kind in ACCOUNT_CONN_TYPES.values()}
    for conn_id in conn_ids:
        conn_type = conn_type_of(conn_id)
        if conn_type is None:
            raise CoinStatsConfigError(
                f"Account connection '{conn_id}' is not defined. Create it (conn_type coinstats_exchange for an "
                "exchange account, coinstats_wallet for a wallet) or remove it from the accounts list. "
                "Nothing was spent."
            )
        if conn_type not in ACCOUNT_CONN_TYPES:
            raise CoinStatsConfigError(
                f"Account connection '{conn_id}' has conn_type '{str(conn_type)[:40]}', expected "
                "coinstats_exchange or coinstats_wallet. Fix its type or remove it from the accounts list. "
                "Nothing was spent."
            )
        kinds[ACCOUNT_CONN_TYPES[conn_type]].append(conn_id)
    return kinds


def split_batch(conn_ids: Sequence[str], max_map_length: int) -> tuple[list[str], list[str]]:
    """Split accounts into what one run can map and the rest, for a follow-up run.

    :param conn_ids: All accounts, in order.
    :param max_map_length: ``[core] max_map_length``.
    """
    size = max(1, max_map_length)
    return list(conn_ids[:size]), list(conn_ids[size:])


def _as_list(value: Any, source: str) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise CoinStatsConfigError(f"{source} is not a valid JSON list of connection ids.") from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, list):
        raise CoinStatsConfigError(f"{source} must be a list of connection ids, not {type(value).__name__}.")
    return value


def check_budget_covers(
    run_budget: int | None, accounts: int, datasets: int | Collection[str], *, wallets: int = 0
) -> None:
    """Fail before anything is spent when a run's budget cannot cover even the cheapest run.

    :param run_budget: The run's cap, or ``None``.
    :param accounts: Number of exchange accounts.
    :param datasets: The selected dataset names, or their number (see :func:`min_credits_per_portfolio`).
    :param wallets: Number of wallets (each connect costs 40 credits, plus the blockchain list).
    """
    # Each connect task may pay for the exchange (or blockchain) list itself (its cache is per worker machine).
    each = SUPPORT_COST + CONNECT_COST + min_credits_per_portfolio(datasets)
    each_wallet = BLOCKCHAINS_COST + WALLET_CONNECT_COST + min_credits_per_portfolio(datasets)
    needed = accounts * each + wallets * each_wallet
    accounts += wallets
    if run_budget is not None and run_budget < needed:
        dear = [] if isinstance(datasets, int) else sorted(EXPENSIVE_DATASETS & set(datasets), key=DATASETS.index)
        hint = (
            " (" + ", ".join(f"{d} alone costs {DATASET_MIN_CREDITS[d]} per portfolio" for d in dear) + ")"
            if dear
            else ""
        )
        raise CoinStatsConfigError(
            f"The credit budget of {run_budget} cannot cover {accounts} account(s): connecting and syncing "
            f"each takes at least {each} credits"
            f"{f' (each wallet {each_wallet})' if wallets else ''} ({needed} in all){hint}. "
            "Nothing was spent. Raise the budget, select fewer datasets or sync fewer accounts."
        )


def _dataset_names(datasets: Collection[str]) -> list[str]:
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown:
        raise CoinStatsConfigError(f"Unknown dataset '{unknown[0]}'; choose from {', '.join(DATASETS)}.")
    return [d for d in DATASETS if d in datasets]


def expected_credits(accounts: int, datasets: Collection[str]) -> dict[str, int]:
    """The least a run will cost, by step: what :func:`cost_plan` reports before anything is spent.

    Connecting may pay the exchange list once per account; every portfolio is synced and polled once and
    loads one call or first page of each selected dataset. Longer syncs (3 credits a poll) and more
    pages cost more; ``defi`` is not spent on exchange portfolios.

    :param accounts: Number of accounts.
    :param datasets: The selected dataset names.
    :return: ``{"connect", "sync", <dataset>..., "total"}`` in credits.
    """
    plan = {"connect": accounts * (SUPPORT_COST + CONNECT_COST), "sync": accounts * (SYNC_COST + POLL_COST)}
    plan.update({d: accounts * DATASET_MIN_CREDITS[d] for d in _dataset_names(datasets)})
    plan["total"] = sum(plan.values())
    return plan


def cost_plan(accounts: int, datasets: Collection[str], run_budget: int | None) -> tuple[str, bool]:
    """The line a run logs up front about what it will cost, and whether it deserves a warning.

    It is a warning when expensive datasets (``defi``, ``snapshot``) are selected without a credit budget
    and they alone would cost :data:`EXPENSIVE_WARNING_CREDITS` or more.

    :param accounts: Number of accounts of this run.
    :param datasets: The selected dataset names.
    :param run_budget: The run's credit budget, or ``None``.
    """
    plan = expected_credits(accounts, datasets)
    parts = ", ".join(f"{key} {plan[key]}" for key in plan if key != "total")
    line = (
        f"Credit plan: {accounts} account(s) x datasets {', '.join(_dataset_names(datasets))} cost at least "
        f"{plan['total']} credits ({parts}); budget: {'none' if run_budget is None else run_budget}."
    )
    dear = [d for d in _dataset_names(datasets) if d in EXPENSIVE_DATASETS]
    dear_cost = sum(plan[d] for d in dear)
    if run_budget is None and dear and dear_cost >= EXPENSIVE_WARNING_CREDITS:
        line += (
            f" {' and '.join(dear)} alone cost at least {dear_cost} credits and no credit budget caps this run: "
            "set the credit_budget Param to cap it."
        )
        return line, True
    return line, False


def plan_budgets(
    run_budget: int | None,
    spent_so_far: int,
    portfolios: int,
    datasets: int,
    sync_timeout: float,
    poll_interval: float,
) -> tuple[int | None, int | None]:
    """Split what is left of a run's credit budget into a per-portfolio sync and per-dataset load budget.

    The split is fixed up front so that parallel tasks can never overspend the run together: each
    portfolio gets an equal share; its sync gets one sync call plus status polls worth at most half of
    the share above the minimum (and no more polls than the timeout allows); its load tasks share the
    rest equally.

    :param run_budget: The run's cap, or ``None``.
    :param spent_so_far: Credits already spent (connect step).
    :param portfolios: Number of portfolios.
    :param datasets: Number of selected datasets.
    :param sync_timeout: Seconds a sync may take.
    :param poll_interval: Seconds between status polls.
    """
    if run_budget is None:
        return None, None
    if portfolios <= 0:
        return 0, 0
    minimum = min_credits_per_portfolio(datasets)
    share, sync_budget = _share_and_sync(
        run_budget,
        spent_so_far,
        portfolios,
        minimum,
        (sync_timeout, poll_interval),
        f"less than one sync and load needs (at least {minimum}). Raise the budget or sync fewer accounts.",
    )
    load_budget = (share - sync_budget) // datasets if datasets else 0
    return sync_budget, load_budget


def _share_and_sync(
    run_budget: int, spent_so_far: int, portfolios: int, minimum: int, wait: tuple[float, float], short: str
) -> tuple[int, int]:
    """Each portfolio's equal share of what is left, and its sync budget; ``short`` ends the error when too small.

    Status polls may use at most half of what is left above the minimum (and no more than the timeout
    ``wait[0]`` allows at one poll every ``wait[1]`` seconds); the loads share the rest.
    """
    share = (run_budget - spent_so_far) // portfolios
    if share < minimum:
        raise CoinStatsConfigError(
            f"The credit budget of {run_budget} leaves {max(share, 0)} credits per portfolio after "
            f"connecting ({spent_so_far} spent), {short}"
        )
    max_polls = max(1, math.ceil(wait[0] / wait[1]))
    polls = min(max_polls, max(1, (share - minimum) // (2 * POLL_COST)))
    return share, SYNC_COST + polls * POLL_COST


def plan_dataset_budgets(
    run_budget: int | None,
    spent_so_far: int,
    portfolios: int,
    datasets: Collection[str],
    sync_timeout: float,
    poll_interval: float,
) -> tuple[int | None, dict[str, int] | None]:
    """Like :func:`plan_budgets`, but each selected dataset's load gets its own budget.

    Each load is given its least cost (:data:`DATASET_MIN_CREDITS`: a 500-credit snapshot page and a
    4-credit transactions page are not alike) plus an equal part of what is left after the sync, so a
    budget that covers the selection always lets every load make its first call.

    :param run_budget: The run's cap, or ``None``.
    :param spent_so_far: Credits already spent (connect step).
    :param portfolios: Number of portfolios.
    :param datasets: The selected dataset names.
    :param sync_timeout: Seconds a sync may take.
    :param poll_interval: Seconds between status polls.
    :return: The sync budget and ``{dataset: load budget}`` of each portfolio (``None`` without a cap).
    """
    names = _dataset_names(datasets)
    if run_budget is None:
        return None, None
    if portfolios <= 0:
        return 0, dict.fromkeys(names, 0)
    minimum = min_credits_per_portfolio(names)
    share, sync_budget = _share_and_sync(
        run_budget,
        spent_so_far,
        portfolios,
        minimum,
        (sync_timeout, poll_interval),
        f"less than one sync and the selected loads need (at least {minimum} for {', '.join(names)}). "
        "Raise the budget, select fewer datasets or sync fewer accounts.",
    )
    surplus = share - sync_budget - sum(DATASET_MIN_CREDITS[d] for d in names)
    return sync_budget, {d: DATASET_MIN_CREDITS[d] + surplus // len(names) for d in names}


def register_portfolios(
    warehouse_conn_id: str, accounts: Iterable[Mapping[str, Any]], *, created_by: str | None = None
) -> list[AccountRecord]:
    """Write one portfolio row per account (one transaction each, upsert) and return the account records.

    Every record is checked before anything is written. A listed account's row is no longer removed
    (``removed_at``/``deleted_at`` cleared).

    :param warehouse_conn_id: SQL connection of the warehouse.
    :param accounts: One record per connect task, in map order: ``exchange_conn_id`` (or ``account``),
        ``portfolio_id``, ``connection_id``, ``status``, ``credits_spent`` (``None`` or missing counts as 0)
        and ``kind`` (default ``exchange``).
    :param created_by: The DAG id to record in ``created_by`` when its connect created the portfolio
        (``connected``); an ``existing`` answer never sets it, nor clears it.
    :raises ValueError: When a record lacks one of those keys (nothing is written).
    """
    records = [_account_record(index, account) for index, account in enumerate(accounts)]
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse  # at run time, not at parse time

    warehouse = CoinStatsWarehouse(warehouse_conn_id)
    warehouse.ensure_schema()
    for record in records:
        row: dict[str, Any] = {
            "portfolio_id": record["portfolio_id"],
            "connection_id": record["connection_id"],
            "exchange_conn_id": record["account"] if record["kind"] == "exchange" else None,
            "portfolio_name": None,
            "last_connect_status": record["status"],
            "kind": record["kind"],
            "account_conn_id": record["account"],
            "removed_at": None,
            "deleted_at": None,
        }
        if created_by and record["status"] == "connected":
            row["created_by"] = created_by
        warehouse.upsert_portfolio(row)
    return records


def _account_record(index: int, account: Mapping[str, Any]) -> AccountRecord:
    if account.get("exchange_conn_id") in (None, "") and account.get("account"):
        account = {**account, "exchange_conn_id": account["account"]}
    missing = [key for key in _ACCOUNT_KEYS if account.get(key) in (None, "")]
    if missing:
        raise ValueError(
            f"account record #{index} has no {', '.join(missing)}; each connect result needs "
            f"{', '.join(_ACCOUNT_KEYS)}. Nothing was written."
        )
    return {
        "exchange_conn_id": account["exchange_conn_id"],
        "portfolio_id": account["portfolio_id"],
        "connection_id": account["connection_id"],
        "status": account["status"],
        "credits_spent": int(account.get("credits_spent") or 0),
        "kind": str(account.get("kind") or "exchange"),
        "account": account["exchange_conn_id"],
    }


def portfolio_work(
    records: Iterable[Mapping[str, Any]], sync_budget: int | None, load_budget: int | Mapping[str, int] | None
) -> list[dict[str, Any]]:
    """One mapping entry per distinct portfolio (two connections of one account sync once).

    Each entry carries ``portfolio_id``, the budgets, ``kind`` and ``account`` (the first connection of
    the portfolio), the arguments of the DAG's ``portfolio`` task group.

    :param records: Output of :func:`register_portfolios`.
    :param sync_budget: Credit budget of each sync task.
    :param load_budget: Credit budget of each load task, or per dataset (see :func:`plan_dataset_budgets`).
    """
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        seen.setdefault(
            record["portfolio_id"],
            {
                "portfolio_id": record["portfolio_id"],
                "sync_budget": sync_budget,
                "load_budget": load_budget,
                # How the portfolio was connected: the defi load only calls CoinStats for wallets.
                "kind": record.get("kind") or "exchange",
                "account": record.get("account") or record["exchange_conn_id"],
            },
        )
    return list(seen.values())


def prune_candidates(
    warehouse_conn_id: str, dag_id: str, listed: Collection[str], kept: Collection[str]
) -> list[dict[str, str]]:
    """Mark the portfolios whose account left the accounts list; return those this DAG may delete.

    A registered portfolio whose account is not in ``listed`` (and that no listed account shares) gets
    ``removed_at``. Only those whose ``created_by`` is ``dag_id`` (its connect answered ``connected``) and
    that are not deleted yet are returned: a portfolio that existed before (``existing``), one registered
    by an older version (``created_by`` unknown) or by another DAG is never deleted.

    :param warehouse_conn_id: SQL connection of the warehouse.
    :param dag_id: This DAG.
    :param listed: Every account of the run's list (all batches, not only this run's).
    :param kept: Portfolio ids of this run's accounts.
    :return: ``{"portfolio_id", "account"}`` per portfolio to delete.
    """
    from coinstats_provider.warehouse.database import utc_now
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse
    from coinstats_provider.warehouse.schema import spec

    warehouse = CoinStatsWarehouse(warehouse_conn_id)
    warehouse.ensure_schema()
    columns = spec(PORTFOLIOS_TABLE).column_names
    rows = [dict(zip(columns, row, strict=True)) for row in warehouse.fetch_table(PORTFOLIOS_TABLE)]
    now = utc_now()
    delete: list[dict[str, str]] = []
    for row in rows:
        account = row["account_conn_id"] or row["exchange_conn_id"]
        if row["portfolio_id"] in kept or account in listed or row["deleted_at"]:
            continue
        if not row["removed_at"]:
            warehouse.upsert_portfolio({"portfolio_id": row["portfolio_id"], "removed_at": now})
        if row["created_by"] == dag_id:
            delete.append({"portfolio_id": row["portfolio_id"], "account": str(account)})
    return delete


def pruning_cost(candidates: Sized) -> int:
    """Credits the deletions of :func:`prune_candidates` cost (10 each), reserved out of the run budget.

    :param candidates: The portfolios to delete.
    """
    return len(candidates) * DELETE_COST


def record_deletions(warehouse_conn_id: str, results: Iterable[Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    """Stamp ``deleted_at`` on every portfolio a delete task removed (or found already gone).

    :param warehouse_conn_id: SQL connection of the warehouse.
    :param results: Return values of the delete tasks (``None`` for skipped ones).
    :return: The results recorded.
    """
    done = [dict(result) for result in _records(results) if result and result.get("portfolio_id")]
    if done:
        from coinstats_provider.warehouse.database import utc_now
        from coinstats_provider.warehouse.loader import CoinStatsWarehouse

        warehouse = CoinStatsWarehouse(warehouse_conn_id)
        now = utc_now()
        for result in done:
            warehouse.upsert_portfolio({"portfolio_id": result["portfolio_id"], "deleted_at": now})
    return done


def summarize(accounts: Any, syncs: Any, loads: Any) -> dict[str, Any]:
    """Per portfolio: connect status, rows written per table and credits; plus the run's totals.

    A portfolio whose transactions load reported its changes also gets
    ``"transactions": {"inserted", "updated", "removed"}``.

    :param accounts: Output of :func:`register_portfolios`.
    :param syncs: Return values of the sync tasks (``None`` for skipped ones), as delivered by Airflow:
        a list, nested lists, or a single mapping when only one task instance ran.
    :param loads: Return values of every load task, in the same forms.
    """
    portfolios: dict[str, dict[str, Any]] = {}
    for account in _records(accounts):
        entry = portfolios.setdefault(
            account["portfolio_id"],
            {
                "portfolio_id": account["portfolio_id"],
                "exchange_conn_ids": [],
                "connection_id": account["connection_id"],
                "status": account["status"],
                "rows": {},
                "credits_spent": 0,
            },
        )
        entry["exchange_conn_ids"].append(account["exchange_conn_id"])
        entry["credits_spent"] += int(account.get("credits_spent") or 0)
    for result in [*_records(syncs), *_records(loads)]:
        if not result or result.get("portfolio_id") not in portfolios:
            continue
        entry = portfolios[result["portfolio_id"]]
        entry["credits_spent"] += int(result.get("credits_spent") or 0)
        if "table" in result:
            entry["rows"][result["table"]] = int(result.get("rows") or 0)
        if any(k in result for k in _TRANSACTION_CHANGES):
            entry["transactions"] = {k: int(result.get(k) or 0) for k in _TRANSACTION_CHANGES}
        if "mode" in result:
            entry["transactions_mode"] = {k: result.get(k) for k in _TRANSACTION_MODE_KEYS}
    rows_total: dict[str, int] = {}
    for entry in portfolios.values():
        for table, count in entry["rows"].items():
            rows_total[table] = rows_total.get(table, 0) + count
    return {
        "portfolios": list(portfolios.values()),
        "rows": rows_total,
        "total_credits": sum(e["credits_spent"] for e in portfolios.values()),
        "credits_saved": sum(
            int(e["transactions_mode"].get("credits_saved") or 0)
            for e in portfolios.values()
            if "transactions_mode" in e
        ),
    }


#: Keys of a transactions load result that say how the mirrored table changed.
_TRANSACTION_CHANGES = ("inserted", "updated", "removed")
#: Keys of a transactions load result that say which mode ran and what it saved.
_TRANSACTION_MODE_KEYS = ("mode", "mode_requested", "mode_reason", "credits_saved", "full_read_credits")


def _records(values: Any) -> list[Mapping[str, Any]]:
    """Flatten task results into records, dropping ``None`` (skipped tasks).

    A mapped task with a single instance hands over its value rather than a one-element list.
    """
    if values is None:
        return []
    if isinstance(values, Mapping):
        return [values]
    if isinstance(values, (str, bytes)):
        raise TypeError(f"expected task results (mappings), got text: {values[:40]!r}")
    return [record for value in values for record in _records(value)]


def with_pruned(summary: dict[str, Any], pruned: Any) -> dict[str, Any]:
    """Add the run's deletions (``pruned``: portfolio, account, deleted, credits) to a :func:`summarize` result.

    :param summary: Output of :func:`summarize` (changed in place and returned).
    :param pruned: Output of :func:`record_deletions`, ``None`` when nothing was pruned.
    """
    entries = [
        {
            "portfolio_id": r["portfolio_id"],
            "account": r.get("account"),
            "deleted": bool(r.get("deleted")),
            "credits_spent": int(r.get("credits_spent") or 0),
        }
        for r in _records(pruned)
    ]
    summary["pruned"] = entries
    summary["total_credits"] += sum(e["credits_spent"] for e in entries)
    return summary


#: Column headings of the opt-in datasets in :func:`format_summary`.
_SUMMARY_LABELS = {"snapshot": "snaps"}


def format_summary(summary: Mapping[str, Any]) -> str:
    """Render :func:`summarize` output as a small text table for logs and the demo.

    :param summary: Output of :func:`summarize`.
    """
    # The opt-in datasets get a column only when a portfolio loaded them.
    loaded = {table for entry in summary["portfolios"] for table in entry["rows"]}
    extra = [d for d in DATASETS if d not in DEFAULT_DATASETS and DATASET_TABLES[d] in loaded]
    extra_head = "".join(f" {_SUMMARY_LABELS.get(d, d):>6}" for d in extra)
    lines = [
        f"{'portfolio':<26} {'status':<10} {'value':>6} {'coins':>6} {'txns':>7}{extra_head} {'credits':>8}  accounts"
    ]
    for entry in summary["portfolios"]:
        value, coins, txns = (entry["rows"].get(DATASET_TABLES[d], 0) for d in ("value", "coins", "transactions"))
        extra_cells = "".join(f" {entry['rows'].get(DATASET_TABLES[d], 0):>6}" for d in extra)
        lines.append(
            f"{entry['portfolio_id']:<26} {entry['status']:<10} {value:>6} {coins:>6} {txns:>7}{extra_cells} "
            f"{entry['credits_spent']:>8}  {', '.join(entry['exchange_conn_ids'])}"
        )
    for entry in summary["portfolios"]:
        changes = entry.get("transactions")
        if changes:
            lines.append(
                f"{entry['portfolio_id']:<26} transactions: {changes['inserted']} inserted, "
                f"{changes['updated']} updated, {changes['removed']} removed"
            )
        mode = entry.get("transactions_mode")
        if mode:
            lines.append(
                f"{entry['portfolio_id']:<26} transactions mode: {mode['mode']} ({mode['mode_reason']}), "
                f"{mode['credits_saved']} credits saved against a full read ({mode['full_read_credits']})"
            )
    for entry in summary.get("pruned") or ():
        done = "deleted" if entry["deleted"] else "already gone"
        credits = entry["credits_spent"]
        lines.append(f"{entry['portfolio_id']:<26} pruned ({done}, {credits} credits): {entry['account']}")
    lines.append(f"total credits spent: {summary['total_credits']}")
    if summary.get("credits_saved"):
        lines.append(f"credits saved by incremental transactions reads: {summary['credits_saved']}")
    return "\n".join(lines)


def plan_transactions(
    warehouse_conn_id: str,
    portfolio_ids: Iterable[str],
    *,
    mode: str,
    overlap_hours: float,
    full_every_days: float,
    currency: str = "USD",
    page_size: int = DEFAULT_PAGE_SIZE,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Per portfolio: the transactions read its load will plan, and an estimate of the credits it saves.

    The load task decides again when it runs (the state may change in between); this is the run's plan.
    The incremental estimate counts the pages of the stored transactions in the window (new ones add to it).

    :param warehouse_conn_id: SQL connection of the warehouse.
    :param portfolio_ids: The portfolios, in order (repeats are planned once).
    :param mode: The requested transactions mode.
    :param overlap_hours: The incremental overlap.
    :param full_every_days: The full-reconcile interval.
    :param currency: The loads' currency.
    :param page_size: The loads' page size.
    :param now: The current time (tests); defaults to now in UTC.
    """
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse  # at run time, not at parse time
    from coinstats_provider.warehouse.sync_state import plan_read

    warehouse = CoinStatsWarehouse(warehouse_conn_id)
    warehouse.ensure_schema()
    moment = now or dt.datetime.now(dt.UTC)
    planned: list[dict[str, Any]] = []
    for portfolio_id in dict.fromkeys(portfolio_ids):
        stored = warehouse.count_transactions(portfolio_id)
        plan = plan_read(
            warehouse.sync_state(portfolio_id),
            requested=mode,
            currency=currency,
            stored_rows=stored,
            overlap=dt.timedelta(hours=overlap_hours),
            full_every=dt.timedelta(days=full_every_days),
            now=moment,
        )
        full = TRANSACTIONS_PAGE_COST * (stored // page_size + 1)
        window = len(warehouse.transactions_since(portfolio_id, plan.since)) if plan.since is not None else stored
        estimate = TRANSACTIONS_PAGE_COST * (window // page_size + 1)
        planned.append(
            {
                "portfolio_id": portfolio_id,
                "mode": plan.mode,
                "reason": plan.reason,
                "since": None if plan.since is None else plan.since.isoformat(),
                "full_read_credits": full,
                "estimated_credits": estimate,
                "estimated_saved": full - estimate,
            }
        )
    return planned


def format_transactions_plan(plan: Iterable[Mapping[str, Any]]) -> str:
    """Render :func:`plan_transactions` output as one line per portfolio.

    :param plan: Output of :func:`plan_transactions`.
    """
    lines = ["transactions plan:"]
    for entry in plan:
        since = f" from {entry['since']}" if entry["since"] else ""
        lines.append(
            f"{entry['portfolio_id']:<26} {entry['mode']:<11} ({entry['reason']}){since}; about "
            f"{entry['estimated_credits']} credits, {entry['estimated_saved']} saved against a full read "
            f"({entry['full_read_credits']})"
        )
    return "\n".join(lines)
