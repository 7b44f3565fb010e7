"""Naming one process across time (its pid and its start time, as /proc gives them), reading
the exit status a process's wrapper left, and a child knowing that its parent serves it still
(it dies with its parent; it hears its parent's beats)."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc's), or None if there is no
    such process or it has ended (a zombie): with the pid it names one process, not whichever
    reuses the pid later."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as file:
            text = file.read(4096)
    except (OSError, ValueError):
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: fields count from its end
        fields = text[text.rindex(b")") + 2 :].split()
        return None if fields[0] == b"Z" else int(fields[19])
    except (ValueError, IndexError):
        return None


MAX_STATUS_BYTES = 16  # an exit status as text: "-2147483648" and a line break fit


def read_exit_status(path: Path) -> int:
    """The exit status a task's wrapper or sandbox wrote to ``path``, which the task itself
    may have written anything to, or replaced (a Python slice runs in the process holding
    it open; a process-executor task owns its task dir): a sparse 2 GiB file was read whole.
    Read without following a link or blocking, at most MAX_STATUS_BYTES, and only a number
    in the range of an exit status counts: OSError or ValueError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file")
        text = os.read(fd, MAX_STATUS_BYTES + 1)
    finally:
        os.close(fd)
    code = int(text.strip()) if len(text) <= MAX_STATUS_BYTES else None
    if code is None or not -(2**31) <= code < 2**31:
        raise ValueError(f"{path}: not an exit status")
    return code


DIE_WITH_PARENT = "RUNINK_DIE_WITH_PARENT"  # the pid of the process this one must not outlive


def die_with_parent_from_env() -> None:
    """Die with the parent named by $RUNINK_DIE_WITH_PARENT (PR_SET_PDEATHSIG), or at once if
    it is gone already: a process that is started from a thread cannot be given it by a
    ``preexec_fn`` (unsafe once the parent runs threads), so the child asks for it itself."""
    parent = os.environ.pop(DIE_WITH_PARENT, "")
    if not parent.isdigit():
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):  # (it died before the call: no signal will come)
        os._exit(1)


PR_SET_PDEATHSIG = 1


PARENT_BEAT = "RUNINK_PARENT_BEAT"  # "FD:SECONDS": the pipe a parent beats on (ParentBeat) and its silence


class ParentBeat:
    """The heartbeat of a parent that writes to a pipe while it runs: whether it has been
    silent for more than ``silence`` seconds. A paused parent (SIGSTOP) or a frozen one writes
    nothing, though it lives: PR_SET_PDEATHSIG cannot tell a child that it serves no one.
    Read by the thread that asks (no reader thread: a child that was itself stalled reads what
    its parent wrote meanwhile before it answers, and is not fooled)."""

    def __init__(self, fd: int, silence: float) -> None:
        self.fd = fd
        self.silence = silence
        self.gone = False  # (the parent closed its end: it has died)
        self._last = time.monotonic()
        os.set_blocking(fd, False)

    def _read(self) -> None:
        while not self.gone:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                self.gone = True
                return
            self._last = time.monotonic()

    def silent_for(self) -> float:
        """Seconds since the parent last wrote (infinite once it has closed its end)."""
        self._read()
        return float("inf") if self.gone else time.monotonic() - self._last

    def silent(self) -> bool:
        return self.silent_for() > self.silence


def parent_beat_from_env() -> ParentBeat | None:
    """The parent's heartbeat named by $RUNINK_PARENT_BEAT, or None when it names none (a
    process started by hand). Malformed: ValueError naming it."""
    given = os.environ.pop(PARENT_BEAT, "")
    if not given:
        return None
    fd, _, silence = given.partition(":")
    try:
        found = ParentBeat(int(fd), float(silence)) if fd.isdigit() and float(silence) > 0 else None
    except ValueError:
        found = None
    if found is None:
        raise ValueError(f"${PARENT_BEAT}={given!r}: expected FD:SECONDS")
    return found


class BeatPipe:
    """The parent's side of a ParentBeat: ``child_end()`` gives a new pipe's read end for the
    next child (the one before is closed: one child beaten at a time), and a thread writes a
    byte to it every ``every`` seconds until ``close()``, while ``healthy()`` holds (called on
    that thread: it must not block). Writes never block: a paused child's full pipe just drops
    them."""

    def __init__(self, every: float) -> None:
        self.every = every
        #: beats are written only while this says so (the server's: its control loop not hung)
        self.healthy: Callable[[], bool] = lambda: True
        self._lock = threading.Lock()  # (a write never goes to a descriptor closed and reused meanwhile)
        self._fd: int | None = None
        self._closed = threading.Event()
        threading.Thread(target=self._beat, daemon=True, name="beat-pipe").start()

    def child_end(self) -> int:
        """A new pipe's read end, to pass to the child (``pass_fds``) and close after it started."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_end, False)
        with self._lock:
            self._swap(write_end)
        return read_end

    def _swap(self, fd: int | None) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd

    def _beat(self) -> None:
        while not self._closed.wait(self.every):
            with self._lock:
                if self._fd is None or not self.healthy():
                    continue
                # (full: the child is paused; broken: it died, and a restart gives another pipe)
                with contextlib.suppress(OSError):
                    os.write(self._fd, b".")

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._swap(None)
