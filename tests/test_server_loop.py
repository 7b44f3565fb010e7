"""The server's control loop: it schedules and watches liveness only while its Barn member leads,
gives every node a full liveness timeout after each change of leadership, and outlives a round
that raises."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.liveness import Liveness
from runink.core.control.records import Amount, Herd, NodeRecord, RunState
from runink.core.control.scheduler import PassResult, Scheduler
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.interfaces import SchedulerPolicy
from runink.core.plugins import PluginManager
from runink.core.server.feed import BarnFeed
from runink.core.server.loop import IDLE_PASS_EVERY, ControlLoop
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager

TIMEOUT = 10.0


class Leadership:
    def __init__(self, leads: bool = False) -> None:
        self.leads = leads

    def __call__(self) -> bool:
        return self.leads


@pytest.fixture
def manager() -> Iterator[PluginManager]:
    with plugin_manager() as manager:
        yield manager


def setup(manager: PluginManager) -> tuple[ClusterStore, Lifecycle, ControlLoop, Leadership]:
    store = ClusterStore(MemoryBarn())
    lifecycle = Lifecycle(store)
    store.create_herd(Herd(name="team"))
    lifecycle.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4, memory=2**30)))
    leadership = Leadership()
    scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"))
    loop = ControlLoop(store, scheduler, Liveness(store, TIMEOUT), leadership)
    return store, lifecycle, loop, leadership


def task_state(store: ClusterStore, job_id: str) -> RunState:
    job = store.job(job_id).record
    return store.task(job.herd, job.tasks[0]).record.state


def test_schedules_only_while_leading(manager: PluginManager) -> None:
    store, lifecycle, loop, leadership = setup(manager)
    job = lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=1))
    assert loop.step(1.0, 1.0) is None
    assert task_state(store, job.id) is RunState.PENDING

    leadership.leads = True
    result = loop.step(2.0, 2.0)
    assert result is not None and list(result.placed.values()) == ["n1"]
    assert task_state(store, job.id) is RunState.SCHEDULED

    leadership.leads = False
    second = lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=1))
    assert loop.step(3.0, 3.0) is None
    assert task_state(store, second.id) is RunState.PENDING


def test_a_new_leadership_gives_every_node_a_full_timeout(manager: PluginManager) -> None:
    store, _, loop, leadership = setup(manager)
    leadership.leads = True
    loop.step(0.0, 100.0)  # n1's heartbeat first seen at 100
    leadership.leads = False
    loop.step(0.0, 105.0)  # leadership lost: what was seen of n1 is forgotten
    leadership.leads = True
    # n1 has been silent for 15 s of this clock, but 5 of them while another server led
    loop.step(0.0, 115.0)
    assert store.node("n1").record.ready
    loop.step(0.0, 124.9)
    assert store.node("n1").record.ready
    loop.step(0.0, 125.0)  # a full timeout after leadership came back
    assert not store.node("n1").record.ready


def test_while_leading_a_silent_node_is_found_dead(manager: PluginManager) -> None:
    # the control of the test above: without the leadership change, the same clock expires n1 earlier
    store, _, loop, leadership = setup(manager)
    leadership.leads = True
    loop.step(0.0, 100.0)
    loop.step(0.0, 110.0)
    assert not store.node("n1").record.ready


def test_run_schedules_in_a_thread_and_outlives_a_failing_round(
    manager: PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    store, lifecycle, loop, leadership = setup(manager)
    loop.interval = 0.005
    calls = 0

    def flaky() -> bool:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("barn unreachable\nsecond line")
        return leadership.leads

    loop.is_leader = flaky
    job = lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=1))
    stop = threading.Event()
    with caplog.at_level(logging.ERROR, logger="runink.core.server.loop"):
        thread = loop.start(stop)
        try:
            deadline = time.monotonic() + 5
            while calls <= 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert task_state(store, job.id) is RunState.PENDING  # not the leader
            leadership.leads = True
            while task_state(store, job.id) is RunState.PENDING and time.monotonic() < deadline:
                time.sleep(0.01)
            assert task_state(store, job.id) is RunState.SCHEDULED
        finally:
            stop.set()
            thread.join(5)
    assert not thread.is_alive()
    failures = [r.getMessage() for r in caplog.records]
    # the same failure three times in a row: logged once, on one line
    assert failures == ["control loop round failed: RuntimeError: barn unreachable second line"]


def test_interval_must_be_positive(manager: PluginManager) -> None:
    store, _, loop, _ = setup(manager)
    with pytest.raises(ValueError, match="interval"):
        ControlLoop(store, loop.scheduler, loop.liveness, lambda: True, interval=0)


def test_a_server_that_still_thinks_it_leads_writes_nothing_once_another_claimed() -> None:
    """Two servers' loops over one Barn, both told they lead (a leader check cached during an
    election): the second claims the scheduling epoch, so the first's passes are refused and
    only one places the tasks: they cannot overfill a node together."""
    from runink.core.control.records import Amount, Herd, JobRecord, NodeRecord, TaskRecord, keys
    from runink.core.control.store import ClusterStore
    from runink.plugins.barn.memory import MemoryBarn

    barn = MemoryBarn()
    setup = ClusterStore(barn)
    setup.create_herd(Herd(name="lab"))
    node = NodeRecord(id="n1", capacity=Amount(cpu=1))
    setup.commit([(keys.node("n1"), 0)], [(keys.node("n1"), node)])
    with plugin_manager() as manager:

        def loop() -> ControlLoop:
            store = ClusterStore(barn)
            scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"))
            return ControlLoop(store, scheduler, Liveness(store, 10), is_leader=lambda: True)

        first, second = loop(), loop()
        assert first.step(0, 0) is not None  # claims epoch 1 (nothing to place yet)
        assert second.step(0, 0) is not None  # claims epoch 2: the first is fenced off now
        for i in range(2):  # two tasks of 1 cpu for a node of 1 cpu
            task = TaskRecord(id=f"t{i}", job_id=f"t{i}", herd="lab", command=["/bin/true"], resources=Amount(cpu=1))
            setup.submit(JobRecord(id=f"t{i}", herd="lab", tasks=[f"t{i}"]), [task])
        stale = first.step(1, 1)
        assert stale is not None and not stale.committed and stale.placed == {}
        fresh = second.step(1, 1)
        assert fresh is not None and len(fresh.placed) == 1  # one fits; the other waits
        assert [t.record.state.value for t in setup.tasks("lab")].count("SCHEDULED") == 1


def test_the_watch_pokes_for_tasks_that_may_be_placed_not_for_placements(manager: PluginManager) -> None:
    store, lifecycle, loop, leadership = setup(manager)
    stop = threading.Event()
    feed = BarnFeed(store.barn, stop)
    feed.listen(loop.on_change)
    feed.start()
    try:
        time.sleep(0.2)  # (the watch is following)
        loop._wake.clear()
        job = lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=1))
        assert loop._wake.wait(2.0)  # a new PENDING task: a pass may place it
        leadership.leads = True
        loop.step(1.0, 1.0)
        assert task_state(store, job.id) is RunState.SCHEDULED
        loop._wake.clear()
        time.sleep(0.3)
        assert not loop._wake.is_set()  # its placement: nothing a pass could place
        task = store.task("team", store.job(job.id).record.tasks[0]).record
        assert lifecycle.report("team", task.id, task.attempt, task.token, RunState.RUNNING)
        time.sleep(0.3)
        assert not loop._wake.is_set()  # its start: the same
        assert lifecycle.report("team", task.id, task.attempt, task.token, RunState.SUCCEEDED, exit_code=0)
        time.sleep(0.3)
        assert not loop._wake.is_set()  # its end frees room, but the last pass left nothing waiting
        # a task too large for the room left waits; another's end then pokes
        held = lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=3))
        assert loop._wake.wait(2.0)
        loop.step(2.0, 2.0)
        waits = lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=2))
        assert loop._wake.wait(2.0)
        assert loop.step(3.0, 3.0).pending and loop.waiting  # type: ignore[union-attr]
        loop._wake.clear()
        task = store.task("team", store.job(held.id).record.tasks[0]).record
        assert lifecycle.report("team", task.id, task.attempt, task.token, RunState.RUNNING)
        assert lifecycle.report("team", task.id, task.attempt, task.token, RunState.SUCCEEDED, exit_code=0)
        assert loop._wake.wait(2.0)  # room for the waiting one
        loop.step(4.0, 4.0)
        assert task_state(store, waits.id) is RunState.SCHEDULED and not loop.waiting
    finally:
        stop.set()


def test_run_skips_passes_while_nothing_waits_and_nothing_pokes(manager: PluginManager) -> None:
    store, lifecycle, loop, leadership = setup(manager)
    leadership.leads = True
    loop.interval = 0.01
    passes: list[float] = []
    run_pass = loop.scheduler.run_pass

    def counted(now: float) -> PassResult:
        passes.append(time.monotonic())
        return run_pass(now)

    loop.scheduler.run_pass = counted  # type: ignore[method-assign]
    stop = threading.Event()
    loop.start(stop)
    try:
        time.sleep(0.6)
        idle = len(passes)
        # ~60 rounds; a pass in the first and then one per IDLE_PASS_EVERY
        assert 2 <= idle <= 1 + 0.6 / IDLE_PASS_EVERY + 1
        job = lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=1))
        loop.poke()
        deadline = time.monotonic() + 2
        while task_state(store, job.id) is not RunState.SCHEDULED and time.monotonic() < deadline:
            time.sleep(0.005)
        assert task_state(store, job.id) is RunState.SCHEDULED
    finally:
        stop.set()


def test_run_looks_at_liveness_a_twentieth_of_its_timeout_apart_not_every_round(manager: PluginManager) -> None:
    _, _, loop, leadership = setup(manager)
    leadership.leads = True
    loop.interval = 0.01
    looks: list[float] = []
    observe = loop.liveness.observe

    def counted(now: float) -> list[str]:
        looks.append(now)
        return observe(now)

    loop.liveness.observe = counted  # type: ignore[method-assign]
    loop.liveness.timeout = 4.0  # (a look every 0.2 s)
    rounds: list[float] = []
    step = loop.step

    def stepped(now_wall: float, now_monotonic: float, **flags: bool) -> PassResult | None:
        rounds.append(now_monotonic)
        return step(now_wall, now_monotonic, **flags)

    loop.step = stepped  # type: ignore[method-assign]
    stop = threading.Event()
    loop.start(stop)
    try:
        for _ in range(30):  # pokes: rounds every ~20 ms
            loop.poke()
            time.sleep(0.02)
    finally:
        stop.set()
    assert looks and all(b - a >= 0.19 for a, b in itertools.pairwise(looks))  # 0.2 s apart
    assert len(rounds) >= 3 * len(looks), (len(rounds), looks)  # not one a round


def test_a_round_that_runs_past_hung_after_counts_as_hung_until_it_ends(
    manager: PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    """A round that never ends (a deadlock, a plugin that never returns) kept its server
    leading and scheduling nothing; ``hung`` says so, and the server stops beating its member
    (tests/test_cluster_processes.py runs that on a real cluster)."""
    _, _, loop, leadership = setup(manager)
    loop.interval, loop.hung_after = 0.005, 0.3
    release, entered = threading.Event(), threading.Event()

    def stuck_chore(_now: float) -> None:
        entered.set()
        release.wait(10)  # (bounded: the test releases it)

    loop.chores = [stuck_chore]
    leadership.leads = True
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="runink.core.server.loop"):
        thread = loop.start(stop)
        try:
            assert entered.wait(5)
            assert not loop.hung()  # (a round under way, not for long yet)
            time.sleep(0.4)
            assert loop.hung() and loop.hung()
            release.set()
            deadline = time.monotonic() + 5
            while loop.hung() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not loop.hung()
        finally:
            release.set()
            stop.set()
            thread.join(5)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in said if "has run for 0.3 s or more ([scheduler] hung_after)" in m]) == 1
    assert any(m.startswith("the control loop's round ended after") for m in said)


def test_on_a_shared_etcd_a_server_whose_loop_hung_lets_its_lease_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers on one etcd lead by a lease (LeaseLeadership). A hung server's feed thread,
    asking whether it leads, renewed it for ever; unhealthy, it renews nothing, and another
    server takes the lead once the lease ends. (MemoryBarn: the same lease semantics.)"""
    from runink.core.server import process

    monkeypatch.setattr(process, "LEADER_CHECK_EVERY", 0.0)
    monkeypatch.setattr(process.LeaseLeadership, "LEASE_TTL", 0.3)
    barn = MemoryBarn()
    try:
        hung, other = process.LeaseLeadership(barn), process.LeaseLeadership(barn)
        assert hung() and not other()
        for _ in range(5):  # (renewed while healthy: it keeps the lead past its TTL)
            time.sleep(0.1)
            assert hung() and not other()
        hung.healthy = lambda: False
        deadline = time.monotonic() + 5
        while not other():
            assert not hung()
            assert time.monotonic() < deadline, "the hung server's lease never ended"
            time.sleep(0.02)
        assert not hung()
    finally:
        barn.close()
