"""A Barn server: one member of a Raft group, serving the Barn's HTTP API.

    python -m runink.plugins.barn.raft.server --name a --raft 127.0.0.1:7001 --http 127.0.0.1:8001 \\
        --peer b=127.0.0.1:7002,127.0.0.1:8002 --peer c=127.0.0.1:7003,127.0.0.1:8003 --data-dir /var/lib/runink/barn-a

(or ``runink barn serve`` with the same options). Each member keeps the Barn's state machine
(``BarnState``) and applies the commands pysyncobj (patched: see ``_vendor/pysyncobj/syncobj.py``) commits in the
same order everywhere.

* Writes return only after commit (a majority has the entry, synced to disk: see fsync).
* Reads are linearizable: the leader commits a no-op (a read barrier: pysyncobj has no
  ReadIndex) proposed after the read arrived, and reads its state once that is applied. The
  reads arriving in one event-loop turn share a barrier, and barriers and writes proposed in
  one tick share an append (group commit).
* A follower forwards each request to the leader's HTTP API; every answer names the leader
  (``X-Runink-Leader``) so clients go there next. With no leader (or no quorum) the answer is
  503 with Retry-After, never a stale value. A 503 on a write means its outcome is unknown
  (a leader that steps down answers its waiting writes so at once): clients retry with the
  same ``request_id``, which the state applies once.
* Durability: the Raft journal (pysyncobj's file journal) plus full snapshots (``fullDumpFile``,
  written when the log is compacted: ``BarnReplica``) in ``--data-dir``; with fsync (the
  default) the journal is fdatasynced before a member acknowledges an entry and before the
  leader counts its own copy, so an acknowledged write survives a power loss of a minority,
  and a full-cluster restart.
* Threads: one event loop (uvloop; HTTP parsed by httptools: http_protocol.py) serves every
  connection; the tick thread runs Raft; a pool forwards to the leader; one thread expires
  leases.

HTTP API (JSON; keys are strings, values base64): POST /v1/put, /v1/get, /v1/delete, /v1/txn,
/v1/scan, /v1/watch (long poll), /v1/lease/grant, /v1/lease/keepalive, /v1/lease/revoke,
/v1/revision; GET /v1/status; POST /v1/members/add, /v1/members/remove. ``"serializable": true``
on /v1/get and /v1/scan reads the answering member's own copy (possibly stale, like etcd's).
Every body is validated against ``schema.py`` before anything is proposed (400 otherwise); the
transport's limits (timeouts, the connection cap, 413/414/431) are in ``http_protocol.py``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import http.client
import json
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObjConf

try:
    import uvloop
except ImportError:  # optional: the standard loop works, a little slower
    uvloop = None  # type: ignore[assignment]

from runink.core.errors import BarnError, CompactedError, LeaseNotFoundError
from runink.core.interfaces.barn import KeyValue, WatchEvent
from runink.plugins.barn.raft import schema

# the vendored module's own SyncObjException: the installed pysyncobj's is another class
from runink.plugins.barn.raft._vendor.pysyncobj.syncobj import SyncObj, SyncObjConsumer, SyncObjException, replicated
from runink.plugins.barn.raft.http_protocol import Limits, Request, Response, raise_fd_limit, serve
from runink.plugins.barn.state import BarnState, raise_for

COMMIT_TIMEOUT = 5.0  # seconds a write waits for its commit before answering 503
RETRY_AFTER = 1  # seconds, in 503 answers
LEASE_CHECK = 0.05  # seconds between the leader's looks for expired leases
FORWARDED = "X-Runink-Forwarded"  # set on a request a follower passed to the leader
FORWARDED_RAW = FORWARDED.lower().encode()
LEADER_HEADER = "X-Runink-Leader"  # on every answer: the leader's HTTP address, where clients go next
Finished = tuple[Any, Any, Any]  # (a future or a batch's list of them, result(s), pysyncobj's error)
LEADER_STATE = 2  # pysyncobj's _RAFT_STATE.LEADER
LEADERSHIP_LOST: Any = object()  # handed to the loop when this member stops leading
FORWARD_THREADS = 32  # requests a follower forwards to the leader at once

log = logging.getLogger("runink.barn")


@dataclass(frozen=True)
class Member:
    name: str
    raft: str  # host:port of its Raft transport
    http: str  # host:port of its client API


@dataclass
class ServerConfig:
    me: Member
    peers: list[Member]
    data_dir: Path
    fsync: bool = True
    election_timeout: float = 0.3  # seconds (the minimum; the maximum is twice that)
    compaction_entries: int = 10_000  # compact the log past this many entries...
    compaction_seconds: float = 60.0  # ...at most this often
    history: int = 100_000  # changes kept for watches
    secret: bytes | None = None  # shared by the members: authenticates and encrypts Raft traffic
    max_connections: int | None = None  # client connections at once (None: below the fd limit)
    extra: dict[str, Any] = field(default_factory=dict)  # tests: other SyncObjConf options


class NoLeader(Exception):
    """No leader is known, or the commit did not happen in time: answer 503."""


class BarnReplica(SyncObjConsumer):
    """The Barn's state as pysyncobj replicates it: commands applied in log order.

    Snapshots (log compaction, and catching up a member too far behind) are written and read
    by ``BarnNode._write_snapshot``/``_read_snapshot`` explicitly: pysyncobj's default pickles
    only the attributes an object gains after its ``__init__``, which missed the state
    entirely (a restart after compaction, or a snapshot install, left an empty Barn).
    """

    def __init__(self, history: int, on_change: Callable[[], None]) -> None:
        super().__init__()
        self.lock = threading.Lock()  # the state: applied by the tick thread, read by the loop
        self.state = BarnState(history=history)
        self.history = history
        self.on_change = on_change

    @replicated
    def apply(self, command: dict[str, Any]) -> Any:
        # (tick thread) never raises: an exception here is retried at every tick and after every
        # restart, so one bad entry would stop this replica for good (BarnState.apply is total)
        with self.lock:
            result = self.state.apply(command)
        try:
            self.on_change()
        except Exception:
            log.exception("waking the watches after a command failed")
        return result

    def restore(self, snapshot: dict[str, Any]) -> None:
        state = BarnState.restore(snapshot, history=self.history)
        with self.lock:
            self.state = state
        self.on_change()


class BarnNode(SyncObj):
    """The Raft member: pysyncobj commits commands, ``BarnReplica`` applies them.

    Two threads meet here: pysyncobj's tick thread applies commands and runs their callbacks;
    the event loop thread serves the API. Callbacks are handed to the loop in batches (one
    wake-up for every command a tick finished), never one thread switch per command.
    """

    def __init__(self, config: ServerConfig) -> None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        timeout = config.election_timeout
        conf = SyncObjConf(
            autoTick=True,
            autoTickPeriod=0.001,  # commits wait on ticks: 10 ms gave 11 ms a write, 1 ms ~2.5 ms (idle: 3.5% cpu)
            appendEntriesPeriod=timeout / 6,
            raftMinTimeout=timeout,
            raftMaxTimeout=2 * timeout,
            leaderFallbackTimeout=timeout,  # an isolated leader steps down within the election timeout
            # default 5 s: members started one after the other could not elect a leader without
            # the first (the survivors were not yet connected to each other) for up to 5 s
            connectionRetryTime=timeout,
            appendEntriesUseBatch=True,  # group commit: every queued command goes in one append
            journalFile=str(config.data_dir / "raft.journal"),
            fullDumpFile=str(config.data_dir / "raft.dump"),  # without it a restart after compaction loses all
            logCompactionMinEntries=config.compaction_entries,
            logCompactionMinTime=config.compaction_seconds,
            dynamicMembershipChange=True,
            useFork=False,  # this process has threads: never fork to write a snapshot
            commandsWaitLeader=False,
            **config.extra,
        )
        conf.runinkFsync = config.fsync
        # pysyncobj unpickles what peers send: without a shared secret anyone who can connect
        # to the Raft port can run code here. With one, every message is Fernet-sealed
        # (AES + HMAC) and a connection that fails to authenticate is dropped before unpickling.
        conf.password = config.secret
        # snapshots: the Barn's own plain-data form, pickled without gzip (level 9 held the tick
        # thread ~10x longer) and fsynced (pysyncobj's default neither)
        conf.serializer = self._write_snapshot
        conf.deserializer = self._read_snapshot
        self._fsync = config.fsync
        conf.onStateChanged = self._state_changed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: collections.deque[Finished | None] = collections.deque()
        self._drain_scheduled = False
        self._pending: set[asyncio.Future[Any]] = set()  # proposals not answered yet (loop thread)
        self._watchers: set[asyncio.Future[None]] = set()  # loop thread only
        self._barrier: asyncio.Future[Any] | None = None  # the read barrier not yet proposed (loop thread)
        self._batch: list[tuple[dict[str, Any], asyncio.Future[Any]]] = []  # proposals of this loop turn
        self.replica = BarnReplica(config.history, self._changed)
        super().__init__(config.me.raft, [p.raft for p in config.peers], conf, consumers=[self.replica])

    def _write_snapshot(self, path: str, raft_data: Any) -> None:
        """(tick thread, at log compaction) The state and pysyncobj's own record, to ``path``;
        pysyncobj renames it into place, fsynced with its directory (vendored syncobj.py, fix 7)."""
        with self.replica.lock:
            barn = self.replica.state.snapshot()
        with open(path, "wb") as out:
            pickle.dump({"format": 1, "barn": barn, "raft": raft_data}, out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()
            if self._fsync:
                os.fsync(out.fileno())

    def _read_snapshot(self, path: str) -> Any:
        """(at start, and when the leader sent a snapshot) Restore the state; pysyncobj's record."""
        with open(path, "rb") as source:
            data = pickle.load(source)
        self.replica.restore(data["barn"])
        return data["raft"]

    def _changed(self) -> None:
        if self._watchers:
            self._hand_over(None)  # wake the watches

    # --- the tick thread -> the loop ------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _hand_over(self, item: Finished | None) -> None:
        """From any thread: queue a finished command (``None``: wake the watches) for the loop."""
        self._finished.append(item)
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                self._loop.call_soon_threadsafe(self._drain_all)

    def _drain_all(self) -> None:
        try:
            self._drain()
        except Exception:  # an item that breaks must not strand those behind it
            log.exception("handing results to their requests failed")
            if self._finished:
                self._drain_scheduled = True
                assert self._loop is not None
                self._loop.call_soon(self._drain_all)

    def _drain(self) -> None:
        # cleared first: an item queued while this drains schedules another drain
        self._drain_scheduled = False
        wake = False
        while self._finished:
            item = self._finished.popleft()
            if item is None:
                wake = True
                continue
            if item is LEADERSHIP_LOST:
                for future in list(self._pending):
                    _settle(future, (None, "leadership lost"))
                continue
            waiting, result, error = item
            if isinstance(waiting, list):  # a batch: one result each
                if error == FAIL_REASON.SUCCESS and not (isinstance(result, list) and len(result) == len(waiting)):
                    result = [result] * len(waiting)  # the batch itself was refused: each gets why
                for i, future in enumerate(waiting):
                    _settle(future, (result[i] if error == FAIL_REASON.SUCCESS else None, error))
            else:
                _settle(waiting, (result, error))
        if wake:
            self.wake_watchers()

    def _state_changed(self, old: int, new: int) -> None:
        """(tick thread) A leader that steps down answers its waiting requests at once: 503,
        outcome unknown. Their entries may still commit under the next leader, or be dropped;
        clients retry with the same request id. Without this they waited out COMMIT_TIMEOUT."""
        if old == LEADER_STATE and new != LEADER_STATE:
            self._hand_over(LEADERSHIP_LOST)

    def wake_watchers(self) -> None:
        for waiter in self._watchers:
            if not waiter.done():
                waiter.set_result(None)
        self._watchers.clear()

    # --- proposing (loop thread) ----------------------------------------------------------

    def _callback(self) -> tuple[asyncio.Future[Any], Any]:
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future, lambda result, error: self._hand_over((future, result, error))

    async def _outcome(
        self, future: asyncio.Future[Any], what: str, timeout: float = COMMIT_TIMEOUT, shared: bool = False
    ) -> Any:
        """The result of a proposal, or NoLeader if it failed or did not commit in time."""
        assert self._loop is not None
        timer = self._loop.call_later(timeout, _settle, future, (None, "timeout"))
        try:
            # a barrier is shared by the reads of one loop turn: one reader's cancel is not all's
            result, error = await (asyncio.shield(future) if shared else future)
        finally:
            timer.cancel()
        if error != FAIL_REASON.SUCCESS:  # timeout, LEADER_CHANGED, NOT_LEADER...: outcome unknown
            raise NoLeader(f"{what} was not committed ({error})")
        return result

    def _propose(self, command: dict[str, Any]) -> asyncio.Future[Any]:
        """Queue a command; the commands of one loop turn go to pysyncobj as one log entry."""
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        self._batch.append((command, future))
        if len(self._batch) == 1:
            self._loop.call_soon(self._send_batch)
        return future

    def _send_batch(self) -> None:
        # Group commit at the Barn's level: one entry, pickled, journalled, sent and applied
        # once for the batch, where pysyncobj's per-entry costs were most of the Raft thread's
        # work under load. Reads that arrive from now on need a later barrier.
        batch, self._batch, self._barrier = self._batch, [], None
        if len(batch) == 1:
            ((command, future),) = batch
            self.replica.apply(command, callback=lambda result, error: self._hand_over((future, result, error)))
            return
        futures = [future for _, future in batch]
        self.replica.apply(
            {"op": "batch", "commands": [command for command, _ in batch]},
            callback=lambda results, error: self._hand_over((futures, results, error)),
        )

    async def commit(self, command: dict[str, Any]) -> Any:
        """Propose on this member (the leader) and wait for the commit; the state's refusal
        (an unknown lease, a bad command) raised as its error."""
        return raise_for(await self._outcome(self._propose(command), "the write"))

    def commit_blocking(self, command: dict[str, Any], timeout: float = COMMIT_TIMEOUT) -> Any:
        """``commit`` for threads other than the loop's (the lease expirer)."""
        try:
            return self.replica.apply(command, sync=True, timeout=timeout)
        except SyncObjException as exc:
            raise NoLeader(f"the write was not committed ({exc.errorCode})") from None

    async def read(self, reader: Callable[[BarnState], Any]) -> Any:
        """A linearizable read: wait for a no-op (the read barrier) proposed after this read
        began to be applied, then read. Reads arriving in the same loop turn share one barrier."""
        if self._barrier is None:
            self._barrier = self._propose({"op": "noop"})
        await self._outcome(self._barrier, "the read barrier", shared=True)
        with self.replica.lock:
            return reader(self.replica.state)

    async def membership(self, add: bool, raft: str) -> None:
        future, callback = self._callback()
        (self.addNodeToCluster if add else self.removeNodeFromCluster)(raft, callback=callback)
        await self._outcome(future, "the membership change")


