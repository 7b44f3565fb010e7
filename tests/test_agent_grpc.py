"""The agent stream over real sockets on 127.0.0.1: a Lifecycle on the memory Barn served by
serve_agents, a real Agent with the process executor talking through GrpcControl, and raw
gRPC streams that send garbage. The tests place tasks themselves (what the scheduler does), as
tests/test_agent.py does."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_helpers import schedule, sync_until, task_of, until_succeeded

from runink.core.agent import Agent
from runink.core.agent.grpc_control import ControlUnavailable, FailoverControl, GrpcControl
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, NodeRecord, RunState, keys
from runink.core.control.store import ClusterStore, Conflict
from runink.core.drivers import load_driver
from runink.core.interfaces.executor import Executor
from runink.core.server.agent_service import serve_agents
from runink.core.server.proto import CONNECT
from runink.core.server.proto import agent_pb2 as pb


@pytest.fixture
def address(life: Lifecycle) -> Iterator[str]:
    server = serve_agents(life, "127.0.0.1", 0)
    yield f"127.0.0.1:{server.port}"
    server.stop(grace=None).wait()


@pytest.fixture
def executor() -> Iterator[Executor]:
    executor: Executor = load_driver(Executor, "process", {})
    yield executor
    executor.close()


@pytest.fixture
def control(address: str) -> Iterator[GrpcControl]:
    control = GrpcControl(address, timeout=5.0)
    yield control
    control.close()


@pytest.fixture
def agent(control: GrpcControl, executor: Executor, tmp_path: Path) -> Agent:
    return make_agent(control, executor, tmp_path)


def make_agent(control: GrpcControl, executor: Executor, tmp_path: Path, node: str = "n1") -> Agent:
    return Agent(control, executor, node, Amount(cpu=4, memory=1 << 30), work_dir=tmp_path / node, stop_grace=2.0)


class RawStream:
    """A stream driven by hand: send one message, read the answers."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.outgoing: list[pb.AgentMessage | None] = []
        self.ready = threading.Condition()
        connect = self.channel.stream_stream(
            CONNECT,
            request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.ServerMessage.FromString,
        )
        self.call: Any = connect(self._requests())

    def _requests(self) -> Iterator[pb.AgentMessage]:
        while True:
            with self.ready:
                self.ready.wait_for(lambda: bool(self.outgoing))
                message = self.outgoing.pop(0)
            if message is None:
                return
            yield message

    def send(self, message: pb.AgentMessage) -> pb.ServerMessage:
        with self.ready:
            self.outgoing.append(message)
            self.ready.notify()
        answer: pb.ServerMessage = next(self.call)
        return answer

    def ended(self) -> grpc.StatusCode:
        """The status the server ended the stream with (it sends nothing more)."""
        with pytest.raises(grpc.RpcError) as raised:
            next(self.call)
        code: grpc.StatusCode = raised.value.code()
        return code

    def close(self) -> None:
        with self.ready:
            self.outgoing.append(None)
            self.ready.notify()
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def raw(address: str) -> Iterator[Callable[[], RawStream]]:
    opened: list[RawStream] = []

    def open_stream() -> RawStream:
        opened.append(RawStream(address))
        return opened[-1]

    yield open_stream
    for stream in opened:
        stream.close()


def register(stream: RawStream, node: str) -> pb.Registered:
    capacity = pb.Capacity(cpu=2, memory=1 << 30)
    answer = stream.send(pb.AgentMessage(request_id=1, register=pb.Register(node_id=node, capacity=capacity)))
    assert answer.WhichOneof("body") == "registered" and answer.request_id == 1
    return answer.registered


def test_an_agent_over_grpc_runs_tasks_to_their_end(
    store: ClusterStore, life: Lifecycle, control: GrpcControl, executor: Executor, tmp_path: Path
) -> None:
    agent = make_agent(control, executor, tmp_path)
    agent.sync()  # registers through the stream
    node = store.node("n1").record
    assert node.incarnation == agent.incarnation != "" and node.capacity.cpu == 4
    assert node.slots == agent.max_running == 16  # (4 a core: the scheduler places no more here)
    agent.sync()
    assert store.node("n1").record.heartbeat == 1
    ok = life.submit_command("lab", ["/bin/true"])
    bad = life.submit_command("lab", ["sh", "-c", "exit 3"], timeout=30)
    schedule(store, ok.id)
    schedule(store, bad.id)
    sync_until(agent, lambda: task_of(store, ok.id).state.final and task_of(store, bad.id).state.final)
    assert task_of(store, ok.id).state is RunState.SUCCEEDED and task_of(store, ok.id).exit_code == 0
    failed = task_of(store, bad.id)
    assert failed.state is RunState.FAILED and failed.exit_code == 3
    assert store.job(ok.id).record.state is RunState.SUCCEEDED
    assert store.job(bad.id).record.state is RunState.FAILED
    assert agent.refused_reports == 0


