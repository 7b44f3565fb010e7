"""bench/catalog/lineage_query: a depth-5 lineage query with 100,000 step runs in the catalog, on
SQLite and on PostgreSQL (Debian's, started here as the postgres user; skipped without it).

    python bench/catalog/lineage_query.py                      # 100,000 step runs, 30 queries per row
    python bench/catalog/lineage_query.py --runs-per-chain 10  # 10,000 step runs

The catalog: 200 pipelines, each a chain of 5 scenarios over 6 datasets (d0 -> s1 -> d1 -> ...
-> s5 -> d5), each run 100 times (like a daily pipeline over a quarter): 100,000 step runs,
200,000 lineage edges, 1,200 datasets, in two herds. Rows are inserted in bulk (the query is
what is measured). The query: `runink lineage d5 --upstream --depth 5` of one pipeline (its 500
step runs and 6 datasets), and the same both ways from d2; the anchor, in the same run, is one
step run read by its key through the same session machinery. Target (issue 21): under 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, text
from sqlmodel import Session

from runink.plugins.lineage.catalog.models import Dataset, LineageEdge, PipelineRun, StepRun
from runink.plugins.lineage.catalog.queries import find_dataset, lineage
from runink.plugins.lineage.catalog.store import engine_for, migrate
from runink.testing.postgres import PostgresUnavailable, temporary_postgres

PIPELINES = 200
CHAIN = 5


def fill(engine: Engine, runs_per_chain: int) -> int:
    """The catalog described above; returns the number of step runs."""
    began = datetime(2026, 1, 1, tzinfo=UTC)
    datasets, pipeline_runs, step_runs, edges = [], [], [], []
    ids = {}
    for pipeline in range(PIPELINES):
        herd = "a" if pipeline % 2 == 0 else "b"
        for level in range(CHAIN + 1):
            ids[pipeline, level] = len(datasets) + 1
            datasets.append(
                {
                    "id": len(datasets) + 1,
                    "herd": herd,
                    "uri": f"parquet:///lake/p{pipeline}/d{level}.parquet",
                    "rows": 1000,
                    "updated": began,
                }
            )
        for run in range(runs_per_chain):
            run_id = f"p{pipeline}-r{run}"
            moment = began + timedelta(days=run)
            pipeline_runs.append(
                {"id": run_id, "herd": herd, "pipeline": f"p{pipeline}", "started": moment, "updated": moment}
            )
            for level in range(1, CHAIN + 1):
                step = f"{run_id}/s{level}"
                step_runs.append(
                    {
                        "id": step,
                        "pipeline_run": run_id,
                        "herd": herd,
                        "scenario": f"s{level}",
                        "state": "SUCCEEDED",
                        "started": moment,
                        "rows_in": 1000,
                        "rows_out": 1000,
                    }
                )
                edges.append(
                    {
                        "herd": herd,
                        "step_run": step,
                        "dataset_id": ids[pipeline, level - 1],
                        "direction": "in",
                        "rows": 1000,
                    }
                )
                edges.append(
                    {
                        "herd": herd,
                        "step_run": step,
                        "dataset_id": ids[pipeline, level],
                        "direction": "out",
                        "rows": 1000,
                    }
                )
    with engine.begin() as connection:
        for model, rows in (
            (Dataset, datasets),
            (PipelineRun, pipeline_runs),
            (StepRun, step_runs),
            (LineageEdge, edges),
        ):
            table = model.__table__  # type: ignore[attr-defined]
            for start in range(0, len(rows), 10_000):
                connection.execute(insert(table), rows[start : start + 10_000])
        connection.execute(text("ANALYZE"))  # statistics for the planner, as autovacuum would gather
    return len(step_runs)


def timed(call: Callable[[], object], times: int) -> tuple[float, float]:
    """Median and worst of ``times`` calls, in ms (after one warm-up call)."""
    call()
    seconds = []
    for _ in range(times):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds) * 1000, max(seconds) * 1000


def measure(name: str, url: str, runs_per_chain: int, times: int) -> list[str]:
    engine = engine_for(url)
    migrate(engine)
    began = time.perf_counter()
    step_runs = fill(engine, runs_per_chain)
    print(f"{name}: {step_runs:,} step runs filled in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    last = find_dataset(engine, "parquet:///lake/p42/d5.parquet", ["a"])
    middle = find_dataset(engine, "parquet:///lake/p42/d2.parquet", ["a"])
    graph = lineage(engine, last, "upstream", 5, ["a"])
    assert len(graph.datasets) == CHAIN + 1 and len(graph.runs) == CHAIN * runs_per_chain, (
        len(graph.datasets),
        len(graph.runs),
    )

    def anchor() -> None:
        with Session(engine) as session:
            session.get(StepRun, "p42-r7/s3")

    rows = []
    for label, call in (
        ("anchor: one step run by its key", anchor),
        ("lineage d5 --upstream --depth 5", lambda: lineage(engine, last, "upstream", 5, ["a"])),
        ("lineage d2 (both ways) --depth 5", lambda: lineage(engine, middle, "both", 5, ["a"])),
    ):
        median, worst = timed(call, times)
        rows.append(f"| {name} | {step_runs:,} | {label} | {median:.1f} | {worst:.1f} |")
    engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-per-chain", type=int, default=100)
    parser.add_argument("--times", type=int, default=30)
    args = parser.parse_args()
    rows = ["| database | step runs | query | median ms | worst ms |", "| --- | ---: | --- | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as folder:
        rows += measure("SQLite (file, WAL)", f"sqlite:///{folder}/catalog.db", args.runs_per_chain, args.times)
    try:
        with temporary_postgres(durable=True) as url:
            rows += measure("PostgreSQL (loopback)", url, args.runs_per_chain, args.times)
    except PostgresUnavailable as exc:
        print(f"PostgreSQL: skipped ({exc})", file=sys.stderr)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
