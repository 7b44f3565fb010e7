"""What the agent tests share: placing a job's task by hand, reading it, syncing until."""

from __future__ import annotations

import time
from collections.abc import Callable

from runink.core.agent.agent import Agent
from runink.core.control.records import RunState, TaskRecord, keys
from runink.core.control.store import ClusterStore


def schedule(store: ClusterStore, job_id: str, node: str = "n1") -> TaskRecord:
    """The job's one task SCHEDULED on ``node`` with the next attempt (what the scheduler does)."""
    (current,) = store.job_tasks(store.job(job_id).record)
    task = current.record
    moved = task.moved_to(RunState.SCHEDULED, node=node, attempt=task.attempt + 1, token=store.barn.revision())
    store.commit([(keys.task(task.herd, task.id), current.revision)], [(keys.task(task.herd, task.id), moved)])
    return moved


def task_of(store: ClusterStore, job_id: str) -> TaskRecord:
    (task,) = store.job_tasks(store.job(job_id).record)
    return task.record


def sync_until(agent: Agent, done: Callable[[], bool], timeout: float = 10.0, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.sync()
        if done():
            return
        time.sleep(poll)
    raise AssertionError("condition not reached in time")
