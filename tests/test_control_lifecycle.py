"""The job and task lifecycle on the memory Barn: submissions, fenced reports, retries,
job state in the same commit as its tasks, cancellation, node registration and heartbeats."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runink.core.control.lifecycle import DONE_BEFORE_CANCEL, Lifecycle, done_before_cancel, never_fits
from runink.core.control.records import (
    Amount,
    Herd,
    NodeRecord,
    PipelineTask,
    Quota,
    RunState,
    TaskRecord,
    TaskReport,
    job_of,
    keys,
)
from runink.core.control.store import ClusterStore, Conflict, NotFound, Refused
from runink.plugins.barn.memory import MemoryBarn

NOW = 1000.0


@pytest.fixture
def store() -> ClusterStore:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab", quota=Quota(cpu=4, memory=1 << 30)))
    return store


@pytest.fixture
def life(store: ClusterStore) -> Lifecycle:
    return Lifecycle(store, clock=lambda: NOW, jitter=lambda: 0.5)


def schedule(store: ClusterStore, task: TaskRecord, node: str = "n1") -> TaskRecord:
    """What the scheduler does: the next attempt on ``node`` with a new fencing token."""
    current = store.task(task.herd, task.id)
    moved = current.record.moved_to(
        RunState.SCHEDULED, node=node, attempt=current.record.attempt + 1, token=store.barn.revision()
    )
    store.commit([(keys.task(task.herd, task.id), current.revision)], [(keys.task(task.herd, task.id), moved)])
    return moved


def only_task(store: ClusterStore, job_id: str) -> TaskRecord:
    (task,) = store.job_tasks(store.job(job_id).record)
    return task.record


def test_submit_stores_job_and_task_together(store: ClusterStore, life: Lifecycle) -> None:
    job = life.submit_command("lab", ["/bin/true"], Amount(cpu=1))
    stored = store.job(job.id).record
    assert stored.state is RunState.PENDING and stored.tasks == job.tasks
    task = only_task(store, job.id)
    assert (task.command, task.state, task.attempt, task.herd) == (["/bin/true"], RunState.PENDING, 0, "lab")


def test_unknown_herd_is_not_found(store: ClusterStore, life: Lifecycle) -> None:
    with pytest.raises(NotFound, match="nope"):
        life.submit_command("nope", ["/bin/true"])
    assert store.jobs() == []


def test_a_task_past_its_herds_quota_is_refused_and_nothing_stored(store: ClusterStore, life: Lifecycle) -> None:
    with pytest.raises(Refused, match="cpu 8 > quota 4"):
        life.submit_command("lab", ["/bin/true"], Amount(cpu=8))
    assert store.jobs() == [] and store.tasks() == []


def test_malformed_request_is_refused_naming_the_field(store: ClusterStore, life: Lifecycle) -> None:
    with pytest.raises(Refused, match="retries"):
        life.submit_command("lab", ["/bin/true"], retries=-1)
    with pytest.raises(Refused, match="command"):
        life.submit_command("lab", [])
    assert store.tasks() == []


def test_a_task_no_node_could_ever_hold_is_refused(store: ClusterStore, life: Lifecycle) -> None:
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=2, memory=1 << 30)))
    with pytest.raises(Refused, match=r"never fit any node.*n1: cpu 3 > capacity 2"):
        life.submit_command("lab", ["/bin/true"], Amount(cpu=3))
    # (memory as people read it: a review saw 2.14748e+09)
    with pytest.raises(Refused, match=r"quota: memory 2.0 GiB > quota 1.0 GiB$"):
        life.submit_command("lab", ["/bin/true"], Amount(cpu=1, memory=2 << 30))
    assert (
        never_fits(Amount(cpu=1, memory=3 << 30), Amount(cpu=2, memory=1 << 30)) == "memory 3.0 GiB > capacity 1.0 GiB"
    )
    assert store.tasks() == []
    life.submit_command("lab", ["/bin/true"], Amount(cpu=2))


def test_late_report_with_an_old_token_is_refused_and_changes_nothing(store: ClusterStore, life: Lifecycle) -> None:
    job = life.submit_command("lab", ["/bin/true"])
    first = schedule(store, only_task(store, job.id))
    assert life.report("lab", first.id, 1, first.token, RunState.RUNNING)
    # the node is found dead: the task goes back and is placed again elsewhere
    current = store.task("lab", first.id)
    back = current.record.moved_to(RunState.PENDING, "node n1 dead", node=None)
    store.commit([(keys.task("lab", first.id), current.revision)], [(keys.task("lab", first.id), back)])
    second = schedule(store, back, node="n2")
    before = store.task("lab", first.id)
    assert not life.report("lab", first.id, 1, first.token, RunState.SUCCEEDED, exit_code=0)
    assert not life.report("lab", first.id, 2, first.token, RunState.SUCCEEDED, exit_code=0)  # right attempt, old token
    after = store.task("lab", first.id)
    assert after == before and after.record.state is RunState.SCHEDULED
    assert life.report("lab", first.id, 2, second.token, RunState.RUNNING)


def test_illegal_transitions_are_refused(store: ClusterStore, life: Lifecycle) -> None:
    job = life.submit_command("lab", ["/bin/true"])
    task = schedule(store, only_task(store, job.id))
    before = store.task("lab", task.id)
    assert not life.report("lab", task.id, 1, task.token, RunState.SUCCEEDED, exit_code=0)  # never reported RUNNING
    assert not life.report("lab", task.id, 1, task.token, RunState.SCHEDULED)  # not an agent's to say
    assert not life.report("lab", task.id, 1, task.token, "EXPLODED")  # type: ignore[arg-type]  # garbage
    assert not life.report("lab", "no-such-task", 1, task.token, RunState.RUNNING)
    assert store.task("lab", task.id) == before
    assert life.report("lab", task.id, 1, task.token, RunState.RUNNING)
    assert life.report("lab", task.id, 1, task.token, RunState.SUCCEEDED, exit_code=0)
    assert not life.report("lab", task.id, 1, task.token, RunState.FAILED, exit_code=1)  # a final state is final
    assert store.task("lab", task.id).record.state is RunState.SUCCEEDED


def test_a_failure_with_retries_left_goes_back_pending_with_backoff(store: ClusterStore, life: Lifecycle) -> None:
    job = life.submit_command("lab", ["/bin/false"], retries=2, backoff=4.0)
    delays = []
    for attempt in (1, 2, 3):
        task = schedule(store, only_task(store, job.id))
        assert task.attempt == attempt
        assert life.report("lab", task.id, attempt, task.token, RunState.RUNNING)
        assert life.report("lab", task.id, attempt, task.token, RunState.FAILED, exit_code=1, message="boom")
        task = only_task(store, job.id)
        if attempt < 3:
            assert task.state is RunState.PENDING and task.node is None and task.exit_code == 1
            delays.append(task.not_before - NOW)
            assert store.job(job.id).record.state is RunState.PENDING
    assert delays == [4.0 * 0.5, 8.0 * 0.5]  # backoff * 2**(attempt-1) * jitter
    assert task.state is RunState.FAILED and task.exit_code == 1
    assert store.job(job.id).record.state is RunState.FAILED


def test_job_state_follows_its_tasks_in_the_same_commit(store: ClusterStore, life: Lifecycle) -> None:
    job = life.submit_command("lab", ["/bin/true"])
    task = schedule(store, only_task(store, job.id))
    assert life.report("lab", task.id, 1, task.token, RunState.RUNNING)
    running_job = store.job(job.id)
    assert running_job.record.state is RunState.RUNNING
    assert running_job.revision == store.task("lab", task.id).revision  # one transaction wrote both
    assert life.report("lab", task.id, 1, task.token, RunState.SUCCEEDED, exit_code=0)
    done = store.job(job.id)
    assert done.record.state is RunState.SUCCEEDED and done.record.finished == NOW
    assert done.revision == store.task("lab", task.id).revision


def test_cancel_ends_every_task_and_the_job(store: ClusterStore, life: Lifecycle) -> None:
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4, memory=1 << 30)))
    job = life.submit_command("lab", ["sleep", "30"])
    task = schedule(store, only_task(store, job.id))
    assert life.report("lab", task.id, 1, task.token, RunState.RUNNING)
    assert [t.id for t in life.assignments("n1")] == [task.id]
    cancelled = life.cancel(job.id)
    assert cancelled.state is RunState.CANCELLED and store.job(job.id).record.state is RunState.CANCELLED
    task_now = only_task(store, job.id)
    assert task_now.state is RunState.CANCELLED
    # the agent still running it sees it cancelled, and may say it stopped it
    assert [(t.id, t.state) for t in life.assignments("n1")] == [(task.id, RunState.CANCELLED)]
    assert life.report("lab", task.id, 1, task.token, RunState.CANCELLED)
    assert life.cancel(job.id).state is RunState.CANCELLED


@pytest.mark.parametrize("ended", [RunState.CANCELLED, RunState.SUCCEEDED, RunState.FAILED])
def test_a_cancelled_task_leaves_its_nodes_assignments_once_its_end_is_reported(
    store: ClusterStore, life: Lifecycle, ended: RunState
) -> None:
    """Else every task ever cancelled while running stays in the heartbeat answer for ever."""
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4, memory=1 << 30)))
    job = life.submit_command("lab", ["sleep", "30"])
    task = schedule(store, only_task(store, job.id))
    assert life.report("lab", task.id, 1, task.token, RunState.RUNNING)
    life.cancel(job.id)
    assert [t.id for t in life.assignments("n1")] == [task.id]  # so the agent stops it
    assert not life.report("lab", task.id, 1, task.token + 1, ended)  # still fenced
    assert life.report("lab", task.id, 1, task.token, ended)
    assert life.assignments("n1") == []
    stored = only_task(store, job.id)
    assert (stored.state, stored.node) == (RunState.CANCELLED, None)
    assert [t.state for t in stored.transitions][-1:] == [RunState.CANCELLED]  # one final state
    # an attempt that ended SUCCEEDED had done its work (published) first: said, not hidden
    assert done_before_cancel(stored) is (ended is RunState.SUCCEEDED)
    assert (stored.message == DONE_BEFORE_CANCEL.format(attempt=1)) is (ended is RunState.SUCCEEDED)
    assert store.job(job.id).record.state is RunState.CANCELLED
    revision = store.task("lab", task.id).revision
    assert life.report("lab", task.id, 1, task.token, ended)  # repeated: no write
    assert store.task("lab", task.id).revision == revision


def test_no_message_makes_a_cancelled_task_read_as_done_before_the_cancel(store: ClusterStore, life: Lifecycle) -> None:
    """A failed attempt's message (the step's own error) said the words, and a cancel during
    the retry's backoff made `runink run` say the outputs were published (a review's run)."""
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4, memory=1 << 30)))
    job = life.submit_command("lab", ["/bin/false"], retries=1, backoff=60.0)
    task = schedule(store, only_task(store, job.id))
    forged = DONE_BEFORE_CANCEL.format(attempt=1)
    assert life.report("lab", task.id, 1, task.token, RunState.FAILED, message=forged)
    life.cancel(job.id)
    stored = only_task(store, job.id)
    assert stored.state is RunState.CANCELLED and not done_before_cancel(stored)


def test_a_task_cancelled_while_scheduled_keeps_its_node_until_its_agent_says_it_ended(
    store: ClusterStore, life: Lifecycle
) -> None:
    """Its agent may have started it already (a RUNNING report is held a moment): its room on
    the node is held until the agent says the attempt ended, stopped or never started."""
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4, memory=1 << 30)))
    job = life.submit_command("lab", ["sleep", "30"])
    task = schedule(store, only_task(store, job.id))
    life.cancel(job.id)
    assert [t.id for t in life.assignments("n1")] == [task.id]  # so its agent stops it, or says it never ran
    assert (only_task(store, job.id).state, only_task(store, job.id).node) == (RunState.CANCELLED, "n1")
    assert life.report("lab", task.id, 1, task.token, RunState.CANCELLED)
    assert life.assignments("n1") == []
    assert (only_task(store, job.id).state, only_task(store, job.id).node) == (RunState.CANCELLED, None)


def test_heartbeats_and_registration(store: ClusterStore, life: Lifecycle) -> None:
    first = life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4)))
    assert life.heartbeat("n1", first.incarnation)
    assert store.node("n1").record.heartbeat == 1
    life.cordon("n1")
    second = life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4)))
    assert second.incarnation != first.incarnation and second.cordoned and second.ready
    assert not life.heartbeat("n1", first.incarnation)  # the old agent process
    assert not life.heartbeat("ghost", second.incarnation)
    store.update(keys.node("n1"), NodeRecord, lambda n: n.model_copy(update={"ready": False}))  # found dead
    assert not life.heartbeat("n1", second.incarnation)
    third = life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4)))
    assert third.ready and life.heartbeat("n1", third.incarnation)
    assert not life.uncordon("n1").cordoned and life.drain("n1").draining
    # an admin's drain holds when the node registers again (a node once undid it so); uncordon ends it
    assert life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4))).draining
    assert not life.uncordon("n1").draining
    with pytest.raises(NotFound):
        life.cordon("ghost")


def test_restricted_labels_are_an_admins_and_no_node_claims_or_undoes_them(
    store: ClusterStore, life: Lifecycle
) -> None:
    """A node says its own capacity and labels: one with stolen credentials claimed every label
    tasks asked for. Labels under restricted.runink.io/ only an admin sets (`runink nodes
    label`); a Register claiming one is refused, and one registering again keeps the admin's."""
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4), labels={"zone": "a"}))
    labelled = life.label("n1", {"restricted.runink.io/pool": "gpu"})
    assert labelled.labels == {"zone": "a", "restricted.runink.io/pool": "gpu"}
    again = life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4), labels={"zone": "b"}))
    assert again.labels == {"zone": "b", "restricted.runink.io/pool": "gpu"}
    claims = {"restricted.runink.io/pool": "gpu"}
    with pytest.raises(Refused, match="set by cluster admins"):
        life.register_node(NodeRecord(id="evil", capacity=Amount(cpu=4096), labels=claims))
    with pytest.raises(Refused, match=r"labels under restricted\.runink\.io/ only"):
        life.label("n1", {"zone": "c"})
    assert life.label("n1", {}).labels == {"zone": "b"}  # (cleared; its own stay)


