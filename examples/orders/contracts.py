"""The contract raw orders must meet."""

from datetime import datetime
from decimal import Decimal

from runink.core.contracts import Contract, Field


class Order(Contract):
    order_id: str = Field(regex=r"O-\d{6,}")
    customer_email: str = Field(pii=True, mask=True, max_length=254, regex=r"[^@\s]+@[^@\s]+\.[a-z]{2,}")
    amount: Decimal = Field(precision=12, scale=2, gt=0, le=1_000_000)  # money: exact, never a float
    currency: str = Field(enum=["EUR", "USD", "GBP"])
    quantity: int = Field(ge=1, le=10_000)
    country: str | None = Field(min_length=2, max_length=2)
    created_at: datetime
