"""The warehouse schema is the one source of table names: every consumer reads it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import coinstats_provider.operators.load as load_operator
from coinstats_provider import pipeline
from coinstats_provider.warehouse import schema
from coinstats_provider.warehouse.schema import (
    DATASET_TABLES,
    DATASETS,
    DEFAULT_DATASETS,
    SNAPSHOT_TABLES,
    TABLES,
    TRANSACTIONS_TABLE,
    UPSERT_TABLES,
    spec,
)
from tests.conftest import ROOT

PACKAGE = ROOT / "plugins" / "coinstats_provider"


def test_datasets_map_to_warehouse_tables_in_load_order() -> None:
    assert DATASETS == ("value", "coins", "transactions", "chart", "defi", "snapshot")
    assert DEFAULT_DATASETS == ("value", "coins", "transactions") == DATASETS[:3]
    assert tuple(DATASET_TABLES) == DATASETS
    assert set(DATASET_TABLES.values()) <= set(TABLES)
    assert {DATASET_TABLES[d] for d in ("value", "coins", "defi")} == SNAPSHOT_TABLES
    assert {DATASET_TABLES[d] for d in ("chart", "snapshot")} == UPSERT_TABLES
    assert DATASET_TABLES["transactions"] == TRANSACTIONS_TABLE
    # Every table starts with the portfolio it belongs to (loads and checks filter on it).
    assert all(table.columns[0] == ("portfolio_id", "TEXT") for table in TABLES.values())
    assert all(table.column_names[: len(table.primary_key)] == table.primary_key for table in TABLES.values())


def test_the_load_operator_uses_the_schema_map() -> None:
    assert load_operator.TABLES is DATASET_TABLES
    assert load_operator.DATASETS is DATASETS


def test_unknown_table_is_refused_by_name() -> None:
    assert spec(TRANSACTIONS_TABLE) is TABLES[TRANSACTIONS_TABLE]
    # The message lists the valid names.
    with pytest.raises(ValueError, match=r"unknown table .*expected one of \[.*'coinstats_portfolio_values'"):
        spec("coinstats_portfolios; DROP TABLE coinstats_portfolios")


def _table_literals(path: Path) -> list[tuple[int, str]]:
    """String constants of ``path`` that are exactly a table name (docstrings are longer text)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in TABLES
    ]


def test_no_module_but_the_schema_spells_a_table_name() -> None:
    sources = [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "dags").glob("*.py"),
        ROOT / "include" / "demo.py",
    ]
    skipped = {Path(schema.__file__).resolve()}
    found = {
        str(path.relative_to(ROOT)): literals
        for path in sources
        if path.resolve() not in skipped and (literals := _table_literals(path))
    }
    assert found == {}
    assert Path(pipeline.__file__).resolve() in {p.resolve() for p in sources}  # the scan covers the package