def test_an_agents_message_is_stored_bounded_and_printable(
    store: ClusterStore, life: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    """A report's text comes from the node (and the slice): a huge one with terminal escapes
    is cut and defused before it reaches the Barn, the API or a log."""
    job = life.submit_command("lab", ["/bin/true"])
    task = schedule(store, only_task(store, job.id))
    assert life.report("lab", task.id, 1, task.token, RunState.RUNNING)
    hostile = "\x1b]0;pwned\x07" + "x" * 1_000_000
    assert life.report("lab", task.id, 1, task.token, RunState.FAILED, exit_code=1, message=hostile)
    stored = store.task("lab", task.id).record
    assert len(stored.message) <= 4000 and "\x1b" not in stored.message and "\x07" not in stored.message
    assert all("\x1b" not in t.reason and len(t.reason) <= 4000 for t in stored.transitions)
    assert not life.report("lab", "t\x1b[2J", 1, 1, RunState.RUNNING)  # refused, and logged defused
    assert "\x1b" not in caplog.text


def test_a_submission_racing_a_herd_delete_is_refused_not_lost(store: ClusterStore, life: Lifecycle) -> None:
    """The herd is deleted after the submission read it, before its commit: the commit compares
    the herd's key, so the job is refused (never accepted under a herd nobody lists)."""
    barn = store.barn
    commit = barn.transaction
    raced: list[bool] = []

    def deleting_first(compare: Any, success: Any, failure: Any = ()) -> tuple[bool, int]:
        if not raced and any(op.key.startswith(ClusterStore.JOB_INDEX) for op in success):
            raced.append(True)
            store.delete_herd("lab")
        return commit(compare, success, failure)

    barn.transaction = deleting_first  # type: ignore[method-assign]
    with pytest.raises(NotFound, match="lab"):
        life.submit_command("lab", ["/bin/true"])
    assert raced and [kv.key for kv in barn.scan("/")] == []


def test_a_submission_between_a_herd_deletes_check_and_its_mark_refuses_the_delete(
    store: ClusterStore, life: Lifecycle
) -> None:
    barn = store.barn
    commit = barn.transaction
    submitted: list[str] = []

    def submitting_first(compare: Any, success: Any, failure: Any = ()) -> tuple[bool, int]:
        if not submitted and any(op.key == keys.herd("lab") and op.value for op in success):
            submitted.append(life.submit_command("lab", ["/bin/true"]).id)
        return commit(compare, success, failure)

    barn.transaction = submitting_first  # type: ignore[method-assign]
    with pytest.raises(Refused, match="has not ended"):
        store.delete_herd("lab")
    assert not store.herd("lab").record.deleting  # left as it was: it takes jobs again
    assert [j.id for j in store.jobs("lab")] == submitted
    life.submit_command("lab", ["/bin/true"])


def test_a_herd_being_deleted_refuses_jobs_and_a_second_delete_finishes(store: ClusterStore, life: Lifecycle) -> None:
    job = life.submit_command("lab", ["/bin/true"])
    life.cancel(job.id)
    store.update(keys.herd("lab"), Herd, lambda h: h.model_copy(update={"deleting": True}))  # a delete cut short
    with pytest.raises(Refused, match="being deleted"):
        life.submit_command("lab", ["/bin/true"])
    store.delete_herd("lab")
    assert [kv.key for kv in store.barn.scan("/")] == []


def test_a_herd_is_deleted_in_batches_of_at_most_500(store: ClusterStore, life: Lifecycle) -> None:
    for _ in range(300):
        life.cancel(life.submit_command("lab", ["/bin/true"]).id)
    barn = store.barn
    commit = barn.transaction
    sizes: list[int] = []

    def counted(compare: Any, success: Any, failure: Any = ()) -> tuple[bool, int]:
        sizes.append(len(success))
        return commit(compare, success, failure)

    barn.transaction = counted  # type: ignore[method-assign]
    store.delete_herd("lab")
    # the mark (the herd and its index entry), jobs+tasks+job index+ended entries, the herd and its index entry
    assert max(sizes) <= 500 and sum(sizes) == 2 + 1200 + 2
    assert [kv.key for kv in barn.scan("/")] == []


def test_a_herds_whole_history_is_read_a_page_at_a_time(store: ClusterStore, life: Lifecycle) -> None:
    """A herd's jobs and tasks (its cost, its listing, its deletion) were one Barn answer each:
    200 tasks of 1 MiB took a member past its 10 s, and an admin could not delete the herd."""
    from runink.core.control.store import SCAN_PAGE

    ids = [life.submit_command("lab", ["/bin/true"]).id for _ in range(SCAN_PAGE + 44)]
    for job_id in ids:
        life.cancel(job_id)
    barn = store.barn
    scan = barn.scan
    asked: list[tuple[str, int | None]] = []

    def counted(prefix: str, *, limit: int | None = None, after: str | None = None) -> Any:
        asked.append((prefix, limit))
        return scan(prefix, limit=limit, after=after)

    barn.scan = counted  # type: ignore[method-assign]
    assert sorted(t.record.job_id for t in store.tasks("lab")) == sorted(ids)
    assert sorted(j.id for j in store.jobs("lab")) == sorted(ids)
    store.delete_herd("lab")
    herds = [(prefix, limit) for prefix, limit in asked if prefix.startswith("/herds/lab/")]
    assert herds and all(limit == SCAN_PAGE for _, limit in herds)
    assert [kv.key for kv in scan("/herds/lab/")] == []


def test_a_pipeline_jobs_tasks_are_one_scan_and_a_report_reads_them_so(store: ClusterStore, life: Lifecycle) -> None:
    """Every report reads its task's siblings (the job's state is derived from them): a
    pipeline job's tasks are named after it, so that is one scan, not a read per scenario."""
    tasks = [PipelineTask(scenario=f"s{i}", after=[f"s{i - 1}"] if i else []) for i in range(20)]
    job = life.submit_pipeline("lab", "/p/p.dsl", tasks)
    assert job.tasks == [f"{job.id}.{i:04d}" for i in range(1, 21)]
    calls: list[str] = []
    barn = store.barn
    for name in ("get", "scan"):
        original = getattr(barn, name)

        def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(barn, name, counted)
    assert [v.record.scenario.scenario for v in store.job_tasks(job) if v.record.scenario] == [
        t.scenario for t in tasks
    ]
    assert calls == ["scan"]
    first = schedule(store, store.task("lab", job.tasks[0]).record)
    calls.clear()
    assert life.report("lab", first.id, first.attempt, first.token, RunState.RUNNING)
    assert calls.count("scan") == 1 and calls.count("get") <= 3  # its task, its job (and its index)
    assert store.job(job.id).record.state is RunState.RUNNING
    # a sibling changed since the job was read: the report works from the scan's fresh copy
    second = store.task("lab", job.tasks[1])
    changed = second.record.model_copy(update={"priority": 5})
    store.commit(
        [(keys.task("lab", second.record.id), second.revision)], [(keys.task("lab", second.record.id), changed)]
    )
    assert life.report("lab", first.id, first.attempt, first.token, RunState.SUCCEEDED, exit_code=0)
    assert store.task("lab", first.id).record.state is RunState.SUCCEEDED
    store.barn.delete(keys.task("lab", job.tasks[5]))
    with pytest.raises(NotFound, match=rf"task '{job.tasks[5]}'"):
        store.job_tasks(job)


def remote_with_slow_gets(store: ClusterStore) -> list[int]:
    """Make ``store``'s Barn act as a remote one (reads through ``later`` overlap) whose gets
    take a round trip (50 ms); returns a cell holding the most gets seen in flight at once."""
    barn = store.barn
    barn.remote = True  # (as the raft client says it is)
    original, lock = barn.get, threading.Lock()
    inside, most = [0], [0]

    def slow_get(key: str) -> Any:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)  # a round trip
        try:
            return original(key)
        finally:
            with lock:
                inside[0] -= 1

    barn.get = slow_get  # type: ignore[method-assign]
    return most


