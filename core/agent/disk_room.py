"""Whether a node has room on its work dir's disk for new tasks.

A node whose work dir was full stayed ready, and every task placed there failed, naming the
disk, while other nodes had room (a faults review's run). Now its agent says why it is unfit
with every heartbeat while the disk holds less than ``--min-free-disk`` (or few inodes, or is
read-only), and for HOLD_AFTER_FAILURE seconds after a task could not start there for want of
room on that disk (a quota the free count does not show); the scheduler places nothing on an
unfit node, and the task that could not start is given back, placed elsewhere. An error on
another file system (a pipeline's full or read-only output folder) is the task's, not the
node's: it fails as before (one user's output folder made every node unfit in turn, a review).
The reason is stable text (no live figure), so the tasks that wait are not rewritten for
every byte the disk gains or loses.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

from runink.core.units import format_bytes

#: errors that say the disk has no room (or takes no write), not that the task is wrong
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
#: seconds a node stays unfit after a task could not start for want of room
HOLD_AFTER_FAILURE = 30.0
MIN_FREE_INODES = 1000  # a disk with fewer free inodes takes no new task (a task dir is several)
DEFAULT_MIN_FREE = 512 << 20  # bytes: `runink agent --min-free-disk`'s default


class DiskRoom:
    """``unfit()``: why the disk of ``folder`` takes no new task now ("" when it does).
    ``min_free`` bytes are kept free; 0 never makes the node unfit (the local runner's node:
    one node only, where waiting for room would never end)."""

    def __init__(self, folder: Path, min_free: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self.min_free = min_free
        self.clock = clock
        self._failed: tuple[float, str] | None = None  # (until, why) after a start failed for room

    def unfit(self) -> str:
        if self.min_free <= 0:
            return ""
        where = f"work dir {self.folder}"
        try:
            found = os.statvfs(self.folder)
        except OSError as exc:
            return f"{where}: not looked at ({exc.strerror or exc})"
        if found.f_flag & os.ST_RDONLY:
            return f"{where}: its file system is read-only"
        if found.f_bavail * found.f_frsize < self.min_free:
            return f"{where}: less than the {format_bytes(self.min_free)} kept free (--min-free-disk)"
        if found.f_files and found.f_favail < MIN_FREE_INODES:  # (0 files: a file system without inode counts)
            return f"{where}: fewer than {MIN_FREE_INODES} inodes free"
        if self._failed is not None:
            until, why = self._failed
            if self.clock() < until:
                return f"{where}: a task could not start for want of room ({why}) in the last {HOLD_AFTER_FAILURE:g}s"
            self._failed = None
        return ""

    def failed(self, exc: BaseException) -> bool:
        """Whether ``exc`` (a task's start failed with it) says the work dir's disk has no room:
        an error of NO_ROOM naming a file on that file system. If so the node is unfit for
        HOLD_AFTER_FAILURE seconds, whatever the free count says. False for any other (an
        output folder elsewhere full: the task's failure, as before), and always when
        ``min_free`` is 0."""
        found = no_room(exc)
        if found is None or self.min_free <= 0 or not self._on_this_disk(found.filename):
            return False
        self._failed = (self.clock() + HOLD_AFTER_FAILURE, os.strerror(found.errno or 0))
        return True

    def _on_this_disk(self, name: object) -> bool:
        """Whether ``name`` (an error's file) is on the work dir's file system: its nearest
        existing folder is (it may not exist: the mkdir that failed). No link is followed."""
        if not isinstance(name, str | bytes | os.PathLike) or not name:
            return False  # (an error naming no file: which disk is not known)
        try:
            device = os.stat(self.folder).st_dev
        except OSError:
            return False
        path = Path(os.fsdecode(name))
        for candidate in (path, *path.parents):
            try:
                return os.lstat(candidate).st_dev == device
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return False


def no_room(exc: BaseException) -> OSError | None:
    """The OSError in ``exc`` or what caused it that says the disk has no room, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_ROOM:
            return current
        current = current.__cause__ or current.__context__
    return None
