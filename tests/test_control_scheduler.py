"""The cluster scheduler and node liveness, on the memory Barn with the installed filter plugins
and a real policy: capacity, quotas, labels, fair share, explain, fencing tokens, conflicts,
and tasks of a dead node placed again elsewhere."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from runink.core import hookimpl
from runink.core.control.liveness import Liveness
from runink.core.control.records import Amount, Herd, JobRecord, NodeRecord, Quota, RunState, TaskRecord, keys
from runink.core.control.scheduler import Scheduler
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
    return ClusterStore(MemoryBarn())


@pytest.fixture
def manager() -> Iterator[PluginManager]:
    with plugin_manager() as manager:
        yield manager


def scheduler(store: ClusterStore, manager: PluginManager, policy: str = "spread") -> Scheduler:
    return Scheduler(store, manager, load_driver(SchedulerPolicy, policy))


def add_node(store: ClusterStore, node_id: str, cpu: float = 4, **labels: str) -> None:
    record = NodeRecord(id=node_id, capacity=Amount(cpu=cpu, memory=16 * GiB), labels=labels)
    store.commit([(keys.node(node_id), 0)], [(keys.node(node_id), record)])


def add_herd(store: ClusterStore, name: str, **quota: float) -> None:
    store.create_herd(Herd(name=name, quota=Quota(**quota)))  # type: ignore[arg-type]


def submit(
    store: ClusterStore, herd: str, count: int, cpu: float = 1, prefix: str = "t", **fields: object
) -> list[str]:
    """``count`` one-task jobs; returns the task ids (their names sort in submission order)."""
    ids = []
    for i in range(count):
        task_id = f"{herd}-{prefix}{i:03d}"
        task = TaskRecord.model_validate(
            {"id": task_id, "job_id": task_id, "herd": herd, "command": ["/bin/true"], "resources": {"cpu": cpu}}
            | fields
        )
        store.submit(JobRecord(id=task_id, herd=herd, tasks=[task_id]), [task])
        ids.append(task_id)
    return ids


def task(store: ClusterStore, herd: str, task_id: str) -> TaskRecord:
    return store.task(herd, task_id).record


def node_use(store: ClusterStore) -> dict[str, float]:
    use: dict[str, float] = {}
    for versioned in store.tasks():
        t = versioned.record
        if t.state in (RunState.SCHEDULED, RunState.RUNNING):
            assert t.node is not None
            use[t.node] = use.get(t.node, 0) + t.resources.cpu
    return use


def finish(store: ClusterStore, herd: str, task_id: str) -> None:
    def run_and_succeed(t: TaskRecord) -> TaskRecord:
        return t.moved_to(RunState.RUNNING).moved_to(RunState.SUCCEEDED)

    store.update(keys.task(herd, task_id), TaskRecord, run_and_succeed)


def test_tasks_are_placed_within_node_capacity_over_several_passes(store: ClusterStore, manager: PluginManager) -> None:
    add_herd(store, "h")
    add_node(store, "n1", cpu=4)
    add_node(store, "n2", cpu=3)
    ids = submit(store, "h", 10)
    sched = scheduler(store, manager, "binpack")

    first = sched.run_pass(now=0)
    assert len(first.placed) == 7
    assert node_use(store) == {"n1": 4, "n2": 3}
    waiting = [i for i in ids if i not in first.placed]
    assert sorted(first.pending) == waiting
    reason = task(store, "h", waiting[0]).pending_reason
    assert reason.startswith("no node fits: ")
    assert "n1: cpu 1 > free 0 [resource-fit]" in reason

    assert sched.run_pass(now=1).placed == {}
    assert node_use(store) == {"n1": 4, "n2": 3}

    placed = sorted(first.placed)
    finish(store, "h", placed[0])
    finish(store, "h", placed[1])
    third = sched.run_pass(now=2)
    assert len(third.placed) == 2
    assert node_use(store) == {"n1": 4, "n2": 3}
    for task_id in third.placed:
        t = task(store, "h", task_id)
        assert (t.state, t.attempt, t.pending_reason) == (RunState.SCHEDULED, 1, "")


def test_a_waiting_task_is_not_written_again_while_its_reason_stays(
    store: ClusterStore, manager: PluginManager
) -> None:
    add_herd(store, "h")
    add_node(store, "n1", cpu=1)
    submit(store, "h", 2)
    sched = scheduler(store, manager)
    sched.run_pass(now=0)
    revision = store.barn.revision()
    result = sched.run_pass(now=1)
    assert result.placed == {} and len(result.pending) == 1
    assert store.barn.revision() == revision


def test_herd_quota_is_never_exceeded(store: ClusterStore, manager: PluginManager) -> None:
    add_herd(store, "capped", cpu=2)
    add_node(store, "n1", cpu=8)
    ids = submit(store, "capped", 3)
    result = scheduler(store, manager).run_pass(now=0)
    assert sorted(result.placed) == ids[:2]
    assert result.pending == {ids[2]: "herd capped quota: cpu 3 > quota 2"}
    assert task(store, "capped", ids[2]).pending_reason == "herd capped quota: cpu 3 > quota 2"
    assert task(store, "capped", ids[2]).state is RunState.PENDING


def test_max_slices_quota(store: ClusterStore, manager: PluginManager) -> None:
    add_herd(store, "few", max_slices=1)
    add_node(store, "n1", cpu=8)
    ids = submit(store, "few", 2, cpu=0.5)
    result = scheduler(store, manager).run_pass(now=0)
    assert list(result.placed) == ids[:1]
    assert result.pending[ids[1]] == "herd few quota: max_slices 2 > quota 1"


def test_node_labels_constrain_placement_and_explain_says_why(store: ClusterStore, manager: PluginManager) -> None:
    add_herd(store, "h")
    add_node(store, "a1", zone="a")
    add_node(store, "b1", zone="b")
    add_node(store, "b2", zone="b")
    store.update(keys.node("b2"), NodeRecord, lambda n: n.model_copy(update={"cordoned": True}))
    (task_id,) = submit(store, "h", 1, node_labels={"zone": "b"})
    assert scheduler(store, manager).run_pass(now=0).placed == {task_id: "b1"}
    explain = task(store, "h", task_id).explain
    assert explain[0].startswith("chosen b1: score ")
    assert "a1: label mismatch: zone='b' (node has 'a') [node-labels]" in explain
    assert "b2: cordoned" in explain


def test_a_herd_kept_to_labelled_nodes_runs_only_there_whatever_its_tasks_ask(
    store: ClusterStore, manager: PluginManager
) -> None:
    """A cluster admin keeps a herd to the nodes with a restricted label (which only admins set
    on nodes): its tasks go nowhere else, even one asking for another value of that label, and
    one whose node is full waits saying why; other herds are not kept."""
    pool = "restricted.runink.io/pool"
    store.create_herd(Herd(name="secure", node_labels={pool: "vault"}))
    add_herd(store, "open")
    add_node(store, "big", cpu=64)  # (what a node with stolen credentials would claim)
    add_node(store, "v1", cpu=1, **{pool: "vault"})
    first, second = submit(store, "secure", 2)
    (escape,) = submit(store, "secure", 1, prefix="x", node_labels={pool: "other", "zone": "a"})
    (free,) = submit(store, "open", 1)
    placed = scheduler(store, manager).run_pass(now=0).placed
    assert placed[first] == "v1" and placed[free] == "big"
    assert second not in placed and escape not in placed
    explain = task(store, "secure", second).explain
    assert any(line.startswith("big: label mismatch: restricted.runink.io/pool='vault'") for line in explain), explain
    assert "zone='a'" in " ".join(task(store, "secure", escape).explain)  # (its own labels still count too)
    with pytest.raises(ValueError, match=r"node label 'zone': only labels under restricted\.runink\.io/"):
        Herd(name="loose", node_labels={"zone": "a"})


def test_a_node_takes_no_more_tasks_than_its_agent_runs_at_once(store: ClusterStore, manager: PluginManager) -> None:
    """Tasks asking for almost no cpu filled every agent's slots (4 a core): another herd's job,
    placed there all the same, waited SCHEDULED on a full node holding its herd's quota. Now
    the node's slots are full: it waits PENDING, saying so, and goes where there is room."""
    add_herd(store, "hog")
    add_herd(store, "other")
    store.commit(
        [(keys.node("small"), 0)], [(keys.node("small"), NodeRecord(id="small", capacity=Amount(cpu=4), slots=2))]
    )
    hogs = submit(store, "hog", 3, cpu=0.05)
    placed = scheduler(store, manager).run_pass(now=0).placed
    assert sorted(placed) == hogs[:2] and set(placed.values()) == {"small"}
    (other,) = submit(store, "other", 1, cpu=0.05)
    assert scheduler(store, manager).run_pass(now=0).placed == {}
    waiting = task(store, "other", other)
    assert waiting.state is RunState.PENDING
    assert "small: slots: 2 tasks hold it, its agent runs 2 at once [resource-fit]" in waiting.explain
    add_node(store, "roomy")
    assert scheduler(store, manager).run_pass(now=0).placed[other] == "roomy"  # (fair share: before hog's third)


