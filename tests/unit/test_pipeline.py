"""Unit tests of the run-level pipeline steps (pure functions plus the coinstats_portfolios write)."""

from __future__ import annotations

import inspect
import math
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coinstats_provider import pipeline
from coinstats_provider.credits import POLL_COST, SYNC_COST
from coinstats_provider.exceptions import CoinStatsConfigError
from coinstats_provider.pipeline import (
    ACCOUNTS_VARIABLE,
    MIN_CREDITS_PER_PORTFOLIO,
    format_summary,
    min_credits_per_portfolio,
    plan_budgets,
    portfolio_work,
    register_portfolios,
    resolve_accounts,
    split_batch,
    summarize,
)
from tests.conftest import set_connection

VALUES = "coinstats_portfolio_values"
COINS = "coinstats_portfolio_coins"
TXNS = "coinstats_portfolio_transactions"


class Variable:
    """A stand-in for ``Variable.get``: returns ``value`` and counts reads."""

    def __init__(self, value: str | None) -> None:
        self.value = value
        self.reads = 0

    def __call__(self) -> str | None:
        self.reads += 1
        return self.value


def no_variable() -> str | None:
    raise AssertionError("the Variable must not be read when the Param is set")


# -- resolve_accounts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param",
    [
        ["ex_a", "ex_b"],
        '["ex_a", "ex_b"]',
        '  ["ex_a","ex_b"]  ',
        "ex_a, ex_b",
        "ex_a,ex_b,",
    ],
    ids=["list", "json", "json-padded", "comma", "comma-trailing"],
)
def test_accounts_from_the_param(param: Any) -> None:
    assert resolve_accounts(param, no_variable) == ["ex_a", "ex_b"]


@pytest.mark.parametrize("param", [None, "", [], "   ", "[]"])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [('["ex_v1", "ex_v2"]', ["ex_v1", "ex_v2"]), ("ex_v1,ex_v2", ["ex_v1", "ex_v2"])],
)
def test_empty_param_falls_back_to_the_variable(param: Any, raw: str, expected: list[str]) -> None:
    variable = Variable(raw)

    assert resolve_accounts(param, variable) == expected
    assert variable.reads == 1


@pytest.mark.parametrize("raw", [None, "", "[]", " , "])
def test_neither_param_nor_variable_names_both_fixes(raw: str | None) -> None:
    with pytest.raises(CoinStatsConfigError) as info:
        resolve_accounts([], Variable(raw))

    message = str(info.value)
    assert "No exchange accounts to sync" in message
    assert "Param 'exchange_conn_ids'" in message
    assert f"Variable '{ACCOUNTS_VARIABLE}'" in message


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        (["ok_id", "bad id"], "'bad id', which is not a connection id"),
        (["ok_id", 42], "holds '42', which is not a connection id"),
        (['x" OR 1=1'], "which is not a connection id"),
        (["a" * 251], "which is not a connection id"),
        ('["ex_a", ""]', "'', which is not a connection id"),
        ("[not json", "is not a valid JSON list of connection ids"),
        ('{"a": 1}', "which is not a connection id"),  # not a JSON list: read as one comma-separated id
        ({"ex_a": 1}, "must be a list of connection ids, not dict"),
        (7, "must be a list of connection ids, not int"),
        ('"ex_a"', "which is not a connection id"),
    ],
)
def test_invalid_param_values(param: Any, expected: str) -> None:
    with pytest.raises(CoinStatsConfigError) as info:
        resolve_accounts(param, no_variable)

    assert "Param 'exchange_conn_ids'" in str(info.value)
    assert expected in str(info.value)


def test_invalid_variable_is_named_as_the_source() -> None:
    with pytest.raises(CoinStatsConfigError, match=f"Variable '{ACCOUNTS_VARIABLE}' holds 'has space'"):
        resolve_accounts(None, Variable("ok_id, has space"))

    with pytest.raises(CoinStatsConfigError, match=f"Variable '{ACCOUNTS_VARIABLE}' is not a valid JSON list"):
        resolve_accounts(None, Variable("[oops"))


def test_duplicates_are_dropped_keeping_the_first_order() -> None:
    assert resolve_accounts(["ex_c", "ex_a", "ex_c", "ex_b", "ex_a"], no_variable) == ["ex_c", "ex_a", "ex_b"]
    assert resolve_accounts(None, Variable("ex_b,ex_b,ex_a")) == ["ex_b", "ex_a"]


