"""Anchor (b1): the same work written directly in polars (lazy, streaming sinks).
Usage: python polars_direct.py SOURCE.csv OUT_DIR"""

import sys
from pathlib import Path

import polars as pl

RATES = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17}


def main() -> None:
    source, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    raw = pl.scan_csv(source, infer_schema=False, truncate_ragged_lines=True)
    amount = pl.col("amount").cast(pl.Float64, strict=False)
    quantity = pl.col("quantity").cast(pl.Int64, strict=False)
    created = pl.col("created_at").str.to_datetime("%Y-%m-%dT%H:%M:%S", strict=False)
    ok = (
        pl.col("order_id").str.contains(r"^O-\d{6,}$")
        & pl.col("customer_email").str.contains(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")
        & (amount > 0)
        & pl.col("currency").is_in(["EUR", "USD", "GBP"])
        & (quantity >= 1)
        & created.is_not_null()
    ).fill_null(False)
    checked = raw.with_columns(_ok=ok)
    valid = (
        checked.filter(pl.col("_ok"))
        .select(
            "order_id",
            "customer_email",
            amount.round(2).alias("amount"),
            "currency",
            quantity.alias("quantity"),
            pl.col("country").str.to_uppercase(),
            created.alias("created_at"),
        )
        .with_columns(
            amount_eur=(pl.col("amount") * pl.col("currency").replace_strict(RATES, return_dtype=pl.Float64)).round(2),
            order_date=pl.col("created_at").dt.date(),
        )
    )
    valid.sink_parquet(out / "orders.parquet", compression="zstd")
    checked.filter(~pl.col("_ok")).drop("_ok").sink_ndjson(out / "dlq.jsonl")


if __name__ == "__main__":
    main()