def test_a_report_reads_its_task_and_its_job_together_on_a_remote_barn(store: ClusterStore, life: Lifecycle) -> None:
    """A command task is named after its job (as a pipeline's are), so a report starts the
    read of the job beside the read of the task: one round trip of a remote Barn, not two."""
    job = life.submit_command("lab", ["/bin/true"])
    (task_id,) = job.tasks
    assert job_of(task_id) == job.id and job_of("task-18c2f-1a2b3c4d") is None and job_of("job-1.x") is None
    task = schedule(store, store.task("lab", task_id).record)
    most = remote_with_slow_gets(store)
    assert life.report("lab", task.id, task.attempt, task.token, RunState.SUCCEEDED, exit_code=0, started=NOW)
    assert most[0] == 2  # the job's read overlapped the task's
    assert store.job(job.id).record.state is RunState.SUCCEEDED


def test_report_many_applies_different_tasks_at_once_and_one_tasks_in_order(
    store: ClusterStore, life: Lifecycle
) -> None:
    """A round of an agent's reports: those of different tasks overlap on a remote Barn (one
    round's time, not one per report); those of one task keep their order."""
    tasks = [schedule(store, only_task(store, life.submit_command("lab", ["/bin/true"]).id)) for _ in range(4)]
    most = remote_with_slow_gets(store)
    first = tasks[0]
    reports = [
        TaskReport(first.herd, first.id, first.attempt, first.token, RunState.RUNNING, started=NOW),
        TaskReport(first.herd, first.id, first.attempt, first.token, RunState.SUCCEEDED, exit_code=0),
        *(TaskReport(t.herd, t.id, t.attempt, t.token, RunState.FAILED, exit_code=3, started=NOW) for t in tasks[1:]),
        TaskReport(first.herd, first.id, first.attempt + 1, first.token, RunState.FAILED),  # an old attempt's: fenced
    ]
    began = time.monotonic()
    assert life.report_many(reports) == [True, True, True, True, True, False]
    assert most[0] >= 4  # the four tasks' reads overlapped
    assert time.monotonic() - began < 0.05 * 2 * len(reports)  # (sequentially: two reads a report)
    assert store.task("lab", first.id).record.state is RunState.SUCCEEDED  # RUNNING then SUCCEEDED, in order
    assert all(store.task("lab", t.id).record.state is RunState.FAILED for t in tasks[1:])


