"""The store's index of live tasks (ClusterStore.LIVE): after any sequence of submissions,
scheduler passes, reports (late ones too), cancellations, node deaths and herd deletions, each
node's ASSIGNED entries are exactly the tasks a full scan finds assigned to it, and the PENDING
entries exactly the tasks a full scan finds PENDING, with the same record and revision."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.liveness import Liveness
from runink.core.control.records import Amount, Herd, NodeRecord, RunState, TaskRecord, keys
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore, Conflict, Refused, assigned_to
from runink.core.drivers import load_driver
from runink.core.interfaces import SchedulerPolicy
from runink.core.plugins import PluginManager
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager

NODES = ("n1", "n2", "n3")


@pytest.fixture
def manager() -> Iterator[PluginManager]:
    with plugin_manager() as manager:
        yield manager


def check_index(store: ClusterStore) -> None:
    expected: dict[str, dict[str, tuple[TaskRecord, int]]] = {}
    for versioned in store.tasks():
        node = assigned_to(versioned.record)
        if node is not None:
            expected.setdefault(node, {})[versioned.record.id] = (versioned.record, versioned.revision)
    entries = store.barn.scan(ClusterStore.ASSIGNED)
    indexed_nodes = {kv.key[len(ClusterStore.ASSIGNED) :].split("/")[0] for kv in entries}
    assert indexed_nodes <= set(expected), "an entry under a node with no assigned task"
    for node in {*NODES, *expected}:
        found = {v.record.id: (v.record, v.revision) for v in store.assigned(node)}
        assert found == expected.get(node, {}), node
    pending = {v.record.id: (v.record, v.revision) for v in store.tasks() if v.record.state is RunState.PENDING}
    indexed = {kv.key: kv for kv in store.barn.scan(ClusterStore.PENDING)}
    assert {key.rsplit("/", 1)[1] for key in indexed} == set(pending)
    for v in store.live():
        if v.record.state is RunState.PENDING:
            assert pending[v.record.id] == (v.record, v.revision)
    # the live tasks are the assigned ones and the pending ones, each once
    live = sorted(v.record.id for v in store.live())
    assert live == sorted([*pending, *(t for tasks in expected.values() for t in tasks)])


@pytest.mark.parametrize("seed", range(12))
def test_the_index_equals_a_full_scan_after_random_operations(manager: PluginManager, seed: int) -> None:
    rng = random.Random(seed)
    store = ClusterStore(MemoryBarn())
    for herd in ("lab", "ops"):
        store.create_herd(Herd(name=herd))
    life = Lifecycle(store, clock=lambda: 0.0, jitter=lambda: 0.5)
    scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"))
    liveness = Liveness(store, timeout=1.0)
    clock = 0.0
    for node in NODES:
        life.register_node(NodeRecord(id=node, capacity=Amount(cpu=2, memory=1 << 30)))
    jobs: list[str] = []
    stale: list[tuple[str, str, int, int]] = []  # attempts placed again since: their reports are fenced

    def tasks_in(*states: RunState) -> list[TaskRecord]:
        return [v.record for v in store.tasks() if v.record.state in states]

    for _ in range(150):
        action = rng.choice(["submit", "submit", "pass", "report", "report", "report", "cancel", "dead", "late"])
        if action == "submit":
            herd = rng.choice(["lab", "ops"])
            try:
                command = ["/bin/true"]
                jobs.append(life.submit_command(herd, command, Amount(cpu=0.5), retries=rng.randint(0, 2)).id)
            except Refused:  # the herd is being deleted
                pass
        elif action == "pass":
            scheduler.run_pass(now=1e9)
        elif action == "report":
            active = tasks_in(RunState.SCHEDULED, RunState.RUNNING, RunState.CANCELLED)
            if active:
                task = rng.choice(active)
                state = rng.choice([RunState.RUNNING, RunState.SUCCEEDED, RunState.FAILED, RunState.PENDING])
                started = rng.choice([None, 5.0])
                life.report(task.herd, task.id, task.attempt, task.token, state, exit_code=0, started=started)
                stale.append((task.herd, task.id, task.attempt, task.token))
        elif action == "late" and stale:
            herd, task_id, attempt, token = rng.choice(stale)
            life.report(herd, task_id, attempt, token, rng.choice([RunState.RUNNING, RunState.SUCCEEDED]))
        elif action == "cancel" and jobs:
            life.cancel(rng.choice(jobs))
        elif action == "dead":
            # one node stops beating: found dead, its tasks placed again; then it registers again
            node = rng.choice(NODES)
            for other in NODES:
                if other != node:
                    life.heartbeat(other, store.node(other).record.incarnation)
            liveness.observe(clock)
            clock += 2.0
            for other in NODES:
                if other != node:
                    life.heartbeat(other, store.node(other).record.incarnation)
            liveness.observe(clock)
            life.register_node(NodeRecord(id=node, capacity=Amount(cpu=2, memory=1 << 30)))
        check_index(store)
    # a herd deleted once its jobs ended takes its entries with it
    for job_id in jobs:
        life.cancel(job_id)
    try:
        store.delete_herd("ops")
    except (Refused, Conflict):
        pytest.fail("the herd's jobs were all cancelled")
    assert not [kv for kv in store.barn.scan(ClusterStore.LIVE) if "/ops/" in kv.key]
    check_index(store)


def test_lifecycle_assignments_come_from_the_index(manager: PluginManager) -> None:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    life = Lifecycle(store)
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=2, memory=1 << 30)))
    job = life.submit_command("lab", ["/bin/true"])
    Scheduler(store, manager, load_driver(SchedulerPolicy, "spread")).run_pass(now=0.0)
    (task,) = life.assignments("n1")
    assert task.job_id == job.id and task.state is RunState.SCHEDULED
    check_index(store)


def test_a_barn_from_before_the_live_index_is_indexed_once_by_the_leader(manager: PluginManager) -> None:
    """A Barn written by an older version: assigned tasks indexed at the old place, pending
    tasks not at all. Neither is seen (an agent gets nothing, a pass places nothing) until
    ``index_live`` (the leader's first round) gives each its entries and empties the old place."""
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    life = Lifecycle(store)
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=2, memory=1 << 30)))
    scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"))
    placed = life.submit_command("lab", ["/bin/true"])
    scheduler.run_pass(now=0.0)
    waiting = life.submit_command("lab", ["/bin/true"])
    (task,) = life.assignments("n1")
    # what the older version left: no live entries; an old entry (and its marker) per assigned task
    for kv in store.barn.scan(ClusterStore.LIVE):
        store.barn.delete(kv.key)
    store.barn.put(f"{ClusterStore.OLD_ASSIGNED}n1/lab/{task.id}", b"{}")
    store.barn.put(ClusterStore.OLD_ASSIGNED_BUILT, b"1")
    assert life.assignments("n1") == []
    assert scheduler.run_pass(now=0.0).placed == {}
    assert store.index_live() == 2
    assert [t.job_id for t in life.assignments("n1")] == [placed.id]
    assert store.barn.scan(ClusterStore.OLD_ASSIGNED) == [] and store.barn.get(ClusterStore.OLD_ASSIGNED_BUILT) is None
    check_index(store)
    assert store.index_live() == 0  # once
    assert list(scheduler.run_pass(now=0.0).placed.values()) == ["n1"]
    assert sorted(t.job_id for t in life.assignments("n1")) == sorted([placed.id, waiting.id])
    check_index(store)


