"""The gRPC service agents connect to: one bidirectional stream per agent over a Lifecycle.

Each request the agent sends is checked (every field bounded, names by ``check_name``, states
a RunState) and answered in order with the request's id. A stream is bound to one node: by a
Register, or by a Heartbeat naming the node's current incarnation (the same agent process
reconnecting after a broken stream). A request that fails the checks, arrives before the
stream is bound, or names another node than the bound one gets an Error, one line in the log,
and the stream ends; the server goes on serving the other streams. So does a stream not bound
within ``BIND_TIMEOUT`` of opening: else streams that send nothing could hold every one of the
``max_streams`` slots and lock the real agents out. A report of an older
attempt or token is not an error: the Lifecycle refuses it (ReportAck accepted=false).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime
from typing import Any, Literal

import grpc

from runink.core.agent.lineage import MAX_FACETS_BYTES
from runink.core.control.lifecycle import MAX_MESSAGE, Lifecycle, PlacedElsewhere, placed_on
from runink.core.control.logs import MAX_CHUNK_BYTES, STREAMS, Chunk, TaskLogs
from runink.core.control.records import (
    MAX_CPU_SECONDS,
    MAX_LABELS,
    MAX_SLOTS,
    MAX_UNFIT,
    RESTRICTED_LABELS,
    Accounting,
    Amount,
    NodeRecord,
    RecordError,
    RunState,
    TaskRecord,
    TaskReport,
)
from runink.core.control.store import ClusterStore, NotFound, Refused
from runink.core.errors import AuthenticationError, RuninkError
from runink.core.interfaces.barn import WatchEvent
from runink.core.model import AuthRequest, Identity, LineageEvent
from runink.core.pipeline.model import slug
from runink.core.report import one_line, printable
from runink.core.server.auth import ClusterTokens, bearer
from runink.core.server.feed import BarnFeed
from runink.core.server.proto import CONNECT, amount_of, capacity_message, usage_sample
from runink.core.server.proto import agent_pb2 as pb
from runink.core.server.revocations import RevocationsUnknown
from runink.core.server.serve_api import require_loopback
from runink.core.server.tls import TlsFiles, certificate_issued, node_of_peer
from runink.core.units import check_name

log = logging.getLogger(__name__)

MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 253
MAX_ADDRESS = 253
MAX_INCARNATION = 64
MAX_REPORT_MESSAGE = 4 * MAX_MESSAGE  # bytes: the Lifecycle keeps MAX_MESSAGE characters of it
MAX_COUNTER = 2**62  # attempts, fencing tokens and log offsets
MAX_EXIT_CODE = 2**31
MAX_REPORTS = 64  # reports of one Reports message (each at most MAX_REPORT_MESSAGE: under the message limit)
# seconds since the epoch a report's start time or a lineage event may name: the end of year
# 9999, the last one `datetime` (the API's views, the CLI) can show
MAX_TIME = 253402300799.0
#: what one agent message may weigh on the wire (a larger one is refused by gRPC itself)
MAX_AGENT_MESSAGE_BYTES = 256 * 1024
MAX_STREAMS = 1024
MAX_LINEAGE_DATASETS = 64  # inputs, and outputs, of one lineage event
MAX_DATASET_URI = 2048
LINEAGE_EVENTS: dict[str, Literal["START", "COMPLETE", "FAIL", "OTHER"]] = {
    "START": "START",
    "COMPLETE": "COMPLETE",
    "FAIL": "FAIL",
    "OTHER": "OTHER",  # record annotations made while it runs
}
#: seconds a new stream has to send a Register, or a Heartbeat of its node's incarnation
BIND_TIMEOUT = 10.0
#: the longest an assignments long-poll waits (ms), whatever the agent asks
MAX_WAIT_MS = 5000


class BadRequest(Exception):
    """A request that fails the checks: the stream ends with its message."""


class BadToken(Exception):
    """A stream without a node's token: refused before any request is read (UNAUTHENTICATED)."""


def _check_claim(request: pb.AgentMessage, pinned: str) -> None:
    """A stream's first Register or Heartbeat must name the node its token is for."""
    kind = request.WhichOneof("body")
    claimed = (
        request.register.node_id if kind == "register" else request.heartbeat.node_id if kind == "heartbeat" else None
    )
    if claimed is not None and claimed != pinned:
        raise BadRequest(f"{kind}.node_id: {printable(claimed, 63)!r}, but the stream's token is node {pinned!r}'s")