def test_a_task_asking_none_of_what_its_herds_quota_limits_is_given_the_defaults(
    store: ClusterStore, life: Lifecycle
) -> None:
    """A slice asking no cpu or memory had no limit of its own, only its herd's parent on its
    node, capped at the whole quota: its use counted nowhere (a herd on two nodes used 1.33
    cores of a 1-core quota, a review's run). It is given [admission] default_cpu and
    default_memory now (at most the quota), where the quota limits them, and counts."""
    store.create_herd(Herd(name="small", quota=Quota(cpu=0.5, memory=1 << 30)))
    store.create_herd(Herd(name="open"))
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4, memory=4 << 30)))
    booked = only_task(store, life.submit_command("small", ["/bin/true"]).id).resources
    assert (booked.cpu, booked.memory) == (0.5, 256 * 1024**2)
    asked = only_task(store, life.submit_command("small", ["/bin/true"], Amount(cpu=0.25, memory=1 << 20)).id)
    assert (asked.resources.cpu, asked.resources.memory) == (0.25, 1 << 20)
    free = only_task(store, life.submit_command("open", ["/bin/true"]).id).resources
    assert (free.cpu, free.memory) == (0, 0)  # (no quota to count against: as asked)
    # a scenario asking no memory: what its node gives it ([limits] memory, 2 GiB), not 256 MiB
    # (its pipeline ran at 2 GiB in a herd without a quota: a review's run)
    from runink.core.control.lifecycle import PipelineTask

    store.create_herd(Herd(name="big", quota=Quota(cpu=4, memory=8 << 30)))
    job = life.submit_pipeline("big", "/srv/p.dsl", [PipelineTask(scenario="s", resources=Amount(cpu=1))])
    assert only_task(store, job.id).resources.memory == 2 << 30


