"""A report starts from the records the server's watch saw last (``RecentRecords``, no Barn
read) and only its commit proves them current: a stale one is never what a refusal, an
"already so" or a lost report is decided on. Memory Barn, the real BarnFeed watch."""

from __future__ import annotations

import threading
import time

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, Herd, RunState, TaskRecord, keys
from runink.core.control.store import ClusterStore
from runink.core.interfaces.barn import KeyValue, WatchEvent
from runink.core.server.feed import BarnFeed, RecentRecords
from runink.plugins.barn.memory import MemoryBarn


def _put(key: str, value: bytes, revision: int) -> WatchEvent:
    return WatchEvent("PUT", KeyValue(key, value, 1, revision, 1), revision)


def test_recent_records_keep_the_newest_value_of_jobs_and_tasks_only_and_forget_past_their_bound() -> None:
    recent = RecentRecords(kept=2)
    task = keys.task("lab", "job-1.0001")
    recent.on_change(_put(task, b"new", 9))
    recent.on_change(_put(task, b"old", 5))  # (an older value: never replaces a newer one)
    assert recent.get(task) == KeyValue(task, b"new", 1, 9, 1)
    recent.on_change(_put("/herds/lab", b"herd", 10))  # not a job's or task's record
    recent.on_change(_put("/cluster/live/on/n1/lab/job-1.0001", b"copy", 10))
    assert recent.get("/herds/lab") is None and recent.get("/cluster/live/on/n1/lab/job-1.0001") is None
    recent.on_change(WatchEvent("DELETE", KeyValue(task, b"", 0, 11, 0), 11))
    assert recent.get(task) is None
    for n in range(3):
        recent.on_change(_put(keys.job("lab", f"job-{n}"), b"{}", 20 + n))
    assert recent.get(keys.job("lab", "job-0")) is None  # the least recently changed went
    assert recent.get(keys.job("lab", "job-2")) is not None
    recent.reset()
    assert recent.get(keys.job("lab", "job-2")) is None


def _setup(store: ClusterStore | None = None) -> tuple[ClusterStore, Lifecycle, TaskRecord]:
    store = store or ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    life = Lifecycle(store)
    job = life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
    (versioned,) = store.job_tasks(store.job(job.id).record)
    task = versioned.record
    placed = task.moved_to(RunState.SCHEDULED, node="n1", attempt=1, token=store.barn.revision())
    store.commit([(keys.task("lab", task.id), versioned.revision)], [(keys.task("lab", task.id), placed)])
    return store, life, placed


def _counting_gets(store: ClusterStore) -> list[str]:
    reads: list[str] = []
    original = store.barn.get

    def counted(key: str) -> KeyValue | None:
        reads.append(key)
        return original(key)

    store.barn.get = counted  # type: ignore[method-assign]
    return reads


def test_a_report_on_the_watchs_current_records_reads_nothing_and_commits() -> None:
    store = ClusterStore(MemoryBarn())
    stop = threading.Event()
    recent = RecentRecords()
    feed = BarnFeed(store.barn, stop)
    feed.listen(recent.on_change)
    feed.start()
    try:
        time.sleep(0.1)  # (the watch is following before the job is submitted)
        store, life, task = _setup(store)
        store.recent = recent.get
        # a change the watch delivers: the task placed again (attempt 2, a new token)
        current = store.task("lab", task.id)
        moved = current.record.moved_to(RunState.PENDING, "given back", node=None)
        again = moved.moved_to(RunState.SCHEDULED, node="n1", attempt=2, token=store.barn.revision() + 1)
        store.commit([(keys.task("lab", task.id), current.revision)], [(keys.task("lab", task.id), again)])
        deadline = time.monotonic() + 5
        while (kv := recent.get(keys.task("lab", task.id))) is None or b'"attempt":2' not in kv.value:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        reads = _counting_gets(store)
        assert life.report("lab", task.id, 2, again.token, RunState.RUNNING)
        assert reads == []  # both records from the watch; the commit's compare held
        assert store.task("lab", task.id).record.state is RunState.RUNNING
    finally:
        stop.set()


def test_a_stale_recent_record_is_never_what_a_report_is_refused_or_lost_on() -> None:
    store, life, task = _setup()
    stale_task = store.barn.get(keys.task("lab", task.id))
    stale_job = store.barn.get(keys.job("lab", task.job_id))
    frozen = {kv.key: kv for kv in (stale_task, stale_job) if kv is not None}
    store.recent = frozen.get  # a watch that saw nothing after attempt 1 was placed
    # placed again meanwhile: attempt 2 with a new token, which the stale copy does not know
    current = store.task("lab", task.id)
    moved = current.record.moved_to(RunState.PENDING, "given back", node=None)
    again = moved.moved_to(RunState.SCHEDULED, node="n1", attempt=2, token=store.barn.revision() + 1)
    store.commit([(keys.task("lab", task.id), current.revision)], [(keys.task("lab", task.id), again)])
    # attempt 2's report: the stale copy would call it fenced; read now, it is accepted
    assert life.report("lab", task.id, 2, again.token, RunState.RUNNING)
    assert store.task("lab", task.id).record.state is RunState.RUNNING
    # attempt 1's late report: the stale copy would accept it; read now, it is fenced
    assert not life.report("lab", task.id, 1, task.token, RunState.SUCCEEDED, exit_code=0)
    # attempt 2 ends: the stale copy (SCHEDULED, attempt 1) fails the compare, the Barn's wins
    assert life.report("lab", task.id, 2, again.token, RunState.SUCCEEDED, exit_code=0)
    ended = store.task("lab", task.id).record
    assert ended.state is RunState.SUCCEEDED and ended.attempt == 2
    assert store.job(task.job_id).record.state.value == "SUCCEEDED"


def test_a_jobs_recent_records_answer_only_when_one_commit_wrote_the_job_and_all_its_tasks() -> None:
    store, life, task = _setup()  # submitted (job and task together), then placed (the task alone)
    barn = {kv.key: kv for kv in store.barn.scan("/herds/")}
    store.recent = barn.get
    assert store.recent_job("lab", task.job_id) is None  # the task is past its job's commit
    life.cancel(task.job_id)  # the task and the job, in one commit
    barn.update({kv.key: kv for kv in store.barn.scan("/herds/")})
    recent = store.recent_job("lab", task.job_id)
    assert recent is not None
    job, (cancelled,) = recent
    assert job.record.state.value == "CANCELLED" and cancelled.record.state is RunState.CANCELLED
    assert (job.revision, cancelled.revision) == (store.job(task.job_id).revision, store.task("lab", task.id).revision)
    del barn[keys.task("lab", task.id)]  # one task not seen (forgotten past the bound): read
    assert store.recent_job("lab", task.job_id) is None
    store.recent = None
    assert store.recent_job("lab", task.job_id) is None