def test_an_ended_attempts_accounting_is_priced_into_its_task(
    store: ClusterStore, life: Lifecycle, control: GrpcControl, executor: Executor, tmp_path: Path
) -> None:
    """Over the stream: the cpu time, peak memory and run time the executor accounted reach
    the task record, priced at the lifecycle's [cost] rates (each attempt once)."""
    from runink.core.config import CostConfig

    life.rates = CostConfig(cpu_second=1.0, gb_second=10.0, gpu_second=0.0)
    agent = make_agent(control, executor, tmp_path)
    agent.sync()
    burn = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"
    job = life.submit_command("lab", ["sh", "-c", burn], timeout=60, retries=1)
    schedule(store, job.id)
    sync_until(agent, lambda: task_of(store, job.id).state.final)
    task = task_of(store, job.id)
    assert task.state is RunState.SUCCEEDED
    assert task.cpu_seconds > 0.05 and task.peak_memory > 1 << 20 and task.run_seconds >= task.cpu_seconds * 0.5
    priced = task.cpu_seconds * 1.0 + task.peak_memory / 1e9 * task.run_seconds * 10.0
    assert task.cost == pytest.approx(priced)
    assert agent.refused_reports == 0


def test_a_reports_accounting_is_taken_only_whole_and_bounded() -> None:
    from runink.core.server.agent_service import BadRequest, _task_report

    def report(**fields: object) -> pb.Report:
        return pb.Report(herd="lab", task_id="t", attempt=1, token=1, state="SUCCEEDED", **fields)  # type: ignore[arg-type]

    taken = _task_report(report(cpu_seconds=1.5, peak_memory=1 << 20, seconds=2.0)).accounting
    assert taken is not None and (taken.cpu_seconds, taken.peak_memory, taken.seconds) == (1.5, 1 << 20, 2.0)
    assert _task_report(report(cpu_seconds=1.5)).accounting is None  # (not whole: not taken)
    for broken in (
        {"cpu_seconds": float("nan"), "peak_memory": 1, "seconds": 1.0},
        {"cpu_seconds": 1.0, "peak_memory": -1, "seconds": 1.0},
        {"cpu_seconds": 1.0, "peak_memory": 1, "seconds": float("inf")},
        {"cpu_seconds": -1.0, "peak_memory": 1, "seconds": 1.0},
    ):
        with pytest.raises(BadRequest, match=r"report\.(cpu_seconds|peak_memory|seconds)"):
            _task_report(report(**broken))


def test_assignments_carry_what_the_agent_needs(
    store: ClusterStore, life: Lifecycle, control: GrpcControl, executor: Executor, tmp_path: Path
) -> None:
    agent = make_agent(control, executor, tmp_path)
    agent.register()
    job = life.submit_command("lab", ["sh", "-c", "sleep 30"], Amount(cpu=0.5, memory=1 << 20), timeout=12.5)
    placed = schedule(store, job.id)
    (got,) = control.assignments("n1")
    assert (got.id, got.job_id, got.herd, got.command, got.resources, got.timeout) == (
        placed.id,
        job.id,
        "lab",
        ["sh", "-c", "sleep 30"],
        Amount(cpu=0.5, memory=1 << 20),
        12.5,
    )
    assert (got.attempt, got.token, got.state, got.node) == (1, placed.token, RunState.SCHEDULED, "n1")


def test_a_late_report_with_an_old_token_is_refused_and_the_stream_goes_on(
    store: ClusterStore, life: Lifecycle, control: GrpcControl, executor: Executor, tmp_path: Path
) -> None:
    agent = make_agent(control, executor, tmp_path)
    agent.register()
    job = life.submit_command("lab", ["/bin/true"])
    old = schedule(store, job.id)
    assert control.report("lab", old.id, old.attempt, old.token, RunState.RUNNING)
    # the task is placed again (its node found dead, say): attempt 2 with a newer token
    current = store.task("lab", old.id)
    again = current.record.moved_to(RunState.PENDING, "node found dead", node=None)
    store.commit([(keys.task("lab", old.id), current.revision)], [(keys.task("lab", old.id), again)])
    new = schedule(store, job.id)
    assert new.attempt == 2 and new.token > old.token
    assert not control.report("lab", old.id, new.attempt, old.token, RunState.SUCCEEDED, exit_code=0)
    assert not control.report("lab", old.id, old.attempt, old.token, RunState.SUCCEEDED, exit_code=0)
    assert task_of(store, job.id).state is RunState.SCHEDULED
    assert control.heartbeat("n1", agent.incarnation)  # the same stream still answers
    assert control.report("lab", new.id, new.attempt, new.token, RunState.RUNNING)


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(
            pb.AgentMessage(
                request_id=5, report=pb.Report(herd="lab", task_id="t", attempt=1, token=1, state="RUNNING")
            ),
            id="report-before-register",
        ),
        pytest.param(pb.AgentMessage(request_id=5), id="empty-message"),
        pytest.param(
            pb.AgentMessage(request_id=5, register=pb.Register(node_id="x" * 64, capacity=pb.Capacity(cpu=1))),
            id="node-id-too-long",
        ),
        pytest.param(
            pb.AgentMessage(request_id=5, register=pb.Register(node_id="ok", capacity=pb.Capacity(cpu=-1))),
            id="negative-capacity",
        ),
        pytest.param(
            pb.AgentMessage(request_id=5, register=pb.Register(node_id="ok", labels={f"k{i}": "v" for i in range(65)})),
            id="too-many-labels",
        ),
    ],
)
def test_garbage_before_register_ends_the_stream_with_an_error(
    garbage: pb.AgentMessage, raw: Callable[[], RawStream], caplog: pytest.LogCaptureFixture
) -> None:
    stream = raw()
    with caplog.at_level(logging.WARNING, logger="runink.core.server.agent_service"):
        answer = stream.send(garbage)
        assert answer.WhichOneof("body") == "error" and answer.request_id == 5 and answer.error.message
        assert stream.ended() is grpc.StatusCode.INVALID_ARGUMENT
    (line,) = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert "\n" not in line and answer.error.message in line


