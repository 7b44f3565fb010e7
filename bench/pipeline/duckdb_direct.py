"""Anchor (b2): the same work written directly in DuckDB SQL.
Usage: python duckdb_direct.py SOURCE.csv OUT_DIR

Equal work with runink's: every dead-letter row carries the reasons it failed (each failed
check's text, joined with "; ") and its line in the file, as runink's DLQ does."""

import sys
from pathlib import Path

import duckdb

CHECKED = r"""
CREATE TEMP VIEW checked AS
SELECT *, concat_ws('; ',
    CASE WHEN NOT coalesce(regexp_full_match(order_id, 'O-\d{6,}'), false)
         THEN 'order_id: does not match O-\d{6,}' END,
    CASE WHEN NOT coalesce(regexp_full_match(customer_email, '[^@\s]+@[^@\s]+\.[a-z]{2,}'), false)
         THEN 'customer_email: does not match [^@\s]+@[^@\s]+\.[a-z]{2,}' END,
    CASE WHEN TRY_CAST(amount AS DOUBLE) IS NULL THEN 'amount: not a valid float'
         WHEN TRY_CAST(amount AS DOUBLE) <= 0 THEN 'amount: <= 0' END,
    CASE WHEN currency IS NULL OR currency NOT IN ('EUR', 'USD', 'GBP') THEN 'currency: not one of EUR, USD, GBP' END,
    CASE WHEN TRY_CAST(quantity AS BIGINT) IS NULL THEN 'quantity: not a valid int'
         WHEN TRY_CAST(quantity AS BIGINT) < 1 THEN 'quantity: < 1' END,
    CASE WHEN TRY_CAST(created_at AS TIMESTAMP) IS NULL THEN 'created_at: not a valid datetime' END
  ) AS _runink_reason,
  row_number() OVER () + 1 AS _runink_position  -- line 1 is the header
FROM read_csv('SOURCE', all_varchar = true, header = true, null_padding = true)
"""


def main() -> None:
    source, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(CHECKED.replace("SOURCE", source))
    con.execute(f"""
        COPY (
          SELECT order_id, customer_email, round(CAST(amount AS DOUBLE), 2) AS amount, currency,
                 CAST(quantity AS BIGINT) AS quantity, upper(country) AS country,
                 CAST(created_at AS TIMESTAMP) AS created_at,
                 round(round(CAST(amount AS DOUBLE), 2) * CASE currency WHEN 'EUR' THEN 1.0 WHEN 'USD' THEN 0.92
                       ELSE 1.17 END, 2) AS amount_eur,
                 CAST(CAST(created_at AS TIMESTAMP) AS DATE) AS order_date
          FROM checked WHERE _runink_reason = ''
        ) TO '{out / "orders.parquet"}' (FORMAT parquet, COMPRESSION zstd)""")
    con.execute(
        f"COPY (SELECT *, 'csv://{source}' AS _runink_source FROM checked WHERE _runink_reason <> '') "
        f"TO '{out / 'dlq.jsonl'}' (FORMAT json)"
    )


if __name__ == "__main__":
    main()
