"""The agent's ``Control`` over gRPC: one bidirectional stream to a server.

Calls go out through a request queue; one reader thread takes the server's answers and hands
each to the call waiting for its request id. Each call waits for its answer up to ``timeout``
seconds. A broken stream (the server gone, an Error from it, an answer not in time) fails the
calls waiting on it with ``ControlUnavailable`` (a RuninkError: the Agent logs it and tries
again on its next round) and the next call opens a new stream. After a reconnect the server
knows the stream again by the agent's heartbeat (its incarnation), or by a new registration.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from runink.core.agent.lineage import facets_json
from runink.core.agent.secrets import SecretsRefused
from runink.core.control.logs import Chunk
from runink.core.control.records import (
    Accounting,
    NodeRecord,
    NodeUsage,
    RecordError,
    RunState,
    TaskRecord,
    TaskReport,
)
from runink.core.errors import RuninkError
from runink.core.model import LineageEvent
from runink.core.report import printable
from runink.core.server.proto import CONNECT, amount_of, capacity_message, usage_message
from runink.core.server.proto import agent_pb2 as pb
from runink.core.server.tls import TlsFiles

log = logging.getLogger(__name__)

#: what one answer may weigh (assignments carry whole commands)
MAX_SERVER_MESSAGE_BYTES = 64 * 1024 * 1024
#: seconds a heartbeat waits for its answer (not the other calls' 10): a server paused with
#: SIGSTOP still accepts its TCP, and the agent moved to the next server only after 10 s, its
#: tasks' assignments unseen meanwhile. Longer than a Barn write's commit timeout (5 s): a
#: server whose Barn is slow answers, with an error at worst, and is not left for that (at 4 s
#: agents left healthy servers while a write waited, a review). Within the liveness timeout (10)
HEARTBEAT_ANSWER = 6.0
# seconds a round may reuse the assignments the last one had, when no newer list came: a
# long-poll pushes every change of the set, a heartbeat brings a list every second; an idle
# agent's rounds (10 a second) then read nothing (each read is a scan of the Barn)
REUSE_FOR = 2.0


class ControlUnavailable(RuninkError):
    """The server could not be reached, broke the stream or did not answer in time."""


class _Call:
    """A request waiting for its answers, up to the one of kind ``until``."""

    def __init__(self, until: str) -> None:
        self.until = until
        self.done = threading.Event()
        self.answers: list[pb.ServerMessage] = []
        self.error: str | None = None


class _Stream:
    """One open stream: its request queue, its reader thread and the calls waiting on it."""

    def __init__(self, channel: Any, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.requests: queue.Queue[pb.AgentMessage | None] = queue.Queue()
        self.waiting: dict[int, _Call] = {}
        self.lock = threading.Lock()
        self.broken: str | None = None
        connect = channel.stream_stream(
            CONNECT,
            request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.ServerMessage.FromString,
        )
        self.call = connect(self._outgoing(), metadata=metadata or None)
        self.reader = threading.Thread(target=self._read, name="agent-stream-reader", daemon=True)
        self.reader.start()

    def _outgoing(self) -> Iterator[pb.AgentMessage]:
        while (request := self.requests.get()) is not None:
            yield request

    def _read(self) -> None:
        why = "the server ended the stream"
        try:
            for answer in self.call:
                if answer.WhichOneof("body") == "error":  # the server ends the stream after it
                    why = f"the server refused a request: {printable(answer.error.message, 400)}"
                    break
                with self.lock:
                    waiting = self.waiting.get(answer.request_id)
                if waiting is None:
                    continue  # an answer to a call that timed out
                waiting.answers.append(answer)
                if answer.WhichOneof("body") == waiting.until:
                    waiting.done.set()
        except grpc.RpcError as exc:
            why = printable(f"the stream broke: {exc.code()}: {exc.details()}", 400)
        self.close(why)

    def close(self, why: str) -> None:
        with self.lock:
            if self.broken is None:
                self.broken = why
            waiting = list(self.waiting.values())
            self.waiting.clear()
        for call in waiting:
            call.error = why
            call.done.set()
        self.requests.put(None)  # ends the outgoing requests
        self.call.cancel()


class GrpcControl:
    """``Control`` (what the Agent asks of the control plane) over one gRPC stream to ``address``
    (host:port)."""

    def __init__(
        self, address: str, *, timeout: float = 10.0, token: str | None = None, tls: TlsFiles | None = None
    ) -> None:
        self.address = address
        self.timeout = timeout
        # the node's token (``runink agent --token-file``), sent with every stream
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_receive_message_length", MAX_SERVER_MESSAGE_BYTES)]
        # with ``tls``: mutual TLS, the server's certificate checked against the cluster CA and
        # the address's host, the node's own presented (it names the node)
        self._channel = (
            grpc.insecure_channel(address, options=options)
            if tls is None
            else grpc.secure_channel(address, tls.grpc_channel(), options=options)
        )
        self._stream: _Stream | None = None
        # long-polls go on a stream of their own: the server answers a stream's requests in
        # order, so one waiting there would hold up the reports and heartbeats
        self._poll_stream: _Stream | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._fresh: pb.Assignments | None = None  # the last heartbeat's or long-poll's, while still current
        # Bumped by every long-poll answer and report. A heartbeat's assignments are kept only
        # if it did not move while the heartbeat was out: else they may be from before a
        # placement the agent already acted on (a long-poll answered meanwhile), and taking
        # them would stop the attempt it just started as "no longer assigned".
        self._generation = 0
        self._fresh_lock = threading.Lock()
        self._last: tuple[float, list[TaskRecord]] | None = None  # (monotonic time, the last call's list)
        self._tie: tuple[str, str] | None = None  # (node id, incarnation) a new stream is tied with

    def close(self) -> None:
        with self._lock:
            for stream in (self._stream, self._poll_stream):
                if stream is not None:
                    stream.close("closed by the agent")
            self._stream = self._poll_stream = None
        self._channel.close()

    def _ask(
        self, request: pb.AgentMessage, until: str, *, poll: bool = False, timeout: float | None = None
    ) -> list[pb.ServerMessage]:
        """Send ``request`` (on the long-poll stream if ``poll``) and wait for its answers, up
        to the one of kind ``until``, for ``timeout`` seconds (default: the control's). A new
        stream (the first, or after one broke, or on another server) is tied to the node
        first, with a heartbeat of its incarnation, unless the request itself does that: a
        server answers nothing else on a stream it cannot tie to a node."""
        kind = request.WhichOneof("body")
        timeout = self.timeout if timeout is None else timeout
        with self._lock:
            current = self._poll_stream if poll else self._stream
            fresh = current is None or current.broken is not None
        if fresh and self._tie is not None and kind not in ("register", "heartbeat"):
            node_id, incarnation = self._tie
            if poll:
                beat = pb.AgentMessage(heartbeat=pb.Heartbeat(node_id=node_id, incarnation=incarnation))
                tied = bool(self._only(self._ask(beat, "heartbeat_ack", poll=True), "heartbeat_ack").heartbeat_ack.ok)
            else:
                # the tie's assignments are not the round's: a report may have just made them stale
                with self._fresh_lock:
                    kept, generation = self._fresh, self._generation
                try:
                    tied = self.heartbeat(node_id, incarnation)
                finally:
                    with self._fresh_lock:
                        if self._generation == generation:  # (else newer ones came meanwhile)
                            self._fresh = kept
            if not tied:
                raise ControlUnavailable(f"server {self.address}: node {node_id} must register again")
        with self._lock:
            stream = self._poll_stream if poll else self._stream
            if stream is None or stream.broken is not None:
                stream = _Stream(self._channel, self._metadata)
                if poll:
                    self._poll_stream = stream
                else:
                    self._stream = stream
            request.request_id = next(self._ids)
            call = _Call(until)
            with stream.lock:
                if stream.broken is not None:
                    raise ControlUnavailable(f"server {self.address}: {stream.broken}")
                stream.waiting[request.request_id] = call
            stream.requests.put(request)
        if not call.done.wait(timeout):
            stream.close(f"no answer within {timeout:g}s")
            raise ControlUnavailable(f"server {self.address}: no answer within {timeout:g}s")
        with stream.lock:
            stream.waiting.pop(request.request_id, None)
        if call.error is not None:
            raise ControlUnavailable(f"server {self.address}: {call.error}")
        return call.answers

    @staticmethod
    def _only(answers: list[pb.ServerMessage], kind: str) -> pb.ServerMessage:
        for answer in answers:
            if answer.WhichOneof("body") == kind:
                return answer
        raise ControlUnavailable(f"the server answered {[a.WhichOneof('body') for a in answers]}, not {kind}")

    # --- Control -------------------------------------------------------------------------

    def register_node(self, node: NodeRecord) -> NodeRecord:
        request = pb.AgentMessage(
            register=pb.Register(
                node_id=node.id,
                capacity=capacity_message(node.capacity),
                labels=node.labels,
                address=node.address,
                gpus=node.gpus,
                slots=node.slots,
                unfit=node.unfit,
            )
        )
        done = self._only(self._ask(request, "registered"), "registered").registered
        self._tie = (done.id, done.incarnation)
        try:
            return NodeRecord.model_validate(
                {
                    "id": done.id,
                    "capacity": amount_of(done.capacity),
                    "labels": dict(done.labels),
                    "address": done.address,
                    "ready": done.ready,
                    "cordoned": done.cordoned,
                    "draining": done.draining,
                    "heartbeat": done.heartbeat,
                    "incarnation": done.incarnation,
                    "gpus": list(done.gpus),
                    "slots": done.slots,
                }
            )
        except RecordError as exc:
            raise ControlUnavailable(f"server {self.address}: a malformed registration: {exc}") from None

    def current_assignments(self, node_id: str) -> list[TaskRecord]:
        """Read by the server now, never a pushed list (see Agent.sync)."""
        return self.assignments(node_id, ask=True)

    def heartbeat(self, node_id: str, incarnation: str, usage: NodeUsage | None = None, unfit: str = "") -> bool:
        beat = pb.Heartbeat(node_id=node_id, incarnation=incarnation, unfit=unfit)
        if usage is not None:
            beat.usage.CopyFrom(usage_message(usage))
        request = pb.AgentMessage(heartbeat=beat)
        with self._fresh_lock:
            sent = self._generation
        answers = self._ask(request, "heartbeat_ack", timeout=min(self.timeout, HEARTBEAT_ANSWER))
        ok = bool(self._only(answers, "heartbeat_ack").heartbeat_ack.ok)
        self._tie = (node_id, incarnation) if ok else None
        # an accepted heartbeat brings the node's assignments: the round's assignments() uses
        # them unless a long-poll answer or a report came since it was sent (``_generation``)
        found = next((a.assignments for a in answers if a.WhichOneof("body") == "assignments"), None)
        with self._fresh_lock:
            if self._generation == sent:
                self._fresh = found
        return ok

    def assignments(self, node_id: str, *, ask: bool = False) -> list[TaskRecord]:
        """The node's assignments: the last pushed list (a long-poll's or heartbeat's answer)
        if one came since the last call; else the last call's, for ``REUSE_FOR`` seconds; else
        (or with ``ask``) read by the server now. (A list's task states may be behind this
        agent's own reports: the agent decides on its own records of what it runs and ran, and
        reads a list now before stopping anything, ``current_assignments``.)"""
        with self._fresh_lock:
            found, self._fresh = (None, None) if ask else (self._fresh, None)
            last = None if ask else self._last
        if found is None and last is not None and time.monotonic() - last[0] < REUSE_FOR:
            return list(last[1])
        if found is None:
            request = pb.AgentMessage(assignments=pb.AssignmentsRequest(node_id=node_id))
            found = self._only(self._ask(request, "assignments"), "assignments").assignments
        tasks = []
        for message in found.tasks:
            try:
                tasks.append(_task(message))
            except ValueError as exc:  # (RecordError too)
                # One this agent cannot read (a newer server's, a broken one) fails alone, said
                # why; the node goes on with the rest rather than failing every round.
                why = printable(f"node {node_id} cannot run this assignment: {exc}", 400)
                log.warning("%s: task %s: %s", self.address, printable(message.id, 100), why)
                state = RunState.FAILED
                self.report(message.herd, message.id, message.attempt, message.token, state, message=why)
        with self._fresh_lock:
            self._last = (time.monotonic(), tasks)
        return tasks

    def wait_assignments(self, node_id: str, known: str, wait: float) -> str:
        """Long-poll: the version of the node's assignments once it differs from ``known``, or
        after ``wait`` seconds (the server caps it), on a stream of its own."""
        request = pb.AgentMessage(
            assignments=pb.AssignmentsRequest(node_id=node_id, wait_ms=int(wait * 1000), known=known)
        )
        answers = self._ask(request, "assignments", poll=True, timeout=wait + self.timeout)
        found = self._only(answers, "assignments").assignments
        if found.version != known:
            # the round this wakes uses them (no second call); a heartbeat's from before are stale
            with self._fresh_lock:
                self._generation += 1
                self._fresh = found
        return str(found.version)

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
        started: float | None = None,
        accounting: Accounting | None = None,
    ) -> bool:
        report = _report_message(
            TaskReport(herd, task_id, attempt, token, state, exit_code, message, started, accounting)
        )
        with self._fresh_lock:
            self._generation += 1
            self._fresh = None
        answers = self._ask(pb.AgentMessage(report=report), "report_ack")
        return bool(self._only(answers, "report_ack").report_ack.accepted)

    def report_many(self, reports: Sequence[TaskReport]) -> list[bool]:
        """Several reports in one message and one answer (a round's: see Agent._flush)."""
        message = pb.Reports(reports=[_report_message(r) for r in reports])
        with self._fresh_lock:
            self._generation += 1
            self._fresh = None
        answer = self._only(self._ask(pb.AgentMessage(reports=message), "report_acks"), "report_acks")
        accepted = [bool(a) for a in answer.report_acks.accepted]
        if len(accepted) != len(reports):
            raise ControlUnavailable(f"server {self.address}: {len(accepted)} answers to {len(reports)} reports")
        return accepted

    def task_secrets(self, herd: str, task_id: str, attempt: int, token: int, node: str | None) -> dict[str, bytes]:
        """The secrets of an attempt this node starts (``node``: the stream's, checked by the
        server); RuninkError saying why when the server gives none."""
        request = pb.SecretsRequest(herd=herd, task_id=task_id, attempt=attempt, token=token)
        answer = self._only(self._ask(pb.AgentMessage(secrets=request), "secrets"), "secrets").secrets
        if answer.refused:
            raise SecretsRefused(answer.refused)
        return dict(answer.values)

    def lineage(self, event: LineageEvent, herd: str, task_id: str, attempt: int) -> bool:
        """Send a lineage event of an attempt of this node's; False: refused (not its attempt)."""
        message = _lineage_message(event, herd, task_id, attempt)
        answer = self._only(self._ask(pb.AgentMessage(lineage=message), "lineage_ack"), "lineage_ack")
        return bool(answer.lineage_ack.accepted)

    def log_chunk(self, chunk: Chunk) -> tuple[bool, int]:
        """Send new output of an attempt; (accepted, the bytes of the stream the server has seen)."""
        message = pb.LogChunk(
            herd=chunk.herd,
            task_id=chunk.task_id,
            attempt=chunk.attempt,
            token=chunk.token,
            stream=chunk.stream,
            offset=chunk.offset,
            data=chunk.data,
        )
        ack = self._only(self._ask(pb.AgentMessage(log_chunk=message), "log_ack"), "log_ack").log_ack
        return bool(ack.accepted), int(ack.next_offset)


def _lineage_message(event: LineageEvent, herd: str, task_id: str, attempt: int) -> pb.Lineage:
    return pb.Lineage(
        herd=herd,
        task_id=task_id,
        attempt=attempt,
        event_type=event.event_type,
        inputs=list(event.inputs),
        outputs=list(event.outputs),
        event_time=event.event_time.timestamp(),
        facets_json=facets_json(event),
    )


def _report_message(report: TaskReport) -> pb.Report:
    message = pb.Report(
        herd=report.herd,
        task_id=report.task_id,
        attempt=report.attempt,
        token=report.token,
        state=str(report.state),
        message=report.message,
    )
    if report.exit_code is not None:
        message.exit_code = report.exit_code
    if report.started is not None:
        message.started = report.started
    if report.accounting is not None:
        message.cpu_seconds = report.accounting.cpu_seconds
        message.peak_memory = report.accounting.peak_memory
        message.seconds = report.accounting.seconds
    return message


def _task(task: pb.Task) -> TaskRecord:
    """The task a server's message describes, checked (RecordError naming what is wrong)."""
    return TaskRecord.model_validate(
        {
            "id": task.id,
            "job_id": task.job_id,
            "herd": task.herd,
            "command": list(task.command),
            "resources": amount_of(task.resources),
            "timeout": task.timeout if task.HasField("timeout") else None,
            "attempt": task.attempt,
            "token": task.token,
            "state": task.state,
            "node": task.node or None,
            "scenario": None if not task.HasField("scenario") else _scenario(task.scenario),
            "retries": task.retries,
            "backoff": task.backoff,
            "herd_quota": None if not task.HasField("herd_quota") else _quota(task.herd_quota),
            "secrets": list(task.secrets),
            "secrets_env": task.secrets_env,
            "gpus": list(task.gpus),
        }
    )


def _quota(quota: pb.HerdQuota) -> dict[str, Any]:
    return {"cpu": quota.cpu, "memory": quota.memory, "gpu": quota.gpu, "max_slices": quota.max_slices}


def _scenario(scenario: pb.Scenario) -> dict[str, Any]:
    return {
        "pipeline": scenario.pipeline,
        "scenario": scenario.scenario,
        "run": scenario.run,
        "roots": list(scenario.roots),
    }


class FailoverControl:
    """``Control`` over the first of several servers that answers: any server serves agents,
    so when the one in use is unreachable the next is tried (the Agent's next round, or at once
    for the same call). Its heartbeat on a new server carries its incarnation (tied to the node)."""

    def __init__(
        self, addresses: list[str], *, timeout: float = 10.0, token: str | None = None, tls: TlsFiles | None = None
    ) -> None:
        if not addresses:
            raise ValueError("FailoverControl: no server address")
        self.addresses = addresses
        self.timeout = timeout
        self._index = 0
        self.token = token
        self.tls = tls
        self._current = GrpcControl(addresses[0], timeout=timeout, token=token, tls=tls)
        self._lock = threading.Lock()  # the agent's heartbeat thread and its rounds call at once

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        failures = []
        for _ in range(len(self.addresses)):
            with self._lock:
                current, address = self._current, self.addresses[self._index]
            try:
                return getattr(current, name)(*args, **kwargs)
            except ControlUnavailable as exc:
                failures.append(f"{address}: {exc}")
                with self._lock:
                    if self._current is current:  # (another thread may have moved on already)
                        tie = current._tie  # the next server's stream is tied to the node with it
                        current.close()
                        self._index = (self._index + 1) % len(self.addresses)
                        self._current = GrpcControl(
                            self.addresses[self._index], timeout=self.timeout, token=self.token, tls=self.tls
                        )
                        self._current._tie = tie
        raise ControlUnavailable("no server answered: " + "; ".join(failures))

    def register_node(self, node: NodeRecord) -> NodeRecord:
        result: NodeRecord = self._call("register_node", node)
        return result

    def heartbeat(self, node_id: str, incarnation: str, usage: NodeUsage | None = None, unfit: str = "") -> bool:
        return bool(self._call("heartbeat", node_id, incarnation, usage, unfit))

    def assignments(self, node_id: str) -> list[TaskRecord]:
        result: list[TaskRecord] = self._call("assignments", node_id)
        return result

    def current_assignments(self, node_id: str) -> list[TaskRecord]:
        """Read by the server now, never a pushed list (see Agent.sync)."""
        result: list[TaskRecord] = self._call("assignments", node_id, ask=True)
        return result

    def wait_assignments(self, node_id: str, known: str, wait: float) -> str:
        return str(self._call("wait_assignments", node_id, known, wait))

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
        started: float | None = None,
        accounting: Accounting | None = None,
    ) -> bool:
        return bool(
            self._call(
                "report",
                herd,
                task_id,
                attempt,
                token,
                state,
                exit_code=exit_code,
                message=message,
                started=started,
                accounting=accounting,
            )
        )

    def report_many(self, reports: Sequence[TaskReport]) -> list[bool]:
        return list(self._call("report_many", reports))

    def task_secrets(self, herd: str, task_id: str, attempt: int, token: int, node: str | None) -> dict[str, bytes]:
        return dict(self._call("task_secrets", herd, task_id, attempt, token, node))

    def lineage(self, event: LineageEvent, herd: str, task_id: str, attempt: int) -> bool:
        return bool(self._call("lineage", event, herd, task_id, attempt))

    def log_chunk(self, chunk: Chunk) -> tuple[bool, int]:
        accepted, seen = self._call("log_chunk", chunk)
        return bool(accepted), int(seen)

    def close(self) -> None:
        self._current.close()
