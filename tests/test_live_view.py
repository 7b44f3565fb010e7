"""A server's ``LiveView``: the nodes, herds and live tasks its scheduler passes, submissions
and agents' long-polls read instead of the Barn. Memory Barn; the watch's events handed to the
view by the test (``HeldFeed``), so what it has not delivered yet is chosen, not raced."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import pytest

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, Herd, NodeRecord, Record, RunState, keys
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.interfaces import SchedulerPolicy
from runink.core.interfaces.barn import KeyValue, WatchEvent
from runink.core.plugins import PluginManager
from runink.core.server.feed import BarnFeed, LiveView
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager


class HeldFeed:
    """A BarnFeed's interface whose events wait in a queue until ``deliver`` hands them on."""

    prefix = "/"

    def __init__(self, barn: MemoryBarn) -> None:
        self.following = False
        self._listeners: list[object] = []
        self._resets: list[object] = []
        self._events: queue.Queue[WatchEvent] = queue.Queue()
        self._barn = barn
        self._stop = threading.Event()

    def listen(self, listener: object) -> None:
        self._listeners.append(listener)

    def on_restart(self, reset: object) -> None:
        self._resets.append(reset)

    def start(self) -> None:
        start = self._barn.revision() + 1
        for reset in self._resets:
            reset()  # type: ignore[operator]
        self.following = True
        threading.Thread(target=self._pull, args=(start,), daemon=True).start()

    def _pull(self, start: int) -> None:
        for event in self._barn.watch("/", start):
            self._events.put(event)
            if self._stop.is_set():
                return

    def deliver(self, count: int | None = None) -> int:
        """Hand ``count`` events (None: all there are after a moment) to the listeners."""
        handed = 0
        while count is None or handed < count:
            try:
                event = self._events.get(timeout=0.3 if count is None else 5)
            except queue.Empty:
                if count is None:
                    return handed
                raise AssertionError(f"only {handed} of {count} events came") from None
            for listener in self._listeners:
                listener(event)  # type: ignore[operator]
            handed += 1
        return handed

    def close(self) -> None:
        self._stop.set()


@pytest.fixture
def manager() -> Iterator[PluginManager]:
    with plugin_manager() as manager:
        yield manager


@pytest.fixture
def cluster() -> Iterator[tuple[ClusterStore, Lifecycle, HeldFeed, LiveView]]:
    barn = MemoryBarn()
    setup = ClusterStore(barn)
    setup.create_herd(Herd(name="lab"))
    life = Lifecycle(setup)
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=1, memory=2**30)))
    feed = HeldFeed(barn)
    view = LiveView(barn, feed)  # type: ignore[arg-type]
    feed.start()
    yield setup, life, feed, view
    feed.close()
    barn.close()


Placement = tuple[list[tuple[str, int]], list[tuple[str, Record | None]]]


def _viewing_store_and_a_placement(
    setup: ClusterStore, life: Lifecycle, view: LiveView
) -> tuple[ClusterStore, Placement]:
    """A store that reads ``view``, and the commit (what it read, what it writes) placing a
    new job's task on n1, not made yet."""
    job = life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
    store = ClusterStore(setup.barn)
    store.view = view
    current = store.task("lab", job.tasks[0])
    placed = current.record.moved_to(RunState.SCHEDULED, node="n1", attempt=1, token=current.revision)
    key = keys.task("lab", placed.id)
    return store, ([(key, current.revision)], [(key, placed)])


def test_it_keeps_the_nodes_herds_and_live_tasks_as_the_watch_delivers_them(
    cluster: tuple[ClusterStore, Lifecycle, HeldFeed, LiveView],
) -> None:
    setup, life, feed, view = cluster
    store = ClusterStore(setup.barn)
    store.view = view
    assert [v.record.id for v in store.nodes(recent=True)] == ["n1"]  # (read when the watch started)
    job = life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
    assert store.live(recent=True) == []  # not delivered yet
    life.register_node(NodeRecord(id="n0", capacity=Amount(cpu=2)))
    feed.deliver()
    assert [(v.record.id, v.record.state) for v in store.live(recent=True)] == [(job.tasks[0], RunState.PENDING)]
    assert store.live(recent=True) == store.live()  # the same records, at the same revisions
    assert [v.record.id for v in store.nodes(recent=True)] == ["n0", "n1"]  # in key order, as a scan's
    herd = store.herd("lab", recent=True)
    assert herd == store.herd("lab")  # its index copy: the herd key's revision, to compare
    assert view.scan(ClusterStore.LIVE) is not None
    with pytest.raises(ValueError, match="not a prefix this view keeps"):
        view.scan(keys.HERDS)