def test_a_herd_whose_quota_is_used_up_is_passed_over_with_one_reason(
    store: ClusterStore, manager: PluginManager
) -> None:
    """Once a herd's quota is used up none of its waiting tasks can fit: the rest of its queue
    is not looked at task by task (9,000 of them made every pass ~0.2 s for every herd), each
    told why once; another herd's task is placed as ever."""
    add_herd(store, "flood", cpu=1)
    add_herd(store, "other")
    add_node(store, "n1", cpu=8)
    flood = submit(store, "flood", 40, cpu=0.5)
    placed = scheduler(store, manager).run_pass(now=0).placed
    assert sorted(placed) == flood[:2]
    waiting = [task(store, "flood", t) for t in flood[2:]]
    assert {t.pending_reason for t in waiting[1:]} == {"herd flood quota: cpu used up (1 of 1)"}
    assert waiting[0].pending_reason == "herd flood quota: cpu 1.5 > quota 1"  # (the one looked at)
    revisions = {t: store.task("flood", t).revision for t in flood[2:]}
    (other,) = submit(store, "other", 1)
    assert scheduler(store, manager).run_pass(now=0).placed == {other: "n1"}
    assert {t: store.task("flood", t).revision for t in flood[2:]} == revisions  # (nothing written again)
    finish(store, "flood", flood[0])
    assert scheduler(store, manager).run_pass(now=0).placed == {flood[2]: "n1"}