def test_garbage_from_one_agent_drops_its_stream_while_another_keeps_working(
    store: ClusterStore, life: Lifecycle, agent: Agent, raw: Callable[[], RawStream]
) -> None:
    good = agent
    good.sync()
    theirs = life.submit_command("lab", ["/bin/true"])
    placed = schedule(store, theirs.id)

    # a registered agent reporting on a task placed on another node
    forger = raw()
    register(forger, "evil")
    answer = forger.send(
        pb.AgentMessage(
            request_id=2,
            report=pb.Report(herd="lab", task_id=placed.id, attempt=1, token=placed.token, state="FAILED"),
        )
    )
    assert answer.WhichOneof("body") == "error" and "'n1'" in answer.error.message
    assert forger.ended() is grpc.StatusCode.INVALID_ARGUMENT
    assert task_of(store, theirs.id).state is RunState.SCHEDULED

    # one heartbeating for another node than the one it registered
    other = raw()
    register(other, "evil2")
    answer = other.send(pb.AgentMessage(request_id=2, heartbeat=pb.Heartbeat(node_id="n1", incarnation="x")))
    assert answer.WhichOneof("body") == "error"
    assert other.ended() is grpc.StatusCode.INVALID_ARGUMENT

    # an oversized report message, and a state that is not one
    for report in (
        pb.Report(herd="lab", task_id=placed.id, attempt=1, token=1, state="RUNNING", message="x" * 20_000),
        pb.Report(herd="lab", task_id=placed.id, attempt=1, token=1, state="BOGUS"),
    ):
        stream = raw()
        register(stream, "evil3")
        answer = stream.send(pb.AgentMessage(request_id=2, report=report))
        assert answer.WhichOneof("body") == "error"
        assert stream.ended() is grpc.StatusCode.INVALID_ARGUMENT

    # a message past what the server reads at all: gRPC refuses it, the server stays up
    huge = raw()
    huge.outgoing.append(pb.AgentMessage(request_id=1, register=pb.Register(node_id="big", address="a" * (1 << 20))))
    with huge.ready:
        huge.ready.notify()
    with pytest.raises(grpc.RpcError) as raised:
        next(huge.call)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

    sync_until(good, lambda: task_of(store, theirs.id).state is RunState.SUCCEEDED)
    assert good.refused_reports == 0


def test_no_node_may_report_on_or_write_the_output_of_a_task_never_placed_on_it(
    store: ClusterStore, life: Lifecycle, raw: Callable[[], RawStream]
) -> None:
    """A PENDING task's attempt 0 and token 0 are easy to guess: being placed nowhere must not
    let any node end it (it ended another herd's job) or write its output."""
    job = life.submit_command("lab", ["/bin/true"])
    pending = task_of(store, job.id)
    assert pending.state is RunState.PENDING and (pending.attempt, pending.token, pending.node) == (0, 0, None)
    guesses = (
        pb.AgentMessage(
            request_id=2, report=pb.Report(herd="lab", task_id=pending.id, attempt=0, token=0, state="CANCELLED")
        ),
        pb.AgentMessage(
            request_id=2,
            log_chunk=pb.LogChunk(herd="lab", task_id=pending.id, attempt=0, token=0, stream="stdout", data=b"x"),
        ),
    )
    for guess in guesses:
        stream = raw()
        register(stream, "evil")
        answer = stream.send(guess)
        assert answer.WhichOneof("body") == "error" and "placed on node None" in answer.error.message
        assert stream.ended() is grpc.StatusCode.INVALID_ARGUMENT
    assert task_of(store, job.id).state is RunState.PENDING
    assert list(store.barn.scan("/herds/lab/logs/")) == []


def test_a_late_report_of_an_attempt_taken_back_from_a_dead_node_is_refused(
    store: ClusterStore, life: Lifecycle, control: GrpcControl, executor: Executor, tmp_path: Path
) -> None:
    """Its node declared dead, a task goes back to PENDING at the same attempt and token until it
    is placed again: the node's agent, back, stops the attempt and reports CANCELLED, which
    must not end a task that is to run again."""
    from runink.core.control.liveness import _lost

    agent = make_agent(control, executor, tmp_path)
    agent.register()
    job = life.submit_command("lab", ["/bin/sleep", "100"], retries=3)
    placed = schedule(store, job.id)
    assert control.report("lab", placed.id, placed.attempt, placed.token, RunState.RUNNING)
    current = store.task("lab", placed.id)
    lost = _lost(current.record, "n1")
    store.commit([(keys.task("lab", placed.id), current.revision)], [(keys.task("lab", placed.id), lost)])
    assert (lost.state, lost.attempt, lost.token) == (RunState.PENDING, placed.attempt, placed.token)
    assert not control.report("lab", placed.id, placed.attempt, placed.token, RunState.CANCELLED)
    assert task_of(store, job.id).state is RunState.PENDING
    assert control.heartbeat("n1", agent.incarnation)  # refused, not dropped: the stream goes on


