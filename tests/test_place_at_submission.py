"""On the leader's server a submission's task is placed in the commit that stores it when
nothing waits and it fits (``ControlLoop.place_with``): one commit on a job's way instead of
two. Never past a waiting task, never on room a pass took, never by a server that lost the
scheduling epoch. Memory Barn, the real BarnFeed and LiveView, the real scheduler."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.liveness import Liveness
from runink.core.control.records import Amount, Herd, NodeRecord, RunState, keys
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.interfaces import SchedulerPolicy
from runink.core.server.feed import BarnFeed, LiveView
from runink.core.server.loop import ControlLoop
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager


@dataclass
class Server:
    store: ClusterStore  # the API's
    life: Lifecycle
    loop: ControlLoop
    view: LiveView


def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within its time"
        time.sleep(0.01)


@pytest.fixture
def server() -> Iterator[Server]:
    barn = MemoryBarn()
    setup = ClusterStore(barn)
    setup.create_herd(Herd(name="lab"))
    Lifecycle(setup).register_node(NodeRecord(id="n1", capacity=Amount(cpu=2, memory=2**30)))
    stop = threading.Event()
    with plugin_manager() as manager:
        feed = BarnFeed(barn, stop)
        view = LiveView(barn, feed)
        store, fenced = ClusterStore(barn), ClusterStore(barn)
        store.view = fenced.view = view
        life = Lifecycle(store)
        loop = ControlLoop(
            fenced,
            Scheduler(fenced, manager, load_driver(SchedulerPolicy, "spread")),
            Liveness(fenced, 10),
            is_leader=lambda: True,
        )
        life.placer = loop.place_with
        feed.listen(loop.on_change)
        feed.start()
        _until(lambda: feed.following and view.scan(ClusterStore.LIVE) is not None)
        loop.step(time.time(), time.monotonic())  # claims the epoch: this server schedules
        yield Server(store, life, loop, view)
        stop.set()
        barn.close()


def _task(store: ClusterStore, job_id: str) -> tuple[RunState, str | None, int]:
    job = store.job(job_id).record
    found = store.task("lab", job.tasks[0])
    return found.record.state, found.record.node, found.revision


def test_a_submission_that_fits_is_stored_placed_in_one_commit(server: Server) -> None:
    stored: list[int] = []
    job = server.life.submit_command("lab", ["/bin/true"], Amount(cpu=1), on_stored=stored.append)
    state, node, revision = _task(server.store, job.id)
    assert (state, node) == (RunState.SCHEDULED, "n1")
    assert revision == stored[0] == server.store.job(job.id).revision  # the job and its placement: one commit
    task = server.store.task("lab", job.tasks[0]).record
    assert task.attempt == 1 and task.explain  # as a pass places: its attempt, why this node
    assert [t.state for t in task.transitions] == [RunState.SCHEDULED]  # (as a pass writes it)
    assert [v.record.id for v in server.store.assigned("n1")] == [task.id]  # its agent sees it


def test_past_the_room_it_is_stored_pending_and_never_before_a_task_that_waits(server: Server) -> None:
    first = server.life.submit_command("lab", ["/bin/true"], Amount(cpu=2))
    assert _task(server.store, first.id)[0] is RunState.SCHEDULED
    second = server.life.submit_command("lab", ["/bin/true"], Amount(cpu=2))  # no room left
    assert _task(server.store, second.id)[0] is RunState.PENDING
    server.loop.step(time.time(), time.monotonic())  # a pass: it waits for room
    assert _task(server.store, second.id)[0] is RunState.PENDING
    task = server.store.task("lab", first.tasks[0]).record
    assert server.life.report("lab", task.id, 1, task.token, RunState.RUNNING)
    assert server.life.report("lab", task.id, 1, task.token, RunState.SUCCEEDED, exit_code=0)
    _until(lambda: not server.store.assigned("n1", recent=True))  # (the view has the room back)
    third = server.life.submit_command("lab", ["/bin/true"], Amount(cpu=1))  # fits, but the second waits
    assert _task(server.store, third.id)[0] is RunState.PENDING
    server.loop.step(time.time(), time.monotonic())
    assert _task(server.store, second.id)[:2] == (RunState.SCHEDULED, "n1")  # the one that waited first
    assert _task(server.store, third.id)[0] is RunState.PENDING


def test_a_server_whose_epoch_another_claimed_stores_it_pending(server: Server) -> None:
    epoch = server.store.barn.get(keys.SCHEDULER)
    assert epoch is not None
    server.store.barn.put(keys.SCHEDULER, epoch.value)  # another server claimed meanwhile
    job = server.life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
    assert _task(server.store, job.id)[:2] == (RunState.PENDING, None)


def test_a_server_that_does_not_lead_stores_it_pending() -> None:
    barn = MemoryBarn()
    store = ClusterStore(barn)
    store.create_herd(Herd(name="lab"))
    life = Lifecycle(store)
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=2, memory=2**30)))
    with plugin_manager() as manager:
        loop = ControlLoop(
            store, Scheduler(store, manager, load_driver(SchedulerPolicy, "spread")), Liveness(store, 10), lambda: False
        )
        life.placer = loop.place_with
        loop.step(time.time(), time.monotonic())
        job = life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
    assert _task(store, job.id)[0] is RunState.PENDING


def test_a_submission_waits_a_pass_under_way_a_second_at_most(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass that hung held every submission to its server for as long (the API's thread
    waited for the placing lock): past PLACE_WAIT the task is stored PENDING, for whichever
    server schedules next."""
    from runink.core.server import loop as loop_module

    monkeypatch.setattr(loop_module, "PLACE_WAIT", 0.2)
    with server.loop._placing:  # (a pass under way, hung)
        began = time.monotonic()
        job = server.life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
        assert 0.2 <= time.monotonic() - began < 2
    state, node, _ = _task(server.store, job.id)
    assert state is RunState.PENDING and node is None
