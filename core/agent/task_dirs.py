"""Removing the task dirs of a node's ended command attempts.

A node kept every command attempt's task dir (its logs, its exit status, and all its command
wrote in its work dir) for good: a node's disk filled with them, job by job (a review's
finding). Once an attempt's final report is answered its output has reached the servers
(``runink logs`` reads it there), so the agent moves the dir aside at once (a rename) and a
thread of its own deletes it (a large tree must not hold a sync round up). What a previous
agent left (dirs moved aside, dirs no attempt's handle names) goes at the next start.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterable
from pathlib import Path

from runink.core.fstree import remove_tree
from runink.core.processes import read_exit_status
from runink.core.taskbook import STATUS_FILE

log = logging.getLogger(__name__)

TRASH = ".trash-"  # the prefix of a dir moved aside, waiting to be deleted


class TaskDirSweeper:
    """Deletes dirs of ``tasks`` (the agent's ``WORK_DIR/tasks``) from a thread of its own."""

    def __init__(self, tasks: Path) -> None:
        self.tasks = tasks
        self._queue: queue.SimpleQueue[Path | threading.Event] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def remove(self, folder: Path) -> None:
        """Move ``folder``, a dir right in ``tasks``, aside now; delete it soon. Anything else
        is left alone (a scenario's dir is its pipeline run's)."""
        if folder.parent != self.tasks or folder.name.startswith(TRASH):
            return
        aside = self.tasks / f"{TRASH}{folder.name}"
        try:
            os.rename(folder, aside)  # (a link or a file in its place is moved as it is: never followed)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("%s: not removed: %s", folder, exc.strerror or exc)
            return
        self._put(aside)

    def sweep_leftovers(self, live: Iterable[str]) -> None:
        """(at start, before any attempt starts) Delete what a previous agent left here: dirs
        moved aside, and dirs of attempts no handle names any more (``live``: those it does)
        that ended: their exit status is written, or no process holds their status file open
        any more (a slice killed before it wrote one, by a reboot). One whose status file a
        process still holds may run still (its agent died before it saved its handle): left
        alone."""
        keep = set(live)
        try:
            entries = list(os.scandir(self.tasks))
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("%s: leftovers not looked at: %s", self.tasks, exc.strerror or exc)
            return
        held: set[tuple[int, int]] | None = None  # (read once, if some dir needs it)
        for entry in entries:
            if entry.name.startswith(TRASH):
                self._put(Path(entry.path))
            elif entry.name not in keep and entry.is_dir(follow_symlinks=False):
                folder = Path(entry.path)
                if not _ended(folder):
                    held = _open_files() if held is None else held
                    if _file_id(folder / STATUS_FILE) in held:
                        continue
                self.remove(folder)

    def wait(self, timeout: float = 10.0) -> bool:
        """Whether every dir queued so far was deleted within ``timeout`` seconds."""
        done = threading.Event()
        self._put(done)
        return done.wait(timeout)

    def _put(self, item: Path | threading.Event) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="task-dir-sweeper")
                self._thread.start()
        self._queue.put(item)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:  # (fd-based, any depth, no link followed: fstree.remove_tree; Python's rmtree
                # recursed, and a task's `mkdir d && cd d` 1,500 times killed this thread, a review)
                remove_tree(item)
            except Exception as exc:  # (the thread must outlive any one tree)
                log.warning("%s: not deleted: %s", item, exc)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _open_files() -> set[tuple[int, int]]:
    """(device, inode) of every file some process of this host holds open: a slice's payload
    and its launcher hold its status file while it runs. Once, at an agent's start."""
    found: set[tuple[int, int]] = set()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # (gone, or not ours to look at)
            continue
        for fd in fds:
            try:
                info = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            found.add((info.st_dev, info.st_ino))
    return found


def _ended(folder: Path) -> bool:
    """Whether ``folder`` holds its attempt's exit status (read as ``read_exit_status`` does: a
    regular file, no link followed, a number). The launcher makes the file, empty, as the slice
    starts: its being there deleted the dir of a slice still running (a review)."""
    try:
        read_exit_status(folder / STATUS_FILE)
    except (OSError, ValueError):
        return False
    return True