# --- JSON forms ---------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kv_json(kv: KeyValue | None) -> dict[str, Any] | None:
    if kv is None:
        return None
    return {
        "key": kv.key,
        "value": b64(kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    }


def event_json(event: WatchEvent) -> dict[str, Any]:
    return {"type": event.type, "kv": kv_json(event.kv), "revision": event.revision}


# --- the server ---------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


class BarnServer:
    """The API of one member, served on one event loop (http_protocol.py).

    One loop thread serves every connection (threads per connection fought the tick thread
    for the GIL), the tick thread runs Raft, a small pool forwards requests to the leader
    when this member is a follower, and a thread expires leases on the leader.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.configured = {m.name: m for m in [config.me, *config.peers]}
        self._leader: Member | None = None
        self.node = BarnNode(config)
        self.closed = threading.Event()
        self._forwarders = concurrent.futures.ThreadPoolExecutor(FORWARD_THREADS, thread_name_prefix="barn-forward")
        self._forward_connections = threading.local()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._threads = [
            threading.Thread(target=self._serve, name="barn-http", daemon=True),
            threading.Thread(target=self._expire_leases, name="barn-leases", daemon=True),
        ]
        self.socket = socket.create_server(_split(config.me.http), family=_family(config.me.http), backlog=1024)
        self._serving = threading.Event()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._serving.wait(10)

    def close(self) -> None:
        self.closed.set()
        if self._loop is not None and self._stopped is not None:
            with contextlib.suppress(RuntimeError):  # the loop has stopped already
                self._loop.call_soon_threadsafe(self._stopped.set)
                self._loop.call_soon_threadsafe(self.node.wake_watchers)
        self._threads[0].join(10)
        self._forwarders.shutdown(wait=False, cancel_futures=True)
        self.node.destroy_synchronous()

    def _serve(self) -> None:
        """The event loop thread: every client connection, every proposal's answer."""
        loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self.node.bind(loop)
        self._stopped = asyncio.Event()
        loop.call_soon(self._serving.set)
        try:
            limits = Limits() if self.config.max_connections is None else Limits(self.config.max_connections)
            loop.run_until_complete(serve(self.request, self.socket, self._stopped, limits))
        finally:
            loop.close()

    @property
    def members(self) -> dict[str, Member]:
        """The group now: the configured members, changed by the replicated add/remove records."""
        members = dict(self.configured)
        with self.node.replica.lock:
            changes = dict(self.node.replica.state.members)
        for name, addresses in changes.items():
            if addresses is None:
                members.pop(name, None)
            else:
                members[name] = Member(name, *addresses)
        return members

    # leadership
    def leader(self) -> Member | None:
        leader = self.node._getLeader()
        if leader is None:
            return None
        address = getattr(leader, "address", str(leader))
        if self._leader is None or self._leader.raft != address:  # asked on every answer: cached
            self._leader = next((m for m in self.members.values() if m.raft == address), None)
        return self._leader

    def is_leader(self) -> bool:
        return bool(self.node._isLeader())

    def _expire_leases(self) -> None:
        """(the barn-leases thread) Propose the expiry of due leases while this member leads.
        It must outlive any failure: a dead expirer keeps every lease forever."""
        failing = False
        while not self.closed.wait(LEASE_CHECK):
            try:
                self._expire_due()
                failing = False
            except NoLeader:
                pass  # leadership moved or no quorum: the next leader expires them
            except Exception:
                if not failing:  # once per run of failures, not every 50 ms
                    log.exception("expiring leases failed; retrying")
                failing = True

    def _expire_due(self) -> None:
        if not self.is_leader():
            return
        now = time.time()
        with self.node.replica.lock:
            due = self.node.replica.state.due_leases(now)
        if due:
            self.node.commit_blocking({"op": "expire", "now": now})

    # --- HTTP ---------------------------------------------------------------------------

    async def request(self, request: Request) -> Response:
        """One HTTP request: answer it, and say who leads (clients go there next)."""
        forwarded = FORWARDED_RAW in request.headers
        answer = await self.answer(request.method, request.path, request.body, forwarded=forwarded)
        headers = list(answer.headers.items())
        leader = self.leader()
        if leader is not None:
            headers.append((LEADER_HEADER, leader.http))
        return Response(answer.status, json.dumps(answer.payload).encode(), headers)

    async def answer(self, method: str, path: str, raw: bytes, forwarded: bool = False) -> Answer:
        if method == "GET":
            if path == "/v1/status":
                return Answer(200, self.status())
            return Answer(404, {"error": "not_found", "message": f"no {path}"})
        try:
            # every field checked against the route's schema, here and on the leader again if
            # forwarded: a bad request is a 400 and never reaches the Raft log
            body = schema.parse(path, raw)
        except schema.UnknownRoute:
            return Answer(404, {"error": "not_found", "message": f"no {path}"})
        except BarnError as exc:
            return Answer(400, {"error": "bad_request", "message": f"{path}: {exc}"})
        try:
            if isinstance(body, schema.Get | schema.Scan) and body.serializable:
                return Answer(200, self.local_read(body))
            if not self.is_leader():
                return await self._forward(path, raw, forwarded)
            if isinstance(body, schema.MemberAdd | schema.MemberRemove):
                return Answer(200, await self._members(body))
            return Answer(200, await self.handle(body))
        except NoLeader as exc:
            return _unavailable(str(exc))
        except CompactedError as exc:
            return Answer(400, {"error": "compacted", "message": str(exc)})
        except LeaseNotFoundError as exc:
            return Answer(404, {"error": "lease_not_found", "message": str(exc)})
        except BarnError as exc:  # the state refused the command (its result was an error)
            return Answer(400, {"error": "bad_request", "message": str(exc)})

    # operations (on the leader)
    async def handle(self, body: schema.Body) -> Any:
        node = self.node
        if isinstance(body, schema.Put):
            command: dict[str, Any] = {"op": "put", "key": body.key, "value": body.value, "lease": body.lease}
            return {"revision": await node.commit(_with_id(command, body.request_id))}
        if isinstance(body, schema.Delete):
            deleted = await node.commit(_with_id({"op": "delete", "key": body.key}, body.request_id))
            return {"deleted": bool(deleted)}
        if isinstance(body, schema.Txn):
            command = {
                "op": "txn",
                "compare": [(key, revision) for key, revision in body.compare],
                "success": [(op.key, op.value, None) for op in body.success],
                "failure": [(op.key, op.value, None) for op in body.failure],
            }
            held, revision = await node.commit(_with_id(command, body.request_id))
            return {"succeeded": held, "revision": revision}
        if isinstance(body, schema.Get):
            key = body.key
            return {"kv": kv_json(await node.read(lambda s: s.get(key)))}
        if isinstance(body, schema.Scan):
            prefix, limit = body.prefix, body.limit
            return {"kvs": [kv_json(kv) for kv in await node.read(lambda s: s.scan(prefix, limit))]}
        if isinstance(body, schema.Nothing):  # /v1/revision
            return {"revision": await node.read(lambda s: s.revision)}
        if isinstance(body, schema.Watch):
            return await self._watch(body)
        if isinstance(body, schema.Grant):
            grant = {"op": "grant", "ttl": body.ttl, "now": time.time()}
            return {"lease": await node.commit(_with_id(grant, body.request_id))}
        if isinstance(body, schema.KeepAlive):
            result = await node.commit({"op": "keep_alive", "lease": body.lease, "now": time.time()})
            return {"expires_at": result}
        if isinstance(body, schema.Revoke):
            revoked = await node.commit(_with_id({"op": "revoke", "lease": body.lease}, body.request_id))
            return {"revision": revoked}
        raise AssertionError(f"no handler for {type(body).__name__}")  # schema.ROUTES and this agree

    def local_read(self, body: schema.Get | schema.Scan) -> dict[str, Any]:
        """This member's applied state, without a barrier or the leader (etcd's "serializable"
        reads): may be stale; for diagnostics and checks of each member's copy."""
        with self.node.replica.lock:
            state = self.node.replica.state
            if isinstance(body, schema.Get):
                return {"kv": kv_json(state.get(body.key)), "revision": state.revision}
            kvs = state.scan(body.prefix, body.limit)
            return {"kvs": [kv_json(kv) for kv in kvs], "revision": state.revision}

    async def _watch(self, body: schema.Watch) -> dict[str, Any]:
        """Events under ``prefix`` from ``from_revision``: at once if there are some, else
        waiting up to ``wait`` seconds. ``next`` is where the client's next call starts."""
        prefix, from_revision = body.prefix, body.from_revision
        start = await self.node.read(lambda s: from_revision if from_revision > 0 else s.revision + 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body.wait
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            self.node._watchers.add(waiter)  # before looking: a change applied meanwhile wakes it
            with self.node.replica.lock:
                state = self.node.replica.state
                events = state.events_since(prefix, start)  # CompactedError: 400
                revision = state.revision
            left = deadline - loop.time()
            if events or left <= 0 or self.closed.is_set():
                self.node._watchers.discard(waiter)
                return {"events": [event_json(e) for e in events], "next": max(start, revision + 1)}
            await asyncio.wait([waiter], timeout=left)

    async def _members(self, body: schema.MemberAdd | schema.MemberRemove) -> dict[str, Any]:
        """Add or remove a member (pysyncobj's dynamic membership, one change at a time)."""
        member = Member(body.name, body.raft, body.http)
        adding = isinstance(body, schema.MemberAdd)
        if not adding and not body.raft:  # removing by name: its address is known
            known = self.members.get(member.name)
            if known is None:
                raise BarnError(f"no member named {member.name!r}")
            member = known
        # Idempotent: the change is made only if needed, the address recorded in any case. So a
        # repeated add (or remove) completes one whose leader died between the two steps.
        in_group = member.raft == self.config.me.raft or _peer(self.node, member.raft) is not None
        if adding:
            # a member that cannot be reached would count towards the quorum from now on (and
            # with 2 members, stop the group): refuse it before changing anything
            loop = asyncio.get_running_loop()
            for what, address in (("Raft", member.raft), ("HTTP", member.http)):
                problem = await loop.run_in_executor(self._forwarders, _unreachable, address)
                if problem:
                    raise BarnError(f"cannot add {member.name}: its {what} address {address} {problem}")
        if adding != in_group:
            await self.node.membership(adding, member.raft)
        record = {"op": "member", "name": member.name, "raft": member.raft, "http": member.http}
        await self.node.commit(record if adding else {**record, "removed": True})
        return {"members": sorted(self.members)}

    async def _forward(self, path: str, raw: bytes, forwarded: bool) -> Answer:
        leader = self.leader()
        if leader is None or forwarded or leader.name == self.config.me.name:
            return _unavailable("no leader: an election is in progress or there is no quorum")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._forwarders, self._forward_blocking, leader, path, raw)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return _unavailable(f"the leader {leader.name} cannot be reached: {exc}")

    def _forward_blocking(self, leader: Member, path: str, raw: bytes) -> Answer:
        """One forwarded request, on a keep-alive connection this pool thread keeps to the leader.
        A kept connection the leader has closed meanwhile (its idle timeout) fails at once: the
        request is sent again on a new one, once (as a client would retry it: a write's request
        id makes it apply once)."""
        reused = getattr(self._forward_connections, "connection", None) is not None
        try:
            return self._forward_once(leader, path, raw)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            return self._forward_once(leader, path, raw)

    def _forward_once(self, leader: Member, path: str, raw: bytes) -> Answer:
        cached = getattr(self._forward_connections, "connection", None)
        if cached is None or cached[0] != leader.http:
            if cached is not None:
                cached[1].close()
            host, port = _split(leader.http)
            timeout = COMMIT_TIMEOUT + schema.WATCH_WAIT_MAX + 5
            cached = (leader.http, http.client.HTTPConnection(host, port, timeout=timeout))
            self._forward_connections.connection = cached
        connection = cached[1]
        try:
            connection.request("POST", path, raw, {"Content-Type": "application/json", FORWARDED: "1"})
            reply = connection.getresponse()
            data = reply.read()
        except Exception:
            connection.close()
            self._forward_connections.connection = None
            raise
        retry = reply.getheader("Retry-After")
        return Answer(reply.status, json.loads(data), {"Retry-After": retry} if retry else {})

    def status(self) -> dict[str, Any]:
        status = self.node.getStatus()
        leader = self.leader()
        peers = {}
        for member in self.members.values():
            if member.name == self.config.me.name:
                continue
            peers[member.name] = {
                "raft": member.raft,
                "http": member.http,
                # pysyncobj wants its Node object (a removed member has none: not connected)
                "connected": bool(self.node.isNodeConnected(_peer(self.node, member.raft) or member.raft)),
                "match_index": status.get(f"match_idx_server_{member.raft}"),
            }
        return {
            "name": self.config.me.name,
            "state": {0: "follower", 1: "candidate", 2: "leader"}.get(status["state"], str(status["state"])),
            "leader": leader.name if leader else None,
            "term": status["raft_term"],
            "commit_index": status["commit_idx"],
            "last_applied": status["last_applied"],
            "log_len": status["log_len"],
            "has_quorum": bool(status["has_quorum"]),
            "revision": self.node.replica.state.revision,
            "peers": peers,
        }


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _unavailable(why: str) -> Answer:
    return Answer(503, {"error": "unavailable", "message": why}, {"Retry-After": str(RETRY_AFTER)})


def _peer(node: BarnNode, address: str) -> Any:
    """pysyncobj's Node for the other member at this Raft address; None if it is not one now."""
    for other in getattr(node, "_SyncObj__otherNodes", ()):
        if getattr(other, "address", None) == address:
            return other
    return None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if address.startswith("[") else socket.AF_INET


def _with_id(command: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    if request_id:
        command["request_id"] = request_id
    return command


MEMBER_CHECK_TIMEOUT = 2.0  # seconds to connect to a member being added


def _unreachable(address: str) -> str | None:
    """Why a TCP connection to ``address`` fails (None: it connects)."""
    try:
        host, port = _split(address)
        with socket.create_connection((host, port), timeout=MEMBER_CHECK_TIMEOUT):
            return None
    except TimeoutError:
        return f"did not answer within {MEMBER_CHECK_TIMEOUT:g}s"
    except (OSError, ValueError) as exc:
        return f"cannot be reached: {getattr(exc, 'strerror', None) or exc}"


def parse_member(text: str) -> Member:
    """``name=raft_host:port,http_host:port``."""
    name, _, addresses = text.partition("=")
    raft, _, http_address = addresses.partition(",")
    if not name or not raft or not http_address:
        raise ValueError(f"--peer: a member is name=raft_host:port,http_host:port, got {text!r}")
    return Member(name, raft, http_address)


MIN_SECRET_BYTES = 16


def read_secret(path: Path) -> bytes:
    """The shared secret from ``path`` (surrounding whitespace dropped). Raises ValueError, in
    one line, if the file cannot be read or is too short to be a secret."""
    try:
        secret = path.read_bytes().strip()
    except OSError as error:
        raise ValueError(f"--secret-file {path}: {error.strerror or error}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"--secret-file {path}: the secret has {len(secret)} bytes, at least {MIN_SECRET_BYTES} needed"
        )
    return secret


def run_server(config: ServerConfig) -> int:
    """Run one member until SIGTERM/SIGINT (``runink barn serve`` parses its options: commands.py)."""
    raise_fd_limit()  # before the server sizes its connection cap from it
    name, raft = config.me.name, config.me.raft
    logging.basicConfig(level=logging.WARNING, format=f"barn {name}: %(levelname)s %(message)s")
    if config.secret is None:
        log.warning(
            "the Raft port %s is unauthenticated: anyone who can connect to it can run code in this server; "
            "give every member the same --secret-file",
            raft,
        )
    server = BarnServer(config)
    server.start()
    print(json.dumps({"event": "serving", "name": name, "http": config.me.http, "pid": os.getpid()}), flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m runink.plugins.barn.raft.server``: the same command, with the same options,
    as ``runink barn serve`` (one parser: commands.serve_command)."""
    from runink.plugins.barn.raft.commands import run_serve

    return run_serve(sys.argv[1:] if argv is None else argv, prog_name="python -m runink.plugins.barn.raft.server")


if __name__ == "__main__":
    sys.exit(main())
