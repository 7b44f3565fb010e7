"""The agent's side of tasks' output: sends the new bytes of each running attempt's stdout
and stderr to the control plane, a bounded amount per round.

It reads the executor's log files in the task dir (``stdout.log``, ``stderr.log``), never
following a symbolic link and reading at most ``per_round`` bytes of each stream per round:
when more was written since the last round, the oldest of it is skipped (the server keeps only
a tail anyway) and the offsets say so. A control plane without ``log_chunk`` (the in-process
Lifecycle) gets nothing. What cannot be sent now (the server away) is sent on a later round;
an attempt the server fences is not sent again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from runink.core.agent.secrets import cut_outside, masked
from runink.core.control.logs import MAX_CHUNK_BYTES, STREAMS, TAIL_BYTES, Chunk
from runink.core.errors import RuninkError

log = logging.getLogger(__name__)

#: (herd, task id, attempt, fencing token), as the Agent's Attempt
Attempt = tuple[str, str, int, int]


#: a control plane's ``log_chunk``: (accepted, the bytes of the stream it has seen)
SendChunk = Callable[[Chunk], tuple[bool, int]]


@dataclass
class _Position:
    at: int = 0  # where the next read starts in the file
    offset: int = 0  # where that byte is in the stream (a rotated or truncated file starts again at 0)


@contextlib.contextmanager
def output_file(path: Path, what: str) -> Iterator[tuple[int, int] | None]:
    """An attempt's output file the slice writes, as (descriptor, size): opened without
    following a link and without blocking, and only if it is a regular file; None when it is
    not there (yet), a link, or not regular (an error other than those is logged)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ELOOP):
            log.warning("%s: cannot open %s: %s", what, path, exc.strerror)
        yield None
        return
    try:
        info = os.fstat(fd)
        yield (fd, info.st_size) if stat.S_ISREG(info.st_mode) else None
    finally:
        os.close(fd)


class LogShipper:
    def __init__(self, *, per_round: int = TAIL_BYTES, chunk_bytes: int = MAX_CHUNK_BYTES) -> None:
        self.per_round = per_round
        self.chunk_bytes = chunk_bytes
        self._positions: dict[tuple[Attempt, str], _Position] = {}
        self._fenced: set[Attempt] = set()
        self._masks: dict[Attempt, tuple[bytes, ...]] = {}

    def mask(self, attempt: Attempt, masks: tuple[bytes, ...]) -> None:
        """Send ``attempt``'s output with these values (its secrets) masked, as many ``*``: a
        value split between two reads is held back until the next (or the attempt's end)."""
        self._masks[attempt] = masks

    def masks(self, attempt: Attempt) -> tuple[bytes, ...]:
        """``attempt``'s secret values (none once it is forgotten, its last output sent)."""
        return self._masks.get(attempt, ())

    def ship(self, control: object, attempt: Attempt, task_dir: Path, *, last: bool = False) -> bool:
        """Send what the attempt wrote since the last call. True when nothing is left to send
        (all sent, or the server takes none of it); False when the server was away. ``last``:
        it ended, forget it once nothing is left (until then its read positions are kept, so
        the next call sends its last output)."""
        send: SendChunk | None = getattr(control, "log_chunk", None)
        done = True
        if send is not None and attempt not in self._fenced:
            for stream in STREAMS:
                if not self._ship_stream(send, attempt, task_dir / f"{stream}.log", stream, last):
                    done = attempt in self._fenced
                    break
        if last and done:
            self.forget(attempt)
        return done

    def forget(self, attempt: Attempt) -> None:
        self._fenced.discard(attempt)
        self._masks.pop(attempt, None)
        for stream in STREAMS:
            self._positions.pop((attempt, stream), None)

    def _ship_stream(self, send: SendChunk, attempt: Attempt, path: Path, stream: str, last: bool = False) -> bool:
        """False when the rest of this round's sending should stop (server away, fenced)."""
        herd, task_id, number, token = attempt
        position = self._positions.setdefault((attempt, stream), _Position())
        with output_file(path, f"output of task {task_id}") as opened:
            if opened is None:
                return True  # not written yet, or a link the agent will not follow
            fd, end = opened
            if end < position.at:  # rotated or truncated by the executor: read it from its start
                position.at = 0
            skipped = max(0, end - position.at - self.per_round)
            position.at += skipped
            position.offset += skipped
            masks = self.masks(attempt)
            hold = len(masks[0]) - 1 if masks else 0  # (a value that may go on past a read)
            while position.at < end:
                try:
                    data = os.pread(fd, min(self.chunk_bytes + hold, end - position.at), position.at)
                except OSError as exc:  # a disk error: this stream's rest is lost, the rest goes on
                    log.warning("output of task %s: cannot read %s: %s", task_id, path, exc.strerror)
                    return True
                if not data:
                    break
                if masks:  # (sent up to where no value can go on past it, none cut in two: masked)
                    final = last and position.at + len(data) == end
                    cut = cut_outside(data, masks, min(self.chunk_bytes, len(data) if final else len(data) - hold))
                    data = masked(data[:cut], masks) if cut > 0 else b""
                    if not data:
                        break  # (the next round reads it again, with what follows)
                for start in range(0, len(data), self.chunk_bytes):  # (a value kept whole may pass a chunk)
                    piece = data[start : start + self.chunk_bytes]
                    try:
                        accepted, _seen = send(Chunk(herd, task_id, number, token, stream, position.offset, piece))
                    except (RuninkError, OSError) as exc:
                        log.info("output of task %s not sent yet: %s", task_id, exc)
                        return False
                    if not accepted:
                        log.info("output of task %s attempt %d refused (fenced): not sent again", task_id, number)
                        self._fenced.add(attempt)
                        return False
                    position.at += len(piece)
                    position.offset += len(piece)
            return True