@pytest.mark.parametrize(
    ("lineage", "why"),
    [
        pytest.param(
            pb.Lineage(herd="lab", task_id="t", attempt=1, event_type="START", facets_json="[" * 50_000),
            "nested too deeply",
            id="facets-nested-past-the-interpreters-depth",
        ),
    ],
)
def test_lineage_that_would_break_the_server_ends_only_its_stream(
    lineage: pb.Lineage, why: str, raw: Callable[[], RawStream], agent: Agent
) -> None:
    stream = raw()
    register(stream, "evil")
    answer = stream.send(pb.AgentMessage(request_id=2, lineage=lineage))
    assert answer.WhichOneof("body") == "error" and why in answer.error.message
    assert stream.ended() is grpc.StatusCode.INVALID_ARGUMENT
    agent.sync()  # another agent's stream goes on


@pytest.mark.parametrize(
    "register_message",
    [
        pb.Register(node_id="ok", capacity=pb.Capacity(cpu=1), labels={"zone\nfake": "a"}),
        pb.Register(node_id="ok", capacity=pb.Capacity(cpu=1), labels={"zone": "a\x1b[2J"}),
        pb.Register(node_id="ok", capacity=pb.Capacity(cpu=1), address="10.0.0.1\nINFO forged line"),
    ],
    ids=["label-key-line-break", "label-escape-sequence", "address-line-break"],
)
def test_a_node_cannot_register_text_that_would_forge_a_line_where_it_is_shown(
    register_message: pb.Register, store: ClusterStore, raw: Callable[[], RawStream]
) -> None:
    stream = raw()
    answer = stream.send(pb.AgentMessage(request_id=1, register=register_message))
    assert answer.WhichOneof("body") == "error" and "control character" in answer.error.message
    assert stream.ended() is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.record.id for v in store.nodes()] == []


def test_the_agent_reconnects_after_the_server_restarts(
    store: ClusterStore, life: Lifecycle, executor: Executor, tmp_path: Path
) -> None:
    server = serve_agents(life, "127.0.0.1", 0)
    port = server.port
    control = GrpcControl(f"127.0.0.1:{port}", timeout=2.0)
    try:
        agent = make_agent(control, executor, tmp_path)
        agent.sync()
        first = agent.incarnation
        server.stop(grace=None).wait()
        with pytest.raises(ControlUnavailable):
            agent.sync()
        server = serve_agents(life, "127.0.0.1", port)
        # a new stream: the server knows it again by the agent's current incarnation
        deadline = time.monotonic() + 10
        while True:
            try:
                agent.sync()
                break
            except ControlUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert agent.incarnation == first
        job = life.submit_command("lab", ["/bin/true"])
        schedule(store, job.id)
        sync_until(agent, lambda: task_of(store, job.id).state is RunState.SUCCEEDED)
    finally:
        control.close()
        server.stop(grace=None).wait()