def test_its_own_commits_are_in_it_before_the_watch_brings_them_and_older_changes_do_not_undo_them(
    cluster: tuple[ClusterStore, Lifecycle, HeldFeed, LiveView],
) -> None:
    setup, life, feed, view = cluster
    store, placement = _viewing_store_and_a_placement(setup, life, view)
    store.commit(*placement)
    # at once: on n1, no longer pending, though the watch delivered neither the submission nor this
    assert [(v.record.state, v.record.node) for v in store.live(recent=True)] == [(RunState.SCHEDULED, "n1")]
    placed = placement[1][0][1]
    assert placed is not None and [v.record.id for v in store.assigned("n1", recent=True)] == [placed.id]
    feed.deliver(4)  # the submission's job, task, pending entry, job index: older, kept out
    assert [(v.record.state, v.record.node) for v in store.live(recent=True)] == [(RunState.SCHEDULED, "n1")]
    feed.deliver()
    assert store.live(recent=True) == store.live()


def test_a_pass_right_after_another_counts_its_placements_before_the_watch_delivers_them(
    cluster: tuple[ClusterStore, Lifecycle, HeldFeed, LiveView], manager: PluginManager
) -> None:
    """A node of 1 cpu, two tasks of 1 cpu: the second pass sees the first one's placement in
    the view (its own commit) and leaves the other task waiting, with no conflict nor read."""
    setup, life, feed, view = cluster
    first = life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
    second = life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
    feed.deliver()
    store = ClusterStore(setup.barn)
    store.view = view
    scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"))
    scans: list[str] = []
    barn_scan = setup.barn.scan

    def counted(prefix: str, limit: int | None = None) -> list[KeyValue]:
        scans.append(prefix)
        return barn_scan(prefix, limit)

    setup.barn.scan = counted  # type: ignore[method-assign]
    placed = scheduler.run_pass(time.time())
    assert len(placed.placed) == 1 and placed.conflicts == 0
    again = scheduler.run_pass(time.time())  # nothing delivered in between
    assert again.placed == {} and again.conflicts == 0
    waiting = ({first.tasks[0], second.tasks[0]} - set(placed.placed)).pop()
    assert again.pending[waiting] == "no node fits: n1: cpu 1 > free 0 [resource-fit]"
    assert scans == []  # both passes read the view only


def test_it_is_read_only_while_following_and_past_its_floor_else_the_barn_is(
    cluster: tuple[ClusterStore, Lifecycle, HeldFeed, LiveView],
) -> None:
    setup, life, feed, view = cluster
    view.CATCH_UP = 0.2  # type: ignore[misc]
    job = life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
    store = ClusterStore(setup.barn)
    store.view = view
    store.view_floor = setup.barn.revision()  # (a new leader's claim: the view must have it)
    began = time.monotonic()
    assert [v.record.id for v in store.live(recent=True)] == [job.tasks[0]]  # the Barn's, after the wait
    assert time.monotonic() - began >= 0.2
    threading.Timer(0.05, feed.deliver).start()
    assert view.scan(ClusterStore.LIVE, store.view_floor) is not None  # caught up within its wait
    feed.following = False  # the watch broke: the view may be behind for good
    assert view.scan(ClusterStore.LIVE) is None
    assert view.get(ClusterStore.HERD_INDEX + "lab") == (False, None)
    assert [v.record.id for v in store.live(recent=True)] == [job.tasks[0]]


def test_a_restart_reads_everything_again_and_keeps_own_commits_the_read_missed(
    cluster: tuple[ClusterStore, Lifecycle, HeldFeed, LiveView],
) -> None:
    setup, life, _, view = cluster
    store, placement = _viewing_store_and_a_placement(setup, life, view)
    read = setup.barn.scan
    # the watch starts again; its read of the keys was answered just before this commit
    before = {prefix: read(prefix) for prefix in LiveView.PREFIXES}
    setup.barn.scan = lambda prefix, limit=None: before[prefix]  # type: ignore[method-assign]
    store.commit(*placement)
    read_at = placement[0][0][1]  # (the revision the placement was computed from)
    setup.barn.revision = lambda: read_at  # type: ignore[method-assign]
    view.reset()
    assert [(v.record.state, v.record.node) for v in store.live(recent=True)] == [(RunState.SCHEDULED, "n1")]


