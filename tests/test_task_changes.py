"""The agents' long-polls wait on ``TaskChanges``, fed by the server's one watch: a write of a
task wakes only the node whose assignments it changes (its entry in the index of assigned
tasks). Memory Barn, the real BarnFeed."""

from __future__ import annotations

import threading
import time

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, Herd, RunState, keys
from runink.core.control.store import ClusterStore
from runink.core.server.agent_service import TaskChanges
from runink.core.server.feed import BarnFeed
from runink.plugins.barn.memory import MemoryBarn


def _until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within its time"
        time.sleep(0.01)


def test_a_task_write_wakes_the_node_it_is_placed_on_or_leaves_and_no_other() -> None:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    life = Lifecycle(store)
    stop = threading.Event()
    feed = BarnFeed(store.barn, stop)
    changes = TaskChanges(life, feed)
    assert not changes.live  # (the watch is not running yet)
    feed.start()
    try:
        _until(lambda: changes.live)
        job = life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
        time.sleep(0.2)  # (delivered: PENDING, on no node)
        n1, n2 = changes.generation("n1"), changes.generation("n2")
        current = store.task("lab", job.tasks[0])
        placed = current.record.moved_to(RunState.SCHEDULED, node="n1", attempt=1, token=store.barn.revision())
        store.commit([(keys.task("lab", placed.id), current.revision)], [(keys.task("lab", placed.id), placed)])
        _until(lambda: changes.generation("n1") != n1)
        assert changes.generation("n2") == n2  # not its node
        n1 = changes.generation("n1")
        assert life.report("lab", placed.id, 1, placed.token, RunState.RUNNING)
        assert life.report("lab", placed.id, 1, placed.token, RunState.SUCCEEDED, exit_code=0)
        _until(lambda: changes.generation("n1")[1] >= n1[1] + 2)  # its start, and its end (it leaves n1)
        assert changes.generation("n2") == n2
        # a long-poll waiting on n1 wakes at its next change, not at n2's
        woke = threading.Event()
        seen = changes.generation("n1")
        threading.Thread(target=lambda: (changes.wait_past("n1", seen, 5), woke.set()), daemon=True).start()
        time.sleep(0.2)
        assert not woke.is_set()
        store.barn.put(keys.task("lab", "job-x.0001"), b"{}")  # not an entry of the index: nobody looks
        time.sleep(0.2)
        assert not woke.is_set()
        store.barn.put(ClusterStore.ASSIGNED + "n1/lab/job-x.0001", b"{}")
        assert woke.wait(5)
        assert changes.generation("n2") == n2
    finally:
        stop.set()
