"""bench/catalog/record_annotations: how fast the catalog sink stores an ``@annotate`` step's
record annotations (OTHER events, as the runner passes them on), on SQLite and PostgreSQL
(Debian's, started here as the postgres user; skipped without it).

    python bench/catalog/record_annotations.py                 # 100,000 records, 3 rounds
    python bench/catalog/record_annotations.py --records 20000 --rounds 5

Each round writes a fresh step run's records in chunks of 200 records with two fields each
(the size a 48 KiB report line holds for short answers), each chunk one transaction of
upserts, as the sink's thread does. The anchor, in the same round, is the same rows written
by one plain INSERT each in the same transactions (no upsert, no unique index): what the
upsert and its index cost. The figure to compare: the annotator's records/s (bench/llm/
annotator.py; ~280-2,700 records/s against a 20 ms local server), which the sink must
outrun by far so that its bounded queue never fills.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from runink.core.model import LineageEvent
from runink.plugins.lineage.catalog import writer as catalog_writer
from runink.plugins.lineage.catalog.store import engine_for, migrate
from runink.plugins.lineage.catalog.writer import CatalogWriter
from runink.testing.postgres import PostgresUnavailable, temporary_postgres

CHUNK = 200
OUTPUTS = ("parquet:///bench/out.parquet",)


def chunks(records: int) -> list[dict[str, object]]:
    made = []
    for first in range(0, records, CHUNK):
        rows = [
            {"record": str(n), "failed": False, "fields": {"summary": f"order {n}: " + "x" * 70, "sensitivity": "low"}}
            for n in range(first, min(records, first + CHUNK))
        ]
        made.append({"model": "gpt-4o-mini", "prompt_path": "prompts/p.txt", "prompt_hash": "h", "records": rows})
    return made


def write(url: str, run: str, work: list[dict[str, object]], plain: bool) -> float:
    """Seconds to record ``work`` as OTHER events of step run ``run`` (``plain``: the anchor)."""
    saved = catalog_writer._RECORD_NOTE
    if plain:
        catalog_writer._RECORD_NOTE = catalog_writer._NOTE
    try:
        writer = CatalogWriter(url)
        writer.record(LineageEvent("START", run, "s", "bench", ("csv:///bench/in.csv",), OUTPUTS))
        began = time.perf_counter()
        for chunk in work:
            facets = {"record_annotations": chunk}
            writer.record(LineageEvent("OTHER", run, "s", "bench", ("csv:///bench/in.csv",), OUTPUTS, facets=facets))
        elapsed = time.perf_counter() - began
        writer.close()
        return elapsed
    finally:
        catalog_writer._RECORD_NOTE = saved


def measure(name: str, url: str, records: int, rounds: int) -> None:
    migrate(engine_for(url))
    work = chunks(records)
    upsert, plain = [], []
    for number in range(rounds):  # interleaved: A B A B ...
        upsert.append(write(url, f"upsert-{number}/s", work, plain=False))
        plain.append(write(url, f"plain-{number}/s", work, plain=True))
    a, b = statistics.median(upsert), statistics.median(plain)
    print(
        f"| {name} | {records:,} | {records / a:,.0f} records/s ({2 * records / a:,.0f} rows/s) "
        f"| {records / b:,.0f} records/s | {a / b:.2f}x |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| catalog | records | upserts (the sink) | plain inserts (anchor) | time ratio |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        measure("SQLite", f"sqlite:///{Path(folder) / 'catalog.db'}", args.records, args.rounds)
    try:
        with temporary_postgres() as url:
            measure("PostgreSQL 15", url, args.records, args.rounds)
    except PostgresUnavailable as exc:
        print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
