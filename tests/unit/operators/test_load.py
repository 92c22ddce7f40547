"""Unit tests of LoadPortfolioOperator: paged answers mocked with ``responses``, a temporary SQLite warehouse."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
import responses
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from coinstats_provider.exceptions import CoinStatsServerError
from coinstats_provider.operators.load import TABLES, LoadPortfolioOperator, run_date, snapshot_date
from coinstats_provider.warehouse.loader import CoinStatsWarehouse
from tests.conftest import BASE_URL, assert_no_canary, set_connection

PID = "pf-1"
#: The data interval end of a current daily run (snapshots carry the date their data is fetched).
DAY = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
TODAY = DAY.date().isoformat()
VALUE_URL = BASE_URL + "/portfolio/value"
COINS_URL = BASE_URL + "/portfolio/coins"
TXNS_URL = BASE_URL + "/portfolio/transactions"
VALUE = {
    "totalValue": 1234.5,
    "defiValue": 0,
    "totalCost": 1000,
    "unrealizedProfitLoss": 234.5,
    "unrealizedProfitLossPercent": 23.45,
    "realizedProfitLoss": 10,
    "realizedProfitLossPercent": 1,
    "allTimeProfitLoss": 244.5,
    "allTimeProfitLossPercent": 24.45,
}


class FakeTI:
    """Records ``xcom_push`` calls."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, Any]] = []

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed.append((key, value))


def coin(i: int) -> dict[str, Any]:
    return {
        "count": 1.5 + i,
        "coin": {"identifier": f"coin-{i:03d}", "symbol": f"C{i}", "name": f"Coin {i}", "isFiat": False},
        "price": {"USD": 2.0 + i, "BTC": 0.0001 * i},
        "profit": {"allTime": {"USD": 0.5 * i}},
        "profitPercent": {"allTime": {"USD": 0.25}},
    }


def transaction(i: int, generation: int = 1) -> dict[str, Any]:
    return {
        "transactionType": "Buy" if i % 2 else "Sell",
        "date": (dt.datetime(2024, 1, 1) + dt.timedelta(minutes=i)).isoformat() + ".000Z",
        "coinData": {"identifier": f"coin-{i % 7}", "symbol": f"C{i % 7}", "count": 0.5 + i + 1000 * generation},
        "fee": {"coin": {"identifier": "tether"}, "count": 0.01},
    }


class Pages:
    """A paged CoinStats route: answers ``page``/``limit`` from ``items``, optionally failing at one page."""

    def __init__(self, key: str, items: list[dict[str, Any]], fail_at: int | None = None, status: int = 406) -> None:
        self.key = key
        self.items = items
        self.fail_at = fail_at
        self.status = status
        self.pages: list[int] = []

    def __call__(self, request: Any) -> tuple[int, dict[str, str], str]:
        query = parse_qs(urlsplit(request.url).query)
        assert query["portfolioId"] == [PID]
        page, limit = int(query["page"][0]), int(query["limit"][0])
        self.pages.append(page)
        if page == self.fail_at:
            return self.status, {}, json.dumps({"statusCode": self.status, "message": "Not enough credits"})
        chunk = self.items[(page - 1) * limit : page * limit]
        return 200, {}, json.dumps({self.key: chunk})


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "warehouse.db"
    set_connection(monkeypatch, "coinstats_warehouse", conn_type="sqlite", host=str(path))
    return path


def rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` except ``loaded_at``, in a stable order."""
    db = sqlite3.connect(path)
    try:
        columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})") if r[1] != "loaded_at"]
        return db.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY 1, 2, 3").fetchall()  # noqa: S608
    finally:
        db.close()


def context(ti: FakeTI, **values: Any) -> Any:
    """A task context holding only what the operator reads."""
    return {"ti": ti, **values}


def run(ti: FakeTI | None = None, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("task_id", f"load_{kwargs.get('dataset')}")
    kwargs.setdefault("portfolio_id", PID)
    op = LoadPortfolioOperator(**kwargs)
    result: dict[str, Any] = op.execute(context(ti or FakeTI(), data_interval_end=DAY))
    return result


# -- each dataset ----------------------------------------------------------------------------------


def test_value_loads_one_row(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    rsps.get(VALUE_URL, json=VALUE)
    ti = FakeTI()

    result = run(ti, dataset="value", currency="EUR")

    assert result == {
        "portfolio_id": PID,
        "dataset": "value",
        "table": "coinstats_portfolio_values",
        "rows": 1,
        "pages": 0,
        "credits_spent": 10,
    }
    assert dict(parse_qsl(urlsplit(str(rsps.calls[0].request.url)).query)) == {"portfolioId": PID, "currency": "EUR"}
    stored = rows(warehouse, "coinstats_portfolio_values")
    # SQLite keeps the API's exact decimal text (see coinstats_provider.warehouse.loader)
    assert stored == [(PID, TODAY, "EUR", "1234.5", "0", "1000", "234.5", "23.45", "10", "1", "244.5", "24.45")]
    assert ti.pushed == [("credits_spent", 10)]
    assert "CoinStats credits spent by this task: 10" in logs.text
    assert_no_canary(result, ti.pushed, logs.text, stored)


def test_coins_follow_pages_until_a_short_page(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    pages = Pages("result", [coin(i) for i in range(5)])
    rsps.add_callback(responses.GET, COINS_URL, callback=pages)
    ti = FakeTI()

    result = run(ti, dataset="coins", page_size=2)

    assert pages.pages == [1, 2, 3]
    assert (result["table"], result["rows"], result["pages"], result["credits_spent"]) == (
        "coinstats_portfolio_coins",
        5,
        3,
        3 * 8,
    )
    stored = rows(warehouse, "coinstats_portfolio_coins")
    assert [(r[0], r[1], r[2], r[3]) for r in stored] == [(PID, TODAY, f"coin-{i:03d}", f"C{i}") for i in range(5)]
    assert stored[1][6:9] == ("2.5", "3.0", "0.0001")  # amount, price_usd, price_btc (exact text)
    assert ti.pushed == [("credits_spent", 24)]


def test_transactions_are_upserted(coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock) -> None:
    pages = Pages("data", [transaction(i) for i in range(4)])
    rsps.add_callback(responses.GET, TXNS_URL, callback=pages)
    ti = FakeTI()

    result = run(ti, dataset="transactions", page_size=2)

    assert pages.pages == [1, 2, 3]  # the third page is empty
    assert (result["rows"], result["pages"], result["credits_spent"]) == (4, 2, 3 * 4)
    stored = rows(warehouse, "coinstats_portfolio_transactions")
    assert len(stored) == 4
    assert {r[0] for r in stored} == {PID}
    assert sorted(r[3] for r in stored) == [transaction(i)["date"] for i in range(4)]
    assert ti.pushed == [("credits_spent", 12)]


@pytest.mark.parametrize(
    ("dataset", "url", "answer"),
    [
        ("value", VALUE_URL, None),
        ("coins", COINS_URL, Pages("result", [coin(i) for i in range(3)])),
        ("transactions", TXNS_URL, Pages("data", [transaction(i) for i in range(3)])),
    ],
)
def test_rerun_leaves_the_table_identical(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, dataset: str, url: str, answer: Any
) -> None:
    if answer is None:
        rsps.get(url, json=VALUE)
    else:
        rsps.add_callback(responses.GET, url, callback=answer)
    table = TABLES[dataset]

    first = run(dataset=dataset)
    after_first = rows(warehouse, table)
    second = run(dataset=dataset)

    changes = ("inserted", "updated", "removed")
    assert {k: v for k, v in first.items() if k not in changes} == {k: v for k, v in second.items() if k not in changes}
    if dataset == "transactions":  # the rerun finds everything already mirrored
        assert ([first[k] for k in changes], [second[k] for k in changes]) == ([3, 0, 0], [0, 0, 0])
    assert rows(warehouse, table) == after_first
    assert len(after_first) == first["rows"] > 0


def test_load_stamps_the_date_the_data_was_fetched(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    rsps.get(VALUE_URL, json=VALUE)
    op = LoadPortfolioOperator(task_id="v", portfolio_id=PID, dataset="value")

    op.execute(context(FakeTI(), logical_date=dt.datetime(2023, 2, 3, tzinfo=dt.UTC)))

    # CoinStats serves today's value: an old run records it under today, not under 2023-02-03.
    assert rows(warehouse, "coinstats_portfolio_values")[0][1] == dt.datetime.now(dt.UTC).date().isoformat()


# -- selection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "datasets"),
    [
        ("transactions", ["value", "coins"]),
        ("transactions", ("value",)),
        ("transactions", "['value', 'coins']"),
        ("value", '["coins", "transactions"]'),
        ("coins", "value, transactions"),
        ("value", "[]"),
        ("value", []),
    ],
)
def test_dataset_not_selected_is_skipped_without_a_request(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, dataset: str, datasets: Any
) -> None:
    ti = FakeTI()

    with pytest.raises(AirflowSkipException, match=f"Dataset '{dataset}' is not selected"):
        run(ti, dataset=dataset, datasets=datasets)

    assert len(rsps.calls) == 0
    assert ti.pushed == []
    assert not warehouse.exists()


@pytest.mark.parametrize("datasets", [None, ["value"], "['value', 'coins']", '["coins","value"]', "value"])
def test_selected_dataset_runs(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, datasets: Any
) -> None:
    rsps.get(VALUE_URL, json=VALUE)

    assert run(dataset="value", datasets=datasets)["rows"] == 1


@pytest.mark.parametrize("datasets", [{"value"}, frozenset({"coins", "value"}), ("coins", "value"), " value "])
def test_selection_accepts_sets_tuples_and_one_name(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, datasets: Any
) -> None:
    rsps.get(VALUE_URL, json=VALUE)

    assert run(dataset="value", datasets=datasets)["rows"] == 1


@pytest.mark.parametrize(
    ("datasets", "cause"),
    [
        ("[value, coins", "cannot read '[value, coins'"),  # before: hand-stripped into "value" and loaded
        (["value", "prices"], "unknown dataset 'prices'"),  # before: the typo went unnoticed
        ("value; coins", "unknown dataset 'value; coins'"),
        (["value", 3], "cannot read \"['value', 3]\""),
        ({"value": True}, "cannot read \"{'value': True}\""),
        (5, "cannot read '5'"),
    ],
)
def test_unreadable_selection_fails_naming_the_cause_and_the_fix(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, datasets: Any, cause: str
) -> None:
    ti = FakeTI()

    with pytest.raises(AirflowFailException) as info:
        run(ti, dataset="value", datasets=datasets)

    message = str(info.value)
    assert f"Task load_value: datasets: {cause}." in message
    assert "Give a list of dataset names from value, coins, transactions" in message
    assert "the DAG's datasets Param" in message
    assert len(rsps.calls) == 0
    assert ti.pushed == []
    assert not warehouse.exists()


def test_rendered_datasets_param_selects(coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock) -> None:
    """The DAG passes ``"{{ params.datasets }}"``, which renders a list to its Python text."""
    rsps.get(VALUE_URL, json=VALUE)
    selected = LoadPortfolioOperator(task_id="v", portfolio_id=PID, dataset="value", datasets="{{ params.datasets }}")
    skipped = LoadPortfolioOperator(task_id="t", portfolio_id=PID, dataset="transactions", datasets="{{ params.ds }}")
    params = context(FakeTI(), params={"datasets": ["value", "coins"], "ds": ["value", "coins"]})
    selected.render_template_fields(params)
    skipped.render_template_fields(params)

    assert selected.datasets == "['value', 'coins']"
    assert selected.execute(context(FakeTI(), data_interval_end=DAY))["rows"] == 1
    with pytest.raises(AirflowSkipException):
        skipped.execute(context(FakeTI(), data_interval_end=DAY))
    assert len(rsps.calls) == 1


@pytest.mark.parametrize("datasets", [None, ["prices"], ["value"]])
def test_unknown_dataset_fails(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, datasets: Any
) -> None:
    with pytest.raises(AirflowFailException) as info:
        run(dataset="prices", datasets=datasets)

    assert "Unknown dataset 'prices'; choose from value, coins, transactions" in str(info.value)
    assert len(rsps.calls) == 0


def test_template_fields() -> None:
    assert tuple(LoadPortfolioOperator.template_fields) == (
        "portfolio_id",
        "dataset",
        "datasets",
        "coinstats_conn_id",
        "warehouse_conn_id",
        "currency",
        "credit_budget",
        "transactions_mode",
        "transactions_overlap_hours",
        "full_every_days",
        "account",
        "chart_type",
        "portfolio_kind",
    )


# -- failures --------------------------------------------------------------------------------------


def test_406_mid_pagination_rolls_the_load_back(
    coinstats_conn: Any,
    warehouse: Path,
    rsps: responses.RequestsMock,
    logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pages = Pages("data", [transaction(i) for i in range(3)])
    rsps.add_callback(responses.GET, TXNS_URL, callback=pages)
    run(dataset="transactions")
    before = rows(warehouse, "coinstats_portfolio_transactions")
    assert len(before) == 3
    # Six full pages of new and changed transactions (a 500-row batch is written), then 406 on page 7.
    pages.items = [transaction(i, generation=2) for i in range(600)]
    pages.fail_at = 7
    pages.pages = []
    prepared: list[int] = []
    row_params = CoinStatsWarehouse._row_params

    def spy(self: CoinStatsWarehouse, *args: Any) -> tuple[Any, ...]:
        prepared.append(1)
        return row_params(self, *args)

    monkeypatch.setattr(CoinStatsWarehouse, "_row_params", spy)
    ti = FakeTI()

    with pytest.raises(AirflowFailException) as info:
        run(ti, dataset="transactions")

    assert pages.pages == [1, 2, 3, 4, 5, 6, 7]
    assert len(prepared) == 500  # one full batch went to the database before the failure
    message = str(info.value)
    assert f"Loading transactions of portfolio {PID} failed and retrying cannot help" in message
    assert "no credits left" in message
    assert rows(warehouse, "coinstats_portfolio_transactions") == before
    assert ti.pushed == [("credits_spent", 6 * 4)]
    assert_no_canary(message, logs.text)


def test_persistent_503_is_left_to_airflow_retries(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    rsps.get(VALUE_URL, status=503, json={"message": "Service Unavailable"})
    ti = FakeTI()

    with pytest.raises(CoinStatsServerError):
        run(ti, dataset="value")

    assert len(rsps.calls) == 4
    assert ti.pushed == [("credits_spent", 0)]
    assert rows(warehouse, "coinstats_portfolio_values") == []


def test_credit_budget_stops_before_the_call(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock
) -> None:
    ti = FakeTI()

    with pytest.raises(AirflowFailException, match="Credit budget exceeded"):
        run(ti, dataset="value", credit_budget="9")

    assert len(rsps.calls) == 0
    assert ti.pushed == [("credits_spent", 0)]


def test_progress_is_logged_every_ten_pages(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, logs: pytest.LogCaptureFixture
) -> None:
    pages = Pages("result", [coin(i) for i in range(25)])
    rsps.add_callback(responses.GET, COINS_URL, callback=pages)

    result = run(dataset="coins", page_size=1)

    assert len(pages.pages) == 26  # 25 pages of one coin and an empty one
    assert (result["rows"], result["pages"], result["credits_spent"]) == (25, 25, 26 * 8)
    progress = [r.getMessage() for r in logs.records if "rows so far" in r.getMessage()]
    assert progress == [
        f"coins of portfolio {PID}: 10 pages, 10 rows so far, 80 credits so far",
        f"coins of portfolio {PID}: 20 pages, 20 rows so far, 160 credits so far",
    ]
    assert f"Loaded 25 coins rows of portfolio {PID} into coinstats_portfolio_coins (snapshot {TODAY})" in logs.text
    assert_no_canary(logs.text)


# -- snapshot_date ---------------------------------------------------------------------------------

INTERVAL_END = dt.datetime(2024, 3, 31, 0, 0, tzinfo=dt.UTC)
LOGICAL = dt.datetime(2024, 3, 30, 12, 0, tzinfo=dt.UTC)
RUN_AFTER = dt.datetime(2024, 3, 29, 6, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("ctx", "expected"),
    [
        (
            {
                "data_interval_end": INTERVAL_END,
                "logical_date": LOGICAL,
                "dag_run": SimpleNamespace(run_after=RUN_AFTER),
            },
            dt.date(2024, 3, 31),
        ),
        (
            {"data_interval_end": None, "logical_date": LOGICAL, "dag_run": SimpleNamespace(run_after=RUN_AFTER)},
            dt.date(2024, 3, 30),
        ),
        (
            {"data_interval_end": None, "logical_date": None, "dag_run": SimpleNamespace(run_after=RUN_AFTER)},
            dt.date(2024, 3, 29),
        ),
        ({"data_interval_end": "2024-03-31", "dag_run": SimpleNamespace(run_after=RUN_AFTER)}, dt.date(2024, 3, 29)),
    ],
    ids=["data-interval-end", "logical-date", "run-after", "non-datetime-ignored"],
)
def test_run_date_precedence(ctx: Any, expected: dt.date) -> None:
    assert run_date(ctx) == expected


@pytest.mark.parametrize("ctx", [{}, {"dag_run": None}, {"dag_run": SimpleNamespace(run_after=None)}])
def test_snapshot_date_falls_back_to_today_utc(ctx: Any) -> None:
    before = dt.datetime.now(dt.UTC).date()
    day = snapshot_date(ctx)
    assert day in {before, dt.datetime.now(dt.UTC).date()}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"transactions_mode": "weekly"}, "transactions_mode 'weekly' is not one of full, incremental"),
        ({"transactions_overlap_hours": "-2"}, "transactions_overlap_hours must be a number >= 0, got '-2'"),
        ({"full_every_days": 0}, "full_every_days must be a number > 0, got '0'"),
    ],
)
def test_bad_transactions_settings_fail_before_any_call(
    coinstats_conn: Any, warehouse: Path, rsps: responses.RequestsMock, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(AirflowFailException, match=message):
        run(dataset="transactions", **settings)
    assert len(rsps.calls) == 0