def test_a_large_job_is_cancelled_while_its_tasks_keep_changing(store: ClusterStore, life: Lifecycle) -> None:
    """One commit comparing a thousand tasks' revisions, while agents and the scheduler kept
    writing some of them, failed 20 times in a row (503) and the job ran on (a review's run).
    A large job is cancelled some tasks a commit, the job with its last ones."""
    from runink.core.control.lifecycle import CANCEL_BATCH, PipelineTask

    tasks = [PipelineTask(scenario=f"s{i}", resources=Amount(cpu=0.001, memory=1)) for i in range(3 * CANCEL_BATCH)]
    job = life.submit_pipeline("lab", "/srv/p.dsl", tasks)
    ids = store.job(job.id).record.tasks
    stop = threading.Event()

    def churn() -> None:  # (what reports and passes do: a task rewritten every moment)
        turn = 0
        while not stop.is_set():
            task_id = ids[turn % len(ids)]
            turn += 7
            found = store.task("lab", task_id)
            if found.record.state.final:
                continue
            changed = found.record.model_copy(update={"pending_reason": f"waits ({turn})"})
            with contextlib.suppress(Conflict):
                store.commit([(keys.task("lab", task_id), found.revision)], [(keys.task("lab", task_id), changed)])

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        ended = life.cancel(job.id)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert ended.state is RunState.CANCELLED and store.job(job.id).record.state is RunState.CANCELLED
    assert {v.record.state for v in store.job_tasks(store.job(job.id).record)} == {RunState.CANCELLED}


