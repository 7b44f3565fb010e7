"""A bound on the disk a slice fills: its work dir and its outputs' staging folders together.

The files a slice writes there are on the node's disks, not in its memory cgroup (its /tmp
and /dev/shm are tmpfs, charged to its memory), so nothing else bounds them: one step could
fill the disk every other slice and herd on the node writes to. As the kubelet does for
ephemeral storage, ``DiskLimitedExecutor`` sums what each running slice's writable folders
hold every few seconds and stops a slice past ``[limits] disk``; it ends FAILED, saying so.

The sum is walked through file descriptors (no symbolic link followed, no path a slice could
swap), bounded: past MAX_ENTRIES entries or MAX_DEPTH levels of folders a slice is over its
limit whatever their size. A slice may exceed the limit for up to a check's interval.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from runink.core.agent.delegating import DelegatingExecutor
from runink.core.interfaces.executor import Executor, TaskHandle, TaskResult, TaskSpec, TaskState
from runink.core.units import format_bytes

log = logging.getLogger(__name__)

CHECK_EVERY = 2.0  # seconds between two sums of a slice's folders
MAX_CHECK_SHARE = 0.05  # a sum takes at most this share of the time (else the next waits longer)
MAX_STRETCH = 10.0  # seconds the next sum waits at most for that (one slice slows everyone's checks)
MAX_ENTRIES = 100_000  # files and folders one slice may have in its writable folders
MAX_DEPTH = 64  # levels of folders below each of them
MAX_FAILURES = 3  # sums in a row that fail before the slice is stopped (its folders moved, say)
_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class OverLimit(Exception):
    """The slice's folders hold more than a walk counts: more entries or levels than allowed."""


def disk_used(roots: Iterable[Path], pids: Iterable[int] = ()) -> int:
    """Bytes of disk the files and folders under ``roots`` take (their allocated blocks: a
    sparse file counts what it really holds), and the files ``pids`` hold open on the roots'
    file systems after unlinking them (no name left to walk). Each root is opened a component
    at a time, no link followed (FileNotFoundError or OSError ELOOP if one was swapped in); a
    walk holds two descriptors per level. OverLimit past MAX_ENTRIES or MAX_DEPTH."""
    used, entries, devices = 0, [0], set()
    for root in roots:
        fd = _open_root(root)
        try:
            devices.add(os.fstat(fd).st_dev)
            used += _folder_used(fd, 0, entries)
        finally:
            os.close(fd)
    return used + _unlinked_open(pids, devices, entries)


def _open_root(path: Path) -> int:
    fd = os.open("/", _PATH)
    try:
        for part in path.parts[1:]:
            step = os.open(part, _PATH, dir_fd=fd)
            os.close(fd)
            fd = step
        return os.open(".", _DIRECTORY, dir_fd=fd)
    finally:
        os.close(fd)


def _folder_used(folder: int, depth: int, entries: list[int]) -> int:
    used = 0
    with os.scandir(folder) as listing:
        for entry in listing:
            entries[0] += 1
            if entries[0] > MAX_ENTRIES:
                raise OverLimit(f"more than {MAX_ENTRIES:,} files and folders")
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # (removed meanwhile)
            used += info.st_blocks * 512
            if not stat.S_ISDIR(info.st_mode):
                continue
            if depth + 1 > MAX_DEPTH:
                raise OverLimit(f"folders more than {MAX_DEPTH} levels deep")
            try:
                child = os.open(entry.name, _DIRECTORY, dir_fd=folder)
            except (FileNotFoundError, NotADirectoryError):
                continue  # (removed, or swapped for a file, meanwhile)
            except OSError as exc:
                if exc.errno != errno.ELOOP:  # (swapped for a link: not followed)
                    raise  # (out of descriptors, say: this sum fails, it does not skip the folder)
                continue
            try:
                used += _folder_used(child, depth + 1, entries)
            finally:
                os.close(child)
    return used


def _unlinked_open(pids: Iterable[int], devices: set[int], entries: list[int]) -> int:
    """Bytes of the regular files on ``devices`` that ``pids`` hold open with no name left."""
    seen: dict[tuple[int, int], int] = {}
    for pid in pids:
        try:
            listing = os.scandir(f"/proc/{int(pid)}/fd")
        except OSError:
            continue  # (ended meanwhile)
        with listing:
            for entry in listing:
                entries[0] += 1
                if entries[0] > MAX_ENTRIES:
                    raise OverLimit(f"more than {MAX_ENTRIES:,} files and folders, open files included")
                try:
                    info = os.stat(entry.path)  # (the open file itself: /proc's link is the kernel's)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode) and info.st_nlink == 0 and info.st_dev in devices:
                    seen[(info.st_dev, info.st_ino)] = info.st_blocks * 512
    return sum(seen.values())


