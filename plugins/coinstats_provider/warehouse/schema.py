"""The warehouse layout: the one place that names the tables, their columns and the dataset each loads.

Column types (``DECIMAL``: PostgreSQL ``NUMERIC``, SQLite ``TEXT`` holding the exact decimal in plain
notation; ``DATE``: PostgreSQL ``DATE``, SQLite ISO text; primary-key columns in bold):

============================================  ==================================================================
Table                                         Columns
============================================  ==================================================================
``coinstats_portfolios``                      **portfolio_id** TEXT, connection_id TEXT, exchange_conn_id TEXT,
                                              portfolio_name TEXT, last_connect_status TEXT, updated_at TEXT,
                                              kind TEXT (exchange/wallet), account_conn_id TEXT,
                                              created_by TEXT, removed_at TEXT, deleted_at TEXT
``coinstats_portfolio_values``                **portfolio_id** TEXT, **snapshot_date** DATE, currency TEXT,
                                              total_value, defi_value, total_cost, unrealized_profit_loss,
                                              unrealized_profit_loss_percent, realized_profit_loss,
                                              realized_profit_loss_percent, all_time_profit_loss,
                                              all_time_profit_loss_percent (all DECIMAL), loaded_at TEXT
``coinstats_portfolio_coins``                 **portfolio_id** TEXT, **snapshot_date** DATE, **coin_id** TEXT,
                                              symbol TEXT, name TEXT, is_fiat INTEGER (0/1), amount, price_usd,
                                              price_btc, value_usd, profit_all_time_usd,
                                              profit_percent_all_time_usd (all DECIMAL), loaded_at TEXT
``coinstats_portfolio_transactions``          **portfolio_id** TEXT, **transaction_key** TEXT, transaction_type TEXT,
                                              occurred_at TEXT, coin_id TEXT, symbol TEXT, amount DECIMAL,
                                              total_worth_usd DECIMAL, fee_amount DECIMAL, fee_coin_id TEXT,
                                              profit_usd DECIMAL, portfolio_name TEXT, payload_json TEXT,
                                              loaded_at TEXT
``coinstats_portfolio_transactions_removed``  **portfolio_id** TEXT, **transaction_key** TEXT, **removed_at** TEXT,
                                              payload_json TEXT
``coinstats_transactions_sync_state``         **portfolio_id** TEXT, last_mode TEXT, currency TEXT,
                                              newest_occurred_at TEXT, newest_key TEXT, last_full_at TEXT,
                                              last_run_at TEXT

The sync-state table holds one row per portfolio: the mode of the last transactions load (``full`` or
``incremental``), the currency its values are in, the newest transaction loaded (its date and key), and
when the last full reconcile and the last load ran; it is written in the same database transaction as the
transactions it describes.

Timestamps (``loaded_at``, ``updated_at``, ``removed_at``, ``deleted_at``, ``last_full_at``, ``last_run_at``)
are UTC ISO 8601 text.

``coinstats_portfolios`` has one row per portfolio the DAG registered: ``account_conn_id`` is the Airflow
connection of its account (``exchange_conn_id`` too for an exchange, NULL for a wallet), ``kind`` what it
tracks, ``created_by`` the DAG whose connect created it (answered ``connected``; NULL when CoinStats
answered ``existing``, i.e. it existed before), ``removed_at`` when its account left the accounts list and
``deleted_at`` when pruning deleted it on CoinStats (both NULL again once the account is listed again).

Every table starts with ``portfolio_id``. Snapshots (:data:`SNAPSHOT_TABLES`) are replaced per
``(portfolio_id, snapshot_date)``; each dataset of :data:`DATASETS` loads the table :data:`DATASET_TABLES` names.
=======

``TIMESTAMP`` is PostgreSQL ``TIMESTAMPTZ`` and, on SQLite, UTC ISO 8601 text (``2026-02-27T12:00:00+00:00``).
Other timestamps (``loaded_at``, ``updated_at``, ``removed_at``, ``deleted_at``, ``last_full_at``,
``last_run_at``) are UTC ISO 8601 text.

The sync-state table holds one row per portfolio: the mode of the last transactions load (``full`` or
``incremental``), the currency its values are in, the newest transaction loaded (its date and key), and
when the last full reconcile and the last load ran; it is written in the same database transaction as the
transactions it describes.

``coinstats_portfolios`` has one row per portfolio the DAG registered: ``account_conn_id`` is the Airflow
connection of its account (``exchange_conn_id`` too for an exchange, NULL for a wallet), ``kind`` what it
tracks, ``created_by`` the DAG whose connect created it (answered ``connected``; NULL when CoinStats
answered ``existing``, i.e. it existed before), ``removed_at`` when its account left the accounts list and
``deleted_at`` when pruning deleted it on CoinStats (both NULL again once the account is listed again).

Every table starts with ``portfolio_id``. Snapshots (:data:`SNAPSHOT_TABLES`) are replaced per
``(portfolio_id, snapshot_date)``; histories (:data:`UPSERT_TABLES`) are upserted by primary key (a rerun
rewrites its points, keeps the others); each dataset of :data:`DATASETS` loads the table
:data:`DATASET_TABLES` names.

A snapshot's coin balances are one JSON column (``coin_balances_json``, canonical JSON with exact numbers),
not a child table: CoinStats gives the balances no id (only ``symbol``, which two coins may share), they
are only ever read together with their snapshot, and one row per snapshot keeps the upsert atomic and the
table one Asset. Query them with ``json_each(coin_balances_json)`` on SQLite or
``jsonb_array_elements(coin_balances_json::jsonb)`` on PostgreSQL.

This module imports nothing from Airflow: DAG files read :data:`DATASETS` and :data:`DATASET_TABLES` at
parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CHART_TABLE",
    "COINS_TABLE",
    "DATASETS",
    "DATASET_TABLES",
    "DECIMAL",
    "DEFAULT_DATASETS",
    "DEFI_TABLE",
    "PORTFOLIOS_TABLE",
    "REMOVED_TABLE",
    "REPORT_TABLE",
    "SNAPSHOTS_TABLE",
    "SNAPSHOT_TABLES",
    "SYNC_STATE_TABLE",
    "TABLES",
    "TIMESTAMP",
    "TRANSACTIONS_TABLE",
    "UPSERT_TABLES",
    "VALUES_TABLE",
    "WAREHOUSE_CONN_NAME",
    "Dialect",
    "TableSpec",
    "spec",
]

Dialect = Literal["sqlite", "postgres"]

_TEXT = "TEXT"
#: Exact decimal: ``NUMERIC`` on PostgreSQL, exact decimal text on SQLite.
DECIMAL = "DECIMAL"
#: A moment in UTC: ``TIMESTAMPTZ`` on PostgreSQL, UTC ISO 8601 text on SQLite.
TIMESTAMP = "TIMESTAMP"
_SQL_TYPES: Mapping[Dialect, Mapping[str, str]] = {
    "sqlite": {DECIMAL: "TEXT", TIMESTAMP: "TEXT"},
    "postgres": {DECIMAL: "NUMERIC", TIMESTAMP: "TIMESTAMPTZ"},
}

PORTFOLIOS_TABLE = "coinstats_portfolios"
VALUES_TABLE = "coinstats_portfolio_values"
COINS_TABLE = "coinstats_portfolio_coins"
TRANSACTIONS_TABLE = "coinstats_portfolio_transactions"
#: Transactions that vanished from CoinStats, with their payload.
REMOVED_TABLE = "coinstats_portfolio_transactions_removed"
#: Per portfolio: what the last transactions load did and where an incremental read resumes.
SYNC_STATE_TABLE = "coinstats_transactions_sync_state"
CHART_TABLE = "coinstats_portfolio_chart"
DEFI_TABLE = "coinstats_portfolio_defi"
SNAPSHOTS_TABLE = "coinstats_portfolio_snapshots"


@dataclass(frozen=True)
class TableSpec:
    """Column layout of one warehouse table.

    :param name: Table name.
    :param columns: ``(column, portable SQL type)`` in table order; primary-key columns come first.
    :param primary_key: Primary-key columns.
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in table order."""
        return tuple(name for name, _ in self.columns)

    @property
    def decimal_columns(self) -> frozenset[str]:
        """Columns holding exact decimals."""
        return frozenset(name for name, sql_type in self.columns if sql_type == DECIMAL)

    def sql_type(self, column_type: str, dialect: Dialect) -> str:
        """The dialect's SQL type for a portable column type.

        :param column_type: A type from :attr:`columns`.
        :param dialect: ``sqlite`` or ``postgres``.
        """
        return _SQL_TYPES[dialect].get(column_type, column_type)

    def ddl(self, dialect: Dialect = "postgres", *, name: str | None = None, temporary: bool = False) -> str:
        """Return the ``CREATE TABLE`` statement for ``dialect``.

        :param dialect: ``sqlite`` or ``postgres``.
        :param name: Create the table under this name instead of :attr:`name`.
        :param temporary: A TEMP staging table: no constraints, no ``IF NOT EXISTS``.
        """
        cols = [
            f"{column} {self.sql_type(sql_type, dialect)}"
            f"{' NOT NULL' if column in self.primary_key and not temporary else ''}"
            for column, sql_type in self.columns
        ]
        if temporary:
            return f"CREATE TEMP TABLE {name or self.name} ({', '.join(cols)})"
        cols.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        return f"CREATE TABLE IF NOT EXISTS {name or self.name} ({', '.join(cols)})"


def _money(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, DECIMAL) for name in names)


# The names below are the only identifiers ever interpolated into SQL (``table`` arguments are
# validated against them); values always travel as bound parameters.
TABLES: Mapping[str, TableSpec] = {
    table.name: table
    for table in (
        TableSpec(
            PORTFOLIOS_TABLE,
            (
                ("portfolio_id", _TEXT),
                ("connection_id", _TEXT),
                ("exchange_conn_id", _TEXT),
                ("portfolio_name", _TEXT),
                ("last_connect_status", _TEXT),
                ("updated_at", _TEXT),
                # Added after the first release: migrations add them in place (NULL for old rows).
                ("kind", _TEXT),
                ("account_conn_id", _TEXT),
                ("created_by", _TEXT),
                ("removed_at", _TEXT),
                ("deleted_at", _TEXT),
            ),
            ("portfolio_id",),
        ),
        TableSpec(
            VALUES_TABLE,
            (
                ("portfolio_id", _TEXT),
                ("snapshot_date", "DATE"),
                ("currency", _TEXT),
                *_money(
                    "total_value",
                    "defi_value",
                    "total_cost",
                    "unrealized_profit_loss",
                    "unrealized_profit_loss_percent",
                    "realized_profit_loss",
                    "realized_profit_loss_percent",
                    "all_time_profit_loss",
                    "all_time_profit_loss_percent",
                ),
                ("loaded_at", _TEXT),
            ),
            ("portfolio_id", "snapshot_date"),
        ),
        TableSpec(
            COINS_TABLE,
            (
                ("portfolio_id", _TEXT),
                ("snapshot_date", "DATE"),
                ("coin_id", _TEXT),
                ("symbol", _TEXT),
                ("name", _TEXT),
                ("is_fiat", "INTEGER"),
                *_money("amount", "price_usd", "price_btc", "value_usd"),
                *_money("profit_all_time_usd", "profit_percent_all_time_usd"),
                ("loaded_at", _TEXT),
            ),
            ("portfolio_id", "snapshot_date", "coin_id"),
        ),
        TableSpec(
            TRANSACTIONS_TABLE,
            (
                ("portfolio_id", _TEXT),
                ("transaction_key", _TEXT),
                ("transaction_type", _TEXT),
                ("occurred_at", _TEXT),
                ("coin_id", _TEXT),
                ("symbol", _TEXT),
                *_money("amount", "total_worth_usd", "fee_amount"),
                ("fee_coin_id", _TEXT),
                ("profit_usd", DECIMAL),
                ("portfolio_name", _TEXT),
                ("payload_json", _TEXT),
                ("loaded_at", _TEXT),
            ),
            ("portfolio_id", "transaction_key"),
        ),
        TableSpec(
            REMOVED_TABLE,
            (
                ("portfolio_id", _TEXT),
                ("transaction_key", _TEXT),
                ("removed_at", _TEXT),
                ("payload_json", _TEXT),
            ),
            ("portfolio_id", "transaction_key", "removed_at"),
        ),
        TableSpec(
            SYNC_STATE_TABLE,
            (
                ("portfolio_id", _TEXT),
                ("last_mode", _TEXT),
                ("currency", _TEXT),
                ("newest_occurred_at", _TEXT),
                ("newest_key", _TEXT),
                ("last_full_at", _TEXT),
                ("last_run_at", _TEXT),
            ),
            ("portfolio_id",),
        ),
        TableSpec(
            CHART_TABLE,
            (
                ("portfolio_id", _TEXT),
                ("chart_type", _TEXT),
                ("ts", TIMESTAMP),
                *_money("value_usd", "value_btc", "value_eth"),
                ("loaded_at", _TEXT),
            ),
            ("portfolio_id", "chart_type", "ts"),
        ),
        TableSpec(
            DEFI_TABLE,
            (
                ("portfolio_id", _TEXT),
                ("snapshot_date", "DATE"),
                ("protocol_index", "INTEGER"),
                ("investment_index", "INTEGER"),
                ("asset_index", "INTEGER"),
                ("protocol_id", _TEXT),
                ("protocol_name", _TEXT),
                ("chain", _TEXT),
                ("blockchain_name", _TEXT),
                ("wallet_address", _TEXT),
                ("investment_id", _TEXT),
                ("investment_name", _TEXT),
                ("pool_address", _TEXT),
                ("health_rate", DECIMAL),
                ("asset_address", _TEXT),
                ("asset_title", _TEXT),
                ("coin_id", _TEXT),
                ("symbol", _TEXT),
                *_money("amount", "price_usd", "value_usd", "investment_value_usd"),
                ("loaded_at", _TEXT),
            ),
            ("portfolio_id", "snapshot_date", "protocol_index", "investment_index", "asset_index"),
        ),
        TableSpec(
            SNAPSHOTS_TABLE,
            (
                ("portfolio_id", _TEXT),
                ("snapshot_at", TIMESTAMP),
                *_money("total_balance", "total_balance_change", "total_balance_percent_change"),
                ("coin_count", "INTEGER"),
                ("coin_balances_json", _TEXT),
                ("loaded_at", _TEXT),
            ),
            ("portfolio_id", "snapshot_at"),
        ),
    )
}

#: Tables replaced per ``(portfolio_id, snapshot_date)``.
SNAPSHOT_TABLES: frozenset[str] = frozenset({VALUES_TABLE, COINS_TABLE, DEFI_TABLE})
#: Histories upserted by primary key: a rerun rewrites the points it fetched and keeps the others.
UPSERT_TABLES: frozenset[str] = frozenset({CHART_TABLE, SNAPSHOTS_TABLE})

#: Dataset (what a load task extracts) -> the table it loads, in load order.
DATASET_TABLES: Mapping[str, str] = {
    "value": VALUES_TABLE,
    "coins": COINS_TABLE,
    "transactions": TRANSACTIONS_TABLE,
    "chart": CHART_TABLE,
    "defi": DEFI_TABLE,
    "snapshot": SNAPSHOTS_TABLE,
}
#: The datasets, in load order.
DATASETS: tuple[str, ...] = tuple(DATASET_TABLES)
#: The datasets a run loads unless it selects others; ``chart``, ``defi`` and ``snapshot`` are opt-in
#: (``defi`` costs 400 and ``snapshot`` 500 credits per portfolio and run).
DEFAULT_DATASETS: tuple[str, ...] = ("value", "coins", "transactions")

#: The daily report built from the dataset tables by the DAG ``coinstats_portfolio_report`` (plain SQL in
#: ``include/sql/coinstats_report/``; not created by the loader): one row per portfolio and snapshot date.
REPORT_TABLE = "coinstats_portfolio_daily_report"

#: The warehouse connection the loader and the DAGs use by default (SQLite or PostgreSQL).
WAREHOUSE_CONN_NAME = "coinstats_warehouse"


def spec(table: str) -> TableSpec:
    """The layout of ``table``.

    :param table: One of :data:`TABLES`.
    :raises ValueError: For any other name (so no other identifier ever reaches SQL).
    """
    try:
        return TABLES[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; expected one of {sorted(TABLES)}") from None
