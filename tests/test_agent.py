"""A real in-process agent with the process executor, against the Lifecycle on the memory
Barn. The tests place tasks themselves (what the scheduler does): the next attempt, on this
node, with the Barn's revision as its fencing token."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import ProxyControl, schedule, sync_until, task_of, until_succeeded

from runink.core.agent import Agent
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.logs import Chunk
from runink.core.control.records import Amount, Herd, NodeRecord, RunState, TaskRecord, keys
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.errors import RuninkError, TaskNotFoundError
from runink.core.interfaces.executor import Executor
from runink.plugins.barn.memory import MemoryBarn
from runink.plugins.secrets.barn import BarnSecrets


@pytest.fixture
def agent(life: Lifecycle, tmp_path: Path) -> Iterator[Agent]:
    executor: Executor = load_driver(Executor, "process", {})
    agent = Agent(
        life, executor, "n1", Amount(cpu=4, memory=1 << 30), labels={"zone": "a"}, work_dir=tmp_path, stop_grace=2.0
    )
    agent.sync()  # registers
    yield agent
    for run in list(agent.running.values()):
        executor.destroy(run.executor_id)
    executor.close()


def test_agent_registers_heartbeats_and_registers_again_when_refused(store: ClusterStore, agent: Agent) -> None:
    node = store.node("n1").record
    assert node.labels == {"zone": "a"} and node.incarnation == agent.incarnation and node.heartbeat == 0
    agent.sync()
    assert store.node("n1").record.heartbeat == 1
    first = agent.incarnation
    store.update(keys.node("n1"), NodeRecord, lambda n: n.model_copy(update={"ready": False}))  # found dead
    agent.sync()
    node = store.node("n1").record
    assert node.ready and node.incarnation == agent.incarnation != first


def test_agent_runs_commands_and_reports_their_ends(store: ClusterStore, life: Lifecycle, agent: Agent) -> None:
    failing = life.submit_command("lab", ["/bin/sh", "-c", "exit 3"])
    passing = life.submit_command("lab", ["/bin/true"])
    schedule(store, failing.id)
    schedule(store, passing.id)
    sync_until(agent, lambda: not agent.running and all(task_of(store, j.id).state.final for j in (failing, passing)))
    bad, good = task_of(store, failing.id), task_of(store, passing.id)
    assert (bad.state, bad.exit_code) == (RunState.FAILED, 3)
    assert (good.state, good.exit_code) == (RunState.SUCCEEDED, 0)
    assert [t.state for t in good.transitions] == [RunState.SCHEDULED, RunState.RUNNING, RunState.SUCCEEDED]
    assert store.job(failing.id).record.state is RunState.FAILED
    assert store.job(passing.id).record.state is RunState.SUCCEEDED
    assert agent.refused_reports == 0
    agent.sync()
    assert not agent.running  # an ended attempt is not started again


def test_an_ended_commands_task_dir_goes_once_its_report_is_answered(
    store: ClusterStore, life: Lifecycle, agent: Agent, tmp_path: Path
) -> None:
    """A node kept every task's dir, with all its command wrote there, for good: its disk
    filled job by job. What a previous agent left goes at the next start."""
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("mine")
    script = f"head -c 1000000 /dev/zero > big; mkdir -p a/b; ln -s {canary} a/c"
    job = life.submit_command("lab", ["/bin/sh", "-c", script])
    schedule(store, job.id)
    sync_until(agent, lambda: task_of(store, job.id).state.final and not agent.running)
    assert task_of(store, job.id).state is RunState.SUCCEEDED
    assert agent.task_dirs.wait()
    tasks = agent.work_dir / "tasks"
    assert list(tasks.iterdir()) == []
    assert (canary / "keep").read_text() == "mine"  # (its link was removed, not followed)
    # a previous agent's leftovers: a dir moved aside, an ended one no handle names (and one
    # 1,500 folders deep: Python's rmtree raised RecursionError and the sweeper died), one that
    # never started; a live one stays, and so does one no handle names whose status file a
    # process holds open (it may run still)
    (tasks / ".trash-old-a1" / "x").mkdir(parents=True)
    (tasks / "forgotten-a1" / "work").mkdir(parents=True)
    (tasks / "forgotten-a1" / "exit_status").write_text("0")
    deep = tasks / "deep-a1"
    deep.mkdir()
    (deep / "exit_status").write_text("0")
    fd = os.open(deep, os.O_RDONLY)
    for _ in range(1500):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    (tasks / "unsaved-a1" / "work").mkdir(parents=True)
    (tasks / "starting-a1" / "work").mkdir(parents=True)  # (the launcher makes its status file empty)
    (tasks / "starting-a1" / "exit_status").write_text("")
    holding = open(tasks / "starting-a1" / "exit_status", "rb")  # noqa: SIM115 (its payload, still running)
    # ... and one killed before it wrote its status (a reboot): nobody holds its file (the next review)
    (tasks / "killed-a1" / "work").mkdir(parents=True)
    (tasks / "killed-a1" / "exit_status").write_text("")
    live = life.submit_command("lab", ["sleep", "30"])
    schedule(store, live.id)
    agent.sync()
    (running,) = agent.running.values()
    again = Agent(life, agent.executor, "n1", Amount(cpu=4, memory=1 << 30), work_dir=agent.work_dir)
    again.recover()
    assert again.task_dirs.wait()
    holding.close()
    assert sorted(p.name for p in tasks.iterdir()) == sorted([running.executor_id, "starting-a1"])
    agent.executor.stop(running.executor_id, 1.0)


def test_a_cancelled_running_task_is_stopped(store: ClusterStore, life: Lifecycle, agent: Agent) -> None:
    job = life.submit_command("lab", ["sleep", "30"])
    schedule(store, job.id)
    agent.sync()
    assert task_of(store, job.id).state is RunState.RUNNING and len(agent.running) == 1
    life.cancel(job.id)
    started = time.monotonic()
    sync_until(agent, lambda: not agent.running)  # (a stop runs in a thread: a later round collects it)
    assert time.monotonic() - started < 5
    assert task_of(store, job.id).state is RunState.CANCELLED
    assert store.job(job.id).record.state is RunState.CANCELLED
    assert agent.refused_reports == 0


def test_a_task_cancelled_before_it_started_gives_its_node_back_at_the_next_round(
    store: ClusterStore, life: Lifecycle, agent: Agent
) -> None:
    """Cancelled while SCHEDULED, it holds its node until its agent says the attempt ended: one
    that never started it says so at once, and does not start it."""
    job = life.submit_command("lab", ["sleep", "30"])
    schedule(store, job.id)
    life.cancel(job.id)
    assert task_of(store, job.id).node == "n1"  # held: the agent may have started it
    agent.sync()
    task = task_of(store, job.id)
    assert (task.state, task.node) == (RunState.CANCELLED, None) and not agent.running
    assert life.assignments("n1") == [] and agent.refused_reports == 0


def test_a_slice_that_ignores_its_stop_holds_up_no_round(store: ClusterStore, life: Lifecycle, agent: Agent) -> None:
    """A stop waits up to the grace (2 s here) for the slice to end: it once held the agent's
    round, so any herd could freeze a node 10 s per slice it cancelled. The round goes on:
    another task starts while the stopped one still ignores its SIGTERM, then it is collected."""
    stubborn = life.submit_command("lab", ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"])
    schedule(store, stubborn.id)
    agent.sync()
    time.sleep(0.3)  # (its trap is set)
    life.cancel(stubborn.id)
    other = life.submit_command("lab", ["sleep", "30"])
    schedule(store, other.id)
    agent.sync()  # (it once waited here for the grace, then collected the stopped slice)
    assert task_of(store, other.id).state is RunState.RUNNING and len(agent.running) == 2
    sync_until(agent, lambda: len(agent.running) == 1)  # killed once the grace is over
    assert task_of(store, stubborn.id).state is RunState.CANCELLED


def test_a_late_report_for_an_attempt_placed_again_is_refused(
    store: ClusterStore, life: Lifecycle, agent: Agent
) -> None:
    job = life.submit_command("lab", ["sleep", "30"])
    first = schedule(store, job.id)
    agent.sync()
    assert task_of(store, job.id).state is RunState.RUNNING
    # n1 is found dead meanwhile: its task goes back and is placed again on n2
    current = store.task("lab", first.id)
    back = current.record.moved_to(RunState.PENDING, "node n1 dead", node=None)
    store.commit([(keys.task("lab", first.id), current.revision)], [(keys.task("lab", first.id), back)])
    second = schedule(store, job.id, node="n2")
    before = store.task("lab", first.id)
    # n1's agent is no longer assigned attempt 1: stops it, and its report is fenced
    sync_until(agent, lambda: not agent.running)
    assert agent.refused_reports == 1
    after = store.task("lab", first.id)
    assert after == before
    assert (after.record.state, after.record.attempt, after.record.token) == (
        RunState.SCHEDULED,
        2,
        second.token,
    )


def test_drain_gives_back_what_does_not_end_in_time(store: ClusterStore, life: Lifecycle, agent: Agent) -> None:
    job = life.submit_command("lab", ["sleep", "30"])
    schedule(store, job.id)
    agent.sync()
    started = time.monotonic()
    agent.drain(grace=0.3)
    assert not agent.running and time.monotonic() - started < 5
    task = task_of(store, job.id)
    assert task.state is RunState.PENDING and task.node is None
    later = life.submit_command("lab", ["/bin/true"])
    schedule(store, later.id)
    agent.sync()
    assert not agent.running and task_of(store, later.id).state is RunState.SCHEDULED  # takes no new work


def test_drain_reports_what_ended_by_itself(store: ClusterStore, life: Lifecycle, agent: Agent) -> None:
    job = life.submit_command("lab", ["/bin/sh", "-c", "sleep 0.1; exit 5"])
    schedule(store, job.id)
    agent.sync()
    (run,) = agent.running.values()
    assert agent.executor.wait(run.executor_id, 10) is not None  # it ends before the drain looks
    agent.drain(grace=0)
    task = task_of(store, job.id)
    assert (task.state, task.exit_code) == (RunState.FAILED, 5)


class FlakyControl(ProxyControl):
    """The Lifecycle, away for the first ``failures`` reports (a server restarting)."""

    def __init__(self, life: Lifecycle, failures: int) -> None:
        super().__init__(life)
        self.failures = failures

    def unreachable(self, state: RunState) -> bool:
        if self.failures:
            self.failures -= 1
            return True
        return False


def test_reports_the_control_plane_missed_are_sent_later(store: ClusterStore, life: Lifecycle, tmp_path: Path) -> None:
    executor: Executor = load_driver(Executor, "process", {})
    agent = Agent(FlakyControl(life, failures=2), executor, "n1", Amount(cpu=1), work_dir=tmp_path)
    agent.sync()
    job = life.submit_command("lab", ["/bin/true"])
    schedule(store, job.id)
    sync_until(agent, lambda: task_of(store, job.id).state.final)
    task = task_of(store, job.id)
    assert [t.state for t in task.transitions] == [RunState.SCHEDULED, RunState.RUNNING, RunState.SUCCEEDED]
    executor.close()


class AwayControl(FlakyControl):
    """The Lifecycle with output (``log_chunk``), unreachable while ``away``; records what it was sent."""

    def __init__(self, life: Lifecycle) -> None:
        super().__init__(life, failures=0)
        self.away = False
        self.sent: list[tuple[str, object]] = []

    def log_chunk(self, chunk: Chunk) -> tuple[bool, int]:
        if self.away:
            raise RuninkError("control plane unreachable")
        self.sent.append(("chunk", (chunk.stream, chunk.offset, chunk.data)))
        return True, chunk.offset + len(chunk.data)

    def unreachable(self, state: RunState) -> bool:
        if not self.away:
            self.sent.append(("report", state))
        return self.away


def test_the_last_output_and_the_task_are_kept_until_the_final_report_is_answered(
    store: ClusterStore, life: Lifecycle, tmp_path: Path
) -> None:
    executor: Executor = load_driver(Executor, "process", {})
    control = AwayControl(life)
    agent = Agent(control, executor, "n1", Amount(cpu=1), work_dir=tmp_path)
    try:
        agent.sync()
        job = life.submit_command("lab", ["/bin/sh", "-c", "sleep 0.2; echo done"])
        schedule(store, job.id)
        agent.sync()
        (run,) = agent.running.values()
        control.away = True  # the server goes away while it runs
        deadline = time.monotonic() + 10
        while agent.running:
            assert time.monotonic() < deadline
            agent.sync()
            time.sleep(0.02)
        assert executor.wait(run.executor_id, 0) is not None  # not destroyed: its report is not answered
        control.sent.clear()
        control.away = False
        agent.sync()
        # its output, then its final report; only then is it destroyed
        assert control.sent[:2] == [("chunk", ("stdout", 0, b"done\n")), ("report", RunState.SUCCEEDED)]
        assert task_of(store, job.id).state is RunState.SUCCEEDED
        with pytest.raises(TaskNotFoundError):
            executor.wait(run.executor_id, 0)
        assert not list((tmp_path / "attempts").glob("*.json"))
    finally:
        executor.close()


def test_a_disk_error_starting_an_attempt_fails_that_attempt_not_the_agent(
    store: ClusterStore, life: Lifecycle, agent: Agent
) -> None:
    (agent.work_dir / "tasks").write_text("not a folder")  # making the task dir fails (as a full disk would)
    job = life.submit_command("lab", ["/bin/true"])
    schedule(store, job.id)
    agent.sync()
    task = task_of(store, job.id)
    assert task.state is RunState.FAILED and not agent.running
    assert task.message.startswith("node n1 could not start it: FileExistsError: ") and "\n" not in task.message
    agent.sync()  # not started again
    assert task_of(store, job.id) == task


def test_run_forever_logs_any_error_of_a_round_and_goes_on(
    life: Lifecycle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenOnce(FlakyControl):
        def assignments(self, node_id: str) -> list[TaskRecord]:
            if self.failures:
                self.failures -= 1
                raise ValueError("a bug\nsecond line")
            return self.life.assignments(node_id)

    executor: Executor = load_driver(Executor, "process", {})
    agent = Agent(BrokenOnce(life, failures=1), executor, "n1", Amount(cpu=1), work_dir=tmp_path)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run_forever, args=(0.01, stop))
    try:
        with caplog.at_level(logging.WARNING, logger="runink.core.agent.agent"):
            runner.start()
            deadline = time.monotonic() + 10
            # rounds after the failed one (the first registers, the next ones heartbeat)
            while not agent.incarnation or life.store.node("n1").record.heartbeat < 2:
                assert time.monotonic() < deadline and runner.is_alive()
                time.sleep(0.02)
    finally:
        stop.set()
        runner.join(10)
        executor.close()
    (line,) = [r.getMessage() for r in caplog.records if "sync failed" in r.getMessage()]
    assert line == "node n1: sync failed: ValueError: a bug second line"


def test_an_agent_runs_at_most_max_running_slices_the_rest_wait_scheduled(
    store: ClusterStore, life: Lifecycle, agent: Agent
) -> None:
    """Tasks asking for no cpu all fit a node: the agent starts only max_running of them at
    once; the others stay SCHEDULED and start as slots free, all ending in the end."""
    agent.max_running = 2
    jobs = [life.submit_command("lab", ["sleep", "0.3"]) for _ in range(5)]
    for job in jobs:
        schedule(store, job.id)
    agent.sync()
    states = [task_of(store, job.id).state for job in jobs]
    assert len(agent.running) == 2 and states.count(RunState.RUNNING) == 2
    assert states.count(RunState.SCHEDULED) == 3
    sync_until(agent, lambda: all(task_of(store, job.id).state is RunState.SUCCEEDED for job in jobs))
    assert len(agent.running) <= 2


def test_heartbeats_go_on_while_a_round_is_slow(store: ClusterStore, life: Lifecycle, agent: Agent) -> None:
    """run_forever heartbeats from a thread of its own: a round stuck for seconds (many slices
    starting, a slow disk) does not stop the node's heartbeat, so it is not declared dead."""
    agent.register()
    slow = threading.Event()
    real_sync = agent.sync

    def stuck_sync() -> None:
        real_sync()
        slow.wait(3)  # one long round

    agent.sync = stuck_sync  # type: ignore[method-assign]
    stop = threading.Event()
    runner = threading.Thread(target=agent.run_forever, args=(0.05, stop, 0.2), daemon=True)
    before = store.node("n1").record.heartbeat
    runner.start()
    time.sleep(2.0)
    during = store.node("n1").record.heartbeat
    stop.set()
    slow.set()
    runner.join(10)
    assert during - before >= 5  # ~10 beats in 2 s at 0.2 s, while the round was stuck


