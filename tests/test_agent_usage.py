"""Resource use streamed back with the heartbeats: the agent samples its running attempts'
stats (an executor whose stats the tests set), the Lifecycle stores the sample in the node's
record in the heartbeat's own write and drops a malformed one, the gRPC stream carries it, and
the API shows it for nodes and for a job's running tasks."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from agent_helpers import schedule, task_of

from runink.core.agent import Agent
from runink.core.agent.grpc_control import GrpcControl
from runink.core.cli.jobs_cmd import _size, _use
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import (
    MAX_USAGE_TASKS,
    Amount,
    NodeRecord,
    NodeUsage,
    RunState,
    TaskUsage,
    parse_usage,
)
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.errors import RuninkError, TaskNotFoundError
from runink.core.interfaces.executor import Executor, TaskStats
from runink.core.server.agent_service import serve_agents
from runink.core.server.api import create_app
from runink.core.server.proto import agent_pb2 as pb
from runink.core.server.proto import usage_message, usage_sample
from runink.core.server.serve_api import serve_api, stop_api

MiB = 1 << 20


class SetStats:
    """The process executor, with the stats the test sets (by executor task id): a task with
    none set raises as an executor does for a task it no longer knows."""

    def __init__(self) -> None:
        self.inner: Executor = load_driver(Executor, "process", {})
        self.set: dict[str, TaskStats | Exception] = {}
        self.calls = 0

    def stats(self, task_id: str) -> TaskStats:
        self.calls += 1
        found = self.set.get(task_id) or TaskNotFoundError(f"no task {task_id!r}")
        if isinstance(found, Exception):
            raise found
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def executor() -> Iterator[SetStats]:
    executor = SetStats()
    yield executor
    executor.inner.close()


@pytest.fixture
def agent(life: Lifecycle, executor: SetStats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    from runink.core.agent import agent as agent_module

    agent = Agent(life, cast(Executor, executor), "n1", Amount(cpu=2, memory=8 << 30), work_dir=tmp_path)
    agent.usage_every = 0.0  # a sample with every round's heartbeat...
    # ... however long one took: a sample due its time over USAGE_BUDGET later skipped the
    # next round's on a loaded machine (a CI run's failure)
    monkeypatch.setattr(agent_module, "USAGE_BUDGET", 1.0)
    agent.sync()  # registers
    yield agent
    for run in list(agent.running.values()):
        executor.inner.destroy(run.executor_id)


def run_sleeping(store: ClusterStore, life: Lifecycle, agent: Agent) -> tuple[str, str]:
    """A job running `sleep 30` on n1: (its task id, the executor's id of its attempt)."""
    job = life.submit_command("lab", ["sleep", "30"])
    schedule(store, job.id)
    agent.sync()
    task = task_of(store, job.id)
    assert task.state is RunState.RUNNING
    return task.id, f"{task.id}-a{task.attempt}"


def test_the_heartbeat_carries_each_running_attempts_use_in_the_same_write(
    store: ClusterStore, life: Lifecycle, agent: Agent, executor: SetStats
) -> None:
    task_id, executor_id = run_sleeping(store, life, agent)
    executor.set[executor_id] = TaskStats(executor_id, 0.0, 100 * MiB, 3)
    beats = store.node("n1").record.heartbeat
    agent.sync()
    node = store.node("n1").record
    assert node.heartbeat == beats + 1 and node.usage is not None
    assert node.usage.tasks == {task_id: TaskUsage(attempt=1, cpu_seconds=0.0, cpu=0.0, memory=100 * MiB, processes=3)}
    assert node.usage.memory == 100 * MiB and abs(node.usage.at - time.time()) < 60

    # cores in use: the cpu seconds since the last sample over the time between them
    time.sleep(0.2)
    executor.set[executor_id] = TaskStats(executor_id, 0.2, 90 * MiB, 2)
    agent.sync()
    usage = store.node("n1").record.usage
    assert usage is not None
    assert 0 < usage.tasks[task_id].cpu <= 1.0 and usage.cpu == usage.tasks[task_id].cpu
    assert usage.memory == 90 * MiB and usage.tasks[task_id].processes == 2

    # one heartbeat with its sample is one Barn commit, as a heartbeat alone is
    revision = store.barn.revision()
    assert life.heartbeat("n1", agent.incarnation, NodeUsage())
    assert store.barn.revision() == revision + 1 and store.node("n1").record.usage == NodeUsage()


def test_an_attempt_whose_stats_fail_is_left_out_and_the_heartbeat_still_counts(
    store: ClusterStore, life: Lifecycle, agent: Agent, executor: SetStats, caplog: pytest.LogCaptureFixture
) -> None:
    _, first_id = run_sleeping(store, life, agent)
    second, second_id = run_sleeping(store, life, agent)
    executor.set[first_id] = RuninkError("cgroup gone")
    executor.set[second_id] = TaskStats(second_id, 0.5, 10 * MiB, 1)
    beats = store.node("n1").record.heartbeat
    with caplog.at_level(logging.DEBUG, logger="runink.core.agent.agent"):
        agent.sync()
    node = store.node("n1").record
    assert node.heartbeat == beats + 1 and node.usage is not None
    assert set(node.usage.tasks) == {second} and node.usage.memory == 10 * MiB
    assert any(first_id in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_samples_are_spaced_by_usage_every(
    store: ClusterStore, life: Lifecycle, agent: Agent, executor: SetStats
) -> None:
    _, executor_id = run_sleeping(store, life, agent)
    executor.set[executor_id] = TaskStats(executor_id, 0.0, MiB, 1)
    agent.usage_every = 60.0
    agent.sync()  # samples (it was due), then not for a minute
    calls = executor.calls
    for _ in range(5):
        agent.sync()
    assert executor.calls == calls
    assert store.node("n1").record.usage is not None  # the last sample stays meanwhile


def test_a_node_that_registers_again_has_no_usage_until_its_next_sample(
    store: ClusterStore, life: Lifecycle, agent: Agent
) -> None:
    agent.sync()
    usage = store.node("n1").record.usage
    assert usage is not None and (usage.tasks, usage.memory) == ({}, 0)
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=2)))
    assert store.node("n1").record.usage is None


