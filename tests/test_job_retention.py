"""Ended jobs' retention ([cluster] jobs_keep_for): the leading server's chore removes jobs
that ended long enough ago, oldest first, with their tasks and output; nothing else."""

from __future__ import annotations

import msgspec
import pytest
from agent_helpers import schedule

from runink.core.config import ClusterConfig
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.logs import Chunk, TaskLogs
from runink.core.control.records import Amount, Herd, NodeRecord, RunState, keys
from runink.core.control.store import ClusterStore, NotFound
from runink.core.server.job_retention import JobRetention
from runink.plugins.barn.memory import MemoryBarn

DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def life(clock: Clock) -> Lifecycle:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    store.commit([(keys.node("n1"), 0)], [(keys.node("n1"), NodeRecord(id="n1", capacity=Amount(cpu=64)))])
    return Lifecycle(store, clock=clock)


def run_to(life: Lifecycle, state: RunState, output: bytes = b"") -> str:
    """A one-task job run on n1 to ``state`` (RUNNING: still running), its output kept."""
    job = life.submit_command("lab", ["/bin/echo", "hi"])
    task = schedule(life.store, job.id)
    life.report("lab", task.id, task.attempt, task.token, RunState.RUNNING, node="n1")
    if output:
        TaskLogs(life.store).append(Chunk("lab", task.id, task.attempt, task.token, "stdout", 0, output))
    if state is not RunState.RUNNING:
        life.report("lab", task.id, task.attempt, task.token, state, node="n1")
    return job.id


def kept_keys(life: Lifecycle, job_id: str) -> list[str]:
    """Every Barn key that names the job or its task."""
    return [kv.key for kv in life.store.barn.scan("/") if job_id in kv.key]


def test_jobs_ended_past_the_retention_go_with_their_tasks_and_output(life: Lifecycle, clock: Clock) -> None:
    old = run_to(life, RunState.SUCCEEDED, b"old output")
    failed = run_to(life, RunState.FAILED)
    clock.now += 3 * DAY
    recent = run_to(life, RunState.SUCCEEDED)
    running = run_to(life, RunState.RUNNING, b"still going")
    pending = life.submit_command("lab", ["/bin/true"]).id
    assert kept_keys(life, old)  # (the job, its index entries, its task, its output)

    retention = JobRetention(life.store, keep_for=2 * DAY)
    assert retention(clock.now) == 2
    for gone in (old, failed):
        assert kept_keys(life, gone) == []
        with pytest.raises(NotFound):
            life.store.job(gone)
    for kept in (recent, running, pending):
        assert life.store.job(kept).record.id == kept
    assert TaskLogs(life.store).read_all("lab", f"{running}.0001", 1)["stdout"].data == b"still going"

    assert retention(clock.now + 30) == 0  # (not a minute later)
    clock.now += 2 * DAY + 1
    assert retention(clock.now) == 1 and kept_keys(life, recent) == []


def test_a_job_whose_cancelled_slice_is_still_stopping_is_kept_until_it_stopped(life: Lifecycle, clock: Clock) -> None:
    job_id = run_to(life, RunState.RUNNING)
    life.cancel(job_id)
    clock.now += 3 * DAY
    retention = JobRetention(life.store, keep_for=DAY)
    assert retention(clock.now) == 0 and life.store.job(job_id).record.state is RunState.CANCELLED
    task = life.store.job_tasks(life.store.job(job_id).record)[0].record
    life.report("lab", task.id, task.attempt, task.token, RunState.CANCELLED, node="n1")  # its agent: stopped
    assert JobRetention(life.store, keep_for=DAY)(clock.now) == 1 and kept_keys(life, job_id) == []


