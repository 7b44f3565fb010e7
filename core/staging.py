"""Sink staging: where a slice writes its outputs, and how the runner publishes them.

Each sink gets a staging folder beside its final file (same file system, so publishing is a
rename), made by the runner and reached only through file descriptors, so nothing planted or
swapped in a folder others can write redirects the runner (docs/isolation.md, "Granted paths").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from runink.core.config import default_data_dir
from runink.core.errors import RuninkError
from runink.core.fstree import private_folder, remove_tree
from runink.core.pipeline.compile import CompiledScenario


@dataclass
class Stage:
    """A sink's staging folder: made by the runner beside the final file (same file system, so
    publishing is a rename) under a random name, and reached only through file descriptors, so
    nothing anyone plants or swaps in the sink's folder can redirect the runner.

    Two levels: ``.runink-stage-<random>`` (mode 0700, the runner's, locked while it runs)
    holds ``out``, the folder the slice is granted. The slice may change ``out`` (an isolating
    executor shows it as the slice's own) but not the folder around it, so no one else can
    reach what the slice leaves there (a setuid file, say) before the runner vets it."""

    final: Path  # the sink's path as written in the pipeline
    folder: int  # fd of the sink's folder
    name: str  # the staging folder's name in it
    outer: int  # fd of the staging folder (flock'd: a runner that died leaves it unlocked)
    fd: int  # fd of ``out`` in it
    path: Path  # the real path of ``out`` (what the slice is granted)
    found: tuple[int, int, int, int] | None = None  # the final file when staged (see _identity)

    @property
    def file(self) -> Path:
        return self.path / self.final.name


STAGE_PREFIX = ".runink-stage-"
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
STALE_AFTER = 60.0  # seconds: a staging folder younger than this may be a live runner's, not yet locked


def open_real_folder(real: Path) -> int:
    """An fd of the folder at ``real`` (a path with its links resolved), made if missing,
    following no link on the way: a link that appeared since it was resolved is someone
    redirecting the runner (OSError ELOOP or ENOTDIR)."""
    # (on the way: O_PATH, which needs only search permission, as a path lookup does)
    fd = os.open("/", _PATH_DIRECTORY)
    try:
        for part in real.parts[1:]:
            try:
                step = os.open(part, _PATH_DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                step = os.open(part, _PATH_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = step
        folder = os.open(".", _DIRECTORY, dir_fd=fd)
    finally:
        os.close(fd)
    return folder


def stage_sinks(item: CompiledScenario, allowed: Callable[[Path], bool] = lambda _path: True) -> dict[Path, Stage]:
    """Final sink path -> its staging folder. ``allowed`` vets each sink's folder, links
    resolved (again: the compiler checked it, a link may have been planted since)."""
    stages: dict[Path, Stage] = {}
    try:
        for sink in item.sinks:
            if sink.ref.remote:
                continue  # written to the store by the slice's driver, published by its commit
            parent = sink.ref.path.parent.resolve()  # the pipeline's own links are followed once, here
            if not allowed(parent):
                raise OSError(f"{sink.ref.path}: its folder leads to {parent}, outside what the pipeline may write")
            folder = open_real_folder(parent)
            outer = inner = -1
            try:
                _sweep_stale_stages(folder)
                name = f"{STAGE_PREFIX}{_OWNER}{secrets.token_hex(8)}"
                os.mkdir(name, 0o700, dir_fd=folder)  # fails if anything is there: never an existing one
                outer = os.open(name, _DIRECTORY, dir_fd=folder)
                fcntl.flock(outer, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.mkdir("out", 0o700, dir_fd=outer)
                inner = os.open("out", _DIRECTORY, dir_fd=outer)
            except BaseException as exc:
                for fd in (inner, outer, folder):
                    if fd >= 0:
                        os.close(fd)
                if isinstance(exc, OSError) and exc.strerror:  # (it named the staging folder alone)
                    raise OSError(
                        exc.errno, f"{sink.ref.path}: cannot make its staging folder in {parent}: {exc.strerror}"
                    ) from None
                raise
            found = _identity(folder, sink.ref.path.name)
            stages[sink.ref.path] = Stage(sink.ref.path, folder, name, outer, inner, parent / name / "out", found)
    except BaseException:
        unstage(stages)
        raise
    return stages


def whole_home(base: Path) -> bool:
    """Whether ``base`` is / or a home folder (this user's, or its owner's), or one above this
    user's home: never granted whole to a slice."""
    import pwd

    homes = set()
    with contextlib.suppress(KeyError, RuntimeError):
        home = Path.home().resolve()
        homes.update({home, *home.parents})
    with contextlib.suppress(KeyError, OSError):
        homes.add(Path(pwd.getpwuid(base.stat().st_uid).pw_dir).resolve())
    return base == Path("/") or base in homes


def _owner() -> str:
    """``<host>.<pid>.<start>-``: who makes a staging folder (its host as a hash: the folder may
    be on a file system other machines share; the start time tells a reused pid apart)."""
    import hashlib
    import socket

    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    with contextlib.suppress(OSError, ValueError, IndexError):
        start = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
        return f"{host}.{os.getpid()}.{start}-"
    return ""


_OWNER = _owner()


def _owner_gone(name: str) -> bool:
    """Whether the staging folder ``name`` was made by a process of this machine that has ended
    (False when that cannot be told: another machine's, or a name without its owner)."""
    owner, dash, _ = name.removeprefix(STAGE_PREFIX).rpartition("-")
    parts = owner.split(".")
    if not dash or len(parts) != 3 or not _OWNER.startswith(parts[0] + "."):
        return False
    try:
        start = Path(f"/proc/{int(parts[1])}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return True
    except (OSError, ValueError, IndexError):
        return False
    return start != parts[2]


def _sweep_stale_stages(folder: int) -> None:
    """Remove the staging folders a runner that died left in this folder: folders of this user
    (never a link, never someone else's) that no live runner holds locked and that are not
    brand new (a live runner locks its own just after making it), or whose maker, a process
    of this machine, has ended (a run killed and run again within the minute left them)."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(STAGE_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                fd = os.open(entry.name, _DIRECTORY, dir_fd=folder)
            except OSError:
                continue
            try:
                info = os.fstat(fd)
                if info.st_uid != os.geteuid():
                    continue
                if time.time() - info.st_ctime < STALE_AFTER and not _owner_gone(entry.name):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a running runner's
                _remove_stage(folder, entry.name, fd)
            finally:
                os.close(fd)


def _remove_stage(folder: int, name: str, fd: int) -> None:
    """Empty the staging folder through its own fd, then remove its name only if that name
    still is this folder: someone who can write the sink's folder may have swapped it for
    another (whose tree must not be deleted by the runner)."""
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o700)  # (the runner's own: it may always enter it)
    with contextlib.suppress(OSError), os.scandir(fd) as entries:
        names = [entry.name for entry in entries]
    for entry in names:  # (a slice's tree: any depth, folders it made read-only: fstree)
        with contextlib.suppress(OSError):
            remove_tree(entry, dir_fd=fd)
    with contextlib.suppress(OSError):
        mine = os.fstat(fd)
        there = os.stat(name, dir_fd=folder, follow_symlinks=False)
        if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            os.rmdir(name, dir_fd=folder)  # (empty by now; a folder swapped in meanwhile is not)


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    return 0o022


def _identity(folder: int, name: str) -> tuple[int, int, int, int] | None:
    """The file ``name`` in ``folder`` as (device, inode, mtime, size), None if there is none."""
    return _identity_of(_lstat(folder, name))


def _identity_of(there: os.stat_result | None) -> tuple[int, int, int, int] | None:
    return None if there is None else (there.st_dev, there.st_ino, there.st_mtime_ns, there.st_size)


def _lstat(folder: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None


PREVIOUS = "previous"  # the final file's current version, kept in the staging folder while publishing
LOCKS = "publish-locks"  # the folder of publish locks in a runner's data dir


WRITER = "user.runink.writer"  # a published file's extended attribute: "<task id> <attempt> <size> <mtime ns>"
MAX_WRITER = 256  # bytes of it read


def publish(stages: dict[Path, Stage], writer: tuple[str, int] | None = None, data_dir: Path | None = None) -> None:
    """Put every committed output in place, all or none, durable. The file is the slice's
    making: only a regular file with one link is taken, its mode reset to a data file's (no
    setuid, setgid or exec bits: it is stored as the runner's user's) and its data synced.
    ``writer``: the (task id, attempt) that made the outputs, marked on each (WRITER).
    ``data_dir``: the runner's, where its publish locks are (default: the user's default one).

    Checked first, for every sink, before anything is replaced: no folder in the final file's
    place, and the final file is the one there was when the run staged it (another run that
    wrote it since keeps its newer output: the last to finish won, silently), or one an earlier
    attempt of ``writer``'s task published since (a cluster's attempt that was presumed dead,
    fenced, but published before its newer attempt did: the newer one's output wins). Each current
    file is kept (a hard link in the staging folder) and the outputs go into place one by
    one; if one cannot, those already in place are put back. (A crash of the runner between
    two renames still leaves some new and some old.)"""
    with _folders_locked(stages, (data_dir or default_data_dir()) / LOCKS):
        _publish(stages, writer)


def _publish(stages: dict[Path, Stage], writer: tuple[str, int] | None) -> None:
    umask = _umask()
    present: set[Path] = set()  # the sinks with a final file now (kept, and put back on failure)
    for stage in stages.values():
        there = _lstat(stage.folder, stage.final.name)
        if there is not None and stat.S_ISDIR(there.st_mode):
            raise OSError(f"{stage.final}: a folder is in its place (nothing was published)")
        if _identity_of(there) != stage.found and not _earlier_attempt(stage, writer):
            raise OSError(
                f"{stage.final}: written by someone else since this run started (another run of the "
                "pipeline?): it is left as it is (nothing was published)"
            )
        if there is not None:
            present.add(stage.final)
    ready = [stage for stage in stages.values() if _vetted(stage, umask, writer)]
    aside: list[Stage] = []  # (kept by a rename: their final file is away until the new one comes)
    try:
        for stage in ready:
            if stage.final not in present:
                continue
            try:
                os.link(
                    stage.final.name, PREVIOUS, src_dir_fd=stage.folder, dst_dir_fd=stage.outer, follow_symlinks=False
                )
            except PermissionError:  # another user's file (fs.protected_hardlinks): moved aside instead
                os.rename(stage.final.name, PREVIOUS, src_dir_fd=stage.folder, dst_dir_fd=stage.outer)
                aside.append(stage)
    except OSError as exc:
        _put_back(aside, present)
        raise OSError(
            f"{stage.final}: cannot keep its current version while publishing (nothing was published): {exc.strerror}"
        ) from None
    done: list[Stage] = []
    try:
        for stage in ready:
            os.replace(stage.final.name, stage.final.name, src_dir_fd=stage.fd, dst_dir_fd=stage.folder)
            done.append(stage)
    except OSError as exc:
        _put_back(done + [a for a in aside if a not in done], present)
        raise OSError(
            f"{stage.final}: cannot put it in place ({exc.strerror}); "
            + ("the outputs put in place before it were put back" if done else "nothing was published")
        ) from None
    for folder in {stage.folder for stage in done}:
        os.fsync(folder)


@contextlib.contextmanager
def _folders_locked(stages: dict[Path, Stage], locks: Path) -> Iterator[None]:
    """Each sink's folder locked while its final file is checked and replaced: two runners
    publishing into one folder at once (an attempt and its fenced older one) take turns, so no
    check is made stale by the other's rename. The lock is a file of the runner's own folder
    ``locks``, named by the sink folder's device and inode, not the sink folder itself:
    anyone who may read that folder (a slice given the pipeline's folder, another user) could
    hold a lock on it and hold every publish there for good. Locked in one order: no two runners
    wait on each other. Runners of one data dir, on one machine. A lock's file is removed by
    its holder when done (the folder does not fill with one file per sink folder ever used); a
    runner that got the lock on a file removed meanwhile takes it again on the new one."""
    folders = sorted({(info.st_dev, info.st_ino) for info in (os.fstat(s.folder) for s in stages.values())})
    try:
        private_folder(locks, "publish locks")
    except RuninkError as exc:
        raise OSError(str(exc)) from None
    folder = os.open(locks, _DIRECTORY)
    held: list[tuple[int, str]] = []
    try:
        for device, inode in folders:
            name = f"{device:x}-{inode:x}.lock"
            held.append((_lock_file(folder, name), name))
        yield
    finally:
        for fd, name in reversed(held):
            with contextlib.suppress(OSError):  # (still ours: whoever waits on it takes a new one)
                os.unlink(name, dir_fd=folder)
            os.close(fd)  # (the lock goes with it)
        os.close(folder)


def _lock_file(folder: int, name: str) -> int:
    """An fd of the lock file ``name`` in ``folder``, flock'd: the file that is there now, not
    one its last holder removed while this runner waited on it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(10_000):  # (each turn means another runner held and released it meanwhile)
        fd = os.open(name, flags, 0o600, dir_fd=folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = os.fstat(fd)
            try:
                present = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                present = None
        except BaseException:
            os.close(fd)
            raise
        if present is not None and (present.st_dev, present.st_ino) == (locked.st_dev, locked.st_ino):
            return fd
        os.close(fd)
    raise OSError(f"publish lock {name}: taken and removed by other runners 10,000 times in a row")


def _earlier_attempt(stage: Stage, writer: tuple[str, int] | None) -> bool:
    """Whether the sink's final file was published by an attempt of ``writer``'s task before
    ``writer``'s (its WRITER mark; a file system without extended attributes has none)."""
    if writer is None:
        return False
    try:
        fd = os.open(stage.final.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=stage.folder)
    except OSError:
        return False
    try:
        task, attempt, size, mtime = os.getxattr(fd, WRITER)[:MAX_WRITER].decode().split(" ")
        info = os.fstat(fd)
    except (OSError, ValueError):  # (no mark, not ours; UnicodeDecodeError is a ValueError)
        return False
    finally:
        os.close(fd)
    # the mark vouches for the file as published: the runner's own, unchanged since (a file
    # appended to in place keeps its inode and its mark, not its size and time)
    numbers = (attempt, size, mtime)
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_uid == os.geteuid()
        and task == writer[0]
        and all(n.isascii() and n.isdecimal() for n in numbers)
        and 1 <= int(attempt) < writer[1]
        and (int(size), int(mtime)) == (info.st_size, info.st_mtime_ns)
    )


def _vetted(stage: Stage, umask: int, writer: tuple[str, int] | None) -> bool:
    """Whether the slice left its output (False: none, nothing to publish); OSError if what it
    left is no regular file of one link. Its mode is a data file's, its data synced, its writer
    marked (the slice's own mark replaced or removed)."""
    name = stage.final.name
    with contextlib.suppress(OSError):
        os.fchmod(stage.fd, 0o700)  # the slice may have locked its folder (it is the runner's)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=stage.fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OSError(f"{stage.final}: the slice left no regular file (not published): {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise OSError(f"{stage.final}: the slice left no regular file (not published)")
        os.fchmod(fd, 0o666 & ~umask)
        _mark(fd, writer, info)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _mark(fd: int, writer: tuple[str, int] | None, info: os.stat_result) -> None:
    """The file's WRITER mark: ``writer``'s with the file's size and time (``info``: neither
    changes as it is marked and moved into place), or none (a slice may have set one)."""
    try:
        if writer is not None:
            os.setxattr(fd, WRITER, f"{writer[0]} {writer[1]} {info.st_size} {info.st_mtime_ns}".encode())
        else:
            os.removexattr(fd, WRITER)
    except OSError:  # no extended attributes here (ENOTSUP), or no mark to remove (ENODATA)
        if writer is not None:
            with contextlib.suppress(OSError):
                os.removexattr(fd, WRITER)


def _put_back(done: list[Stage], present: set[Path]) -> None:
    """Undo the renames of ``done``: each final file's kept version back (those ``present``),
    or the new file removed where there was none (a failure here is reported by the caller's
    error)."""
    for stage in reversed(done):
        with contextlib.suppress(OSError):
            if stage.final in present:
                os.replace(PREVIOUS, stage.final.name, src_dir_fd=stage.outer, dst_dir_fd=stage.folder)
            else:
                os.unlink(stage.final.name, dir_fd=stage.folder)
            os.fsync(stage.folder)


def as_written(text: str, stages: dict[Path, Stage]) -> str:
    """``text`` (a slice's error) with each staging path replaced by its sink's path as written:
    a full disk was "sink parquet:///data/.runink-stage-f7a9.../out/orders.parquet: ..."."""
    for stage in stages.values():
        text = text.replace(str(stage.file), str(stage.final)).replace(str(stage.path), str(stage.final.parent))
    return text


def unstage(stages: dict[Path, Stage]) -> None:
    for stage in stages.values():
        _remove_stage(stage.folder, stage.name, stage.outer)
        for fd in (stage.fd, stage.outer, stage.folder):
            os.close(fd)
    stages.clear()