def test_a_control_plane_failure_ends_the_stream_and_the_next_round_reconnects(
    store: ClusterStore, life: Lifecycle, agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.sync()

    def conflicted(node_id: str, incarnation: str, usage: object = None, unfit: str = "") -> bool:
        raise Conflict(f"node {node_id}: changed by others 5 times in a row")

    with monkeypatch.context() as patch:
        patch.setattr(life, "heartbeat", conflicted)
        with pytest.raises(ControlUnavailable, match="changed by others"):
            agent.sync()
    agent.sync()  # a new stream, known again by the agent's incarnation
    assert store.node("n1").record.heartbeat == 1


def test_a_heartbeat_left_unanswered_moves_the_agent_to_the_next_server_within_its_own_timeout(
    store: ClusterStore, life: Lifecycle, address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server paused with SIGSTOP accepts TCP and answers nothing: the agent waited the
    calls' 10 s before it tried the next server, its tasks' assignments unseen meanwhile."""
    from runink.core.agent.grpc_control import HEARTBEAT_ANSWER

    held = threading.Event()
    heartbeat = life.heartbeat

    def paused(*args: object, **kwargs: object) -> bool:
        held.wait(30)  # (as a paused server: no answer)
        return heartbeat(*args, **kwargs)  # type: ignore[arg-type]

    second = serve_agents(life, "127.0.0.1", 0)
    control = FailoverControl([address, f"127.0.0.1:{second.port}"])
    try:
        node = control.register_node(NodeRecord(id="n1", capacity=Amount(cpu=1, memory=1 << 30)))
        with monkeypatch.context() as patch:
            patch.setattr(life, "heartbeat", paused)
            began = time.monotonic()
            with pytest.raises(ControlUnavailable):  # (both are the same Lifecycle here: both hold)
                control.heartbeat("n1", node.incarnation)
            assert time.monotonic() - began < 2 * HEARTBEAT_ANSWER + 3  # (not 2 x 10 s)
            held.set()
        assert control.heartbeat("n1", node.incarnation)
    finally:
        held.set()
        control.close()
        second.stop(grace=None).wait()


def test_serve_agents_listens_on_loopback_only_unless_told(life: Lifecycle, address: str) -> None:
    with pytest.raises(ValueError, match="port 70000"):
        serve_agents(life, "127.0.0.1", 70000)
    with pytest.raises(ValueError, match=r"'0\.0\.0\.0': not a loopback address.*insecure_bind"):
        serve_agents(life, "0.0.0.0", 0)
    with pytest.raises(OSError, match="cannot listen"):  # the fixture's server holds this port
        serve_agents(life, "127.0.0.1", int(address.rsplit(":", 1)[1]))
    if has_ipv6_loopback():
        server = serve_agents(life, "::1", 0)
        assert server.port > 0
        server.stop(grace=None).wait()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_run_forever_logs_an_unreachable_server_and_goes_on(
    executor: Executor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    control = GrpcControl(f"127.0.0.1:{port}", timeout=2.0)
    stop = threading.Event()
    agent = make_agent(control, executor, tmp_path)
    runner = threading.Thread(target=agent.run_forever, args=(0.01, stop))
    try:
        with caplog.at_level(logging.WARNING, logger="runink.core.agent.agent"):
            runner.start()
            deadline = time.monotonic() + 10
            while len([r for r in caplog.records if "sync failed" in r.getMessage()]) < 2:
                assert time.monotonic() < deadline and runner.is_alive()
                time.sleep(0.02)
    finally:
        stop.set()
        runner.join(10)
        control.close()
    line = next(r.getMessage() for r in caplog.records if "sync failed" in r.getMessage())
    assert f"server 127.0.0.1:{port}: the stream broke: StatusCode.UNAVAILABLE" in line


def test_a_report_after_failing_over_to_another_server_is_accepted(
    store: ClusterStore, life: Lifecycle, executor: Executor, tmp_path: Path
) -> None:
    """Two servers over one control plane; the agent's server dies between a task's start and
    its end: the report goes to the other server on a new stream, which the control ties to
    the node (a heartbeat of its incarnation) before reporting, so it is accepted."""
    first, second = serve_agents(life, "127.0.0.1", 0), serve_agents(life, "127.0.0.1", 0)
    control = FailoverControl([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"], timeout=5.0)
    try:
        agent = make_agent(control, executor, tmp_path)  # type: ignore[arg-type]
        agent.register()
        job = life.submit_command("lab", ["/bin/true"])
        task = schedule(store, job.id)
        assert control.report("lab", task.id, task.attempt, task.token, RunState.RUNNING)
        first.stop(grace=0).wait(5)
        assert control.report("lab", task.id, task.attempt, task.token, RunState.SUCCEEDED, exit_code=0)
        assert task_of(store, job.id).state is RunState.SUCCEEDED
    finally:
        control.close()
        second.stop(grace=0).wait(5)


def test_a_stream_that_does_not_register_in_time_is_closed_and_agents_keep_working(
    store: ClusterStore, life: Lifecycle, executor: Executor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve_agents(life, "127.0.0.1", 0, bind_timeout=1.0)
    address = f"127.0.0.1:{server.port}"
    silent, registered_stream = RawStream(address), RawStream(address)
    control = GrpcControl(address, timeout=5.0)
    reader = ThreadPoolExecutor(1)
    try:
        with caplog.at_level(logging.WARNING, logger="runink.core.server.agent_service"):
            register(registered_stream, "n2")
            agent = make_agent(control, executor, tmp_path)
            agent.sync()
            # it sent nothing (read in a thread: without the deadline no answer ever comes)
            answer: pb.ServerMessage = reader.submit(next, silent.call).result(timeout=5)
            assert answer.WhichOneof("body") == "error" and "not registered within 1 s" in answer.error.message
            assert silent.ended() is grpc.StatusCode.DEADLINE_EXCEEDED
        (line,) = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert "not registered within 1 s" in line
        # the bound streams outlive the deadline
        time.sleep(1.2)
        heartbeat = pb.Heartbeat(node_id="n2", incarnation=store.node("n2").record.incarnation)
        ack = registered_stream.send(pb.AgentMessage(request_id=2, heartbeat=heartbeat))
        assert ack.WhichOneof("body") == "assignments"
        job = life.submit_command("lab", ["/bin/true"])
        schedule(store, job.id)
        sync_until(agent, lambda: task_of(store, job.id).state is RunState.SUCCEEDED)
    finally:
        for stream in (silent, registered_stream):
            stream.close()
        reader.shutdown(wait=False)
        control.close()
        server.stop(grace=None).wait()


def test_the_tie_heartbeat_after_a_broken_stream_does_not_bring_back_stale_assignments(
    store: ClusterStore, life: Lifecycle, control: GrpcControl
) -> None:
    """A report on a new stream is preceded by a heartbeat tying it to the node; the assignments
    that heartbeat brings are from before the report, so the round must not use them."""
    node = control.register_node(NodeRecord(id="n1", capacity=Amount(cpu=1)))
    job = life.submit_command("lab", ["/bin/true"])
    task = schedule(store, job.id)
    assert control.heartbeat("n1", node.incarnation)  # brings the task, SCHEDULED
    assert control._stream is not None
    control._stream.close("broken by the test")  # the stream breaks (a server restart, the network)
    assert control.report("lab", task.id, task.attempt, task.token, RunState.RUNNING)
    (assigned,) = control.assignments("n1")
    assert assigned.state is RunState.RUNNING


def test_a_pipeline_task_stored_before_tasks_carried_roots_gets_its_herds_roots_now(
    store: ClusterStore, life: Lifecycle, control: GrpcControl
) -> None:
    """Queued across the upgrade that gave herds roots, its record has none (the node would
    refuse it for good): the server sends its herd's roots of now, once an admin set them."""
    from runink.core.control.records import Herd, PipelineTask

    control.register_node(NodeRecord(id="n1", capacity=Amount(cpu=1)))
    job = life.submit_pipeline("lab", "/srv/lab/p.dsl", [PipelineTask(scenario="A")])  # (no roots yet)
    schedule(store, job.id)
    (before,) = control.assignments("n1")
    assert before.scenario is not None and before.scenario.roots == []
    store.update(keys.herd("lab"), Herd, lambda h: h.model_copy(update={"roots": ["/srv/lab"]}))
    (after,) = control.current_assignments("n1")  # (read now: not the list of a moment ago)
    assert after.scenario is not None and after.scenario.roots == ["/srv/lab"]


def test_a_node_claiming_a_restricted_label_is_refused(life: Lifecycle, address: str) -> None:
    """Labels under restricted.runink.io/ are a cluster admin's (`runink nodes label`): a node
    claiming one at its Register is dropped, saying why, and nothing is registered."""
    control = GrpcControl(address, timeout=5)
    try:
        with pytest.raises(ControlUnavailable, match="is set by cluster admins, not by a node"):
            control.register_node(
                NodeRecord(id="n9", capacity=Amount(cpu=1), labels={"restricted.runink.io/pool": "gpu"})
            )
    finally:
        control.close()
    assert [v.record.id for v in life.store.nodes()] == []


def test_a_long_poll_returns_on_a_new_assignment_before_its_wait(
    store: ClusterStore, life: Lifecycle, control: GrpcControl
) -> None:
    """wait_assignments answers once the node's assignments change, not at the end of its
    wait; with no change it waits; reports and heartbeats go on meanwhile (another stream)."""
    node = control.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4, memory=1 << 30)))
    empty = control.wait_assignments("n1", "", 5.0)  # an unknown version: answered at once
    began = time.monotonic()
    assert control.wait_assignments("n1", empty, 0.5) == empty
    assert time.monotonic() - began >= 0.4  # no change: it waited
    with ThreadPoolExecutor(1) as pool:
        began = time.monotonic()
        polled = pool.submit(control.wait_assignments, "n1", empty, 5.0)
        time.sleep(0.3)
        beat = time.monotonic()
        assert control.heartbeat("n1", node.incarnation)  # not held up by the long-poll
        assert time.monotonic() - beat < 1.0
        assert not polled.done()
        job = life.submit_command("lab", ["/bin/true"])
        schedule(store, job.id)
        version = polled.result(timeout=4.0)
        assert time.monotonic() - began < 3.0 and version != empty
    assert [t.job_id for t in control.assignments("n1")] == [job.id]


