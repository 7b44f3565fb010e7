"""The replica: one Raft member's copy of the Barn, as pysyncobj (patched: see
``_vendor/pysyncobj/syncobj.py``) replicates it.

``BarnNode`` is the pysyncobj ``SyncObj``: proposals from the event loop (grouped per loop turn
into one log entry), linearizable reads, membership changes, and the snapshots it writes at
log compaction. ``BarnReplica`` applies the committed commands to the ``BarnState`` in log
order (pysyncobj's tick thread). ``expire_leases`` is the thread that proposes the expiry of
due leases while this member leads. The HTTP side is ``api.py``.

Linearizable reads use Raft's ReadIndex (``readIndex`` in the vendored syncobj.py, fix 9): the
leader records its commit index, confirms by one round of messages that a majority still
follows it in its term, waits until it has applied that index, and reads its own state; no log
entry, no fsync. The reads of one loop turn share a request, and the requests that arrive while
a round is in flight share the next round. Until a new leader has committed its election no-op
(an entry of its term; before that it does not know the commit index) a read falls back to
the read barrier: a replicated no-op proposed after the read arrived. A leader that steps down
or changes term answers its waiting reads "leadership lost" (503), so a leader cut off from the
majority, which gets no confirmation, never answers a read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import pickle
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pysyncobj import FAIL_REASON, SyncObjConf
from pysyncobj.monotonic import monotonic as monotonicTime  # (pysyncobj's clock: its deadlines)

# the vendored module's own SyncObjException: the installed pysyncobj's is another class
from runink.core.fstree import private_folder
from runink.plugins.barn.raft._vendor.pysyncobj.syncobj import (
    READ_INDEX_NOT_READY,
    SyncObj,
    SyncObjConsumer,
    SyncObjException,
    replicated,
)
from runink.plugins.barn.raft.journal import BarnJournal, BarnStorageError, fail_stop, first_index
from runink.plugins.barn.raft.tls import TlsFiles, TlsTransport
from runink.plugins.barn.state import DEFAULT_HISTORY_BYTES, DEFAULT_QUOTA_BYTES, BarnState, raise_for

COMMIT_TIMEOUT = 5.0  # seconds a write waits for its commit before answering 503
#: seconds a member's tick thread waits for an event before it looks at pysyncobj's timers
#: (heartbeats every election timeout / 6, elections, retries): their granularity
TICK_PERIOD = 0.01
LEASE_CHECK = 0.05  # seconds between the leader's looks for expired leases
Finished = tuple[Any, Any, Any]  # (a future or a batch's list of them, result(s), pysyncobj's error)
LEADER_STATE = 2  # pysyncobj's _RAFT_STATE.LEADER
#: while held back (``BarnNode.hold_back``): seconds between offers of the lead to a follower
HAND_OVER_EVERY = 0.05
LEADERSHIP_LOST: Any = object()  # handed to the loop when this member stops leading

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
    compaction_bytes: int = 64 << 20  # ...or once this many bytes of commands came (0: no bound)
    history: int = 100_000  # changes kept for watches
    history_bytes: int = DEFAULT_HISTORY_BYTES  # ...and their keys' and values' bytes, at most
    quota_bytes: int | None = DEFAULT_QUOTA_BYTES  # live keys and values a leader lets writes reach (None: no quota)
    secret: bytes | None = None  # shared by the members: authenticates and encrypts Raft traffic
    tls: TlsFiles | None = None  # mutual TLS between members and on the HTTP API (tls.py)
    # the cluster's token keys: with TLS, a client without a certificate may use the HTTP API
    # with a token that grants cluster-admin (none: a certificate is needed)
    auth_keys: list[Path] = field(default_factory=list)
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

    def __init__(self, history: int, on_change: Callable[[], None], history_bytes: int = DEFAULT_HISTORY_BYTES) -> None:
        super().__init__()
        self.lock = threading.Lock()  # the state: applied by the tick thread, read by the loop
        self.state = BarnState(history=history, history_bytes=history_bytes)
        self.history, self.history_bytes = history, history_bytes
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
        state = BarnState.restore(snapshot, history=self.history, history_bytes=self.history_bytes)
        with self.lock:
            self.state = state
        self.on_change()


SNAPSHOT_MAGIC = b"RUNINK-BARN-SNAPSHOT\n"
SNAPSHOT_SUM = struct.Struct("<QI")  # the pickled state's length and crc32


class _Summed:
    """A file the pickled snapshot is written to, counting its bytes and their crc32."""

    def __init__(self, out: Any) -> None:
        self.out, self.length, self.crc = out, 0, 0

    def write(self, data: bytes) -> int:
        self.length += len(data)
        self.crc = zlib.crc32(data, self.crc)
        return int(self.out.write(data))


def open_snapshot(path: str) -> BinaryIO:
    """A snapshot file, checked against its checksum and positioned at its pickled state (one
    written before checksums: taken as it is); read in pieces, not held whole (a 300 MiB
    snapshot took 600 MiB more at start). BarnStorageError if it is damaged, FileNotFoundError
    if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BarnStorageError(f"{path}: {exc.strerror or exc} (a member's files are opened through no link)") from None
    source = os.fdopen(fd, "rb")
    try:
        head = source.read(len(SNAPSHOT_MAGIC) + SNAPSHOT_SUM.size)
        if not head.startswith(SNAPSHOT_MAGIC):
            if head.startswith(b"\x80"):  # (a pickle: written before snapshots had a checksum)
                source.seek(0)
                return source
            raise BarnStorageError(f"{path}: not a Barn snapshot (its header): the file is damaged")
        length, crc = (
            SNAPSHOT_SUM.unpack_from(head, len(SNAPSHOT_MAGIC))
            if len(head) == len(SNAPSHOT_MAGIC) + SNAPSHOT_SUM.size
            else (-1, 0)
        )
        found, size = 0, 0
        while piece := source.read(1 << 20):
            found, size = zlib.crc32(piece, found), size + len(piece)
        if size != length or found != crc:
            raise BarnStorageError(
                f"{path}: the snapshot does not match its checksum: the file is damaged "
                "(move this member's data dir away and add it again: the others hold the state)"
            )
        source.seek(len(head))
        return source
    except BaseException:
        source.close()
        raise


