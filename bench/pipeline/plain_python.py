"""Anchor (a): the same work as a plain per-record Python loop with the csv and json modules.

Valid rows are collected into column lists and written to Parquet every 65,536 rows (the
only way plain Python writes Parquet); bad rows go to a JSON Lines DLQ with json.dumps.
Usage: python plain_python.py SOURCE.csv OUT_DIR
"""

import csv
import json
import re
import sys
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ORDER_ID = re.compile(r"O-\d{6,}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[a-z]{2,}")
RATES = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17}
COLUMNS = [
    "order_id",
    "customer_email",
    "amount",
    "currency",
    "quantity",
    "country",
    "created_at",
    "amount_eur",
    "order_date",
]


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    writer = None

    def flush() -> None:
        nonlocal writer
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(out / "orders.parquet", table.schema, compression="zstd")
        writer.write_table(table)
        for values in columns.values():
            values.clear()

    with open(source, newline="") as fh, open(out / "dlq.jsonl", "w") as dlq:
        reader = csv.reader(fh)
        header = next(reader)
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                dlq.write(
                    json.dumps({"_runink_reason": "malformed", "_runink_position": line, "_runink_text": ",".join(row)})
                    + "\n"
                )
                continue
            order_id, email, amount, currency, quantity, country, created = row
            reasons = []
            if not ORDER_ID.fullmatch(order_id):
                reasons.append("order_id: does not match")
            if not EMAIL.fullmatch(email):
                reasons.append("customer_email: does not match")
            try:
                value = float(amount)
                if not value > 0:
                    reasons.append("amount: <= 0")
            except ValueError:
                reasons.append("amount: not a valid float")
            if currency not in RATES:
                reasons.append("currency: not one of EUR, USD, GBP")
            try:
                count = int(quantity)
                if count < 1:
                    reasons.append("quantity: < 1")
            except ValueError:
                reasons.append("quantity: not a valid int")
            try:
                ts = datetime.fromisoformat(created)
            except ValueError:
                reasons.append("created_at: not a valid datetime")
            if reasons:
                record = dict(zip(header, row, strict=True))
                record.update(_runink_reason="; ".join(reasons), _runink_position=line)
                dlq.write(json.dumps(record) + "\n")
                continue
            amount_rounded = round(value, 2)
            for name, item in zip(
                COLUMNS,
                (
                    order_id,
                    email,
                    amount_rounded,
                    currency,
                    count,
                    country.upper(),
                    ts,
                    round(amount_rounded * RATES[currency], 2),
                    ts.date(),
                ),
                strict=True,
            ):
                columns[name].append(item)
            if len(columns["order_id"]) >= 65_536:
                flush()
    if columns["order_id"] or writer is None:
        flush()
    writer.close()


if __name__ == "__main__":
    main()