def test_split_batch_keeps_order_and_hands_the_rest_on() -> None:
    ids = ["ex_a", "ex_b", "ex_c"]

    assert split_batch(ids, 3) == (ids, [])
    assert split_batch(ids, 2) == (["ex_a", "ex_b"], ["ex_c"])
    assert split_batch(ids, 0) == (["ex_a"], ["ex_b", "ex_c"])  # never an empty batch


# -- check_budget_covers: the run-level pre-check --------------------------------------------------

#: The cheapest run of one account, from the contract's prices: GET /exchange/support (1) + connect (10)
#: + sync (30) + one status poll (3) + whichever is more: value (10) + a page of coins (8) + a page of
#: transactions (4) = 22, or 10 per selected dataset (the dearest call, as the loads share their budget).
CHEAPEST = {1: 1 + 10 + 30 + 3 + 22, 2: 1 + 10 + 30 + 3 + 22, 3: 1 + 10 + 30 + 3 + 30}


@pytest.mark.parametrize(("accounts", "datasets"), [(1, 3), (1, 1), (2, 3), (5, 2), (40, 3)])
def test_budget_pre_check_boundary(accounts: int, datasets: int) -> None:
    needed = accounts * CHEAPEST[datasets]

    pipeline.check_budget_covers(needed, accounts, datasets)  # exactly enough
    pipeline.check_budget_covers(needed + 1, accounts, datasets)
    pipeline.check_budget_covers(None, accounts, datasets)  # no cap
    with pytest.raises(CoinStatsConfigError) as info:
        pipeline.check_budget_covers(needed - 1, accounts, datasets)

    assert str(info.value) == (
        f"The credit budget of {needed - 1} cannot cover {accounts} account(s): connecting and syncing each "
        f"takes at least {CHEAPEST[datasets]} credits ({needed} in all). Nothing was spent. Raise the budget, "
        "select fewer datasets or sync fewer accounts."
    )


def test_budget_pre_check_zero() -> None:
    pipeline.check_budget_covers(0, 0, 3)  # no account, nothing to cover
    with pytest.raises(CoinStatsConfigError, match="budget of 0 cannot cover 1 account"):
        pipeline.check_budget_covers(0, 1, 1)


def test_budget_pre_check_lower_bound_is_what_the_split_needs_after_cheapest_connects() -> None:
    """A budget that passes the pre-check always leaves the split enough when each connect cost 1 + 10."""
    for accounts in (1, 2, 7):
        for datasets in (1, 2, 3):
            budget = accounts * CHEAPEST[datasets]
            pipeline.check_budget_covers(budget, accounts, datasets)
            sync, load = plan_budgets(budget, accounts * 11, accounts, datasets, 1800, 30)
            assert sync is not None
            assert load is not None
            assert sync + datasets * load <= budget // accounts - 11


# -- plan_budgets ----------------------------------------------------------------------------------


def test_no_run_budget_means_no_task_budgets() -> None:
    assert plan_budgets(None, 0, 3, 3, 1800, 30) == (None, None)
    assert plan_budgets(None, 10_000, 0, 0, 1, 1) == (None, None)


def test_no_portfolios() -> None:
    assert plan_budgets(100, 0, 0, 3, 1800, 30) == (0, 0)


def test_minimum_credits_per_portfolio() -> None:
    assert MIN_CREDITS_PER_PORTFOLIO == 30 + 3 + 10 + 8 + 4
    assert min_credits_per_portfolio(3) == 30 + 3 + 3 * 10
    # The run-level steps read the cost constants instead of pricing made-up requests.
    assert "credit_cost(" not in inspect.getsource(pipeline)


@pytest.mark.parametrize(
    ("run_budget", "spent", "portfolios", "datasets", "left"),
    [
        (60, 11, 1, 3, 49),
        (200, 0, 4, 1, 50),
        (10, 20, 1, 3, 0),  # already overspent: never a negative share in the message
        (32, 0, 1, 0, 32),
    ],
)
def test_budget_too_small(run_budget: int, spent: int, portfolios: int, datasets: int, left: int) -> None:
    with pytest.raises(CoinStatsConfigError) as info:
        plan_budgets(run_budget, spent, portfolios, datasets, 1800, 30)

    message = str(info.value)
    assert f"The credit budget of {run_budget} leaves {left} credits per portfolio" in message
    assert f"({spent} spent)" in message
    assert "Raise the budget or sync fewer accounts" in message