def good_sample(**changes: Any) -> dict[str, Any]:
    task = {"attempt": 1, "cpu_seconds": 2.0, "cpu": 0.5, "memory": MiB, "processes": 1}
    return {"cpu": 0.5, "memory": MiB, "tasks": {"task-1": task}, "at": 1e9} | changes


def one_task(**changes: Any) -> dict[str, Any]:
    return good_sample(tasks={"task-1": good_sample()["tasks"]["task-1"] | changes})


@pytest.mark.parametrize(
    ("sample", "says"),
    [
        (good_sample(memory=-1), "memory"),
        (good_sample(cpu=math.nan), "cpu"),
        (good_sample(cpu=1e9), "cpu"),
        (good_sample(at=math.inf), "at"),
        (good_sample(extra=1), "extra"),
        (good_sample(tasks={"../etc": good_sample()["tasks"]["task-1"]}), "tasks"),
        (good_sample(tasks={f"t{i}": good_sample()["tasks"]["task-1"] for i in range(MAX_USAGE_TASKS + 1)}), "tasks"),
        (one_task(attempt=0), "tasks.task-1.attempt"),
        (one_task(cpu_seconds=-0.5), "tasks.task-1.cpu_seconds"),
        (one_task(memory=2**70), "tasks.task-1.memory"),
        (one_task(processes="many"), "tasks.task-1.processes"),
        ("not a sample", "usage"),
    ],
)
def test_a_malformed_sample_is_dropped_in_one_line_and_the_heartbeat_counts(
    store: ClusterStore, life: Lifecycle, sample: object, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    node = life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=2)))
    assert life.heartbeat("n1", node.incarnation, good_sample())
    kept = store.node("n1").record.usage
    assert kept is not None and kept.tasks["task-1"].memory == MiB
    with caplog.at_level(logging.WARNING, logger="runink.core.control.lifecycle"):
        assert life.heartbeat("n1", node.incarnation, sample)
    assert store.node("n1").record.heartbeat == 2 and store.node("n1").record.usage == kept
    (line,) = [r.getMessage() for r in caplog.records if "usage" in r.getMessage()]
    assert line.startswith("node n1: usage sample dropped: " + says) and "\n" not in line


def test_the_proto_carries_a_sample_both_ways() -> None:
    sample = parse_usage(
        good_sample(tasks={"task-1": one_task()["tasks"]["task-1"], "task-2": one_task()["tasks"]["task-1"]})
    )
    message = pb.Heartbeat(node_id="n1", incarnation="x")
    message.usage.CopyFrom(usage_message(sample))
    again = pb.Heartbeat.FromString(message.SerializeToString())
    assert parse_usage(usage_sample(again.usage)) == sample
    twice = usage_message(sample)
    twice.tasks.append(twice.tasks[0])
    with pytest.raises(ValueError, match="named twice"):
        usage_sample(twice)


