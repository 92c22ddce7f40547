"""The operators' shared module: budgets, booleans, fail-fast; and how the operator modules depend on each other."""

from __future__ import annotations

import ast
import inspect
import logging
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from coinstats_provider import operators, triggers
from coinstats_provider.exceptions import CoinStatsConfigError, CoinStatsServerError, CoinStatsValidationError
from coinstats_provider.hooks import sync_wait
from coinstats_provider.operators import _common
from coinstats_provider.operators._common import fail_fast, failing_fast, parse_credit_budget
from coinstats_provider.operators.load import LoadPortfolioOperator
from coinstats_provider.operators.sync import SyncPortfolioOperator

OPERATORS_DIR = Path(inspect.getfile(operators)).parent
SIBLINGS = {
    "coinstats_provider.operators.connect",
    "coinstats_provider.operators.sync",
    "coinstats_provider.operators.load",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("module", ["connect.py", "sync.py", "load.py", "_common.py"])
def test_no_operator_module_imports_a_sibling_operator_module(module: str) -> None:
    own = f"coinstats_provider.operators.{module.removesuffix('.py')}"

    assert not (imported_modules(OPERATORS_DIR / module) & (SIBLINGS - {own}))


@pytest.mark.parametrize(
    "module", [*sorted(OPERATORS_DIR.glob("*.py")), *Path(inspect.getfile(triggers)).parent.glob("*.py")]
)
def test_no_operator_or_trigger_peeks_into_private_state(module: Path) -> None:
    assert "__dict__" not in module.read_text(), module.name


def test_the_wait_loop_is_written_once() -> None:
    """Only the poll policy module sleeps between status polls; the operator and the trigger call it."""
    for module in (OPERATORS_DIR / "sync.py", Path(inspect.getfile(triggers)).parent / "sync.py"):
        source = module.read_text()
        assert "sleep(" not in source, module
        assert "get_portfolio_sync_status" not in source, module
    assert "time.sleep(" in inspect.getsource(sync_wait)
    assert "asyncio.sleep(" in inspect.getsource(sync_wait)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), (" None ", None), (90, 90), ("45", 45), ("45.0", 45), (12.9, 12), ("0", 0)],
)
def test_parse_credit_budget(value: Any, expected: int | None) -> None:
    assert parse_credit_budget(value, "sync") == expected


@pytest.mark.parametrize("value", ["lots", "1e", [5], True, {"budget": 5}, "inf"])
def test_unreadable_credit_budget_fails_naming_the_task_and_the_fix(value: Any) -> None:
    with pytest.raises(CoinStatsConfigError) as info:
        parse_credit_budget(value, "sync")

    assert isinstance(info.value, AirflowFailException)  # no Airflow retry for a configuration error
    assert "Task sync: credit_budget must be a whole number of credits" in str(info.value)
    assert "credit budget Param" in str(info.value)


@pytest.mark.parametrize("operator", ["sync", "load"])
def test_operators_fail_fast_on_an_unreadable_budget_before_any_request(coinstats_conn: Any, operator: str) -> None:
    op: Any = (
        SyncPortfolioOperator(task_id="sync", portfolio_id="pf-1", credit_budget="lots")
        if operator == "sync"
        else LoadPortfolioOperator(task_id="load", portfolio_id="pf-1", dataset="value", credit_budget="lots")
    )

    with pytest.raises(
        AirflowFailException, match="credit_budget must be a whole number of credits or empty for no limit, not 'lots'"
    ):
        op.execute({"ti": None})  # before: a ValueError that Airflow retried


def test_fail_fast_keeps_retryable_errors_and_fails_the_others() -> None:
    retryable = CoinStatsServerError(503, "Service Unavailable")
    assert fail_fast(retryable, "Polling") is retryable
    failed = fail_fast(CoinStatsValidationError("bad fields"), "Connecting")
    assert type(failed) is AirflowFailException
    assert str(failed) == "Connecting failed and retrying cannot help: bad fields"

    with (
        pytest.raises(AirflowFailException, match="Registering failed and retrying cannot help"),
        failing_fast("Registering"),
    ):
        raise CoinStatsConfigError("no such connection")


def test_credits_helpers_push_and_log() -> None:
    pushed: list[tuple[str, Any]] = []
    lines: list[str] = []
    ti = type("TI", (), {"xcom_push": lambda _self, key, value: pushed.append((key, value))})()
    log = type("Log", (), {"info": lambda _self, event, *args: lines.append(event % args)})()

    _common.push_credits_spent({"ti": ti}, 42)  # type: ignore[typeddict-item]
    _common.log_credits_spent(log, 42, " (%d by earlier tries)", 30)

    assert pushed == [("credits_spent", 42)]
    assert lines == ["CoinStats credits spent by this task: 42 (30 by earlier tries)"]


def test_an_unreadable_credit_budget_is_quoted_cut_to_40_characters() -> None:
    value = "x" * 39 + "ABCDEFGHIJ"  # a rendered template can be long; the message quotes its first 40 characters
    with pytest.raises(CoinStatsConfigError) as info:
        parse_credit_budget(value, "sync")

    assert f"not {value[:40]!r}." in str(info.value)
    assert "BCDEFGHIJ" not in str(info.value)


def test_credits_line_without_a_breakdown_ends_at_the_figure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    _common.log_credits_spent(logging.getLogger("coinstats.test"), 16)
    _common.log_credits_spent(logging.getLogger("coinstats.test"), 30, " (%d by earlier tries)", 12)

    assert [r.getMessage() for r in caplog.records] == [
        "CoinStats credits spent by this task: 16",
        "CoinStats credits spent by this task: 30 (12 by earlier tries)",
    ]