def test_a_task_ended_on_its_node_leaves_that_nodes_entries(manager: PluginManager) -> None:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    life = Lifecycle(store)
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=2, memory=1 << 30)))
    life.submit_command("lab", ["/bin/true"])
    Scheduler(store, manager, load_driver(SchedulerPolicy, "spread")).run_pass(now=0.0)
    (task,) = life.assignments("n1")
    key = f"{ClusterStore.ASSIGNED}n1/lab/{task.id}"
    assert store.barn.get(f"{ClusterStore.PENDING}lab/{task.id}") is None  # (placed: no longer pending)
    assert store.barn.get(key).mod_revision == store.task("lab", task.id).revision  # type: ignore[union-attr]
    assert life.report("lab", task.id, task.attempt, task.token, RunState.SUCCEEDED, started=1.0)
    assert store.barn.get(key) is None and life.assignments("n1") == []
    assert store.task("lab", task.id).record.node == "n1"  # (its record still says where it ran)


def test_liveness_sends_back_only_the_tasks_on_not_ready_nodes(manager: PluginManager) -> None:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    life = Lifecycle(store)
    for node in ("n1", "n2"):
        life.register_node(NodeRecord(id=node, capacity=Amount(cpu=1, memory=1 << 30)))
    jobs = [life.submit_command("lab", ["/bin/true"], Amount(cpu=1)).id for _ in range(2)]
    Scheduler(store, manager, load_driver(SchedulerPolicy, "spread")).run_pass(now=0.0)
    on = {life.assignments(node)[0].job_id: node for node in ("n1", "n2")}
    assert set(on) == set(jobs)
    # n1 marked not ready by a leader that died before it sent its tasks back
    store.update(keys.node("n1"), NodeRecord, lambda n: n.model_copy(update={"ready": False}))
    Liveness(store, timeout=10).observe(0.0)
    for job_id, node in on.items():
        (task,) = store.job_tasks(store.job(job_id).record)
        assert task.record.state is (RunState.PENDING if node == "n1" else RunState.SCHEDULED)
    assert life.assignments("n1") == [] and len(life.assignments("n2")) == 1
    check_index(store)