def test_a_task_that_fits_nowhere_waits_with_every_node_in_explain(store: ClusterStore, manager: PluginManager) -> None:
    add_herd(store, "h")
    add_node(store, "n1", cpu=2)
    add_node(store, "n2", cpu=2, zone="x")
    (task_id,) = submit(store, "h", 1, cpu=3)
    result = scheduler(store, manager).run_pass(now=0)
    assert result.placed == {}
    t = task(store, "h", task_id)
    assert t.state is RunState.PENDING
    assert t.explain == ["n1: cpu 3 > free 2 [resource-fit]", "n2: cpu 3 > free 2 [resource-fit]"]
    assert t.pending_reason == "no node fits: " + "; ".join(t.explain)


def test_fair_share_between_two_herds_with_equal_demand(store: ClusterStore, manager: PluginManager) -> None:
    add_herd(store, "alpha")
    add_herd(store, "beta")
    add_node(store, "n1", cpu=6)
    alpha = submit(store, "alpha", 6)  # submitted first: a FIFO would give alpha everything
    beta = submit(store, "beta", 6)
    result = scheduler(store, manager).run_pass(now=0)
    assert sorted(result.placed) == alpha[:3] + beta[:3]


def test_priority_orders_a_herds_own_tasks_and_never_beats_fair_share(
    store: ClusterStore, manager: PluginManager
) -> None:
    """Anyone who may submit sets a priority (up to 1,000): across herds it once let one herd's
    queue drain before another's fair share. It orders the tasks of its own herd."""
    add_herd(store, "alpha")
    add_herd(store, "beta")
    add_node(store, "n1", cpu=4)
    plain = submit(store, "alpha", 2)
    urgent = submit(store, "alpha", 2, prefix="u", priority=10)  # submitted later, placed first
    loud = submit(store, "beta", 4, prefix="x", priority=1000)
    assert sorted(scheduler(store, manager).run_pass(now=0).placed) == sorted(urgent + loud[:2])
    assert all(task(store, "alpha", t).state is RunState.PENDING for t in plain)