def _text(value: str, limit: int, what: str) -> str:
    if len(value.encode()) > limit:
        raise BadRequest(f"{what}: longer than {limit} bytes")
    if "\0" in value:
        raise BadRequest(f"{what}: contains a NUL byte")
    return value


def _printable(value: str, limit: int, what: str) -> str:
    """Text shown as it is (a node's labels in `runink nodes list`, its address in logs): no
    line break, escape sequence or other control character that could forge a line."""
    _text(value, limit, what)
    if not value.isprintable():
        raise BadRequest(f"{what}: {printable(value, 63)!r} has a control character")
    return value


def _name(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise BadRequest(printable(str(exc), 300)) from None


def _amount(capacity: pb.Capacity, what: str) -> Amount:
    try:
        return amount_of(capacity)
    except RecordError as exc:
        raise BadRequest(f"{what}.{'.'.join(str(p) for p in exc.loc)}: {exc.msg}") from None


def _counter(value: int, what: str, low: int = 0, high: int = MAX_COUNTER) -> int:
    if not low <= value <= high:
        raise BadRequest(f"{what}: {value} not in [{low}, {high}]")
    return value


def _usage(beat: pb.Heartbeat, node_id: str) -> dict[str, Any] | None:
    """The heartbeat's usage sample, for the Lifecycle to check and store; None if it has none
    or one too malformed to read (dropped, said in one line: the heartbeat still counts)."""
    if not beat.HasField("usage"):
        return None
    try:
        return usage_sample(beat.usage)
    except ValueError as exc:
        log.warning("node %s: usage sample dropped: %s", node_id, printable(str(exc), 300))
        return None


def node_of(message: pb.Register) -> NodeRecord:
    """The node a Register describes, checked."""
    node_id = _name(message.node_id, "register.node_id")
    if len(message.labels) > MAX_LABELS:
        raise BadRequest(f"register.labels: {len(message.labels)} labels (at most {MAX_LABELS})")
    labels = {}
    for key, value in message.labels.items():
        labels[_printable(key, MAX_LABEL_KEY, "register.labels key")] = _printable(
            value, MAX_LABEL_VALUE, f"register.labels[{printable(key, 63)}]"
        )
        if key.startswith(RESTRICTED_LABELS):  # (a node claims none: what tasks ask under it, admins set)
            raise BadRequest(f"register.labels: {printable(key, 63)!r} is set by cluster admins, not by a node")
    address = _printable(message.address, MAX_ADDRESS, "register.address")
    capacity = _amount(message.capacity, "register.capacity")
    try:
        return NodeRecord.model_validate(
            {
                "id": node_id,
                "capacity": capacity,
                "labels": labels,
                "address": address,
                "gpus": list(message.gpus),
                "slots": _counter(message.slots, "register.slots", high=MAX_SLOTS),
                "unfit": one_line(message.unfit, MAX_UNFIT),  # (the node's words: made safe, never refused)
            }
        )
    except RecordError as exc:
        raise BadRequest(f"register.gpus: {printable(exc.msg, 300)}") from None


def registered(node: NodeRecord) -> pb.Registered:
    return pb.Registered(
        id=node.id,
        capacity=capacity_message(node.capacity),
        labels=node.labels,
        address=node.address,
        ready=node.ready,
        cordoned=node.cordoned,
        draining=node.draining,
        heartbeat=node.heartbeat,
        incarnation=node.incarnation,
        gpus=node.gpus,
        slots=node.slots,
    )


def assignments_version(tasks: list[TaskRecord]) -> str:
    """What changes when a task is assigned to a node or leaves it (its state is left out: the
    agent's own reports change it, and a long-poll must not wake for them)."""
    lines = sorted(f"{t.herd}/{t.id}/{t.attempt}/{t.token}" for t in tasks)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


class TaskChanges:
    """Counters of the changes of each node's assigned tasks, that long-polls wait on: a
    long-poll looks at its node's assignments again only when one of its entries in the index
    of assigned tasks (``ClusterStore.ASSIGNED``) changed. Followed from a watch (``feed``: the
    server's own, shared, whose view then holds the change before it is counted; else one of
    that index started here by the first long-poll): each entry written or deleted bumps the
    node its key names, a restart of the watch every node."""

    def __init__(self, lifecycle: Lifecycle, feed: BarnFeed | None = None) -> None:
        self.everyone = 0  # a change whose node is not known: every long-poll looks again
        self.per_node: dict[str, int] = {}
        self.changed = threading.Condition()
        self._barn = lifecycle.store.barn
        self._feed = feed
        if feed is not None:
            self._follow(feed)

    @property
    def live(self) -> bool:
        """The watch follows and counts every change: a generation unchanged means nothing changed."""
        return self._feed is not None and self._feed.following

    def start(self) -> None:
        """Follow a watch of its own if given none (a service without a server's feed)."""
        with self.changed:
            if self._feed is not None:
                return
            self._feed = BarnFeed(
                self._barn, threading.Event(), prefix=ClusterStore.ASSIGNED, name="agent-service-watch"
            )
        self._follow(self._feed)
        self._feed.start()

    def _follow(self, feed: BarnFeed) -> None:
        feed.listen(self.on_change)
        feed.on_restart(lambda: self.bump(None))  # (what changed while no watch ran)

    def on_change(self, event: WatchEvent) -> None:
        key = event.kv.key
        if key.startswith(ClusterStore.ASSIGNED):  # (ASSIGNED node/herd/task)
            self.bump(key[len(ClusterStore.ASSIGNED) :].split("/", 1)[0])

    def bump(self, node: str | None) -> None:
        """Count a change of ``node``'s tasks (None: of any node's)."""
        with self.changed:
            if node is None:
                self.everyone += 1
            else:
                self.per_node[node] = self.per_node.get(node, 0) + 1
            self.changed.notify_all()

    def generation(self, node: str) -> tuple[int, int]:
        with self.changed:
            return self.everyone, self.per_node.get(node, 0)

    def wait_past(self, node: str, generation: tuple[int, int], timeout: float) -> None:
        """Return once ``node``'s tasks changed since ``generation`` or after ``timeout`` seconds."""
        with self.changed:
            self.changed.wait_for(lambda: (self.everyone, self.per_node.get(node, 0)) != generation, timeout)


def _task_report(report: pb.Report) -> TaskReport:
    """A report as the lifecycle takes it, every field checked (BadRequest naming it)."""
    herd = _name(report.herd, "report.herd")
    task_id = _name(report.task_id, "report.task_id")
    attempt = _counter(report.attempt, "report.attempt")
    token = _counter(report.token, "report.token")
    try:
        state = RunState(report.state)
    except ValueError:
        raise BadRequest(f"report.state: {printable(report.state, 40)!r} is not a task state") from None
    exit_code = (
        _counter(report.exit_code, "report.exit_code", -MAX_EXIT_CODE, MAX_EXIT_CODE)
        if report.HasField("exit_code")
        else None
    )
    message = _text(report.message, MAX_REPORT_MESSAGE, "report.message")
    started = report.started if report.HasField("started") else None
    if started is not None and not (math.isfinite(started) and 0 <= started <= MAX_TIME):
        raise BadRequest(f"report.started: {started!r} is not a time in [0, {MAX_TIME:g}]")
    return TaskReport(herd, task_id, attempt, token, state, exit_code, message, started, _accounting(report))


def _accounting(report: pb.Report) -> Accounting | None:
    """An ended attempt's accounting, if the report carries it whole, each field bounded."""
    if not (report.HasField("cpu_seconds") and report.HasField("peak_memory") and report.HasField("seconds")):
        return None
    for name, value, top in (
        ("cpu_seconds", report.cpu_seconds, MAX_CPU_SECONDS),
        ("seconds", report.seconds, MAX_CPU_SECONDS),
    ):
        if not (math.isfinite(value) and 0 <= value <= top):
            raise BadRequest(f"report.{name}: {value!r} is not a number of seconds in [0, {top:g}]")
    peak = _counter(report.peak_memory, "report.peak_memory", 0, MAX_COUNTER)
    return Accounting(report.cpu_seconds, peak, report.seconds)


def task_message(task: TaskRecord, roots: list[str] | None = None) -> pb.Task:
    """``task`` as its node gets it; ``roots``: its scenario's, when its record has none (a
    task stored before herds had roots: its herd's now)."""
    message = pb.Task(
        id=task.id,
        job_id=task.job_id,
        herd=task.herd,
        command=task.command,
        resources=capacity_message(task.resources),
        attempt=task.attempt,
        token=task.token,
        state=task.state.value,
        node=task.node or "",
        retries=task.retries,
        backoff=task.backoff,
        secrets=task.secrets,
        secrets_env=task.secrets_env,
        gpus=task.gpus,
    )
    if task.scenario is not None:
        ref = task.scenario
        message.scenario.CopyFrom(
            pb.Scenario(pipeline=ref.pipeline, scenario=ref.scenario, run=ref.run, roots=ref.roots or roots or [])
        )
    if task.timeout is not None:
        message.timeout = task.timeout
    if task.herd_quota is not None:
        quota = task.herd_quota
        message.herd_quota.CopyFrom(
            pb.HerdQuota(cpu=quota.cpu, memory=quota.memory, gpu=quota.gpu, max_slices=quota.max_slices)
        )
    return message


class AgentService:
    """The servicer: ``Connect`` is one agent's stream."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        bind_timeout: float = BIND_TIMEOUT,
        tokens: ClusterTokens | None = None,
        *,
        certificates: bool = False,
        on_lineage: Callable[[LineageEvent], object] | None = None,
        feed: BarnFeed | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        # where the lineage events of the nodes' scenarios go (the server's lineage sinks)
        self.on_lineage = on_lineage
        self.logs = TaskLogs(lifecycle.store)
        self.bind_timeout = bind_timeout
        self.changes = TaskChanges(lifecycle, feed)
        # who a stream is: its node certificate (mutual TLS) and/or its node token; with
        # neither, any stream may act as any node (development only)
        self.tokens = tokens
        self.certificates = certificates
        # node -> (the changes' generation it was read at, its assignments, their version)
        self._assigned_at: dict[str, tuple[tuple[int, int], list[TaskRecord], str]] = {}
        self._assigned_lock = threading.Lock()

    def _stream_node(self, context: Any) -> tuple[str | None, Identity | None, float | None]:
        """The node the stream may act as: its certificate's (``node.NAME``), its token's, and
        they must agree when both are there. None: no way to tell (development). BadToken when
        the stream proves no node, or its certificate was issued before the node was revoked
        (``runink nodes revoke``: a certificate alone lets an agent in). With it, the token's
        identity (checked again while the stream lasts: a token revoked ends it), and when its
        certificate was issued (so is it: a node revoked ends its stream)."""
        by_certificate, issued = None, None
        if self.certificates:
            auth_context = context.auth_context() or {}
            by_certificate = node_of_peer(auth_context)
            if by_certificate is None:
                raise BadToken("the stream's certificate is not a node's (node.NAME, of the cluster CA)")
            issued = certificate_issued(auth_context)
            if revoked := self._certificate_revoked(by_certificate, issued):
                raise BadToken(f"certificate: {revoked} (join again: `runink nodes join-token`)")
        if self.tokens is None:
            return by_certificate, None, issued
        if by_certificate is not None and not _has_token(context):
            return by_certificate, None, issued
        by_token, identity = self._token_node(context)
        if by_certificate is not None and by_token != by_certificate:
            raise BadToken(f"the token is node {by_token!r}'s but the certificate node {by_certificate!r}'s")
        return by_token, identity, issued

    def _certificate_revoked(self, node: str, issued: float | None) -> str | None:
        """Why ``node``'s certificate issued at ``issued`` is revoked, or None (none presented,
        or no revocations: a cluster without tokens)."""
        if issued is None or self.tokens is None:
            return None
        return self.tokens.why_certificate_revoked(node, issued)

    def _token_node(self, context: Any) -> tuple[str, Identity]:
        """The node the stream's token (``authorization`` metadata) lets it act as: a token the
        cluster signed for ``node:NAME`` holding the ``node`` role. BadToken otherwise."""
        assert self.tokens is not None
        metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
        if bearer(metadata) is None:
            raise BadToken("no token: start the agent with --token-file (`runink nodes token NODE` mints one)")
        try:
            identity = self.tokens.runink_authenticate(
                AuthRequest(headers={"authorization": metadata["authorization"]})
            )
        except AuthenticationError as exc:
            raise BadToken(str(exc)) from None
        node = self.tokens.node_of(identity)
        if node is None:
            raise BadToken("the token is not a node's (`runink nodes token NODE` mints one)")
        assert identity is not None
        return node, identity

    def Connect(self, requests: Iterator[pb.AgentMessage], context: Any) -> Iterator[pb.ServerMessage]:
        peer = printable(str(context.peer()), 200)
        node: str | None = None  # the node this stream is bound to
        request_id = 0
        bind_by = time.monotonic() + self.bind_timeout
        try:
            pinned, token, issued = self._stream_node(context)
        except BadToken as exc:
            why = printable(str(exc), 400)
            log.warning("agent stream from %s refused: %s", peer, why)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
        except RevocationsUnknown as exc:  # (its credential may be good: the agent tries again)
            why = printable(f"{exc}; try again", 400)
            log.warning("agent stream from %s refused for now: %s", peer, why)
            context.abort(grpc.StatusCode.UNAVAILABLE, why)
        try:
            while True:
                request = next(requests, None) if node is not None else _next_before(requests, bind_by)
                if request is _LATE:
                    why = f"not registered within {self.bind_timeout:g} s"
                    log.warning("agent stream from %s dropped: %s", peer, why)
                    yield pb.ServerMessage(request_id=request_id, error=pb.Error(message=why))
                    context.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
                    context.set_details(why)
                    return
                if not isinstance(request, pb.AgentMessage):
                    return  # the agent closed the stream
                try:
                    revoked = None if token is None or self.tokens is None else self.tokens.why_revoked(token)
                    if revoked is not None:
                        revoked = f"token: {revoked}"
                    elif pinned is not None and (by := self._certificate_revoked(pinned, issued)):
                        revoked = f"certificate: {by}"
                except RevocationsUnknown as exc:  # (its credential may be good: the agent comes back)
                    why = printable(f"{exc}; try again", 400)
                    log.warning("agent stream from %s (node %s) ended for now: %s", peer, node or pinned, why)
                    context.abort(grpc.StatusCode.UNAVAILABLE, why)
                if revoked is not None:
                    why = printable(revoked, 400)
                    log.warning("agent stream from %s (node %s) ended: %s", peer, node or pinned, why)
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
                request_id = request.request_id
                try:
                    if node is None and pinned is not None:
                        _check_claim(request, pinned)
                    answers, node = self._answer(request, node)
                except BadRequest as exc:
                    why = printable(str(exc), 400)
                    log.warning("agent stream from %s (node %s) dropped: %s", peer, node or "not registered", why)
                    yield pb.ServerMessage(request_id=request_id, error=pb.Error(message=why))
                    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                    context.set_details(why)
                    return
                except RuninkError as exc:  # the Barn away, conflicts: the agent tries again later
                    why = printable(f"the control plane failed: {exc}", 400)
                    log.warning("agent stream from %s (node %s) ended: %s", peer, node or "not registered", why)
                    yield pb.ServerMessage(request_id=request_id, error=pb.Error(message=why))
                    context.set_code(grpc.StatusCode.UNAVAILABLE)
                    context.set_details(why)
                    return
                yield from answers
        except grpc.RpcError:  # the agent went away (or sent more than gRPC accepts): nothing to answer
            return

    def _answer(self, request: pb.AgentMessage, node: str | None) -> tuple[list[pb.ServerMessage], str | None]:
        rid = request.request_id
        kind = request.WhichOneof("body")
        if kind == "register":
            record = node_of(request.register)
            if node is not None and record.id != node:
                raise BadRequest(f"register.node_id: {record.id!r}, but this stream is node {node!r}'s")
            done = self.lifecycle.register_node(record)
            return [pb.ServerMessage(request_id=rid, registered=registered(done))], done.id
        if kind == "heartbeat":
            node_id = _name(request.heartbeat.node_id, "heartbeat.node_id")
            incarnation = _text(request.heartbeat.incarnation, MAX_INCARNATION, "heartbeat.incarnation")
            if node is not None and node_id != node:
                raise BadRequest(f"heartbeat.node_id: {node_id!r}, but this stream is node {node!r}'s")
            unfit = one_line(request.heartbeat.unfit, MAX_UNFIT)  # (as register's)
            if not self.lifecycle.heartbeat(node_id, incarnation, _usage(request.heartbeat, node_id), unfit):
                return [pb.ServerMessage(request_id=rid, heartbeat_ack=pb.HeartbeatAck(ok=False))], node
            # the current incarnation proves it is the agent that registered: the stream is its
            ack = pb.ServerMessage(request_id=rid, heartbeat_ack=pb.HeartbeatAck(ok=True))
            return [self._assignments(rid, node_id), ack], node_id
        if node is None:
            raise BadRequest(f"{kind or 'an empty message'} before register")
        if kind == "assignments":
            node_id = _name(request.assignments.node_id, "assignments.node_id")
            if node_id != node:
                raise BadRequest(f"assignments.node_id: {node_id!r}, but this stream is node {node!r}'s")
            wait_ms = min(request.assignments.wait_ms, MAX_WAIT_MS)
            known = _text(request.assignments.known, 64, "assignments.known")
            return [self._assignments(rid, node, wait_ms, known)], node
        if kind == "report":
            return [self._report(rid, request.report, node)], node
        if kind == "reports":
            return [self._reports(rid, request.reports, node)], node
        if kind == "log_chunk":
            return [self._log_chunk(rid, request.log_chunk, node)], node
        if kind == "secrets":
            return [self._secrets(rid, request.secrets, node)], node
        if kind == "lineage":
            return [self._lineage(rid, request.lineage, node)], node
        raise BadRequest(f"{kind}: not a request this server knows")

    def _assignments(self, rid: int, node_id: str, wait_ms: int = 0, known: str = "") -> pb.ServerMessage:
        """The node's assignments; with ``wait_ms``, once their version differs from ``known``
        or the wait ended (a change of the node's assigned tasks looks again)."""
        if wait_ms > 0:
            self.changes.start()
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            generation = self.changes.generation(node_id)
            # (the cache only for long-polls: a direct read, as current_assignments, reads now)
            found, version = self._assigned(node_id, generation if self.changes.live and wait_ms > 0 else None)
            left = deadline - time.monotonic()
            if version != known or left <= 0:
                break
            self.changes.wait_past(node_id, generation, left)
        tasks = [task_message(t, self._legacy_roots(t)) for t in found]
        return pb.ServerMessage(request_id=rid, assignments=pb.Assignments(tasks=tasks, version=version))

    def _legacy_roots(self, task: TaskRecord) -> list[str] | None:
        """The herd's roots now, for a scenario task stored before tasks carried them (else
        None): queued across an upgrade, it runs once an admin gave its herd roots."""
        if task.scenario is None or task.scenario.roots:
            return None
        try:
            return self.lifecycle.store.herd(task.herd, recent=True).record.roots
        except RuninkError:  # (the herd is gone: its node refuses the task, saying why)
            return None

    def _assigned(self, node: str, generation: tuple[int, int] | None) -> tuple[list[TaskRecord], str]:
        """The node's assignments and their version: read again only if its entries changed
        since the last read at ``generation`` (a long-poll answered, then asked again at once,
        reads once; None: no watch counts the changes, always read)."""
        with self._assigned_lock:
            cached = self._assigned_at.get(node)
        if generation is not None and cached is not None and cached[0] == generation:
            return cached[1], cached[2]
        # a long-poll's from this server's view: woken by the change it reads there (TaskChanges)
        found = self.lifecycle.assignments(node, recent=generation is not None)
        version = assignments_version(found)
        if generation is not None:
            with self._assigned_lock:
                self._assigned_at[node] = (generation, found, version)
        return found, version

    def _report(self, rid: int, report: pb.Report, node: str) -> pb.ServerMessage:
        (accepted,) = self._apply([_task_report(report)], node)
        return pb.ServerMessage(request_id=rid, report_ack=pb.ReportAck(accepted=accepted))

    def _reports(self, rid: int, reports: pb.Reports, node: str) -> pb.ServerMessage:
        if len(reports.reports) > MAX_REPORTS:
            raise BadRequest(f"reports: {len(reports.reports)} at once (at most {MAX_REPORTS})")
        accepted = self._apply([_task_report(report) for report in reports.reports], node)
        return pb.ServerMessage(request_id=rid, report_acks=pb.ReportAcks(accepted=accepted))

    def _apply(self, reports: list[TaskReport], node: str) -> list[bool]:
        try:  # (the lifecycle checks the node on the record it reads: one Barn read less)
            return self.lifecycle.report_many(reports, node=node)
        except PlacedElsewhere as exc:
            raise BadRequest(str(exc)) from None

    def _log_chunk(self, rid: int, chunk: pb.LogChunk, node: str) -> pb.ServerMessage:
        herd = _name(chunk.herd, "log_chunk.herd")
        task_id = _name(chunk.task_id, "log_chunk.task_id")
        attempt = _counter(chunk.attempt, "log_chunk.attempt")
        token = _counter(chunk.token, "log_chunk.token")
        if chunk.stream not in STREAMS:
            raise BadRequest(f"log_chunk.stream: {printable(chunk.stream, 40)!r} is not stdout or stderr")
        offset = _counter(chunk.offset, "log_chunk.offset")
        if len(chunk.data) > MAX_CHUNK_BYTES:
            raise BadRequest(f"log_chunk.data: {len(chunk.data)} bytes (at most {MAX_CHUNK_BYTES})")
        placed_on = self._placed_on(herd, task_id, attempt)
        if placed_on != node:  # (None: not placed anywhere, or an unknown task: nobody's to write)
            raise BadRequest(f"output of task {task_id} attempt {attempt}: placed on node {placed_on!r}, not {node!r}")
        accepted, seen = self.logs.append(Chunk(herd, task_id, attempt, token, chunk.stream, offset, chunk.data))
        return pb.ServerMessage(request_id=rid, log_ack=pb.LogAck(accepted=accepted, next_offset=seen))

    def _secrets(self, rid: int, request: pb.SecretsRequest, node: str) -> pb.ServerMessage:
        herd = _name(request.herd, "secrets.herd")
        task_id = _name(request.task_id, "secrets.task_id")
        attempt = _counter(request.attempt, "secrets.attempt")
        token = _counter(request.token, "secrets.token")
        try:  # (the lifecycle checks attempt, token and node on the record it reads)
            values = self.lifecycle.task_secrets(herd, task_id, attempt, token, node)
        except (Refused, NotFound) as exc:
            log.warning("node %s: %s", node, printable(str(exc), 400))  # (names only: no value is in it)
            return pb.ServerMessage(request_id=rid, secrets=pb.Secrets(refused=printable(str(exc), 400)))
        return pb.ServerMessage(request_id=rid, secrets=pb.Secrets(values=values))

    def _herd_going(self, herd: str) -> bool:
        """Whether ``herd`` is gone or being deleted (as this server's view last saw it)."""
        try:
            return self.lifecycle.store.herd(herd, recent=True).record.deleting
        except NotFound:
            return True

    def _lineage(self, rid: int, message: pb.Lineage, node: str) -> pb.ServerMessage:
        """A lineage event of a scenario attempt placed on ``node``: to the server's sinks, with
        its herd, run and job taken from the task's record. An event of an attempt that is not
        (or no longer) this node's is refused, not an error: the agent drops it."""
        herd = _name(message.herd, "lineage.herd")
        task_id = _name(message.task_id, "lineage.task_id")
        attempt = _counter(message.attempt, "lineage.attempt")
        event_type = LINEAGE_EVENTS.get(message.event_type)
        if event_type is None:
            kind = printable(message.event_type, 40)
            raise BadRequest(f"lineage.event_type: {kind!r} is not START, COMPLETE, FAIL or OTHER")
        for field, uris in (("inputs", message.inputs), ("outputs", message.outputs)):
            if len(uris) > MAX_LINEAGE_DATASETS:
                raise BadRequest(f"lineage.{field}: {len(uris)} datasets (at most {MAX_LINEAGE_DATASETS})")
            for uri in uris:
                _text(uri, MAX_DATASET_URI, f"lineage.{field}")
        if len(message.facets_json) > MAX_FACETS_BYTES:
            raise BadRequest(f"lineage.facets_json: {len(message.facets_json)} bytes (at most {MAX_FACETS_BYTES})")
        try:
            facets = json.loads(message.facets_json or "{}")
        except ValueError as exc:
            raise BadRequest(f"lineage.facets_json: not JSON: {exc}") from None
        except RecursionError:  # (within the size bound, nested past the interpreter's depth)
            raise BadRequest("lineage.facets_json: nested too deeply") from None
        if not isinstance(facets, dict):
            raise BadRequest("lineage.facets_json: not a JSON object")
        try:
            task = self.lifecycle.store.task(herd, task_id).record
        except NotFound:
            task = None
        if task is not None and self._herd_going(herd):
            task = None  # (its herd is being deleted: what the catalog keeps of it goes with it)
        if task is None or task.scenario is None or placed_on(task, attempt) != node:
            why = "lineage of task %s attempt %d from node %s refused: not a scenario attempt placed there"
            log.info(why, task_id, attempt, node)
            return pb.ServerMessage(request_id=rid, lineage_ack=pb.LineageAck(accepted=False))
        scenario = task.scenario
        facets.update(  # what the record says, whatever the node sent
            job_id=task.job_id, task_id=task.id, node=node, attempt=attempt, pipeline_run=scenario.run
        )
        moment = message.event_time
        sane = math.isfinite(moment) and 0 < moment < MAX_TIME
        when = datetime.fromtimestamp(moment, UTC) if sane else datetime.now(UTC)
        event = LineageEvent(
            event_type,
            f"{scenario.run}/{slug(scenario.scenario)}",
            scenario.scenario,
            task.herd,
            tuple(message.inputs),
            tuple(message.outputs),
            event_time=when,
            facets=facets,
        )
        if self.on_lineage is not None:
            self.on_lineage(event)
        return pb.ServerMessage(request_id=rid, lineage_ack=pb.LineageAck(accepted=True))

    def _placed_on(self, herd: str, task_id: str, attempt: int) -> str | None:
        """The node the task's ``attempt`` was placed on, when known (the Lifecycle refuses a
        report of an unknown task or attempt itself)."""
        try:
            task = self.lifecycle.store.task(herd, task_id).record
        except NotFound:
            return None
        return placed_on(task, attempt)


def _has_token(context: Any) -> bool:
    metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
    return bearer(metadata) is not None


_LATE = object()  # no message before the bind deadline


def _next_before(requests: Iterator[pb.AgentMessage], deadline: float) -> object:
    """The stream's next message, None when it ended, or _LATE at ``deadline``. gRPC's request
    iterator has no timeout, so a short-lived thread reads it (ended with the stream when late)."""
    got: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=1)

    def read() -> None:
        try:
            got.put((next(requests, None), None))
        except BaseException as exc:  # raised again in the stream's own thread
            got.put((None, exc))

    threading.Thread(target=read, name="agent-stream-bind", daemon=True).start()
    try:
        message, error = got.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        return _LATE
    if error is not None:
        raise error
    return message


