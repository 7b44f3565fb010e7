"""Anchor (b1): the same work written directly in polars (lazy, streaming sinks).
Usage: python polars_direct.py SOURCE.csv OUT_DIR

Equal work with runink's: every dead-letter row carries the reasons it failed (each failed
check's text, joined with "; ") and its line in the file, as runink's DLQ does."""

import sys
from pathlib import Path

import polars as pl

RATES = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17}


def main() -> None:
    source, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    # line 1 is the header: a record's line is its index + 2 (no record spans lines here)
    raw = pl.scan_csv(source, infer_schema=False, truncate_ragged_lines=True).with_row_index(
        "_runink_position", offset=2
    )
    amount = pl.col("amount").cast(pl.Float64, strict=False)
    quantity = pl.col("quantity").cast(pl.Int64, strict=False)
    created = pl.col("created_at").str.to_datetime("%Y-%m-%dT%H:%M:%S", strict=False)

    def fails(bad: pl.Expr, text: str) -> pl.Expr:
        return pl.when(bad.fill_null(True)).then(pl.lit(text))

    reasons = [
        fails(~pl.col("order_id").str.contains(r"^O-\d{6,}$"), r"order_id: does not match O-\d{6,}"),
        fails(
            ~pl.col("customer_email").str.contains(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$"),
            r"customer_email: does not match [^@\s]+@[^@\s]+\.[a-z]{2,}",
        ),
        pl.when(amount.is_null())
        .then(pl.lit("amount: not a valid float"))
        .when(amount <= 0)
        .then(pl.lit("amount: <= 0")),
        fails(~pl.col("currency").is_in(["EUR", "USD", "GBP"]), "currency: not one of EUR, USD, GBP"),
        pl.when(quantity.is_null())
        .then(pl.lit("quantity: not a valid int"))
        .when(quantity < 1)
        .then(pl.lit("quantity: < 1")),
        fails(created.is_null(), "created_at: not a valid datetime"),
    ]
    checked = raw.with_columns(_runink_reason=pl.concat_str(reasons, separator="; ", ignore_nulls=True))
    ok = pl.col("_runink_reason") == ""
    valid = (
        checked.filter(ok)
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
    dead = checked.filter(~ok).with_columns(_runink_source=pl.lit(f"csv://{source}"))
    dead.sink_ndjson(out / "dlq.jsonl")


if __name__ == "__main__":
    main()