def test_a_retry_waits_for_its_backoff(store: ClusterStore, manager: PluginManager) -> None:
    add_herd(store, "h")
    add_node(store, "n1")
    (task_id,) = submit(store, "h", 1, not_before=50.0)
    sched = scheduler(store, manager)
    assert sched.run_pass(now=10).placed == {}
    assert sched.run_pass(now=50).placed == {task_id: "n1"}


def test_fencing_tokens_grow_across_passes(store: ClusterStore, manager: PluginManager) -> None:
    add_herd(store, "h")
    add_node(store, "n1")
    sched = scheduler(store, manager)
    (first,) = submit(store, "h", 1, prefix="a")
    one = sched.run_pass(now=0)
    (second,) = submit(store, "h", 1, prefix="b")
    two = sched.run_pass(now=1)
    assert list(two.placed) == [second]
    assert 0 < one.token < two.token
    assert task(store, "h", first).token == one.token
    assert task(store, "h", second).token == two.token


def test_a_task_changed_mid_pass_is_neither_lost_nor_placed_twice(store: ClusterStore, manager: PluginManager) -> None:
    add_herd(store, "h")
    add_node(store, "n1", cpu=8)
    ids = submit(store, "h", 4)
    cancelled = ids[3]

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
        result = scheduler(store, meddled).run_pass(now=0)
    assert result.conflicts == 1
    assert sorted(result.placed) == ids[:3]
    states = {i: task(store, "h", i) for i in ids}
    assert states[cancelled].state is RunState.CANCELLED and states[cancelled].attempt == 0
    for task_id in ids[:3]:
        t = states[task_id]
        assert (t.state, t.attempt, t.token) == (RunState.SCHEDULED, 1, result.token)
        assert [tr.state for tr in t.transitions] == [RunState.SCHEDULED]
    assert node_use(store) == {"n1": 3}


def beat(store: ClusterStore, node_id: str) -> None:
    store.update(keys.node(node_id), NodeRecord, lambda n: n.model_copy(update={"heartbeat": n.heartbeat + 1}))


def test_a_silent_node_is_declared_dead_and_its_task_placed_elsewhere(
    store: ClusterStore, manager: PluginManager
) -> None:
    add_herd(store, "h")
    add_node(store, "n1")
    add_node(store, "n2")
    store.update(keys.node("n2"), NodeRecord, lambda n: n.model_copy(update={"cordoned": True}))
    (task_id,) = submit(store, "h", 1)
    sched = scheduler(store, manager)
    first = sched.run_pass(now=0)
    assert first.placed == {task_id: "n1"}
    store.update(keys.node("n2"), NodeRecord, lambda n: n.model_copy(update={"cordoned": False}))

    liveness = Liveness(store, timeout=10)
    assert liveness.observe(1000.0) == []
    beat(store, "n1")
    beat(store, "n2")
    assert liveness.observe(1005.0) == []  # n1's last change: 1005
    beat(store, "n2")
    assert liveness.observe(1014.9) == []
    beat(store, "n2")
    assert liveness.observe(1015.0) == ["n1"]

    assert store.node("n1").record.ready is False
    lost = task(store, "h", task_id)
    assert (lost.state, lost.node, lost.pending_reason) == (RunState.PENDING, None, "node n1 lost")
    assert lost.token == first.token  # kept until scheduled again
    assert liveness.observe(1100.0) == ["n2"]  # n2 stopped too; n1 is not declared twice

    add_node(store, "n3")
    again = sched.run_pass(now=1)
    assert again.placed == {task_id: "n3"}
    moved = task(store, "h", task_id)
    assert (moved.attempt, moved.node) == (2, "n3")
    assert moved.token > first.token
    assert "n1: not ready (its heartbeat stopped)" in moved.explain


