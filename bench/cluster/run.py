"""bench/cluster: placements per second over 1,000 simulated nodes, with anchors in the same run.

    python bench/cluster/run.py            # 20,000 tasks, memory Barn and a 3-server raft Barn group
    python bench/cluster/run.py --quick    # 2,000 tasks

The real scheduler (``runink.core.control.scheduler.Scheduler``) with the installed plugins
(the resource-fit and node-labels filters) and the binpack and spread policies: 1,000
NodeRecords (varied capacity, zone/disk/gpu labels) in a Barn, 4 herds with quotas, N one-task
jobs (a fifth of them with ``node_labels``), then ``run_pass`` is timed until every task is
placed (the clock covers reading the Barn, ordering, placing and the batched commits). The
scheduler runs twice on the memory Barn: with its default window (a share of the nodes
filtered and scored per task) and with ``window=0`` (every node for every task).

Anchors, in the same run and over the same nodes, without any Barn:
* ``place`` over all nodes: ``runink.core.scheduling.place`` called once per task with the
  whole 1,000-node list (allocations updated as it places): what placing costs when every node
  is filtered and scored for every task.
* ``place`` over the scheduler's window: the same loop, each call given the same number of
  nodes the scheduler scores per task (``Scheduler.window_for``): the cost of the scheduler around
  the placement itself (reading, quotas, fair share, records, commits).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from runink.core.control.records import Amount, Herd, JobRecord, NodeRecord, Quota, TaskRecord, keys
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore, pending_key
from runink.core.drivers import load_driver
from runink.core.interfaces import BarnBackend, SchedulerPolicy
from runink.core.interfaces.barn import TxnOp
from runink.core.model import Node, PlacementRequest, Resources
from runink.core.scheduling import place
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager

GiB = 1024**3
NODES = 1000
HERDS = ("etl", "ml", "reports", "adhoc")
SUBMIT_BATCH = 200  # jobs per Barn transaction while loading (not timed)


def make_nodes(rng: random.Random) -> list[NodeRecord]:
    nodes = []
    for i in range(NODES):
        cpu = rng.choice((8, 16, 32, 64))
        gpu = 4 if i % 10 == 0 else 0
        labels = {"zone": f"z{i % 4}", "disk": "ssd" if i % 3 else "hdd"}
        if gpu:
            labels["gpu"] = "a100"
        nodes.append(
            NodeRecord(id=f"node-{i:04d}", capacity=Amount(cpu=cpu, memory=cpu * 4 * GiB, gpu=gpu), labels=labels)
        )
    return nodes


def make_tasks(rng: random.Random, count: int) -> list[TaskRecord]:
    tasks = []
    for i in range(count):
        herd = HERDS[i % len(HERDS)]
        labels: dict[str, str] = {}
        if i % 5 == 0:
            labels = {"zone": f"z{rng.randrange(4)}"} if i % 10 else {"disk": "ssd"}
        cpu = rng.choice((0.25, 0.5, 1.0, 2.0))
        task_id = f"task-{i:06d}"
        tasks.append(
            TaskRecord(
                id=task_id,
                job_id=f"job-{i:06d}",
                herd=herd,
                command=["/bin/true"],
                resources=Amount(cpu=cpu, memory=int(cpu * 2 * GiB)),
                priority=rng.choice((0, 0, 0, 5)),
                node_labels=labels,
            )
        )
    return tasks


def load(barn: BarnBackend, nodes: list[NodeRecord], tasks: list[TaskRecord]) -> ClusterStore:
    store = ClusterStore(barn)
    total_cpu = sum(t.resources.cpu for t in tasks)
    for herd in HERDS:  # checked for every task, reached by none (all must be placed): 40% of the cpu each
        store.create_herd(
            Herd(name=herd, quota=Quota(cpu=total_cpu * 0.4, memory=int(total_cpu * 0.4 * 2 * GiB) + GiB))
        )
    for start in range(0, len(nodes), SUBMIT_BATCH):
        chunk = nodes[start : start + SUBMIT_BATCH]
        store.commit([(keys.node(n.id), 0) for n in chunk], [(keys.node(n.id), n) for n in chunk])
    for start in range(0, len(tasks), SUBMIT_BATCH):
        ops = []
        for task in tasks[start : start + SUBMIT_BATCH]:
            job = JobRecord(id=task.job_id, herd=task.herd, tasks=[task.id])
            ops.append(TxnOp(keys.job(job.herd, job.id), job.model_dump_json().encode()))
            value = task.model_dump_json().encode()
            ops.append(TxnOp(keys.task(task.herd, task.id), value))
            ops.append(TxnOp(pending_key(task), value))  # (ClusterStore.submit's index entry)
            ops.append(TxnOp(ClusterStore.JOB_INDEX + job.id, job.herd.encode()))
        held, _ = barn.transaction([], ops)
        assert held
    return store


def run_scheduler(
    barn: BarnBackend, policy: str, nodes: list[NodeRecord], tasks: list[TaskRecord], **options: object
) -> dict[str, float]:
    store = load(barn, nodes, tasks)
    with plugin_manager() as manager:
        scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, policy), **options)  # type: ignore[arg-type]
        placed = passes = 0
        start = time.perf_counter()
        while placed < len(tasks):
            result = scheduler.run_pass(now=time.time())
            passes += 1
            placed += len(result.placed)
            if not result.placed and result.committed:
                raise SystemExit(
                    f"{policy}: {len(tasks) - placed} tasks left unplaced: {next(iter(result.pending.values()), '')}"
                )
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "placed": placed, "passes": passes}


def run_place(policy: str, nodes: list[NodeRecord], tasks: list[TaskRecord], window: int | None) -> dict[str, float]:
    """The bare placement loop: ``place`` per task, no Barn, no records, no quotas."""
    candidates = [Node(n.id, n.capacity.resources(), Resources(), dict(n.labels)) for n in nodes]
    position = {n.id: i for i, n in enumerate(candidates)}
    requests = [PlacementRequest(t.id, t.herd, t.resources.resources(), dict(t.node_labels)) for t in tasks]
    chosen = place  # one lookup, as the scheduler's own
    with plugin_manager() as manager:
        driver = load_driver(SchedulerPolicy, policy)
        start = time.perf_counter()
        offset = 0
        for request in requests:
            if window is None or window >= len(candidates):
                offered = candidates
            else:
                offered = (
                    (candidates + candidates)[offset : offset + window]
                    if offset + window > len(candidates)
                    else candidates[offset : offset + window]
                )
                offset = (offset + window) % len(candidates)
            best = chosen(manager, driver, request, offered)[0]
            i = position[best.node_id]
            candidates[i] = replace(candidates[i], allocated=candidates[i].allocated + request.resources)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "placed": len(requests), "passes": 0}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}, {cpu}, {os.cpu_count()} cpus, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 tasks instead of 20,000")
    parser.add_argument("--tasks", type=int, help="number of tasks (overrides --quick)")
    parser.add_argument("--no-raft", action="store_true", help="skip the raft Barn group")
    args = parser.parse_args()
    count = args.tasks or (2_000 if args.quick else 20_000)
    rng = random.Random(19)
    nodes = make_nodes(rng)
    tasks = make_tasks(rng, count)
    window = Scheduler.window_for(len(nodes))

    rows: list[tuple[str, str, dict[str, float]]] = []
    for policy in ("binpack", "spread"):
        rows.append((policy, "scheduler, memory Barn", run_scheduler(MemoryBarn(), policy, nodes, tasks)))
        rows.append(
            (
                policy,
                "scheduler, memory Barn, every node scored",
                run_scheduler(MemoryBarn(), policy, nodes, tasks, window=0),
            )
        )
        rows.append(
            (policy, f"anchor: place over the window ({window} nodes)", run_place(policy, nodes, tasks, window))
        )
        rows.append((policy, f"anchor: place over all {len(nodes)} nodes", run_place(policy, nodes, tasks, None)))
    if not args.no_raft:
        from barn_cluster import Cluster

        for policy in ("binpack", "spread"):  # a fresh group per policy: the key space is fixed
            with tempfile.TemporaryDirectory(prefix="runink-bench-cluster-") as root:
                cluster = Cluster(Path(root), 3)
                cluster.start()
                try:
                    client = cluster.client(cluster.leader(30), timeout=120)
                    try:
                        rows.append(
                            (policy, "scheduler, raft Barn (3 servers)", run_scheduler(client, policy, nodes, tasks))
                        )
                    finally:
                        client.close()
                finally:
                    cluster.stop()

    print(f"\n{dt.date.today().isoformat()} · {machine()} · {len(nodes)} nodes, {count} tasks, window {window}\n")
    print("| policy | variant | placements/s | seconds | passes | ÷ place over all nodes | ÷ place over the window |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for policy, variant, figures in rows:
        rate = figures["placed"] / figures["seconds"]
        ratios = []
        for anchor_name in ("anchor: place over all", "anchor: place over the window"):
            anchor = next(f for p, v, f in rows if p == policy and v.startswith(anchor_name))
            ratios.append(rate / (anchor["placed"] / anchor["seconds"]))
        print(
            f"| {policy} | {variant} | {rate:,.0f} | {figures['seconds']:.2f} | {figures['passes']:.0f} "
            f"| {ratios[0]:.2f} | {ratios[1]:.2f} |"
        )


if __name__ == "__main__":
    main()
