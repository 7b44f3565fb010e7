"""bench/cluster/pass_history: does a scheduler pass slow down as ended tasks pile up?

    python bench/cluster/pass_history.py            # histories of 0, 1,000 and 5,000 ended tasks
    python bench/cluster/pass_history.py --quick    # 0 and 1,000

The real Lifecycle and Scheduler on the memory Barn (so what is timed is the pass's own reads
and work, not raft round trips), one node and one herd: the history is built by running jobs
to SUCCEEDED one by one; then, 30 times, one job is submitted and a pass places it (timed),
and it is ended again, so the live tasks are the same at every history. The anchor is the
same pass with no history: a pass that reads only the live tasks keeps a ratio near 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, Herd, NodeRecord, RunState
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.interfaces import SchedulerPolicy
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager

ROUNDS = 30


def run_to_end(life: Lifecycle, scheduler: Scheduler, timed: bool) -> float:
    """Submit a job, place it in a pass (timed when ``timed``), end it; the pass's seconds."""
    job = life.submit_command("h", ["/bin/true"])
    started = time.perf_counter()
    placed = scheduler.run_pass(now=time.time()).placed
    seconds = time.perf_counter() - started
    (task_id,) = job.tasks
    assert task_id in placed, "the pass did not place the job"
    task = life.store.task("h", task_id).record
    assert life.report("h", task.id, task.attempt, task.token, RunState.SUCCEEDED, started=time.time())
    return seconds if timed else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    histories = (0, 1000) if parser.parse_args().quick else (0, 1000, 5000)
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="h"))
    life = Lifecycle(store)
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=64, memory=1 << 36)))
    rows: list[tuple[int, float]] = []
    with plugin_manager() as manager:
        scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"))
        ended = 0
        for history in histories:
            while ended < history:
                run_to_end(life, scheduler, timed=False)
                ended += 1
            samples = [run_to_end(life, scheduler, timed=True) for _ in range(ROUNDS)]
            ended += ROUNDS
            rows.append((history, statistics.median(samples) * 1000))
    anchor = rows[0][1]
    print(f"# Python {sys.version.split()[0]}, {ROUNDS} passes per row, medians")
    print()
    print("| ended tasks in the Barn | pass p50 ms | ÷ anchor (no history) |")
    print("| ---: | ---: | ---: |")
    for history, p50 in rows:
        print(f"| {history:,} | {p50:.2f} | {p50 / anchor:.2f} |")


if __name__ == "__main__":
    main()
