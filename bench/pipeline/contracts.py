"""The benchmark contract: 5 constraints (order_id regex, customer_email regex, amount > 0,
currency enum, quantity >= 1) plus typing of every column."""

from datetime import datetime

from runink.core.contracts import Contract, Field


class Order(Contract):
    order_id: str = Field(regex=r"O-\d{6,}")
    customer_email: str = Field(regex=r"[^@\s]+@[^@\s]+\.[a-z]{2,}")
    amount: float = Field(gt=0)
    currency: str = Field(enum=["EUR", "USD", "GBP"])
    quantity: int = Field(ge=1)
    country: str | None = None
    created_at: datetime
