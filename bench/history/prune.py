"""bench/history/prune: what the prune at the end of every `runink run` (once a minute at
most) costs with many kept runs, against reading every record (what it did before the index).

    python bench/history/prune.py                 # 1,000 and 10,000 kept runs, 7 rounds
    python bench/history/prune.py --runs 20000 --rounds 5

Each size gets a data directory of synthetic ended runs (a record and one log file each, the
runner's shapes) in a temporary folder. A round times, in turn: reading every record
(``RunHistory.all()``, the anchor: the old prune read and sized every run this way), a prune
with the index in place that removes nothing (the common case), and finding a job id (``runink
status job-...`` of a kept run). Medians, milliseconds; nothing is removed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from runink.core.history import RECORD, RunHistory


def make_runs(data: Path, count: int) -> list[str]:
    runs = data / "runs"
    runs.mkdir(parents=True)
    now = time.time()
    jobs = []
    for i in range(count):
        started = now - 3600 - i * 60
        name = time.strftime("%Y%m%d-%H%M%S", time.localtime(started)) + f"-{i:06x}"
        folder = runs / name
        (folder / "s" / "attempt-1").mkdir(parents=True)
        (folder / "s" / "attempt-1" / "stdout.log").write_bytes(b"o" * 200)
        job = {"id": f"job-{i:08x}", "herd": "default", "kind": "pipeline", "tasks": ["t1"], "state": "SUCCEEDED"}
        record = {
            "format": 1,
            "run": name,
            "pipeline": "orders",
            "file": "/p/orders.dsl",
            "pid": 999999999,
            "pid_start": None,
            "started": started,
            "updated": started + 1,
            "ended": True,
            "size": 8192,
            "answer": {
                "job": {**job, "submitted": started, "finished": started + 1},
                "revision": 3,
                "tasks": [{"id": "t1", "attempt": 1, "state": "SUCCEEDED", "scenario": "Validate orders"}],
            },
            "logs": {"t1": {"1": "s/attempt-1"}},
            "datasets": [{"scenario": "Validate orders", "read": ["csv:///in.csv"], "wrote": ["parquet:///o.parquet"]}],
        }
        (folder / RECORD).write_text(json.dumps(record))
        jobs.append(job["id"])
    return jobs


def timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return (time.perf_counter() - began) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print("| kept runs | read every record (anchor) ms | prune with the index ms | ratio | find a job id ms |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for count in args.runs:
        with tempfile.TemporaryDirectory() as folder:
            measure(Path(folder), count, args.rounds)


def measure(data: Path, count: int, rounds: int) -> None:
    jobs = make_runs(data, count)
    history = RunHistory(data)

    def prune() -> None:
        history.prune(older_than=30 * 86400, max_bytes=5 << 30)

    first = timed(prune)  # (reads every record, writes the index)
    every, pruned, found = [], [], []
    for _ in range(rounds):
        every.append(timed(history.all))
        pruned.append(timed(prune))
        found.append(timed(lambda: history.find(jobs[count // 2])))
    a, p = statistics.median(every), statistics.median(pruned)
    print(f"| {count:,} | {a:.1f} | {p:.1f} | {p / a:.3f} | {statistics.median(found):.1f} |")
    print(f"  (the first prune, which read every record and wrote the index: {first:.1f} ms)")


if __name__ == "__main__":
    main()
