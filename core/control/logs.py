"""Tasks' output in the Barn: a bounded tail per attempt and stream, fenced like reports.

An agent sends the new bytes of a running attempt's stdout and stderr (``LogChunk``). Each
attempt and stream has one key under its herd's prefix (``log_key``) holding the total bytes of
the stream seen so far and the last ``TAIL_BYTES`` of them: older bytes are dropped, and a
reader is told how many it missed. A chunk is written only while the task is at the chunk's
attempt and token, in a transaction that compares the task's revision, so a late agent's output
never lands beside (or over) the new attempt's.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from runink.core.control.records import RunState, keys
from runink.core.control.store import MAX_CONFLICT_RETRIES, ClusterStore, Conflict, NotFound
from runink.core.interfaces.barn import TxnOp
from runink.core.report import printable
from runink.core.units import check_name

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
#: bytes kept per attempt and stream (older ones are dropped)
TAIL_BYTES = 256 * 1024
#: what one chunk may carry (an agent sends more as several)
MAX_CHUNK_BYTES = 64 * 1024
#: attempts of a task whose output is kept: an older one's goes when a newer one first writes
#: (a job of 100 retries kept 2 x 256 KiB of each in every Barn member)
KEPT_ATTEMPTS = 3
_HEADER = struct.Struct(">Q")  # the stream's total bytes seen, before the kept tail


def log_key(herd: str, task_id: str, attempt: int, stream: str) -> str:
    if stream not in STREAMS:
        raise ValueError(f"stream {stream!r}: expected stdout or stderr")
    return f"/herds/{check_name(herd, 'herd')}/logs/{check_name(task_id, 'task')}/{int(attempt)}/{stream}"


@dataclass(frozen=True)
class Chunk:
    """New bytes of an attempt's ``stream``: ``data`` starts at ``offset`` in it."""

    herd: str
    task_id: str
    attempt: int
    token: int
    stream: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class Tail:
    """What is kept of one attempt's stream: ``data`` is its bytes from ``start`` to ``total``."""

    total: int
    data: bytes

    @property
    def start(self) -> int:
        return self.total - len(self.data)

    def encode(self) -> bytes:
        return _HEADER.pack(self.total) + self.data

    @classmethod
    def decode(cls, value: bytes, key: str) -> Tail:
        if len(value) < _HEADER.size:
            raise ValueError(f"Barn key {key}: a log tail shorter than its header")
        (total,) = _HEADER.unpack_from(value)
        data = value[_HEADER.size :]
        if len(data) > total:
            raise ValueError(f"Barn key {key}: more bytes kept than seen")
        return cls(total, data)

    def with_chunk(self, offset: int, data: bytes, limit: int = TAIL_BYTES) -> Tail:
        """This tail after the chunk of ``data`` at ``offset``: bytes seen already are skipped
        (a chunk sent again after a broken stream); a chunk past the end starts the tail anew
        (the agent skipped what it could not send in time: those bytes count as dropped)."""
        end = offset + len(data)
        if end <= self.total:
            return self
        kept = data if offset > self.total else self.data + data[self.total - offset :]
        return Tail(end, kept[-limit:] if len(kept) > limit else kept)


@dataclass(frozen=True)
class LogRead:
    """A read from ``offset``: ``data`` starts at ``start`` (past ``offset`` when the bytes
    between were dropped); ``next_offset`` is where the next read starts."""

    attempt: int
    start: int
    data: bytes
    next_offset: int

    def dropped(self, offset: int) -> int:
        return max(0, self.start - offset)