def test_run_forever_reports_a_slice_end_well_before_its_interval(
    store: ClusterStore, life: Lifecycle, agent: Agent
) -> None:
    """A waiter per running attempt wakes the round loop when its slice ends: with a 30 s
    interval, a 0.2 s command is reported SUCCEEDED within seconds, not at the next interval."""
    job = life.submit_command("lab", ["sleep", "0.2"])
    agent.register()
    schedule(store, job.id)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run_forever, args=(30.0, stop), daemon=True)
    runner.start()
    try:
        until_succeeded(store, job.id)
    finally:
        stop.set()
        runner.join(5)
    assert not runner.is_alive()  # stop wakes the loop too, within its 30 s interval


def test_a_stale_pushed_list_does_not_stop_the_task_just_started(life: Lifecycle, tmp_path: Path) -> None:
    """A control whose pushed lists (long-poll and heartbeat answers) may have been read before
    the placement the agent acted on: the agent stops an attempt only when a list read now
    (``current_assignments``) no longer has it."""

    class LateLists(ProxyControl):
        stale = False

        def assignments(self, node_id: str) -> list[TaskRecord]:
            return [] if self.stale else self.life.assignments(node_id)  # (an answer from before)

        def current_assignments(self, node_id: str) -> list[TaskRecord]:
            return self.life.assignments(node_id)

    control = LateLists(life)
    executor: Executor = load_driver(Executor, "process", {})
    agent = Agent(control, executor, "n1", Amount(cpu=1), work_dir=tmp_path)
    try:
        agent.sync()  # registers
        job = life.submit_command("lab", ["sleep", "5"])
        schedule(life.store, job.id)
        agent.sync()
        assert len(agent.running) == 1
        control.stale = True
        agent.sync()
        assert len(agent.running) == 1 and task_of(life.store, job.id).state is not RunState.CANCELLED
        life.cancel(job.id)  # really gone: stopped
        sync_until(agent, lambda: not agent.running)
    finally:
        executor.close()