def test_only_the_observers_clock_counts(store: ClusterStore) -> None:
    """A new leader gives every node a full timeout, however old the record's own times are."""
    add_node(store, "n1")
    store.update(keys.node("n1"), NodeRecord, lambda n: n.model_copy(update={"registered": 0.0}))
    assert Liveness(store, timeout=10).observe(5_000_000_000.0) == []
    successor = Liveness(store, timeout=10)
    assert successor.observe(20.0) == []
    assert successor.observe(29.9) == []
    assert successor.observe(30.0) == ["n1"]


def test_a_node_whose_heartbeat_keeps_changing_is_never_declared_dead(store: ClusterStore) -> None:
    add_node(store, "n1")
    liveness = Liveness(store, timeout=10)
    for second in range(0, 200, 5):
        beat(store, "n1")
        assert liveness.observe(float(second)) == []
    assert store.node("n1").record.ready is True


def test_a_cancelled_task_a_dead_node_never_said_stopped_frees_its_herds_quota(
    store: ClusterStore, manager: PluginManager
) -> None:
    """A cancelled slice holds its node and quota until its agent says it ended: a dead node's
    agent never will, so the node's death takes it off the node (it stays CANCELLED), else the
    herd's quota was held for good."""
    from runink.core.control.lifecycle import Lifecycle

    add_herd(store, "h", cpu=2)
    add_node(store, "n1", cpu=2)
    add_node(store, "n2", cpu=2)
    [first] = submit(store, "h", 1, cpu=2)
    sched = scheduler(store, manager)
    node = sched.run_pass(now=0).placed[first]
    Lifecycle(store).cancel(first)
    [second] = submit(store, "h", 1, cpu=2, prefix="again")
    assert second not in sched.run_pass(now=1).placed  # held: the quota is the herd's 2 cores
    liveness = Liveness(store, timeout=10)
    liveness.observe(1000.0)
    other = ({"n1", "n2"} - {node}).pop()
    beat(store, other)
    assert liveness.observe(1010.0) == [node]
    released = task(store, "h", first)
    assert (released.state, released.node) == (RunState.CANCELLED, None)
    assert sched.run_pass(now=2).placed == {second: other}


def test_a_task_left_on_a_dead_node_goes_back_to_pending(store: ClusterStore, manager: PluginManager) -> None:
    """The scheduler read the node as ready just before it was declared dead."""
    add_herd(store, "h")
    add_node(store, "n1")
    (task_id,) = submit(store, "h", 1)
    scheduler(store, manager).run_pass(now=0)
    store.update(keys.node("n1"), NodeRecord, lambda n: n.model_copy(update={"ready": False}))
    Liveness(store, timeout=10).observe(0.0)
    assert task(store, "h", task_id).state is RunState.PENDING


def test_liveness_timeout_must_be_positive(store: ClusterStore) -> None:
    with pytest.raises(ValueError, match="liveness timeout: 0"):
        Liveness(store, timeout=0)


def _job_of_two(store: ClusterStore) -> None:
    """Job j: task up, then task down (after up)."""
    tasks = [
        TaskRecord(id="up", job_id="j", herd="lab", command=["/bin/true"]),
        TaskRecord(id="down", job_id="j", herd="lab", command=["/bin/true"], after=["up"]),
    ]
    store.submit(JobRecord(id="j", herd="lab", tasks=["up", "down"]), tasks)


def _end(store: ClusterStore, task_id: str, state: RunState) -> None:
    current = store.task("lab", task_id)
    running = current.record.moved_to(RunState.RUNNING)
    store.commit(
        [(keys.task("lab", task_id), current.revision)], [(keys.task("lab", task_id), running.moved_to(state))]
    )


