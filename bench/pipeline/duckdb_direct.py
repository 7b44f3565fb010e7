"""Anchor (b2): the same work written directly in DuckDB SQL.
Usage: python duckdb_direct.py SOURCE.csv OUT_DIR"""

import sys
from pathlib import Path

import duckdb

CHECKED = """
CREATE TEMP VIEW checked AS
SELECT *,
  coalesce(regexp_full_match(order_id, 'O-\\d{6,}')
    AND regexp_full_match(customer_email, '[^@\\s]+@[^@\\s]+\\.[a-z]{2,}')
    AND TRY_CAST(amount AS DOUBLE) > 0
    AND currency IN ('EUR', 'USD', 'GBP')
    AND TRY_CAST(quantity AS BIGINT) >= 1
    AND TRY_CAST(created_at AS TIMESTAMP) IS NOT NULL, false) AS ok
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
          FROM checked WHERE ok
        ) TO '{out / "orders.parquet"}' (FORMAT parquet, COMPRESSION zstd)""")
    con.execute(f"COPY (SELECT * EXCLUDE (ok) FROM checked WHERE NOT ok) TO '{out / 'dlq.jsonl'}' (FORMAT json)")


if __name__ == "__main__":
    main()
