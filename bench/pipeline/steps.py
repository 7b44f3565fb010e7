"""The benchmark's 2 transforms, one in Arrow and one in polars (as users write them)."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

EUR_RATES = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17}


def normalize(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Upper-case country codes, round amounts to cents."""
    country = pc.utf8_upper(batch.column("country"))
    amount = pc.round(batch.column("amount"), 2)
    batch = batch.set_column(batch.schema.get_field_index("country"), "country", country)
    return batch.set_column(batch.schema.get_field_index("amount"), "amount", amount)


def enrich(orders: pl.DataFrame) -> pl.DataFrame:
    """Amount in EUR and order date."""
    rate = pl.col("currency").replace_strict(EUR_RATES, return_dtype=pl.Float64)
    return orders.with_columns(amount_eur=(pl.col("amount") * rate).round(2), order_date=pl.col("created_at").dt.date())