def test_exact_minimum_is_enough() -> None:
    sync_budget, load_budget = plan_budgets(MIN_CREDITS_PER_PORTFOLIO + 11, 11, 1, 1, 1800, 30)

    assert sync_budget == SYNC_COST + POLL_COST
    assert load_budget == MIN_CREDITS_PER_PORTFOLIO - SYNC_COST - POLL_COST


def test_typical_split() -> None:
    # 3 portfolios, 33 credits spent connecting, 3 datasets, 30 min timeout at 30 s polls.
    sync_budget, load_budget = plan_budgets(3000, 33, 3, 3, 1800, 30)

    share = (3000 - 33) // 3
    polls = (share - MIN_CREDITS_PER_PORTFOLIO) // (2 * POLL_COST)
    assert polls == 155
    assert sync_budget == SYNC_COST + 60 * POLL_COST  # capped at 1800 s / 30 s = 60 polls
    assert load_budget == (share - sync_budget) // 3


def test_polls_use_at_most_half_of_the_share_above_the_minimum() -> None:
    minimum = min_credits_per_portfolio(3)
    sync_budget, load_budget = plan_budgets(minimum + 60, 0, 1, 3, 7200, 30)

    assert sync_budget == SYNC_COST + (60 // (2 * POLL_COST)) * POLL_COST == 60
    assert load_budget == (minimum + 60 - 60) // 3


def test_polls_are_capped_by_the_timeout() -> None:
    sync_budget, load_budget = plan_budgets(1_000_000, 0, 1, 3, 60, 30)

    assert sync_budget == SYNC_COST + 2 * POLL_COST
    assert load_budget == (1_000_000 - sync_budget) // 3


def test_random_budgets_never_overspend() -> None:
    rng = random.Random(20240501)
    planned = 0
    for _ in range(3000):
        portfolios = rng.randint(1, 40)
        datasets = rng.randint(0, 3)
        spent = rng.randint(0, 20) * 11
        run_budget = rng.randint(0, 20_000)
        timeout = rng.choice([1, 59.5, 60, 600, 1800, 7200])
        interval = rng.choice([0.5, 1, 7, 30, 60])
        try:
            sync_budget, load_budget = plan_budgets(run_budget, spent, portfolios, datasets, timeout, interval)
        except CoinStatsConfigError:
            assert (run_budget - spent) // portfolios < min_credits_per_portfolio(datasets)
            continue
        planned += 1
        assert sync_budget is not None
        assert load_budget is not None
        assert portfolios * (sync_budget + datasets * load_budget) + spent <= run_budget
        assert sync_budget >= SYNC_COST + POLL_COST
        polls, remainder = divmod(sync_budget - SYNC_COST, POLL_COST)
        assert remainder == 0
        assert 1 <= polls <= max(1, math.ceil(timeout / interval))
        assert load_budget >= 0
        if datasets:
            assert load_budget >= 10  # every load can afford at least its first call
        if not datasets:
            assert load_budget == 0
    assert planned > 1000  # the property was checked on many accepted plans, not only on rejections


# -- register_portfolios ---------------------------------------------------------------------------


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "warehouse.db"
    set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(path))
    return path


