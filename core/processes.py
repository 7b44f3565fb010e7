"""Naming one process across time (its pid and its start time, as /proc gives them), and
reading the exit status a process's wrapper left."""

from __future__ import annotations

import os
import stat
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