@dataclasses.dataclass
class _Watched:
    roots: tuple[Path, ...]
    verdict: str | None = None  # why it was stopped, once it was
    ended: bool = False  # (no more sums: its folders are no longer written)
    failures: int = 0  # sums in a row that failed


class DiskLimitedExecutor(DelegatingExecutor):
    """Stops a slice whose work dir (``cwd``) and writable grants hold more than ``limit``
    bytes, checked every CHECK_EVERY seconds by a thread of its own; its result is FAILED
    with the reason. ``grace``: seconds between the stop's SIGTERM and SIGKILL. A slice
    re-attached after an agent restart is not watched (its folders are not in its handle)."""

    def __init__(self, inner: Executor, limit: int, *, grace: float = 5.0, every: float = CHECK_EVERY) -> None:
        super().__init__(inner)
        self.limit = limit
        self.grace = grace
        self.every = every
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, spec: TaskSpec) -> TaskHandle:
        # (their real paths, read before the slice runs: each sum opens them following no link)
        roots = tuple(dict.fromkeys(Path(os.path.realpath(p)) for p in (spec.cwd, *spec.writable) if p is not None))
        handle = self.inner.start(spec)
        with self._lock:
            self._watched[spec.id] = _Watched(roots)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="disk-limits", daemon=True)
                self._thread.start()
        return handle

    def wait(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        result = self.inner.wait(task_id, timeout)
        if result is None:
            return None
        with self._lock:
            watched = self._watched.get(task_id)
            if watched is not None:
                watched.ended = True
        if watched is not None and watched.verdict is not None and result.state is not TaskState.SUCCEEDED:
            return dataclasses.replace(result, state=TaskState.FAILED, message=watched.verdict)
        return result

    def destroy(self, task_id: str) -> None:
        self.inner.destroy(task_id)
        with self._lock:
            self._watched.pop(task_id, None)

    def close(self) -> None:
        self._closed.set()
        self.inner.close()

    def _watch(self) -> None:
        while not self._closed.wait(self.every):
            began = time.monotonic()
            with self._lock:
                watched = [(task_id, w) for task_id, w in self._watched.items() if w.verdict is None and not w.ended]
            for task_id, slice_ in watched:
                try:
                    self._check(task_id, slice_)
                except Exception:  # (a bug of ours must not end every slice's limit)
                    log.exception("%s: its disk use not checked", task_id)
            # a walk of many files costs: the next waits so that walking stays a small share
            took = time.monotonic() - began
            self._closed.wait(min(MAX_STRETCH, max(0.0, took / MAX_CHECK_SHARE - self.every)))

    def _pids(self, task_id: str) -> list[int]:
        """The task's processes, if its driver says (``pids``: the linux one), else none."""
        pids: Callable[[str], list[int]] | None = getattr(self.inner, "pids", None)
        if pids is None:
            return []
        try:
            return [int(pid) for pid in pids(task_id)]
        except Exception as exc:  # (ended and forgotten meanwhile): never worth the watcher's thread
            log.debug("%s: its processes not read: %s", task_id, exc)
            return []

    def _check(self, task_id: str, watched: _Watched) -> None:
        limit = format_bytes(self.limit)
        try:
            used = disk_used(watched.roots, self._pids(task_id))
        except OverLimit as exc:
            verdict = f"its work dir and outputs hold {exc} (past what a disk limit of {limit} counts): stopped"
        except OSError as exc:  # (the next check tries again, a few times: a folder moved stops it)
            watched.failures += 1
            log.warning("%s: its disk use not summed: %s", task_id, exc)
            if watched.failures < MAX_FAILURES:
                return
            verdict = f"its work dir and outputs could not be summed against its disk limit ({exc}): stopped"
        else:
            watched.failures = 0
            if used <= self.limit:
                return
            took = format_bytes(used)
            verdict = f"its work dir and outputs took {took} of disk, more than its limit of {limit}: stopped"
        watched.verdict = verdict
        log.warning("%s: %s", task_id, verdict)
        try:
            self.inner.stop(task_id, self.grace)
        except Exception as exc:  # (ended meanwhile): its end is collected as any
            log.info("%s: not stopped: %s", task_id, exc)


def disk_limited(executor: Executor, limit: int, *, grace: float = 5.0) -> Executor:
    """``executor`` with a disk limit per slice (``[limits] disk``), or as it is for 0."""
    return DiskLimitedExecutor(executor, limit, grace=grace) if limit > 0 else executor