class BarnNode(SyncObj):
    """The Raft member: pysyncobj commits commands, ``BarnReplica`` applies them.

    Two threads meet here: pysyncobj's tick thread applies commands and runs their callbacks;
    the event loop thread serves the API. Callbacks are handed to the loop in batches (one
    wake-up for every command a tick finished), never one thread switch per command.
    """

    def __init__(self, config: ServerConfig) -> None:
        private_folder(config.data_dir, "--data-dir")  # (another user's: their snapshot, unpickled here)
        try:  # (a damaged snapshot: one line, before it serves)
            open_snapshot(str(config.data_dir / "raft.dump")).close()
        except FileNotFoundError:
            first = first_index(str(config.data_dir / "raft.journal"))
            if first is not None and first > 1:  # (it hung not ready, for good)
                raise BarnStorageError(
                    f"{config.data_dir / 'raft.dump'}: missing, though the journal starts at entry {first} "
                    "(those before it are in the snapshot): move this member's data dir away and add it again"
                ) from None
        timeout = config.election_timeout
        conf = SyncObjConf(
            autoTick=True,
            # (paces pysyncobj's timers only: a command or a read wakes the tick thread at once,
            # [runink fix] 10; 1 ms here kept each member ticking ~1,000 times a second)
            autoTickPeriod=TICK_PERIOD,
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
        conf.runinkJournal = BarnJournal  # checksummed records, fail-stop (journal.py)
        # entries stay in memory until a snapshot replaces them: bounded by their bytes too
        conf.runinkCompactionBytes = config.compaction_bytes or None
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
        self._read_index: asyncio.Future[Any] | None = None  # the ReadIndex not yet requested (loop thread)
        self._batch: list[tuple[dict[str, Any], asyncio.Future[Any]]] = []  # proposals of this loop turn
        # told of each write proposed here: its seconds to commit and apply, and whether it did
        # (`runink barn serve --metrics`); None: not measured
        self.on_commit: Callable[[float, bool], None] | None = None
        self.replica = BarnReplica(config.history, self._changed, config.history_bytes)
        # held back while the `runink server` it runs for is silent (hold_back; tick thread)
        self._held = False
        self._offers = 0  # (offers of the lead made while held: to each follower in turn)
        self._next_offer = 0.0
        # with TLS every Raft connection is mutual TLS with certificates of the cluster CA (tls.py)
        transport = {} if config.tls is None else {"transportClass": functools.partial(TlsTransport, tls=config.tls)}
        super().__init__(config.me.raft, [p.raft for p in config.peers], conf, consumers=[self.replica], **transport)

    def _write_snapshot(self, path: str, raft_data: Any) -> None:
        """(tick thread, at log compaction) The state and pysyncobj's own record, to ``path``,
        behind a header holding its checksum; pysyncobj renames it into place, fsynced with its
        directory (vendored syncobj.py, fix 7)."""
        with self.replica.lock:
            barn = self.replica.state.snapshot()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # (a link left there is removed, never written through)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(SNAPSHOT_MAGIC + b" " * SNAPSHOT_SUM.size)  # (its sum, once written)
            summed = _Summed(out)
            pickle.dump({"format": 1, "barn": barn, "raft": raft_data}, summed, protocol=pickle.HIGHEST_PROTOCOL)
            out.seek(len(SNAPSHOT_MAGIC))
            out.write(SNAPSHOT_SUM.pack(summed.length, summed.crc))
            out.flush()
            if self._fsync:
                os.fsync(out.fileno())

    def _read_snapshot(self, path: str) -> Any:
        """(at start, and when the leader sent a snapshot) Restore the state; pysyncobj's record.
        A snapshot that fails its checksum stops the member (it was checked at start already)."""
        try:
            with open_snapshot(path) as source:
                data = pickle.load(source)
        except BarnStorageError as exc:
            fail_stop(str(exc))
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

    def _new_pending(self) -> asyncio.Future[Any]:
        """A future for a proposal's outcome, answered "leadership lost" if this steps down."""
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def _callback(self) -> tuple[asyncio.Future[Any], Any]:
        future = self._new_pending()
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
        future = self._new_pending()
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
        began = time.perf_counter()
        try:
            outcome = await self._outcome(self._propose(command), "the write")
        except NoLeader:
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - began, False)
            raise
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - began, True)
        return raise_for(outcome)

    def commit_blocking(self, command: dict[str, Any], timeout: float = COMMIT_TIMEOUT) -> Any:
        """``commit`` for threads other than the loop's (the lease expirer)."""
        try:
            return self.replica.apply(command, sync=True, timeout=timeout)
        except SyncObjException as exc:
            raise NoLeader(f"the write was not committed ({exc.errorCode})") from None

    async def read(self, reader: Callable[[BarnState], Any]) -> Any:
        """A linearizable read: ReadIndex (a majority confirms this leader after the read began,
        and this member has applied the commit index it had then), then read. A leader that
        has not yet committed an entry of its term uses the read barrier instead: a no-op
        proposed after this read began, applied. Reads arriving in the same loop turn share one
        ReadIndex round (or barrier)."""
        if self._read_index is None:
            self._read_index = self._new_pending()
            assert self._loop is not None
            self._loop.call_soon(self._request_read_index)
        request = self._read_index
        try:
            await self._outcome(request, "the read index", shared=True)
        except NoLeader:
            if not request.done() or request.result()[1] != READ_INDEX_NOT_READY:
                raise
            if self._barrier is None:
                self._barrier = self._propose({"op": "noop"})
            await self._outcome(self._barrier, "the read barrier", shared=True)
        with self.replica.lock:
            return reader(self.replica.state)

    def _request_read_index(self) -> None:
        # (loop thread, after the reads of this turn) their shared ReadIndex request
        future, self._read_index = self._read_index, None
        assert future is not None
        self.readIndex(lambda index, error: self._hand_over((future, index, error)))

    async def membership(self, add: bool, raft: str) -> None:
        future, callback = self._callback()
        (self.addNodeToCluster if add else self.removeNodeFromCluster)(raft, callback=callback)
        await self._outcome(future, "the membership change")

    def is_leader(self) -> bool:
        return bool(self._isLeader())

    # --- its server's silence (server.run_server) ------------------------------------------

    def hold_back(self, held: bool) -> None:
        """While ``held`` (the `runink server` this member runs for is silent: paused, frozen),
        the member stands for no election, and when it leads it offers the lead to each
        connected follower in turn (Raft's TimeoutNow: only one caught up takes it, and the
        others catch up meanwhile). It never steps down without a taker: a group whose other
        members cannot lead (alone, behind, held back too) keeps this leader rather than none.
        It still votes and replicates: the group keeps its majority, and only the lead (so the
        scheduling) moves to a member whose server runs. Applied by the tick thread
        (``_onTick``)."""
        self._held = held

    def _onTick(self, timeToWait: float = 0.0) -> None:  # (pysyncobj's names)
        if self._held:
            self._stand_aside()
        super()._onTick(timeToWait)

    def _stand_aside(self) -> None:
        """(tick thread, while held back) No candidacy; the lead offered."""
        raft: Any = self  # (pysyncobj's own state, name-mangled: SyncObj's private attributes)
        now = monotonicTime()
        if raft._SyncObj__raftState != LEADER_STATE:
            # its election timer never runs out: a follower or candidate stands for nothing, and
            # a TimeoutNow it got is dropped (else, once no longer held, its leader's heartbeats
            # would not reset its timer: one needless election)
            raft._SyncObj__raftElectionDeadline = now + raft._SyncObj__generateRaftTimeout()
            raft._SyncObj__transferInProgress = False
            return
        if now < self._next_offer:
            return
        self._next_offer = now + HAND_OVER_EVERY
        connected = raft._SyncObj__connectedNodes
        followers = sorted((n for n in raft._SyncObj__otherNodes if n in connected), key=lambda n: str(n.id))
        if followers:
            self._offers += 1
            self.transferLeadership(followers[self._offers % len(followers)])  # (denied unless caught up)


def expire_leases(node: BarnNode, closed: threading.Event) -> None:
    """(the barn-leases thread) Propose the expiry of due leases while this member leads,
    until ``closed``. It must outlive any failure: a dead expirer keeps every lease forever."""
    failing = False
    while not closed.wait(LEASE_CHECK):
        try:
            _expire_due(node)
            failing = False
        except NoLeader:
            pass  # leadership moved or no quorum: the next leader expires them
        except Exception:
            if not failing:  # once per run of failures, not every 50 ms
                log.exception("expiring leases failed; retrying")
            failing = True


def _expire_due(node: BarnNode) -> None:
    if not node.is_leader():
        return
    now = time.time()
    with node.replica.lock:
        due = node.replica.state.due_leases(now)
    if due:
        node.commit_blocking({"op": "expire", "now": now})


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def peer(node: BarnNode, address: str) -> Any:
    """pysyncobj's Node for the other member at this Raft address; None if it is not one now."""
    for other in getattr(node, "_SyncObj__otherNodes", ()):
        if getattr(other, "address", None) == address:
            return other
    return None