def test_herds_are_listed_from_their_index_copies_which_follow_every_write() -> None:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    store.create_herd(Herd(name="ops"))
    # an entry from before the copies (empty): read from the herd's key
    store.barn.put(f"{ClusterStore.HERD_INDEX}ops", b"")
    assert [h.name for h in store.herds()] == ["lab", "ops"]
    # a herd written through commit (update): its copy is written with it
    store.update(keys.herd("lab"), Herd, lambda h: h.model_copy(update={"deleting": True}))
    assert [h.deleting for h in store.herds()] == [True, False]
    index = store.barn.get(f"{ClusterStore.HERD_INDEX}lab")
    assert index is not None and index.mod_revision == store.herd("lab").revision
    store.delete_herd("lab")  # (marked already: finishes)
    assert [h.name for h in store.herds()] == ["ops"]


def test_a_dead_node_with_more_tasks_than_one_transaction_holds_gives_them_all_back(
    manager: PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("runink.core.control.liveness.LOST_WITH_NODE", 3)
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    life = Lifecycle(store)
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=8, memory=1 << 30)))
    for _ in range(7):
        life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
    Scheduler(store, manager, load_driver(SchedulerPolicy, "spread")).run_pass(now=0.0)
    assert len(life.assignments("n1")) == 7
    liveness = Liveness(store, timeout=1.0)
    liveness.observe(0.0)
    assert liveness.observe(2.0) == ["n1"]  # marked dead with 3 of its tasks
    assert len(life.assignments("n1")) == 4
    liveness.observe(2.1)  # the rest: the node is not ready now
    assert life.assignments("n1") == []
    assert all(v.record.state is RunState.PENDING for v in store.tasks())
    check_index(store)


class CountingBarn(MemoryBarn):
    """A memory Barn that counts the records each scan returns, by prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.scanned: dict[str, int] = {}

    def scan(self, prefix: str, *, limit: int | None = None, after: str | None = None) -> list:  # type: ignore[override]
        found = super().scan(prefix, limit=limit, after=after)
        self.scanned[prefix] = self.scanned.get(prefix, 0) + len(found)
        return found


def test_a_pass_reads_the_live_tasks_not_every_task_ever_run(manager: PluginManager) -> None:
    barn = CountingBarn()
    store = ClusterStore(barn)
    store.create_herd(Herd(name="lab"))
    life = Lifecycle(store)
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=2, memory=1 << 30)))
    scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"))
    for _ in range(40):  # a history of ended tasks
        life.submit_command("lab", ["/bin/true"])
        scheduler.run_pass(now=0.0)
        (task,) = life.assignments("n1")
        assert life.report("lab", task.id, task.attempt, task.token, RunState.SUCCEEDED, started=1.0)
    running = life.submit_command("lab", ["/bin/true"])
    scheduler.run_pass(now=0.0)
    waiting = life.submit_command("lab", ["/bin/true"])
    barn.scanned.clear()
    placed = scheduler.run_pass(now=0.0).placed
    assert list(placed) == store.job(waiting.id).record.tasks
    assert not [prefix for prefix in barn.scanned if prefix.startswith(keys.HERDS)], barn.scanned
    assert barn.scanned[ClusterStore.LIVE] == 2  # the running task and the waiting one
    assert running.id != waiting.id
