"""What the agent tests share: placing a job's task by hand, reading it, syncing until, and
the Lifecycle as an agent's control plane with reports that can fail (ProxyControl)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from runink.core.agent.agent import Agent
from runink.core.agent.scenarios import NodePipelines, ScenarioAttempts
from runink.core.config import RuninkConfig
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Accounting, NodeRecord, RunState, TaskRecord, keys
from runink.core.control.store import ClusterStore
from runink.core.errors import RuninkError, TaskRejectedError
from runink.core.interfaces.executor import TaskHandle, TaskSpec
from runink.core.pipeline.compile import CompiledPipeline, compile_pipeline
from runink.core.pipeline.dsl import parse
from runink.core.plugins import PluginManager
from runink.plugins.executors.process import ProcessExecutor


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


def until_succeeded(store: ClusterStore, job_id: str, timeout: float = 5.0) -> None:
    """Wait (the agent runs elsewhere) until the job's one task is SUCCEEDED."""
    deadline = time.monotonic() + timeout
    while task_of(store, job_id).state is not RunState.SUCCEEDED:
        assert time.monotonic() < deadline, task_of(store, job_id).state
        time.sleep(0.02)


def sync_until(agent: Agent, done: Callable[[], bool], timeout: float = 10.0, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.sync()
        if done():
            return
        time.sleep(poll)
    raise AssertionError("condition not reached in time")


class ProxyControl:
    """The Lifecycle as an agent's control plane; a report for which ``unreachable(state)``
    says so fails as if the control plane were away (subclasses say when)."""

    def __init__(self, life: Lifecycle) -> None:
        self.life = life

    def register_node(self, node: NodeRecord) -> NodeRecord:
        return self.life.register_node(node)

    def heartbeat(self, node_id: str, incarnation: str, usage: object = None, unfit: str = "") -> bool:
        return self.life.heartbeat(node_id, incarnation, usage, unfit)

    def assignments(self, node_id: str) -> list[TaskRecord]:
        return self.life.assignments(node_id)

    def unreachable(self, state: RunState) -> bool:
        return False

    def report(
        self,
        herd: str,
        task_id: str,
        attempt: int,
        token: int,
        state: RunState,
        *,
        exit_code: int | None = None,
        message: str = "",
        accounting: Accounting | None = None,
    ) -> bool:
        if self.unreachable(state):
            raise RuninkError("control plane unreachable")
        return self.life.report(
            herd, task_id, attempt, token, state, exit_code=exit_code, message=message, accounting=accounting
        )

    def task_secrets(self, herd: str, task_id: str, attempt: int, token: int, node: str | None) -> dict[str, bytes]:
        return self.life.task_secrets(herd, task_id, attempt, token, node)


def keeping_attempts(work: Path) -> tuple[ScenarioAttempts, list[TaskSpec]]:
    """A node's ScenarioAttempts (pipelines compiled as an agent compiles them: from their text,
    without the steps' code) over an executor that keeps each spec it is given and runs
    nothing (its start raises TaskRejectedError "kept, not run"), and the specs it kept."""
    given: list[TaskSpec] = []

    class Keeps(ProcessExecutor):
        def start(self, spec: TaskSpec) -> TaskHandle:
            given.append(spec)
            raise TaskRejectedError("kept, not run")

    config = RuninkConfig()

    def compile_text(text: str, path: Path) -> CompiledPipeline:
        return compile_pipeline(parse(text, path), check_code=False, config=config)

    return ScenarioAttempts(
        Keeps(degrade=True), config, PluginManager(), NodePipelines(compile_text, config, work)
    ), given
