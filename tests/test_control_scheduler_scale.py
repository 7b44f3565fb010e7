"""The scheduler over many nodes: the scoring window, explain grouped by reason past a few
nodes, and passes committed in batches (a refused batch leaves the others standing)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from runink.core import hookimpl
from runink.core.control.records import Amount, Herd, JobRecord, NodeRecord, RunState, TaskRecord, keys
from runink.core.control.scheduler import GROUPS_IN_EXPLAIN, Scheduler
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.interfaces import SchedulerPolicy
from runink.core.model import Node, NodeRejection, PlacementRequest
from runink.core.plugins import PluginManager
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager

GiB = 1024**3


@pytest.fixture
def store() -> ClusterStore:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="h"))
    return store


@pytest.fixture
def manager() -> Iterator[PluginManager]:
    with plugin_manager() as manager:
        yield manager


def add_nodes(store: ClusterStore, count: int, cpu: float = 4, odd: dict[int, dict[str, str]] | None = None) -> None:
    for i in range(count):
        labels = (odd or {}).get(i, {"zone": "y"})
        record = NodeRecord(id=f"n{i:03d}", capacity=Amount(cpu=cpu, memory=16 * GiB), labels=labels)
        store.commit([(keys.node(record.id), 0)], [(keys.node(record.id), record)])


def submit(store: ClusterStore, count: int, cpu: float = 1, **fields: object) -> list[str]:
    ids = []
    for i in range(count):
        task_id = f"t{i:03d}"
        task = TaskRecord.model_validate(
            {"id": task_id, "job_id": task_id, "herd": "h", "command": ["/bin/true"], "resources": {"cpu": cpu}}
            | fields
        )
        store.submit(JobRecord(id=task_id, herd="h", tasks=[task_id]), [task])
        ids.append(task_id)
    return ids


def scheduler(store: ClusterStore, manager: PluginManager, **options: int) -> Scheduler:
    return Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"), **options)


def test_the_window_scores_a_share_of_the_nodes_and_says_so(store: ClusterStore, manager: PluginManager) -> None:
    add_nodes(store, 200)
    ids = submit(store, 3)
    placed = scheduler(store, manager).run_pass(now=0).placed
    assert sorted(placed) == ids
    window = Scheduler.window_for(200)
    assert window < 200
    explain = store.task("h", ids[0]).record.explain
    assert f"filtered and scored {window} of 200 schedulable nodes (a window moving on each task)" in explain
    # the window moves on with each task: equal tasks on equal empty nodes (ties go to the
    # lowest id) land on the first node of three successive windows
    assert placed == {ids[0]: "n000", ids[1]: f"n{window:03d}", ids[2]: f"n{2 * window:03d}"}


def test_a_task_fitting_only_outside_its_window_is_placed_and_the_rest_grouped(
    store: ClusterStore, manager: PluginManager
) -> None:
    add_nodes(store, 200, odd={150: {"zone": "x"}})
    (task_id,) = submit(store, 1, node_labels={"zone": "x"})
    assert scheduler(store, manager).run_pass(now=0).placed == {task_id: "n150"}
    explain = store.task("h", task_id).record.explain
    assert explain[0].startswith("chosen n150: score ")
    assert (
        "199 nodes: label mismatch: zone='x' (node has 'y') [node-labels], "
        "e.g. n000: label mismatch: zone='x' (node has 'y')"
    ) in explain
    assert not any(line.startswith("filtered and scored") for line in explain)  # every node was


def test_a_task_fitting_nowhere_among_many_waits_with_reasons_grouped_and_counted(
    store: ClusterStore, manager: PluginManager
) -> None:
    add_nodes(store, 200)
    for node_id in ("n010", "n011"):
        store.update(keys.node(node_id), NodeRecord, lambda n: n.model_copy(update={"cordoned": True}))
    (task_id,) = submit(store, 1, cpu=8)
    result = scheduler(store, manager).run_pass(now=0)
    assert result.placed == {}
    t = store.task("h", task_id).record
    assert t.state is RunState.PENDING
    assert t.explain == [
        "198 nodes: cpu # > free # [resource-fit], e.g. n000: cpu 8 > free 4",
        "2 nodes: cordoned, e.g. n010: cordoned",
    ]
    assert t.pending_reason == "no node fits: " + "; ".join(t.explain)
    assert len(t.explain) <= GROUPS_IN_EXPLAIN + 1


def test_a_refused_batch_leaves_the_other_batches_of_the_pass_standing(store: ClusterStore) -> None:
    add_nodes(store, 1, cpu=8)
    ids = submit(store, 4)
    cancelled = ids[2]

    class CancelsOnce:
        """Another writer (the API cancelling a job) changes a task while the pass runs."""

        done = False

        @hookimpl
        def runink_filter_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> list[NodeRejection]:
            if not self.done:
                self.done = True
                store.update(keys.task("h", cancelled), TaskRecord, lambda t: t.moved_to(RunState.CANCELLED))
            return []

    with plugin_manager(("cancels-once", CancelsOnce())) as meddled:
        result = scheduler(store, meddled, batch=1).run_pass(now=0)
    assert result.conflicts == 1
    assert sorted(result.placed) == [ids[0], ids[1], ids[3]]
    states = {i: store.task("h", i).record for i in ids}
    assert states[cancelled].state is RunState.CANCELLED and states[cancelled].attempt == 0
    for task_id in result.placed:
        assert (states[task_id].state, states[task_id].attempt) == (RunState.SCHEDULED, 1)
    assert sum(t.resources.cpu for t in states.values() if t.state is RunState.SCHEDULED) == 3


def test_window_and_batch_are_checked(store: ClusterStore, manager: PluginManager) -> None:
    with pytest.raises(ValueError, match=r"scheduler window: -1 \(expected a number of nodes >= 0\)"):
        scheduler(store, manager, window=-1)
    with pytest.raises(ValueError, match=r"scheduler batch: 0 \(expected a number of tasks >= 1\)"):
        scheduler(store, manager, batch=0)
