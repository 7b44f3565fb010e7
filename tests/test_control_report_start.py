"""A task's start and end in one report (issue 19: a commit less per short task): the
Lifecycle's ``started``, and the agent holding a RUNNING report (``hold_running``)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from agent_helpers import schedule, sync_until, task_of

from runink.core.agent import Agent
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, NodeRecord, RunState
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.interfaces.executor import Executor


def test_a_scheduled_task_ended_in_one_report_keeps_its_start_with_its_time(
    store: ClusterStore, life: Lifecycle
) -> None:
    job = life.submit_command("lab", ["/bin/true"])
    task = schedule(store, job.id)
    before = store.barn.revision()
    started = time.time() - 5.0  # (a time the server could not have made up)
    assert life.report("lab", task.id, task.attempt, task.token, RunState.SUCCEEDED, exit_code=0, started=started)
    assert store.barn.revision() == before + 1  # one commit: the task and its job
    done = task_of(store, job.id)
    assert [t.state for t in done.transitions] == [RunState.SCHEDULED, RunState.RUNNING, RunState.SUCCEEDED]
    assert done.transitions[1].at == started and done.transitions[1].node == "n1"
    assert done.transitions[2].at > started
    assert (done.state, done.exit_code) == (RunState.SUCCEEDED, 0)
    assert store.job(job.id).record.state is RunState.SUCCEEDED


def test_without_a_start_a_scheduled_task_still_cannot_succeed(store: ClusterStore, life: Lifecycle) -> None:
    job = life.submit_command("lab", ["/bin/true"])
    task = schedule(store, job.id)
    assert not life.report("lab", task.id, task.attempt, task.token, RunState.SUCCEEDED, exit_code=0)
    assert task_of(store, job.id).state is RunState.SCHEDULED


def test_a_late_report_with_a_start_is_still_fenced(store: ClusterStore, life: Lifecycle) -> None:
    job = life.submit_command("lab", ["/bin/true"], retries=1)
    first = schedule(store, job.id)
    assert life.report("lab", first.id, first.attempt, first.token, RunState.PENDING, message="drained")
    second = schedule(store, job.id, node="n2")
    assert not life.report(
        "lab", first.id, first.attempt, first.token, RunState.SUCCEEDED, exit_code=0, started=time.time()
    )
    now = task_of(store, job.id)
    assert (now.state, now.attempt, now.node) == (RunState.SCHEDULED, second.attempt, "n2")


def test_a_running_report_with_a_start_records_that_time(store: ClusterStore, life: Lifecycle) -> None:
    job = life.submit_command("lab", ["/bin/true"])
    task = schedule(store, job.id)
    started = time.time() - 1.0
    assert life.report("lab", task.id, task.attempt, task.token, RunState.RUNNING, started=started)
    running = task_of(store, job.id)
    assert running.state is RunState.RUNNING and running.transitions[-1].at == started
    # repeated (the agent did not hear the answer): nothing changes
    before = store.barn.revision()
    assert life.report("lab", task.id, task.attempt, task.token, RunState.RUNNING, started=started)
    assert store.barn.revision() == before


def test_a_failure_with_retries_left_in_one_report_goes_back_pending_after_its_start(
    store: ClusterStore, life: Lifecycle
) -> None:
    job = life.submit_command("lab", ["/bin/false"], retries=1)
    task = schedule(store, job.id)
    assert life.report("lab", task.id, task.attempt, task.token, RunState.OOMKILLED, started=time.time())
    states = [t.state for t in task_of(store, job.id).transitions]
    assert states == [RunState.SCHEDULED, RunState.RUNNING, RunState.PENDING]


@pytest.mark.parametrize("started", [math.nan, math.inf])
def test_a_start_that_is_no_time_is_refused(store: ClusterStore, life: Lifecycle, started: float) -> None:
    job = life.submit_command("lab", ["/bin/true"])
    task = schedule(store, job.id)
    assert not life.report("lab", task.id, task.attempt, task.token, RunState.SUCCEEDED, started=started)
    assert task_of(store, job.id).state is RunState.SCHEDULED


class Counting:
    """The Lifecycle, counting the reports it is sent."""

    def __init__(self, life: Lifecycle) -> None:
        self.life = life
        self.sent: list[tuple[RunState, float | None]] = []

    def register_node(self, node: NodeRecord) -> NodeRecord:
        return self.life.register_node(node)

    def heartbeat(self, node_id: str, incarnation: str, usage: object = None, unfit: str = "") -> bool:
        return self.life.heartbeat(node_id, incarnation, usage, unfit)

    def assignments(self, node_id: str) -> list:  # type: ignore[type-arg]
        return self.life.assignments(node_id)

    def report(self, *args: object, started: float | None = None, **kwargs: object) -> bool:
        self.sent.append((RunState(args[4]), started))  # type: ignore[arg-type]
        return self.life.report(*args, started=started, **kwargs)  # type: ignore[arg-type]


def test_an_agent_holding_running_reports_a_short_task_once(
    store: ClusterStore, life: Lifecycle, tmp_path: Path
) -> None:
    executor: Executor = load_driver(Executor, "process", {})
    control = Counting(life)
    agent = Agent(control, executor, "n1", Amount(cpu=1), work_dir=tmp_path, hold_running=30.0)
    try:
        agent.sync()
        job = life.submit_command("lab", ["/bin/true"])
        schedule(store, job.id)
        sync_until(agent, lambda: task_of(store, job.id).state.final)
        task = task_of(store, job.id)
        assert [t.state for t in task.transitions] == [RunState.SCHEDULED, RunState.RUNNING, RunState.SUCCEEDED]
        ((state, started),) = control.sent
        assert state is RunState.SUCCEEDED and started == task.transitions[1].at
        assert task.transitions[0].at <= started <= task.transitions[2].at
    finally:
        executor.close()


def test_an_agent_holding_running_reports_a_longer_task_running_after_the_hold(
    store: ClusterStore, life: Lifecycle, tmp_path: Path
) -> None:
    executor: Executor = load_driver(Executor, "process", {})
    control = Counting(life)
    agent = Agent(control, executor, "n1", Amount(cpu=1), work_dir=tmp_path, hold_running=0.05)
    try:
        agent.sync()
        job = life.submit_command("lab", ["/bin/sleep", "2"])
        schedule(store, job.id)
        agent.sync()
        assert task_of(store, job.id).state is RunState.SCHEDULED  # held
        assert 0 < agent._round_wait(1.0) <= 0.05  # the next round comes when the hold ends
        sync_until(agent, lambda: task_of(store, job.id).state is RunState.RUNNING, timeout=1.5)
        assert [state for state, _ in control.sent] == [RunState.RUNNING]
        sync_until(agent, lambda: task_of(store, job.id).state.final)
        assert [state for state, _ in control.sent] == [RunState.RUNNING, RunState.SUCCEEDED]
        assert control.sent[1][1] is None  # its start went with its RUNNING report
    finally:
        executor.close()