def serve_agents(
    lifecycle: Lifecycle,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    insecure_bind: bool = False,
    max_streams: int = MAX_STREAMS,
    bind_timeout: float = BIND_TIMEOUT,
    tokens: ClusterTokens | None = None,
    tls: TlsFiles | None = None,
    on_lineage: Callable[[LineageEvent], object] | None = None,
    feed: BarnFeed | None = None,
) -> grpc.Server:
    """Start the agent service on ``host:port`` (port 0: a free port; ``server.port`` says
    which). With ``tls``, mutual TLS: a stream must present a node's certificate of the
    cluster CA (``node.NAME``) and may act as that node only. With ``tokens``, a stream must
    carry a node's token (``node:NAME``, role ``node``) unless its certificate names it; both
    given, they must agree. With neither, anything that reaches the port can act as any node.
    Plaintext (no ``tls``) on a non-loopback host is refused (ValueError) unless
    ``insecure_bind`` is given. Each open stream holds a thread, so at most ``max_streams`` are
    open at once, and one that is not bound to a node within ``bind_timeout`` seconds is
    closed. ``feed``: the server's watch of the Barn, which long-polls wait on (else the
    service starts its own). OSError when the address cannot be bound."""
    if not 0 <= port <= 65535:
        raise ValueError(f"agent service port {port}: not in [0, 65535]")
    if not insecure_bind and tls is None:
        require_loopback(host, "agent service address (plaintext)", "insecure_bind")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_streams, thread_name_prefix="agent-stream"),
        # without so_reuseport 0, a second server on the same port binds too and shares its agents
        options=[("grpc.max_receive_message_length", MAX_AGENT_MESSAGE_BYTES), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=max_streams,
    )
    service = AgentService(
        lifecycle, bind_timeout, tokens, certificates=tls is not None, on_lineage=on_lineage, feed=feed
    )
    connect = grpc.stream_stream_rpc_method_handler(
        service.Connect,
        request_deserializer=pb.AgentMessage.FromString,
        response_serializer=pb.ServerMessage.SerializeToString,
    )
    service_name, method = CONNECT.strip("/").split("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, {method: connect}),))
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(where) if tls is None else server.add_secure_port(where, tls.grpc_server())
    except RuntimeError as exc:  # grpcio raises it for an address in use or not local
        raise OSError(f"agent service: cannot listen on {where}: {exc}") from None
    if not bound:
        raise OSError(f"agent service: cannot listen on {where}")
    server.port = bound
    server.start()
    return server