class SecretsAwayOnce(ProxyControl):
    """The control plane cannot be asked for secrets once (a failover), then can."""

    def __init__(self, life: Lifecycle) -> None:
        super().__init__(life)
        self.asked = 0

    def task_secrets(self, herd: str, task_id: str, attempt: int, token: int, node: str | None) -> dict[str, bytes]:
        self.asked += 1
        if self.asked == 1:
            raise RuninkError("server away: no answer within 10s")
        return super().task_secrets(herd, task_id, attempt, token, node)


def test_an_attempt_whose_secrets_cannot_be_read_now_starts_on_a_later_round(tmp_path: Path) -> None:
    """The control plane away a moment is no reason to fail the attempt (a job with no retries
    would fail with it); a refusal is: the attempt fails saying why."""
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    secrets = BarnSecrets(store.barn, master_key=bytes(32))
    secrets.put("lab", "token", b"s3cret")
    life = Lifecycle(store, secrets=secrets)
    control = SecretsAwayOnce(life)
    executor: Executor = load_driver(Executor, "process", {})
    agent = Agent(control, executor, "n1", Amount(cpu=4, memory=1 << 30), work_dir=tmp_path, stop_grace=2.0)
    try:
        agent.sync()
        job = life.submit_command("lab", ["/bin/sh", "-c", 'test "$(cat "$RUNINK_FILES/token")" = s3cret'],
                                  secrets=["token"])  # fmt: skip
        schedule(store, job.id)
        sync_until(agent, lambda: task_of(store, job.id).state.final)
        assert task_of(store, job.id).state is RunState.SUCCEEDED and control.asked == 2
        # deleted after a job asking for it was accepted: refused at start, the attempt fails saying so
        secrets.delete("lab", "token")
        placed = life.submit_command("lab", ["/bin/true"])
        record = store.task("lab", placed.tasks[0])
        moved = record.record.model_copy(update={"secrets": ["token"]})
        store.commit([(keys.task("lab", moved.id), record.revision)], [(keys.task("lab", moved.id), moved)])
        schedule(store, placed.id)
        sync_until(agent, lambda: task_of(store, placed.id).state.final)
        failed = task_of(store, placed.id)
        assert failed.state is RunState.FAILED and "has no secret 'token'" in failed.message
    finally:
        executor.close()