def test_a_task_waits_for_the_tasks_it_comes_after(store: ClusterStore, manager: PluginManager) -> None:
    add_node(store, "n1")
    add_herd(store, "lab")
    _job_of_two(store)
    passes = scheduler(store, manager)
    assert passes.run_pass(0).placed == {"up": "n1"}  # down waits: not placed, not written
    assert task(store, "lab", "down").state is RunState.PENDING
    assert passes.run_pass(1).placed == {}
    _end(store, "up", RunState.SUCCEEDED)
    assert passes.run_pass(2).placed == {"down": "n1"}


def test_an_ended_upstream_is_read_from_the_barn_once_not_every_pass(
    store: ClusterStore, manager: PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task waiting to be placed after a task that ended (no longer live) made every pass
    read its job and the job's tasks from the Barn: 300 such jobs, 756 ms a pass."""
    add_node(store, "n1")
    add_herd(store, "lab")
    tasks = [
        TaskRecord(id="up", job_id="j", herd="lab", command=["/bin/true"]),
        TaskRecord(id="down", job_id="j", herd="lab", command=["/bin/true"], after=["up"], node_labels={"never": "x"}),
    ]
    store.submit(JobRecord(id="j", herd="lab", tasks=["up", "down"]), tasks)
    passes = scheduler(store, manager)
    assert passes.run_pass(0).placed == {"up": "n1"}
    _end(store, "up", RunState.SUCCEEDED)
    reads: list[str] = []
    job = store.job
    monkeypatch.setattr(store, "job", lambda job_id: reads.append(job_id) or job(job_id))
    for now in range(1, 6):
        assert passes.run_pass(now).placed == {}  # (no node has the label)
    assert reads == ["j"]
    assert "never" in task(store, "lab", "down").pending_reason


def test_a_task_whose_upstream_failed_is_skipped_and_the_job_ends(store: ClusterStore, manager: PluginManager) -> None:
    add_node(store, "n1")
    add_herd(store, "lab")
    _job_of_two(store)
    passes = scheduler(store, manager)
    passes.run_pass(0)
    _end(store, "up", RunState.FAILED)
    passes.run_pass(1)
    down = task(store, "lab", "down")
    assert down.state is RunState.SKIPPED and "upstream task up did not succeed (FAILED)" in down.transitions[-1].reason
    job = store.job("j").record
    assert job.state is RunState.FAILED and job.finished is not None


def test_a_jobs_skip_writes_and_its_state_are_never_split_between_batches(
    store: ClusterStore, manager: PluginManager
) -> None:
    """A refused batch holding only the job's write would leave it non-final for ever."""
    add_node(store, "n1")
    add_herd(store, "lab")
    tasks = [TaskRecord(id="up", job_id="j", herd="lab", command=["/bin/true"])]
    tasks += [TaskRecord(id=f"down{i}", job_id="j", herd="lab", command=["/bin/true"], after=["up"]) for i in (1, 2)]
    store.submit(JobRecord(id="j", herd="lab", tasks=[t.id for t in tasks]), tasks)
    submit(store, "lab", 3)  # placements of the same pass
    passes = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"), batch=2)
    passes.run_pass(0)
    _end(store, "up", RunState.FAILED)
    commit = store.commit
    batches: list[list[str]] = []

    def recorded(read: Any, writes: Any) -> int:
        batches.append([key for key, _ in writes])
        return commit(read, writes)

    store.commit = recorded  # type: ignore[method-assign]
    passes.run_pass(1)
    job_key = keys.job("lab", "j")
    (with_job,) = [written for written in batches if job_key in written]
    assert sorted(with_job) == sorted([job_key, keys.task("lab", "down1"), keys.task("lab", "down2")])
    assert store.job("j").record.state is RunState.FAILED
    assert all(len(b) <= 2 for b in batches if job_key not in b)


def test_a_request_that_fits_nowhere_for_one_herd_is_still_placed_for_another(
    store: ClusterStore, manager: PluginManager
) -> None:
    """Filter hooks are given the herd: a rejection for one herd says nothing of another."""
    add_node(store, "n1")
    add_herd(store, "a")
    add_herd(store, "b")
    (refused,) = submit(store, "a", 1)
    (allowed,) = submit(store, "b", 1)

    class OnlyHerdB:
        @hookimpl
        def runink_filter_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> list[NodeRejection]:
            if request.herd == "b":
                return []
            return [NodeRejection(n.id, "herd a may not run here", "only-b") for n in nodes]

    with plugin_manager(("only-b", OnlyHerdB())) as restricted:
        result = scheduler(store, restricted).run_pass(now=0)
    assert result.placed == {allowed: "n1"}
    assert "herd a may not run here" in result.pending[refused]


def test_within_a_herd_the_queue_is_in_submission_order_whatever_the_ids(
    store: ClusterStore, manager: PluginManager
) -> None:
    """Task ids carry their job's time in milliseconds, then a random part: two submissions in
    one millisecond have ids in a random order. The queue goes by ``queued`` (the submission's
    time in nanoseconds) before the id: the task submitted first is placed first."""
    add_herd(store, "h")
    add_node(store, "n1", cpu=2)
    later = submit(store, "h", 1, cpu=1, prefix="a", queued=2_000)  # (its id sorts first)
    first = submit(store, "h", 1, cpu=2, prefix="b", queued=1_000)
    assert scheduler(store, manager).run_pass(now=0).placed.keys() == set(first)
    assert task(store, "h", later[0]).state is RunState.PENDING  # (it does not jump the queue)


def test_a_pass_too_large_for_one_transaction_is_split_and_one_task_too_large_alone_waits(
    store: ClusterStore, manager: PluginManager, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Placements of large tasks once made one transaction over the Barn's request limit: the
    leader got a 413 every round and placed nothing for anyone. A batch too large is split; a
    task whose write alone is too large stays PENDING (logged), and the others are placed."""
    from runink.core.control import store as store_module

    add_herd(store, "big")
    add_herd(store, "small")
    add_node(store, "n1", cpu=64)
    big = submit(store, "big", 6, command=["/bin/echo", "x" * 40_000])  # ~80 kB a write (task + index)
    huge = submit(store, "big", 1, prefix="huge", command=["/bin/echo", *["y" * 100_000] * 3])
    small = submit(store, "small", 3)
    monkeypatch.setattr(store_module, "MAX_COMMIT_BYTES", 500_000)

    result = scheduler(store, manager).run_pass(now=0)
    assert sorted(result.placed) == sorted(big + small)
    assert task(store, "big", huge[0]).state is RunState.PENDING
    assert all(
        task(store, h, t).state is RunState.SCHEDULED for h, ids in (("big", big), ("small", small)) for t in ids
    )
    assert f"a write of {keys.task('big', huge[0])} is too large" in caplog.text and "too large to store" in caplog.text


def test_a_cancelled_slice_holds_its_node_and_quota_until_its_agent_says_it_ended(
    store: ClusterStore, manager: PluginManager
) -> None:
    """A cancel frees nothing at once: the slice runs on until its agent has stopped it (up to
    the stop's grace), so a herd that cancelled and submitted again overran its quota and the
    node meanwhile. Its room comes back with the agent's report of the end."""
    from runink.core.control.lifecycle import Lifecycle

    add_herd(store, "h", cpu=2)
    add_node(store, "n1", cpu=2)
    [first] = submit(store, "h", 1, cpu=2)
    sched = scheduler(store, manager)
    assert first in sched.run_pass(now=0).placed
    life = Lifecycle(store)
    placed = task(store, "h", first)
    life.report("h", first, placed.attempt, placed.token, RunState.RUNNING, node="n1")
    life.cancel(first)
    assert task(store, "h", first).state is RunState.CANCELLED and task(store, "h", first).node == "n1"
    [second] = submit(store, "h", 1, cpu=2, prefix="again")
    assert second not in sched.run_pass(now=1).placed  # the cancelled slice still holds n1 and the quota
    life.report("h", first, placed.attempt, placed.token, RunState.CANCELLED, node="n1")  # its agent: ended
    assert task(store, "h", first).node is None
    assert second in sched.run_pass(now=2).placed