def test_a_sample_over_grpc_is_stored_and_a_malformed_one_dropped(
    store: ClusterStore, life: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve_agents(life, "127.0.0.1", 0)
    control = GrpcControl(f"127.0.0.1:{server.port}", timeout=5.0)
    try:
        node = control.register_node(NodeRecord(id="n1", capacity=Amount(cpu=2)))
        sample = parse_usage(good_sample())
        assert control.heartbeat("n1", node.incarnation, usage=sample)
        assert store.node("n1").record.usage == sample
        bad = sample.model_copy(update={"memory": -5})  # (model_copy does not validate: what a broken agent sends)
        with caplog.at_level(logging.WARNING):
            assert control.heartbeat("n1", node.incarnation, usage=bad)
        assert store.node("n1").record.usage == sample and store.node("n1").record.heartbeat == 2
        assert any("usage sample dropped: memory" in r.getMessage() for r in caplog.records)
        assert control.heartbeat("n1", node.incarnation)  # none: the last one stays
        assert store.node("n1").record.usage == sample
    finally:
        control.close()
        server.stop(grace=None).wait()


@pytest.fixture
def client(store: ClusterStore, life: Lifecycle) -> Iterator[httpx.Client]:
    server, thread = serve_api(create_app(life, store), "127.0.0.1", 0)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=10) as client:
            yield client
    finally:
        stop_api(server, thread)


def test_the_api_shows_node_usage_and_each_running_tasks_last_sample(
    store: ClusterStore, life: Lifecycle, client: httpx.Client
) -> None:
    node = life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=2, memory=8 << 30)))
    job = life.submit_command("lab", ["sleep", "30"])
    waiting = life.submit_command("lab", ["sleep", "30"])
    task = schedule(store, job.id)
    assert life.report("lab", task.id, task.attempt, task.token, RunState.RUNNING)
    other = {"attempt": 1, "cpu_seconds": 9.0, "cpu": 1.0, "memory": MiB, "processes": 1}
    ours = {"attempt": 1, "cpu_seconds": 2.5, "cpu": 0.8, "memory": 120 * MiB, "processes": 2}
    tasks = {task.id: ours, task_of(store, waiting.id).id: other}
    sample = {"cpu": 1.8, "memory": 121 * MiB, "tasks": tasks, "at": 1e9}
    assert life.heartbeat("n1", node.incarnation, sample)

    (listed,) = client.get("/v1/nodes").json()["nodes"]
    assert listed["usage"]["cpu"] == 1.8 and listed["usage"]["tasks"][task.id]["memory"] == 120 * MiB
    assert _use(listed) == "1.8/2 cpu, 121Mi/8Gi"

    (shown,) = client.get(f"/v1/jobs/{job.id}").json()["tasks"]
    assert shown["usage"] == ours | {"at": 1e9}
    # a task not RUNNING shows none, whatever its node says of it
    assert [t["usage"] for t in client.get(f"/v1/jobs/{waiting.id}").json()["tasks"]] == [None]

    # another attempt's sample is not this attempt's use
    assert life.heartbeat("n1", node.incarnation, sample | {"tasks": {task.id: ours | {"attempt": 7}}})
    assert [t["usage"] for t in client.get(f"/v1/jobs/{job.id}").json()["tasks"]] == [None]


def test_sizes_and_use_read_as_people_write_them() -> None:
    assert [_size(n) for n in (0, 1023, 1024, 1536, 120 * MiB, 8 << 30, 3 << 50, 5 << 60)] == [
        "0",
        "1023",
        "1Ki",
        "1.5Ki",
        "120Mi",
        "8Gi",
        "3Pi",
        "5120Pi",
    ]
    assert _use({"capacity": {"cpu": 4, "memory": 0}, "usage": None}) == "-"
    assert _use({"capacity": {"cpu": 4, "memory": 0}, "usage": {"cpu": 0.25, "memory": 5 * MiB}}) == "0.2/4 cpu, 5Mi"


def test_the_node_and_its_herds_use_are_metrics_of_the_last_sample(
    store: ClusterStore, life: Lifecycle, agent: Agent, executor: SetStats
) -> None:
    """For /metrics: the node's capacity and use, and its running slices' use per herd (the
    sample a heartbeat carried), never per task."""
    _, first_id = run_sleeping(store, life, agent)
    _, second_id = run_sleeping(store, life, agent)
    executor.set[first_id] = TaskStats(first_id, 0.0, 100 * MiB, 3)
    executor.set[second_id] = TaskStats(second_id, 0.0, 50 * MiB, 1)
    agent.sync()
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in agent._node_gauges()}
    assert found[("runink_node_cpus", (("node", "n1"),))] == 2
    assert found[("runink_node_memory_used_bytes", (("node", "n1"),))] == 150 * MiB
    assert found[("runink_slices_memory_bytes", (("herd", "lab"), ("node", "n1")))] == 150 * MiB
    assert all("task" not in dict(labels) for _name, labels in found)