def test_a_backlog_goes_over_several_rounds_oldest_first(
    life: Lifecycle, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runink.core.server import job_retention

    monkeypatch.setattr(job_retention, "PER_ROUND", 3)
    ended = []
    for _ in range(7):
        ended.append(run_to(life, RunState.SUCCEEDED))
        clock.now += 10
    clock.now += DAY
    retention = JobRetention(life.store, keep_for=DAY + 35)  # the first 4 go, the last 3 stay
    assert retention(clock.now) == 3 and [j for j in ended if kept_keys(life, j)] == ended[3:]
    assert retention(clock.now + 1) == 1  # the round after: went on at once
    assert [j for j in ended if kept_keys(life, j)] == ended[4:]
    assert retention(clock.now + 2) == 0  # caught up: the next look in a minute


def test_zero_keeps_every_job_and_bad_values_are_refused(life: Lifecycle, clock: Clock) -> None:
    job_id = run_to(life, RunState.SUCCEEDED)
    clock.now += 1000 * DAY
    assert ClusterConfig(jobs_keep_for=0).jobs_keep_seconds is None
    assert JobRetention(life.store, keep_for=None)(clock.now) == 0 and kept_keys(life, job_id)
    assert ClusterConfig(jobs_keep_for="12h").jobs_keep_seconds == 12 * 3600
    with pytest.raises(ValueError, match="jobs_keep_for"):
        ClusterConfig(jobs_keep_for="soon")


def test_jobs_that_ended_before_their_entries_existed_are_indexed_then_removed(life: Lifecycle, clock: Clock) -> None:
    """Jobs a server of an earlier version ended have no ``ended`` entry: the first look
    writes them, so the retention removes those jobs too."""
    old = run_to(life, RunState.SUCCEEDED)
    for kv in life.store.barn.scan("/herds/lab/ended/"):  # (as an earlier version left it)
        life.store.barn.delete(kv.key)
    clock.now += 3 * DAY
    assert JobRetention(life.store, keep_for=DAY)(clock.now) == 1 and kept_keys(life, old) == []


def test_each_herd_keeps_at_most_its_newest_ended_jobs_whatever_their_age(life: Lifecycle, clock: Clock) -> None:
    """[cluster] jobs_keep_max: a herd's ended jobs past its newest N go, oldest first, the
    age bound still applying to the rest; another herd's count is its own; jobs not ended
    never count nor go."""
    life.store.create_herd(Herd(name="other"))
    ended = []
    for _ in range(5):
        ended.append(run_to(life, RunState.SUCCEEDED))
        clock.now += 10
    running = run_to(life, RunState.RUNNING)
    other = life.submit_command("other", ["/bin/true"]).id
    task = schedule(life.store, other)
    life.report("other", task.id, task.attempt, task.token, RunState.FAILED, node="n1")
    assert JobRetention(life.store, keep_for=None, keep_max=3)(clock.now) == 2
    assert [j for j in ended if kept_keys(life, j)] == ended[2:]
    assert life.store.job(running).record.state is RunState.RUNNING and kept_keys(life, other)
    clock.now += DAY
    both = JobRetention(life.store, keep_for=DAY + 15, keep_max=3)  # and the age: 2 more are too old
    assert both(clock.now) == 2 and [j for j in ended if kept_keys(life, j)] == ended[4:]
    assert ClusterConfig().jobs_keep_max == 10_000
    with pytest.raises(msgspec.ValidationError, match="jobs_keep_max"):
        ClusterConfig.model_validate({"jobs_keep_max": -1})


def test_a_task_keeps_the_output_of_its_last_three_attempts_only(life: Lifecycle) -> None:
    """Every attempt's 2 x 256 KiB tail stayed until the job went: 100 retries with backoff 0,
    each writing its tail, grew every Barn member by ~8 MB/s from one herd (a review's run).
    Attempts that wrote nothing leave no gap for older ones to stay in."""
    from runink.core.control.logs import KEPT_ATTEMPTS

    job = life.submit_command("lab", ["/bin/false"], retries=20, backoff=0)
    logs = TaskLogs(life.store)
    for number in range(1, 10):
        task = schedule(life.store, job.id)
        assert task.attempt == number
        life.report("lab", task.id, task.attempt, task.token, RunState.RUNNING, node="n1")
        if number % 4 != 3:  # (attempts 3 and 7 write nothing)
            for stream in ("stdout", "stderr"):
                chunk = Chunk("lab", task.id, number, task.token, stream, 0, f"attempt {number}".encode())
                assert logs.append(chunk)[0]
        life.report("lab", task.id, task.attempt, task.token, RunState.FAILED, node="n1")
    prefix = f"/herds/lab/logs/{task.id}/"
    kept = sorted({int(kv.key[len(prefix) :].split("/")[0]) for kv in life.store.barn.scan(prefix)})
    assert kept == [n for n in range(10 - KEPT_ATTEMPTS, 10) if n % 4 != 3] == [8, 9]
    assert logs.read_all("lab", task.id, 9)["stderr"].data == b"attempt 9"
    assert logs.read_all("lab", task.id, 5)["stdout"].data == b""  # (older: gone, an empty answer)