def test_an_agent_over_grpc_runs_a_job_well_within_its_interval(
    store: ClusterStore, life: Lifecycle, agent: Agent
) -> None:
    """With a 30 s interval, a job placed after the agent's first round still starts (the
    long-poll wakes the round loop) and its end is reported (the slice's waiter does) within
    seconds."""
    stop = threading.Event()
    runner = threading.Thread(target=agent.run_forever, args=(30.0, stop), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 5
        while store.nodes() == [] or not agent.incarnation:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.5)  # the first round is over: only a wake starts another
        job = life.submit_command("lab", ["/bin/true"])
        schedule(store, job.id)
        until_succeeded(store, job.id)
    finally:
        stop.set()
        runner.join(5)
    assert not runner.is_alive()


def test_a_short_task_over_grpc_is_one_report_with_its_start(
    store: ClusterStore, life: Lifecycle, control: GrpcControl, executor: Executor, tmp_path: Path
) -> None:
    agent = Agent(control, executor, "n1", Amount(cpu=4, memory=1 << 30), work_dir=tmp_path, hold_running=30.0)
    agent.sync()
    job = life.submit_command("lab", ["/bin/true"])
    placed = schedule(store, job.id)
    key = keys.task("lab", placed.id)
    writes_before = store.barn.get(key).version  # type: ignore[union-attr]
    sync_until(agent, lambda: task_of(store, job.id).state.final)
    task = task_of(store, job.id)
    assert [t.state for t in task.transitions] == [RunState.SCHEDULED, RunState.RUNNING, RunState.SUCCEEDED]
    assert task.transitions[0].at <= task.transitions[1].at <= task.transitions[2].at
    assert store.barn.get(key).version == writes_before + 1  # type: ignore[union-attr]  # start and end: one write


def test_a_start_time_that_is_no_time_ends_the_stream(
    store: ClusterStore, life: Lifecycle, raw: Callable[[], RawStream]
) -> None:
    job = life.submit_command("lab", ["/bin/true"])
    placed = schedule(store, job.id)
    stream = raw()
    register(stream, "n1")
    report = pb.Report(
        herd="lab", task_id=placed.id, attempt=1, token=placed.token, state="SUCCEEDED", started=float("nan")
    )
    answer = stream.send(pb.AgentMessage(request_id=2, report=report))
    assert answer.WhichOneof("body") == "error" and "report.started" in answer.error.message
    assert stream.ended() is grpc.StatusCode.INVALID_ARGUMENT
    assert task_of(store, job.id).state is RunState.SCHEDULED