def portfolio_rows(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(
            "SELECT portfolio_id, connection_id, exchange_conn_id, portfolio_name, last_connect_status "
            "FROM coinstats_portfolios ORDER BY portfolio_id"
        ).fetchall()
    finally:
        db.close()


def connected(conn_id: str, pid: str, exchange: str, status: str, credits: int | None) -> dict[str, Any]:
    """One account record as the DAG's register_portfolios task builds it from the connect XComs."""
    return {
        "exchange_conn_id": conn_id,
        "portfolio_id": pid,
        "connection_id": exchange,
        "status": status,
        "credits_spent": credits,
    }


def test_register_portfolios_writes_rows_and_returns_records(warehouse: Path) -> None:
    records = register_portfolios(
        "coinstats_warehouse",
        [
            connected("ex_binance", "pf-b", "binance", "connected", 11),
            connected("ex_okx", "pf-o", "okx", "existing", None),  # a skipped XCom arrives as None
        ],
    )

    assert records == [
        {
            "exchange_conn_id": "ex_binance",
            "portfolio_id": "pf-b",
            "connection_id": "binance",
            "status": "connected",
            "credits_spent": 11,
            "kind": "exchange",
            "account": "ex_binance",
        },
        {
            "exchange_conn_id": "ex_okx",
            "portfolio_id": "pf-o",
            "connection_id": "okx",
            "status": "existing",
            "credits_spent": 0,
            "kind": "exchange",
            "account": "ex_okx",
        },
    ]
    assert portfolio_rows(warehouse) == [
        ("pf-b", "binance", "ex_binance", None, "connected"),
        ("pf-o", "okx", "ex_okx", None, "existing"),
    ]


def test_register_portfolios_counts_missing_credits_as_zero_and_upserts(warehouse: Path) -> None:
    register_portfolios("coinstats_warehouse", [connected("ex_a", "pf-a", "binance", "connected", 11)])
    record = connected("ex_a", "pf-a", "binance", "existing", None)
    del record["credits_spent"]

    records = register_portfolios("coinstats_warehouse", (r for r in [record]))

    assert records[0]["credits_spent"] == 0
    assert portfolio_rows(warehouse) == [("pf-a", "binance", "ex_a", None, "existing")]


def test_register_portfolios_of_no_accounts_writes_nothing(warehouse: Path) -> None:
    assert register_portfolios("coinstats_warehouse", []) == []
    assert portfolio_rows(warehouse) == []


@pytest.mark.parametrize("key", ["exchange_conn_id", "portfolio_id", "connection_id", "status"])
def test_register_portfolios_rejects_an_incomplete_record_before_writing(warehouse: Path, key: str) -> None:
    complete = connected("ex_a", "pf-a", "binance", "connected", 11)
    incomplete = connected("ex_b", "pf-b", "okx", "connected", 11)
    del incomplete[key]

    with pytest.raises(ValueError, match=rf"account record #1 has no {key};.*Nothing was written"):
        register_portfolios("coinstats_warehouse", [complete, incomplete])

    assert not warehouse.exists() or portfolio_rows(warehouse) == []


def test_register_portfolios_rejects_an_empty_portfolio_id(warehouse: Path) -> None:
    with pytest.raises(ValueError, match=r"account record #0 has no portfolio_id"):
        register_portfolios("coinstats_warehouse", [connected("ex_a", "", "binance", "connected", 11)])


# -- portfolio_work --------------------------------------------------------------------------------


def test_portfolio_work_dedupes_portfolios_in_order() -> None:
    records = [
        {"portfolio_id": "pf-2", "exchange_conn_id": "ex_a"},
        {"portfolio_id": "pf-1", "exchange_conn_id": "ex_b"},
        {"portfolio_id": "pf-2", "exchange_conn_id": "ex_c"},
    ]

    work = {"kind": "exchange"}
    assert portfolio_work(records, 63, 120) == [
        {"portfolio_id": "pf-2", "sync_budget": 63, "load_budget": 120, **work, "account": "ex_a"},
        {"portfolio_id": "pf-1", "sync_budget": 63, "load_budget": 120, **work, "account": "ex_b"},
    ]
    assert portfolio_work([], None, None) == []
    assert portfolio_work(records[:1], None, None) == [
        {"portfolio_id": "pf-2", "sync_budget": None, "load_budget": None, **work, "account": "ex_a"}
    ]
    wallet = [{"portfolio_id": "pf-w", "account": "wallet_eth", "kind": "wallet", "exchange_conn_id": "wallet_eth"}]
    assert (
        portfolio_work(wallet, None, None)[0] | {"kind": "wallet", "account": "wallet_eth"}
        == portfolio_work(wallet, None, None)[0]
    )


# -- summarize and format_summary ------------------------------------------------------------------


def account(conn_id: str, pid: str, exchange: str, status: str, credits: int | None) -> dict[str, Any]:
    return {
        "exchange_conn_id": conn_id,
        "portfolio_id": pid,
        "connection_id": exchange,
        "status": status,
        "credits_spent": credits,
    }


ACCOUNTS = [
    account("ex_b1", "pf-b", "binance", "connected", 11),
    account("ex_b2", "pf-b", "binance", "existing", 10),  # a second connection to the same account
    account("ex_o", "pf-o", "okx", "existing", None),
]


def load(pid: str, table: str, rows: int, credits: int) -> dict[str, Any]:
    return {"portfolio_id": pid, "dataset": table, "table": table, "rows": rows, "pages": 1, "credits_spent": credits}


def test_summarize_totals() -> None:
    syncs = [{"portfolio_id": "pf-b", "polls": 2, "credits_spent": 36}, None]
    loads = [
        [load("pf-b", VALUES, 1, 10), load("pf-o", VALUES, 1, 10)],
        [load("pf-b", COINS, 12, 8), None],
        [load("pf-b", TXNS, 250, 12), load("pf-o", TXNS, 0, 4)],
    ]

    summary = summarize(ACCOUNTS, syncs, loads)

    assert summary["portfolios"] == [
        {
            "portfolio_id": "pf-b",
            "exchange_conn_ids": ["ex_b1", "ex_b2"],
            "connection_id": "binance",
            "status": "connected",
            "rows": {VALUES: 1, COINS: 12, TXNS: 250},
            "credits_spent": 11 + 10 + 36 + 10 + 8 + 12,
        },
        {
            "portfolio_id": "pf-o",
            "exchange_conn_ids": ["ex_o"],
            "connection_id": "okx",
            "status": "existing",
            "rows": {VALUES: 1, TXNS: 0},
            "credits_spent": 14,
        },
    ]
    assert summary["rows"] == {VALUES: 2, COINS: 12, TXNS: 250}
    assert summary["total_credits"] == 87 + 14


def test_summarize_accepts_single_dicts_and_skipped_results() -> None:
    """A mapped task with one instance hands over a dict, a skipped one None."""
    summary = summarize(
        ACCOUNTS[0],
        {"portfolio_id": "pf-b", "polls": 1, "credits_spent": 33},
        [load("pf-b", VALUES, 1, 10), None, [None, [load("pf-b", COINS, 3, 8)]]],
    )

    (entry,) = summary["portfolios"]
    assert entry["rows"] == {VALUES: 1, COINS: 3}
    assert entry["credits_spent"] == 11 + 33 + 10 + 8
    assert summary["total_credits"] == 62
    assert summary["rows"] == {VALUES: 1, COINS: 3}


def test_summarize_all_skipped_and_unknown_portfolios() -> None:
    summary = summarize(ACCOUNTS[2:], None, [None, [None], [load("pf-unknown", VALUES, 1, 10)]])

    assert summary["portfolios"][0]["rows"] == {}
    assert summary["portfolios"][0]["credits_spent"] == 0
    assert summary["rows"] == {}
    assert summary["total_credits"] == 0


def test_summarize_of_nothing() -> None:
    assert summarize([], [], []) == {"portfolios": [], "rows": {}, "total_credits": 0, "credits_saved": 0}


def test_summarize_rejects_text() -> None:
    with pytest.raises(TypeError, match="expected task results"):
        summarize("pf-b", [], [])


def test_format_summary_renders_every_portfolio() -> None:
    summary = summarize(ACCOUNTS, [], [[load("pf-b", VALUES, 1, 10)], [load("pf-o", TXNS, 1234, 20)]])

    text = format_summary(summary)

    lines = text.splitlines()
    assert len(lines) == 1 + 2 + 1
    assert lines[0].split() == ["portfolio", "status", "value", "coins", "txns", "credits", "accounts"]
    assert lines[1].split() == ["pf-b", "connected", "1", "0", "0", "31", "ex_b1,", "ex_b2"]
    assert lines[2].split() == ["pf-o", "existing", "0", "0", "1234", "20", "ex_o"]
    assert lines[-1] == "total credits spent: 51"


def test_format_summary_of_an_empty_run() -> None:
    text = format_summary({"portfolios": [], "rows": {}, "total_credits": 0})

    assert text.splitlines()[-1] == "total credits spent: 0"
    assert len(text.splitlines()) == 2


def test_module_exports_the_variable_name() -> None:
    read: Callable[[], str | None] = Variable('["ex_a"]')
    assert pipeline.ACCOUNTS_VARIABLE == "coinstats_exchange_conn_ids"
    assert resolve_accounts(None, read) == ["ex_a"]


def test_summary_shows_the_transactions_mode_and_credits_saved_per_portfolio() -> None:
    incremental = {
        **load("pf-b", TXNS, 2505, 8),
        **{"inserted": 5, "updated": 0, "removed": 0, "mode": "incremental", "mode_requested": "incremental"},
        **{"mode_reason": "since the newest loaded transaction", "credits_saved": 96, "full_read_credits": 104},
    }
    fallback = {
        **load("pf-o", TXNS, 40, 44),
        **{"inserted": 0, "updated": 0, "removed": 1, "mode": "full", "mode_requested": "incremental"},
        **{"mode_reason": "fallback from incremental: ...", "credits_saved": -4, "full_read_credits": 40},
    }
    summary = summarize(ACCOUNTS, [], [[incremental, fallback]])

    modes = {entry["portfolio_id"]: entry.get("transactions_mode") for entry in summary["portfolios"]}
    assert modes["pf-b"] == {
        "mode": "incremental",
        "mode_requested": "incremental",
        "mode_reason": "since the newest loaded transaction",
        "credits_saved": 96,
        "full_read_credits": 104,
    }
    assert modes["pf-o"]["mode"] == "full"  # type: ignore[index]
    assert summary["credits_saved"] == 92
    lines = format_summary(summary).splitlines()
    assert (
        "pf-b                       transactions mode: incremental (since the newest loaded transaction), "
        "96 credits saved against a full read (104)"
    ) in lines
    assert lines[-1] == "credits saved by incremental transactions reads: 92"


def test_transactions_plan_per_portfolio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    from coinstats_provider.warehouse.loader import CoinStatsWarehouse
    from coinstats_provider.warehouse.sync_state import SyncState
    from coinstats_provider.warehouse.transform import transaction_rows
    from tests.unit.warehouse.test_loader import transaction_items

    set_connection(monkeypatch, "wh", conn_type="sqlite", host=str(tmp_path / "wh.db"))
    now = dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    warehouse = CoinStatsWarehouse("wh")
    warehouse.ensure_schema()
    rows = list(transaction_rows("pf-b", transaction_items(250)))
    newest = max(rows, key=lambda row: row["occurred_at"])
    state = SyncState(
        "pf-b",
        currency="USD",
        newest_occurred_at=newest["occurred_at"],
        newest_key=newest["transaction_key"],
        last_full_at=now.isoformat(),
    )
    warehouse.reconcile_transactions("pf-b", rows, state=lambda: state)

    plan = pipeline.plan_transactions(
        "wh", ["pf-b", "pf-new", "pf-b"], mode="incremental", overlap_hours=1, full_every_days=7, now=now
    )

    assert [(p["portfolio_id"], p["mode"], p["reason"]) for p in plan] == [
        ("pf-b", "incremental", "since the newest loaded transaction"),
        ("pf-new", "full", "first load of this portfolio (no sync state)"),
    ]
    # 250 stored: a full read is 3 pages (12 credits); the one-hour window holds 180 of them (2 pages)
    assert (plan[0]["full_read_credits"], plan[0]["estimated_credits"], plan[0]["estimated_saved"]) == (12, 8, 4)
    assert plan[0]["since"] == "2024-01-01T00:22:00+00:00"
    text = pipeline.format_transactions_plan(plan)
    assert "pf-new                     full        (first load of this portfolio (no sync state)); about 4" in text


# -- accounts of both kinds, pruning ---------------------------------------------------------------


def variables(**values: str) -> Callable[[str], str | None]:
    return values.get


def test_resolve_account_ids_merges_params_then_falls_back_to_the_variables() -> None:
    assert pipeline.resolve_account_ids(["w_eth", "ex_a"], "ex_a,ex_b", variables()) == ["w_eth", "ex_a", "ex_b"]
    new, old = pipeline.ACCOUNT_IDS_VARIABLE, pipeline.ACCOUNTS_VARIABLE
    both = variables(**{new: '["w_eth"]', old: '["ex_old"]'})
    assert pipeline.resolve_account_ids([], [], both) == ["w_eth"]
    assert pipeline.resolve_account_ids(None, None, variables(**{old: "ex_old"})) == ["ex_old"]
    with pytest.raises(CoinStatsConfigError, match="Variable 'coinstats_account_conn_ids' holds 'bad id'"):
        pipeline.resolve_account_ids([], [], variables(**{new: "bad id"}))
    with pytest.raises(CoinStatsConfigError, match="No accounts to sync: pass the Param 'account_conn_ids'"):
        pipeline.resolve_account_ids([], [], variables())


def test_split_by_kind() -> None:
    types = {"ex_a": "coinstats_exchange", "w_eth": "coinstats_wallet", "ex_b": "coinstats_exchange"}
    assert pipeline.split_by_kind(["w_eth", "ex_b", "ex_a"], types.get) == {
        "exchange": ["ex_b", "ex_a"],
        "wallet": ["w_eth"],
    }
    with pytest.raises(CoinStatsConfigError, match=r"'nope' is not defined\. Create it"):
        pipeline.split_by_kind(["nope"], types.get)
    with pytest.raises(CoinStatsConfigError, match="conn_type 'postgres', expected coinstats_exchange or"):
        pipeline.split_by_kind(["pg"], {"pg": "postgres"}.get)


def test_budget_check_counts_wallets_at_their_price() -> None:
    exchange_only = pipeline.SUPPORT_COST + pipeline.CONNECT_COST + pipeline.min_credits_per_portfolio(3)
    wallet = 1 + 40 + pipeline.min_credits_per_portfolio(3)
    pipeline.check_budget_covers(exchange_only + wallet, 1, 3, wallets=1)
    with pytest.raises(CoinStatsConfigError, match=f"each wallet {wallet}"):
        pipeline.check_budget_covers(exchange_only + wallet - 1, 1, 3, wallets=1)


def test_register_wallets_and_prune_only_what_this_dag_created(warehouse: Path) -> None:
    records = register_portfolios(
        "coinstats_warehouse",
        [
            {"account": "w_eth", "kind": "wallet", "portfolio_id": "pf-w", "connection_id": "ethereum",
             "status": "connected", "credits_spent": 41},
            {"account": "ex_a", "portfolio_id": "pf-a", "connection_id": "binance", "status": "existing"},
            {"account": "ex_b", "portfolio_id": "pf-b", "connection_id": "kraken", "status": "connected"},
        ],
        created_by="my_dag",
    )  # fmt: skip
    assert [(r["account"], r["kind"]) for r in records] == [
        ("w_eth", "wallet"),
        ("ex_a", "exchange"),
        ("ex_b", "exchange"),
    ]
    db = sqlite3.connect(warehouse)
    rows = db.execute(
        "SELECT portfolio_id, kind, account_conn_id, exchange_conn_id, created_by FROM coinstats_portfolios"
    )
    assert sorted(rows) == [
        ("pf-a", "exchange", "ex_a", "ex_a", None),  # existed before: not created here
        ("pf-b", "exchange", "ex_b", "ex_b", "my_dag"),
        ("pf-w", "wallet", "w_eth", None, "my_dag"),
    ]

    # Only ex_b is still listed: w_eth's portfolio was created here (delete), ex_a's was not (keep).
    prune = pipeline.prune_candidates("coinstats_warehouse", "my_dag", {"ex_b"}, {"pf-b"})
    assert prune == [{"portfolio_id": "pf-w", "account": "w_eth"}]
    assert pipeline.prune_candidates("coinstats_warehouse", "other_dag", {"ex_b"}, {"pf-b"}) == []
    assert pipeline.pruning_cost(prune) == 10
    removed = dict(db.execute("SELECT portfolio_id, removed_at FROM coinstats_portfolios").fetchall())
    assert removed["pf-a"] and removed["pf-w"] and removed["pf-b"] is None  # noqa: PT018

    recorded = pipeline.record_deletions(
        "coinstats_warehouse", [[{"portfolio_id": "pf-w", "account": "w_eth", "deleted": True, "credits_spent": 10}]]
    )
    assert pipeline.prune_candidates("coinstats_warehouse", "my_dag", {"ex_b"}, {"pf-b"}) == []  # deleted once
    summary = pipeline.with_pruned(pipeline.summarize(records[2:], [], []), recorded)
    assert summary["pruned"] == [{"portfolio_id": "pf-w", "account": "w_eth", "deleted": True, "credits_spent": 10}]
    assert summary["total_credits"] == 10
    assert "pf-w                       pruned (deleted, 10 credits): w_eth" in pipeline.format_summary(summary)

    # Listed again: registering clears the marks, and the portfolio is a candidate again only if removed again.
    register_portfolios("coinstats_warehouse", [records[0]], created_by="my_dag")
    marks = db.execute("SELECT removed_at, deleted_at FROM coinstats_portfolios WHERE portfolio_id = 'pf-w'")
    assert marks.fetchall() == [(None, None)]
    db.close()
