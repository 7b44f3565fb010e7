"""bench/storage: Runink's CSV and JSON Lines readers against pyarrow's own readers, same files.

    python bench/storage/run.py                 # 1M rows (JSON Lines: 500k lines), 5 rounds
    python bench/storage/run.py --rows 200000 --rounds 3

What a reader costs beyond the parse it is built on: line positions, malformed records as dead
letters, values of several lines (RFC 4180), and, without a contract, no number a double cannot
hold exactly (a column of them stays text). The anchor is pyarrow reading the same file in one
call (``pyarrow.csv.read_csv``, ``pyarrow.json.read_json``: no positions, no dead letters, one
bad line fails it); both run in this process, one thread each side (Runink's CSV reader parses
one block ahead on a second thread), in turns (A B A B ..., medians of the rounds).

Files (in --workdir):
- ``short.csv``: id, a 2-decimal amount, a word: the common case;
- ``digits17.csv``: every amount a double's 17-digit shortest text (Python's repr of random()):
  each is looked at for an exact double;
- ``multiline.csv``: a tenth of the values hold a line break (quoted, as Python's csv writes);
- ``short.jsonl``, ``digits17.jsonl``: the same as JSON Lines (no contract: read twice, once for
  the columns' types).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from runink.core.drivers import load_driver
from runink.core.interfaces.storage import Storage


def generate(workdir: Path, rows: int) -> dict[str, Path]:
    rnd = random.Random(7)
    files = {
        "short.csv": lambda i: [i, f"{rnd.randrange(100000) / 100:.2f}", "word"],
        "digits17.csv": lambda i: [i, repr(rnd.random()), "word"],
        "multiline.csv": lambda i: [i, f"{i % 1000}.25", "two\nlines" if i % 10 == 0 else "one line"],
    }
    paths = {}
    for name, row in files.items():
        path = paths[name] = workdir / f"{rows}-{name}"
        if not path.exists():
            with open(path, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["id", "amount", "note"])
                writer.writerows(row(i) for i in range(rows))
    for name, amount in (
        ("short.jsonl", lambda: round(rnd.randrange(100000) / 100, 2)),
        ("digits17.jsonl", rnd.random),
    ):
        path = paths[name] = workdir / f"{rows // 2}-{name}"
        if not path.exists():
            with open(path, "w") as fh:
                fh.writelines(
                    json.dumps({"id": i, "amount": amount(), "note": "word"}) + "\n" for i in range(rows // 2)
                )
    return paths


def runink_read(path: Path, fmt: str) -> int:
    rows = 0
    for read in load_driver(Storage, fmt).read(path, raw=False):
        rows += read.batch.num_rows
    return rows


def arrow_read(path: Path, fmt: str) -> int:
    if fmt == "csv":
        # (values of several lines need Arrow's slower chunker: it refuses them otherwise)
        parse = pacsv.ParseOptions(newlines_in_values="multiline" in path.name)
        table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=False), parse_options=parse)
    else:
        table = pajson.read_json(path, read_options=pajson.ReadOptions(use_threads=False))
    return table.num_rows


def timed(read: Callable[[Path, str], int], path: Path, fmt: str) -> tuple[float, int]:
    start = time.perf_counter()
    rows = read(path, fmt)
    return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/runink-bench-storage"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = generate(args.workdir, args.rows)
    print(f"bench/storage {dt.date.today()} {platform.node()} {platform.python_version()} pyarrow {pa.__version__}")
    print("| file | rows | runink median s | pyarrow median s | runink ÷ pyarrow |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, path in paths.items():
        fmt = name.rsplit(".", 1)[1]
        ours, theirs = [], []
        for _ in range(args.rounds):  # (in turns: the machine's noise falls on both)
            seconds, rows = timed(runink_read, path, fmt)
            ours.append(seconds)
            seconds, expected = timed(arrow_read, path, fmt)
            theirs.append(seconds)
        # (a reader that reads fewer rows than pyarrow, as one that made values of several lines
        # dead letters did, says so in the table)
        shown = f"{expected:,}" if rows == expected else f"{rows:,} (pyarrow: {expected:,})"
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"| {name} | {shown} | {a:.3f} | {b:.3f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