def test_a_servers_feed_of_every_key_serves_a_view_a_narrower_one_does_not() -> None:
    barn = MemoryBarn()
    LiveView(barn, BarnFeed(barn, threading.Event()))
    with pytest.raises(ValueError, match="a LiveView needs a feed of every key"):
        LiveView(barn, BarnFeed(barn, threading.Event(), prefix=keys.HERDS))


def test_it_names_the_scheduling_servers_api_only_when_it_is_an_address(
    cluster: tuple[ClusterStore, Lifecycle, HeldFeed, LiveView],
) -> None:
    """The leader's claim of the epoch names its API, which every answer's X-Runink-Scheduler
    header repeats: only an http(s) address goes there, never a line break or a path."""
    from runink.core.control.records import SchedulerEpoch

    setup, _, feed, view = cluster
    assert view.scheduling_api() == ""  # no claim yet
    for api, named in (
        ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
        ("https://x\r\nSet-Cookie: a=b", ""),
        ("https://127.0.0.1:8443/elsewhere", ""),
        ("https://[::1]:8443", "https://[::1]:8443"),
    ):
        setup.barn.put(keys.SCHEDULER, SchedulerEpoch(epoch=1, api=api).model_dump_json().encode())
        feed.deliver(1)
        assert view.scheduling_api() == named


def test_it_counts_each_herds_tasks_not_ended_as_their_entries_come_and_go(
    cluster: tuple[ClusterStore, Lifecycle, HeldFeed, LiveView],
) -> None:
    """The count admission's queue bound reads at every submission: waiting and placed tasks,
    per herd, kept as the watch delivers them, the same after a restart's read."""
    setup, life, feed, view = cluster
    setup.create_herd(Herd(name="other"))
    store, placement = _viewing_store_and_a_placement(setup, life, view)  # lab: one waiting
    life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
    life.submit_command("other", ["/bin/true"], Amount(cpu=1))
    assert view.live_tasks("lab") == 0  # nothing delivered yet
    feed.deliver()
    assert (view.live_tasks("lab"), view.live_tasks("other"), view.live_tasks("none")) == (2, 1, 0)
    store.commit(*placement)  # placed: its pending entry goes, its node's comes
    assert view.live_tasks("lab") == 2
    placed = placement[1][0][1]
    assert placed is not None
    ended = store.task("lab", placed.id)
    done = ended.record.moved_to(RunState.RUNNING).moved_to(RunState.SUCCEEDED)
    store.commit([(keys.task("lab", placed.id), ended.revision)], [(keys.task("lab", placed.id), done)])
    feed.deliver()
    assert (view.live_tasks("lab"), view.live_tasks("other")) == (1, 1)
    assert store.not_ended("lab") == 1
    view.reset()  # a restart's read counts the same
    assert (view.live_tasks("lab"), view.live_tasks("other")) == (1, 1)
    feed.following = False  # cannot say: the store reads the Barn's index
    assert view.live_tasks("lab") is None and store.not_ended("lab") == 1


def test_it_sums_the_bytes_of_each_herds_tasks_not_ended_as_they_change(
    cluster: tuple[ClusterStore, Lifecycle, HeldFeed, LiveView],
) -> None:
    """What admission's bytes bound reads at every submission ([admission] max_queued_bytes):
    the live entries' bytes per herd, the same as the Barn's, after a restart's read too."""
    setup, life, feed, view = cluster
    store, placement = _viewing_store_and_a_placement(setup, life, view)  # lab: one waiting
    life.submit_command("lab", ["/bin/echo", "x" * 5000], Amount(cpu=1))
    feed.deliver()

    def in_barn() -> int:
        found = [kv for kv in setup.barn.scan(ClusterStore.LIVE) if "/lab/" in kv.key]
        return sum(len(kv.value) for kv in found)

    assert view.live_bytes("lab") == in_barn() > 5000 and view.live_bytes("none") == 0
    store.commit(*placement)  # placed: its pending entry goes, its node's comes (another size)
    assert view.live_bytes("lab") == in_barn()
    for task in [v.record for v in setup.tasks("lab")]:
        life.cancel(task.job_id)
    feed.deliver()
    assert view.live_bytes("lab") == in_barn()
    view.reset()
    assert view.live_bytes("lab") == in_barn()
    feed.following = False
    assert view.live_bytes("lab") is None and store.not_ended_bytes("lab") == in_barn()