def test_a_heartbeats_assignments_from_before_a_long_polls_answer_are_not_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The heartbeat thread's answer may be read by the server before a placement and arrive
    after the long-poll that announced it (whose task the agent then started): taking the
    heartbeat's list would stop that task as "no longer assigned". Two answers race here by
    hand, the transport stood in for."""
    control = GrpcControl("127.0.0.1:1")  # (nothing is sent: _ask is replaced)
    placed = pb.Task(id="t1", job_id="j1", herd="lab", command=["/bin/true"], attempt=1, token=5, state="SCHEDULED")
    before = pb.ServerMessage(assignments=pb.Assignments(version="v1"))
    after = pb.ServerMessage(assignments=pb.Assignments(version="v2", tasks=[placed]))
    beat_sent, long_poll_answered = threading.Event(), threading.Event()

    def ask(request: pb.AgentMessage, until: str, **_: Any) -> list[pb.ServerMessage]:
        if request.WhichOneof("body") == "heartbeat":
            beat_sent.set()
            assert long_poll_answered.wait(5)  # (the server read the assignments before the placement)
            return [before, pb.ServerMessage(heartbeat_ack=pb.HeartbeatAck(ok=True))]
        return [after]

    monkeypatch.setattr(control, "_ask", ask)
    beating = threading.Thread(target=control.heartbeat, args=("n1", "inc"))
    beating.start()
    assert beat_sent.wait(5)
    assert control.wait_assignments("n1", known="v1", wait=1.0) == "v2"
    long_poll_answered.set()
    beating.join(5)
    assert [t.id for t in control.assignments("n1")] == ["t1"]  # the long-poll's, not the late heartbeat's
    # a heartbeat with nothing newer meanwhile is taken as it is
    monkeypatch.setattr(
        control, "_ask", lambda request, until, **_: [before, pb.ServerMessage(heartbeat_ack=pb.HeartbeatAck(ok=True))]
    )
    assert control.heartbeat("n1", "inc")
    assert control.assignments("n1") == []
    control.close()


def test_with_cluster_tokens_a_stream_must_carry_its_nodes_token(life: Lifecycle, tmp_path: Path) -> None:
    """Only a token the cluster signed for ``node:NAME`` (role node) lets a stream in, and
    only as NAME; no token, an admin's, another node's or a forged one: refused at once."""
    from runink.core.model import Grant
    from runink.core.server.auth import ClusterTokens, new_key_file

    new_key_file(tmp_path / "key.pem")
    new_key_file(tmp_path / "other.pem")
    tokens = ClusterTokens([tmp_path / "key.pem"])
    stranger = ClusterTokens([tmp_path / "other.pem"])
    node = NodeRecord(id="n1", capacity=Amount(cpu=1, memory=1 << 30))

    def node_token(name: str, signer: ClusterTokens = tokens) -> str:
        return signer.mint_node(name, 600)[0]

    server = serve_agents(life, "127.0.0.1", 0, tokens=tokens)
    try:
        address = f"127.0.0.1:{server.port}"
        refused = {
            "no token": None,
            "an admin's": tokens.mint("admin", [Grant("cluster-admin", "*")], 600)[0],
            "another node's": node_token("n2"),
            "another cluster's": node_token("n1", stranger),
            "garbage": "x.y.z",
        }
        for why, token in refused.items():
            control = GrpcControl(address, timeout=5, token=token)
            try:
                with pytest.raises(ControlUnavailable):
                    control.register_node(node)
            finally:
                control.close()
            assert why and life.store.nodes() == []  # (nothing registered)
        control = GrpcControl(address, timeout=5, token=node_token("n1"))
        try:
            assert control.register_node(node).id == "n1"
            assert control.heartbeat("n1", life.store.node("n1").record.incarnation)
        finally:
            control.close()
    finally:
        server.stop(grace=None).wait()


def test_a_node_token_revoked_ends_its_stream_and_keeps_it_out(life: Lifecycle, tmp_path: Path) -> None:
    """`runink nodes revoke NODE`: the stream that came in with the node's token ends at its
    next message, and the token cannot open another; a token minted later can."""
    from runink.core.server.auth import LEEWAY, MAX_TTL, ClusterTokens, new_key_file
    from runink.core.server.revocations import Revocations

    new_key_file(tmp_path / "key.pem")
    tokens = ClusterTokens([tmp_path / "key.pem"])
    tokens.revocations = Revocations(life.store.barn, max_ttl=MAX_TTL, leeway=LEEWAY)
    node = NodeRecord(id="n1", capacity=Amount(cpu=1, memory=1 << 30))
    old = tokens.mint_node("n1", 600)[0]
    server = serve_agents(life, "127.0.0.1", 0, tokens=tokens)
    try:
        address = f"127.0.0.1:{server.port}"
        control = GrpcControl(address, timeout=5, token=old)
        try:
            assert control.register_node(node).id == "n1"
            incarnation = life.store.node("n1").record.incarnation
            assert control.heartbeat("n1", incarnation)
            tokens.revocations.revoke_subject("node:n1", by="admin")
            with pytest.raises(ControlUnavailable, match="revoked"):
                control.heartbeat("n1", incarnation)
        finally:
            control.close()
        again = GrpcControl(address, timeout=5, token=old)
        try:
            with pytest.raises(ControlUnavailable, match="revoked"):
                again.register_node(node)
        finally:
            again.close()
        time.sleep(1.05)  # (revocations are to the second a token was issued in)
        fresh = GrpcControl(address, timeout=5, token=tokens.mint_node("n1", 600)[0])
        try:
            assert fresh.register_node(node).id == "n1"
        finally:
            fresh.close()
    finally:
        server.stop(grace=None).wait()


def test_a_rounds_reports_go_in_one_message(
    store: ClusterStore, life: Lifecycle, control: GrpcControl, executor: Executor, tmp_path: Path
) -> None:
    """Six short tasks ending in one round: their reports reach the server in one Reports
    message (one round trip), each accepted."""
    sent: list[int] = []
    original = control.report_many

    def counted(reports: Any) -> list[bool]:
        sent.append(len(reports))
        return original(reports)

    control.report_many = counted  # type: ignore[method-assign]
    agent = make_agent(control, executor, tmp_path)
    agent.sync()
    jobs = [life.submit_command("lab", ["/bin/true"]) for _ in range(6)]
    for job in jobs:
        schedule(store, job.id)
    agent.sync()  # starts all six
    time.sleep(0.5)  # (they end meanwhile)
    sync_until(agent, lambda: all(task_of(store, job.id).state.final for job in jobs))
    assert all(task_of(store, job.id).state is RunState.SUCCEEDED for job in jobs)
    assert max(sent) == 6 and agent.refused_reports == 0


def test_a_reports_message_over_the_limit_ends_the_stream(
    store: ClusterStore, life: Lifecycle, raw: Callable[[], RawStream]
) -> None:
    job = life.submit_command("lab", ["/bin/true"])
    placed = schedule(store, job.id)
    stream = raw()
    register(stream, "n1")
    one = pb.Report(herd="lab", task_id=placed.id, attempt=1, token=placed.token, state="RUNNING")
    answer = stream.send(pb.AgentMessage(request_id=2, reports=pb.Reports(reports=[one] * 65)))
    assert answer.WhichOneof("body") == "error" and "at most 64" in answer.error.message
    assert task_of(store, job.id).state is RunState.SCHEDULED


def test_long_polls_read_a_nodes_assignments_again_only_after_they_changed(
    store: ClusterStore, life: Lifecycle, control: GrpcControl
) -> None:
    """A long-poll answered and asked again reads the node's assignments once, not twice: an
    unchanged count of the node's changes means an unchanged list. A change is still seen."""
    control.register_node(NodeRecord(id="n1", capacity=Amount(cpu=4, memory=1 << 30)))
    scans: list[str] = []
    original = life.assignments

    def counted(node: str, *, recent: bool = False) -> list[Any]:
        scans.append(node)
        return original(node, recent=recent)

    life.assignments = counted  # type: ignore[method-assign]
    version = control.wait_assignments("n1", "", 5.0)  # (starts the watch)
    time.sleep(0.3)  # (the watch runs)
    version = control.wait_assignments("n1", "", 5.0)
    scans.clear()
    for _ in range(3):
        assert control.wait_assignments("n1", version, 0.2) == version
    assert scans == []  # nothing changed: no read at all
    job = life.submit_command("lab", ["/bin/true"])
    schedule(store, job.id)
    changed = control.wait_assignments("n1", version, 5.0)
    assert changed != version and scans == ["n1"]
    assert [t.job_id for t in control.current_assignments("n1")] == [job.id]
    assert scans == ["n1", "n1"]  # a direct read reads now, whatever the cache says


