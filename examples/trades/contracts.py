"""The contract a trade event must meet."""

from datetime import datetime

from runink.core.contracts import Contract, Field


class Trade(Contract):
    event_id: str = Field(regex=r"[0-9a-f]{8}")
    ts: datetime
    symbol: str = Field(regex=r"[A-Z]{1,5}")
    side: str = Field(enum=["BUY", "SELL"])
    quantity: int = Field(gt=0)
    price: float = Field(gt=0, lt=100_000)
    venue: str | None = Field(max_length=8)
