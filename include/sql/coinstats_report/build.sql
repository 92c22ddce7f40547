-- Rebuild the daily report in one transaction: the latest reported day again (its snapshot may have been
-- replaced since), and every (portfolio, snapshot date) not reported yet. Running it twice changes nothing.
--   total_value            the portfolio's value on that snapshot date
--   previous_*             the portfolio's snapshot before it (any earlier date), NULL for the first one
--   value_change           total_value - previous_total_value (on SQLite computed in floating point)
--   coin_count             coins held in that snapshot
--   transaction_count      transactions that occurred that UTC day (occurred_at is UTC ISO 8601 text)
DELETE FROM {{ params.report_table }}
WHERE report_date = (SELECT MAX(latest.report_date) FROM {{ params.report_table }} latest);

INSERT INTO {{ params.report_table }} (
    portfolio_id, report_date, currency, total_value, previous_snapshot_date, previous_total_value,
    value_change, coin_count, transaction_count
)
SELECT
    v.portfolio_id,
    v.snapshot_date,
    v.currency,
    v.total_value,
    p.snapshot_date,
    p.total_value,
    v.total_value - p.total_value,
    (
        SELECT COUNT(*) FROM {{ params.coins_table }} c
        WHERE c.portfolio_id = v.portfolio_id AND c.snapshot_date = v.snapshot_date
    ),
    (
        SELECT COUNT(*) FROM {{ params.transactions_table }} t
        WHERE t.portfolio_id = v.portfolio_id AND SUBSTR(t.occurred_at, 1, 10) = CAST(v.snapshot_date AS TEXT)
    )
FROM {{ params.values_table }} v
LEFT JOIN {{ params.values_table }} p
    ON p.portfolio_id = v.portfolio_id
    AND p.snapshot_date = (
        SELECT MAX(earlier.snapshot_date) FROM {{ params.values_table }} earlier
        WHERE earlier.portfolio_id = v.portfolio_id AND earlier.snapshot_date < v.snapshot_date
    )
WHERE NOT EXISTS (
    SELECT 1 FROM {{ params.report_table }} r
    WHERE r.portfolio_id = v.portfolio_id AND r.report_date = v.snapshot_date
);