def test_an_admin_caps_a_nodes_capacity_and_its_agent_cannot_raise_it(store: ClusterStore, life: Lifecycle) -> None:
    """A node's capacity was what its agent claimed: with stolen credentials one claimed a
    machine's worth of cores and drew most new tasks (docs/cluster.md). An admin caps it, each
    resource on its own; registering again claims more in vain; lifting the cap gives the claim."""
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=64, memory=1 << 40, gpu=2), gpus=["g0", "g1"]))
    capped = life.pin("n1", Amount(cpu=4, gpu=1))
    assert (capped.capacity.cpu, capped.capacity.memory, capped.capacity.gpu) == (4, 1 << 40, 1)
    assert capped.gpus == ["g0"] and capped.claimed is not None and capped.claimed.cpu == 64
    again = life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=512, memory=1 << 40, gpu=2), gpus=["g0", "g1"]))
    assert (again.capacity.cpu, again.capacity.gpu, again.gpus) == (4, 1, ["g0"])
    assert again.pinned == capped.pinned and again.claimed is not None and again.claimed.cpu == 512
    lifted = life.pin("n1", None)
    assert (lifted.capacity.cpu, lifted.pinned, lifted.claimed) == (512, None, None)
    assert lifted.capacity.gpu == 1  # (the GPU id the cap cut comes back when its agent registers)
    back = life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=512, memory=1 << 40, gpu=2), gpus=["g0", "g1"]))
    assert (back.capacity.gpu, back.gpus) == (2, ["g0", "g1"])
    with pytest.raises(NotFound, match="nope"):
        life.pin("nope", Amount(cpu=1))


def test_several_commands_are_programs_never_the_shells_builtins(tmp_path: Path) -> None:
    """`/bin/sh -c` sequenced them: a line `eval '...$(id -u)'` ran its text, `exit 0` ended
    the sequence a success without running the rest, `FOO=bar` was an assignment."""
    import subprocess

    from runink.core.control.lifecycle import in_one_slice

    def run(*commands: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(in_one_slice(list(commands)), capture_output=True, text=True, cwd=tmp_path, check=False)

    done = run(["sh", "-c", "echo first > a"], ["cat", "a"], ["echo", "a;b", "$(id -u)"])
    assert (done.returncode, done.stdout) == (0, "first\na;b $(id -u)\n")
    for builtin in (["eval", "echo $(id -u) > pwned"], ["exit", "0"], ["FOO=bar"], [".", "/dev/stdin"]):
        ended = run(builtin, ["touch", "second-ran"])
        assert ended.returncode in (126, 127), (builtin, ended)  # (not found; "." a folder: not executable)
        assert not (tmp_path / "second-ran").exists() and not (tmp_path / "pwned").exists()
    with pytest.raises(ValueError, match="a program's name may not start with '-'"):
        in_one_slice([["-c", "id"]])
