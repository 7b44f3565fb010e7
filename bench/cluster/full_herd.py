"""bench/cluster/full_herd: does another herd's pile of waiting tasks slow everyone's placements?

    python bench/cluster/full_herd.py             # 0, 1,000 and 9,000 waiting tasks
    python bench/cluster/full_herd.py --quick     # 0 and 1,000

The real Lifecycle and Scheduler on the memory Barn (what is timed is a pass's own reads and
work), two nodes: herd `flood` (1 core of quota, used up by its 2 running tasks) has N tasks
waiting; then, ROUNDS times, herd `other` submits a job and a pass places it (timed), and it
is ended again. The anchor is the same pass with no flood: a pass that passes over a full
herd's queue keeps the ratio low.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, Herd, NodeRecord, Quota, RunState
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.interfaces import SchedulerPolicy
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager

ROUNDS = 15


def measure(waiting: int) -> float:
    """Median seconds of a pass placing one job of `other` beside ``waiting`` tasks of a full herd."""
    store = ClusterStore(MemoryBarn())
    life = Lifecycle(store)
    store.create_herd(Herd(name="flood", quota=Quota(cpu=1)))
    store.create_herd(Herd(name="other"))
    for node in ("a", "b"):
        life.register_node(NodeRecord(id=node, capacity=Amount(cpu=4, memory=8 << 30)))
    with plugin_manager() as manager:
        scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"))
        for _ in range(2 + waiting):  # 2 of them run (the quota used up), the rest wait
            life.submit_command("flood", ["/bin/true"], Amount(cpu=0.5, memory=1 << 20))
        scheduler.run_pass(now=0)
        scheduler.run_pass(now=0)  # (the waiting tasks' reasons written: steady state from here)
        times = []
        for _ in range(ROUNDS):
            job = life.submit_command("other", ["/bin/true"], Amount(cpu=0.1, memory=1 << 20))
            began = time.perf_counter()
            placed = scheduler.run_pass(now=0).placed
            times.append(time.perf_counter() - began)
            (task_id,) = job.tasks
            assert task_id in placed, placed
            task = store.task("other", task_id).record
            for state in (RunState.RUNNING, RunState.SUCCEEDED):
                assert life.report("other", task_id, task.attempt, task.token, state, exit_code=0)
        return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [0, 1_000] if args.quick else [0, 1_000, 9_000]
    anchor = None
    print("| waiting tasks of a full herd | pass placing another herd's job, median ms | ÷ no waiting tasks |")
    print("| ---: | ---: | ---: |")
    for size in sizes:
        seconds = measure(size)
        anchor = anchor or seconds
        print(f"| {size:,} | {seconds * 1000:.1f} | {seconds / anchor:.1f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
