"""Steps of the orders pipeline: plain functions over Arrow batches (and one in polars)."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

# money stays exact: the contract makes amount a decimal(12,2), and the rates are decimals too
EUR_RATES = {"EUR": Decimal("1.00"), "USD": Decimal("0.92"), "GBP": Decimal("1.17")}


def normalize(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Upper-case country codes and round amounts to cents."""
    country = pc.utf8_upper(batch.column("country"))
    amount = pc.round(batch.column("amount"), 2)
    return batch.set_column(batch.schema.get_field_index("country"), "country", country).set_column(
        batch.schema.get_field_index("amount"), "amount", amount
    )


def enrich(orders: pl.DataFrame) -> pl.DataFrame:
    """Add the amount in EUR and the order date."""
    rate = pl.col("currency").replace_strict(EUR_RATES, return_dtype=pl.Decimal(6, 4))
    return orders.with_columns(
        amount_eur=(pl.col("amount") * rate).round(2).cast(pl.Decimal(14, 2)),
        order_date=pl.col("created_at").dt.date(),
    )


def large_orders(orders: pl.DataFrame) -> pl.DataFrame:
    """Orders worth 400 EUR or more, largest first within each batch."""
    return (
        orders.filter(pl.col("amount_eur") >= Decimal(400))
        .select("order_id", "order_date", "country", "currency", "amount", "amount_eur")
        .sort("amount_eur", descending=True)
    )
