"""The runner's side of a slice's report: JSON lines it reads while the slice runs.

The report file sits in the slice's work dir, which the slice owns: it may rename, replace
or grow the file as it likes (a FIFO in its place hung the runner; a 400 MB line took it
from 41 to 860 MB). So the runner creates the file itself before the slice starts and reads
only through the descriptor it opened then (a regular file: reading never blocks, whatever
the name later points to); it holds at most one line of ``max_line`` bytes in memory (longer
lines are discarded and counted), reads at most ``poll_bytes`` per look while the slice
runs, and at the end skips to the last ``tail_bytes`` (the final "done" line is the last).
The data plane (core/dataplane/slice.py) writes it; its format is unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_LINE = 1024 * 1024
POLL_BYTES = 4 * 1024 * 1024  # per look while the slice runs (10 looks a second)
TAIL_BYTES = 8 * 1024 * 1024  # at the end: what is read of a report the looks did not reach
CHUNK = 64 * 1024


# C0 and C1 controls, line and paragraph separators, and the bidirectional overrides that
# make text read differently from what it is
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str, limit: int) -> str:
    """Text a slice wrote, safe to print on the user's terminal: one line, no control
    characters (an escape sequence could retitle the window, clear the screen or worse), at
    most ``limit`` characters."""
    return _CONTROL.sub("\ufffd", text[:limit].replace("\r\n", " ").replace("\n", " "))


def terminal_safe(text: str) -> str:
    """``text`` without what a terminal acts on (escape sequences, other control characters,
    bidirectional overrides: each as U+FFFD), its line breaks and tabs kept: a table's cell,
    which may hold anyone's text (a binding's subject, an annotation)."""
    return _CONTROL.sub("\ufffd", text)


def one_line(text: str, limit: int) -> str:
    """``text`` as one line that ``str.isprintable`` takes whole (each other character, a
    surrogate of a name that is not UTF-8 too, as U+FFFD), cut to at most ``limit`` bytes of
    UTF-8: what a server takes from a node as it is (``printable`` keeps some format
    characters, which a server's check refuses)."""
    line = "".join(c if c.isprintable() else "\ufffd" for c in text[:limit])
    return line.encode()[:limit].decode(errors="ignore")


class ReportError(Exception):
    pass


class ReportReader:
    def __init__(
        self,
        fd: int,
        *,
        max_line: int = MAX_LINE,
        poll_bytes: int = POLL_BYTES,
        tail_bytes: int = TAIL_BYTES,
    ) -> None:
        self.fd = fd
        self.max_line = max_line
        self.poll_bytes = poll_bytes
        self.tail_bytes = tail_bytes
        self.offset = 0
        self._partial = bytearray()
        self._discarding = False  # inside a line being dropped
        self._too_long = False  # ... because it is longer than max_line (counted), not cut by a skip
        self.discarded = 0  # lines longer than max_line
        self.skipped = 0  # bytes never read (a report larger than the reads could follow)

    @classmethod
    def create(cls, path: Path, **limits: int) -> ReportReader:
        """Create the empty report and open it for reading (an isolating executor shows the
        work dir's files to the slice as its own). Refuses anything already at ``path``: the
        runner reads only a file it made."""
        try:
            fd = os.open(
                path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise ReportError(f"cannot create the report file {path}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # (O_EXCL made it: a regular file, unless a bug)
            os.close(fd)
            raise ReportError(f"{path} is not a regular file")
        return cls(fd, **limits)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def events(self, final: bool = False) -> Iterator[dict[str, Any]]:
        """The JSON objects of the complete lines written since the last call (other lines are
        ignored). ``final``: the slice has ended; read what is left, or its last ``tail_bytes``."""
        if self.fd < 0:
            return
        budget = self.poll_bytes
        if final:
            with contextlib.suppress(OSError):
                size = os.fstat(self.fd).st_size
                if size - self.offset > self.tail_bytes:  # jump to the tail; the cut line is dropped
                    self.skipped += size - self.tail_bytes - self.offset
                    self.offset = size - self.tail_bytes
                    self._partial.clear()
                    self._discarding, self._too_long = True, False  # the line cut by the jump
            budget = self.tail_bytes + CHUNK
        while budget > 0:
            try:
                chunk = os.pread(self.fd, min(CHUNK, budget), self.offset)
            except OSError:
                return
            if not chunk:
                return
            self.offset += len(chunk)
            budget -= len(chunk)
            yield from self._lines(chunk)

    def _lines(self, chunk: bytes) -> Iterator[dict[str, Any]]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not self._discarding and len(self._partial) + len(piece) > self.max_line:
                self._discarding, self._too_long = True, True  # drop what we hold and the rest of it
                self._partial.clear()
            if end < 0:
                if not self._discarding:
                    self._partial += piece
                return
            start = end + 1
            if self._discarding:
                self._discarding = False
                self.discarded += self._too_long
                continue
            line = bytes(self._partial) + piece
            self._partial.clear()
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):  # not JSON (nor UTF-8), or nested too deep
                continue
            if isinstance(event, dict):
                yield event

    def notes(self) -> list[str]:
        """What was ignored, one sentence each (for the runner's log)."""
        notes = []
        if self.discarded:
            notes.append(f"{self.discarded} report line(s) longer than {self.max_line} bytes discarded")
        if self.skipped:
            notes.append(f"{self.skipped} bytes of the report skipped (more than the runner reads)")
        return notes