class TaskLogs:
    """The tails of tasks' output, on a ClusterStore's Barn."""

    def __init__(self, store: ClusterStore, *, tail_bytes: int = TAIL_BYTES) -> None:
        self.store = store
        self.tail_bytes = tail_bytes

    def read_all(self, herd: str, task_id: str, attempt: int) -> dict[str, LogRead]:
        """What is kept of each stream of the task's ``attempt``, from its start, in one scan
        (an attempt's streams share a prefix)."""
        if attempt <= 0:  # never scheduled: nothing ran yet
            return {stream: LogRead(attempt, 0, b"", 0) for stream in STREAMS}
        prefix = log_key(herd, task_id, attempt, STREAMS[0]).rpartition("/")[0] + "/"
        found = {kv.key[len(prefix) :]: kv for kv in self.store.barn.scan(prefix)}
        reads = {}
        for stream in STREAMS:
            kv = found.get(stream)
            tail = Tail(0, b"") if kv is None else Tail.decode(kv.value, kv.key)
            reads[stream] = LogRead(attempt, tail.start, tail.data, tail.total)
        return reads

    def append(self, chunk: Chunk) -> tuple[bool, int]:
        """Keep a chunk of an attempt's stream. Returns (accepted, bytes seen so far);
        refused (False, 0) when the task is not at the chunk's attempt and token, or unknown."""
        herd, task_id, attempt, token = chunk.herd, chunk.task_id, chunk.attempt, chunk.token
        key = log_key(herd, task_id, attempt, chunk.stream)
        where = printable(f"output of task {task_id} attempt {attempt} (token {token})", 300)
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                task = self.store.task(herd, task_id)
            except NotFound:
                log.warning("%s refused: no such task", where)
                return False, 0
            if task.record.attempt != attempt or task.record.token != token:
                log.warning("%s refused: fenced (the task is at attempt %d)", where, task.record.attempt)
                return False, 0
            if task.record.state is RunState.PENDING:  # (its attempt taken back: see Lifecycle)
                log.warning("%s refused: the task waits to be placed", where)
                return False, 0
            found = self.store.barn.get(key)
            tail = Tail(0, b"") if found is None else Tail.decode(found.value, key)
            changed = tail.with_chunk(chunk.offset, chunk.data, self.tail_bytes)
            if changed is tail:
                return True, tail.total
            read = [(keys.task(herd, task_id), task.revision), (key, 0 if found is None else found.mod_revision)]
            older = self._older_attempts(herd, task_id, attempt) if found is None else []
            held, _ = self.store.barn.transaction(read, [TxnOp(key, changed.encode()), *older])
            if held:
                return True, changed.total
        raise Conflict(f"{where}: changed by others {MAX_CONFLICT_RETRIES} times in a row")

    def _older_attempts(self, herd: str, task_id: str, attempt: int) -> list[TxnOp]:
        """Deletes of the task's output of attempts before the last KEPT_ATTEMPTS (up to
        ``attempt``): asked when an attempt first writes, so a task keeps at most that many."""
        prefix = log_key(herd, task_id, 0, STREAMS[0]).rpartition("/0/")[0] + "/"
        gone = []
        for kv in self.store.barn.scan(prefix):
            number = kv.key[len(prefix) :].partition("/")[0]
            if number.isdigit() and int(number) <= attempt - KEPT_ATTEMPTS:
                gone.append(TxnOp(kv.key, None))
        return gone

    def read(self, herd: str, task_id: str, stream: str, offset: int, attempt: int | None = None) -> LogRead:
        """What is kept of the task's ``stream`` from ``offset`` (default: its current
        attempt's). NotFound for an unknown task."""
        task = self.store.task(herd, task_id).record
        number = task.attempt if attempt is None else attempt
        if number <= 0:  # never scheduled: nothing ran yet
            return LogRead(number, 0, b"", 0)
        key = log_key(herd, task_id, number, stream)
        found = self.store.barn.get(key)
        tail = Tail(0, b"") if found is None else Tail.decode(found.value, key)
        start = max(offset, tail.start)
        if start >= tail.total:  # nothing new (or an offset past what was seen: read again from the end)
            return LogRead(number, tail.total, b"", tail.total)
        return LogRead(number, start, tail.data[start - tail.start :], tail.total)
