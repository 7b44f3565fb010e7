"""Generate an orders CSV: ``python make_data.py ROWS [PATH] [--bad-every N]``.

Deterministic (seeded). Every N-th row (default 50) is made invalid in one of several ways
(bad amount, unknown currency, malformed email, wrong column count...), so the DLQ has work.
"""

from __future__ import annotations

import argparse
import random
from datetime import datetime, timedelta
from pathlib import Path

HEADER = "order_id,customer_email,amount,currency,quantity,country,created_at\n"
CURRENCIES = ["EUR", "USD", "GBP"]
COUNTRIES = ["de", "fr", "gb", "us", "nl", "es", "it", "pt"]


def rows(count: int, bad_every: int, seed: int = 7):
    rng = random.Random(seed)
    start = datetime(2026, 1, 1)
    for i in range(count):
        created = (start + timedelta(seconds=i * 37)).strftime("%Y-%m-%dT%H:%M:%S")
        row = [
            f"O-{i:07d}",
            f"user{i % 9973}@example.com",
            f"{rng.uniform(1, 500):.2f}",
            rng.choice(CURRENCIES),
            str(rng.randint(1, 20)),
            rng.choice(COUNTRIES),
            created,
        ]
        if bad_every and i % bad_every == bad_every - 1:
            kind = (i // bad_every) % 5
            if kind == 0:
                row[2] = "twelve"
            elif kind == 1:
                row[3] = "XXX"
            elif kind == 2:
                row[1] = "not-an-email"
            elif kind == 3:
                row[4] = "0"
            else:
                yield ",".join(row[:4]) + "\n"  # malformed: too few columns
                continue
        yield ",".join(row) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rows", type=int)
    parser.add_argument("path", nargs="?", default=str(Path(__file__).parent / "data" / "orders.csv"))
    parser.add_argument("--bad-every", type=int, default=50)
    args = parser.parse_args()
    path = Path(args.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fh.write(HEADER)
        buffer = []
        for line in rows(args.rows, args.bad_every):
            buffer.append(line)
            if len(buffer) >= 100_000:
                fh.writelines(buffer)
                buffer.clear()
        fh.writelines(buffer)


if __name__ == "__main__":
    main()