def test_an_idle_agents_rounds_do_not_each_read_its_assignments(
    store: ClusterStore, life: Lifecycle, agent: Agent
) -> None:
    """Rounds every 20 ms for 1.5 s: the assignments come from the long-poll's pushes and the
    heartbeats' lists, reused between them (``REUSE_FOR``), not read by the server each round
    (each read is a scan of the Barn); a job placed meanwhile still runs at once."""
    reads: list[str] = []
    original = life.assignments

    def counted(node: str, *, recent: bool = False) -> list[Any]:
        reads.append(node)
        return original(node, recent=recent)

    life.assignments = counted  # type: ignore[method-assign]
    stop = threading.Event()
    runner = threading.Thread(target=agent.run_forever, args=(0.02, stop), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 5
        while not agent.incarnation:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        reads.clear()
        time.sleep(1.5)  # ~75 rounds
        assert len(reads) <= 6, reads  # heartbeats' lists (1 s), a long-poll's: not one a round
        job = life.submit_command("lab", ["/bin/true"])
        schedule(store, job.id)
        until_succeeded(store, job.id)
    finally:
        stop.set()
        runner.join(5)
    assert not runner.is_alive()


def test_the_latest_time_an_agent_may_name_is_one_the_views_can_show() -> None:
    # a report's start and a lineage event's time past year 9999 broke datetime (and the stream)
    from datetime import UTC, datetime

    from runink.core.server import agent_service

    assert datetime.fromtimestamp(agent_service.MAX_TIME, UTC).year == 9999
