"""Slice logs through pipes the executor owns, written to capped, rotated files.

A slice writing its log file directly can outrun any check of the file's size (a 0.25 s poll
let a step leave 1.07 GB where 2 x 10 MiB was promised). Here the slice's stdout and stderr
are the write ends of pipes; one thread of the executor reads them and writes
``<stream>.log`` itself: when the next bytes would take it past the cap it renames it to
``<stream>.log.1`` (same file, same 0640 mode, replacing the previous one) and starts a new
one. So at most twice the cap per stream is on disk, the newest lines are kept, and a slice
that writes faster than the disk takes them is slowed down by the full pipe, never the other
way round.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import sys
import threading
from pathlib import Path

PIPE_SIZE = 256 * 1024  # bytes a slice may write ahead of the pump (the default 64 KiB halves throughput)
READ_SIZE = 256 * 1024


class CappedLog:
    """``path``, rotated to ``path.1`` before it would grow past ``cap`` bytes (0: no cap)."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self.cap = cap
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o640)
        os.fchmod(fd, 0o640)  # whatever the umask: the slice's output is not for every user
        return fd

    def write(self, data: bytes) -> None:
        """Append ``data``; if the file cannot be written (a full disk, a removed task dir) the
        data is dropped: the pump must keep draining the pipe, or the slice would block."""
        if self.fd < 0:
            return
        try:
            self._write(data)
        except OSError:
            self.close()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = len(view) if self.cap <= 0 else self.cap - self.size
            if len(view) <= room:
                self._append(view)
                return
            # what fits, cut after its last full line if it has one (a line longer than the
            # cap is split), then a new file
            cut = bytes(view[:room]).rfind(b"\n") + 1 if room > 0 else 0
            if cut == 0 and self.size == 0:
                cut = room
            self._append(view[:cut])
            view = view[cut:]
            self._rotate()

    def _append(self, data: memoryview) -> None:
        while data:
            written = os.write(self.fd, data)
            data = data[written:]
            self.size += written

    def _rotate(self) -> None:
        os.replace(self.path, self.rotated)  # the live file itself: its mode is kept
        os.close(self.fd)
        self.fd = -1
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size
        if self.size:  # not ours (something made it meanwhile): start it empty
            os.ftruncate(self.fd, 0)
            self.size = 0

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class LogPump:
    """One daemon thread copying every slice's pipes into their ``CappedLog``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._epoll = select.epoll()
        self._lock = threading.Lock()
        self._logs: dict[int, tuple[CappedLog, threading.Event]] = {}  # pipe read end -> its log
        self._thread = threading.Thread(target=self._run, daemon=True, name="runink-log-pump")
        self._thread.start()

    def add(self, path: Path) -> tuple[int, threading.Event]:
        """A pipe whose bytes go to ``path``: (its write end, for the slice; an event set once
        every writer closed it and all it carried is in the file)."""
        log = CappedLog(path, self.cap)
        read_end, write_end = os.pipe()  # both close-on-exec
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(read_end, False)
        drained = threading.Event()
        with self._lock:
            self._logs[read_end] = (log, drained)
        self._epoll.register(read_end, select.EPOLLIN)
        return write_end, drained

    def _run(self) -> None:
        while True:
            for fd, _mask in self._epoll.poll():
                try:
                    self._pump(fd)
                except Exception as exc:  # never stop: every slice's output goes through here
                    print(f"runink linux executor: log pump: {exc!r}", file=sys.stderr)

    def _pump(self, fd: int) -> None:
        with self._lock:
            entry = self._logs.get(fd)
        if entry is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            entry[0].write(data)
            return
        self._epoll.unregister(fd)  # end of file: every process that could write is gone
        with self._lock:
            del self._logs[fd]
        os.close(fd)
        entry[0].close()
        entry[1].set()
