-- The daily portfolio report table, on SQLite or PostgreSQL.
-- Table names come from params (coinstats_provider.warehouse.schema); money columns are exact NUMERIC on
-- PostgreSQL and exact decimal TEXT on SQLite, like the warehouse tables they are computed from.
{%- set money = 'NUMERIC' if conn.get(task.conn_id).conn_type in ('postgres', 'postgresql') else 'TEXT' %}
CREATE TABLE IF NOT EXISTS {{ params.report_table }} (
    portfolio_id TEXT NOT NULL,
    report_date DATE NOT NULL,
    currency TEXT,
    total_value {{ money }},
    previous_snapshot_date DATE,
    previous_total_value {{ money }},
    value_change {{ money }},
    coin_count INTEGER NOT NULL,
    transaction_count INTEGER NOT NULL,
    PRIMARY KEY (portfolio_id, report_date)
);
