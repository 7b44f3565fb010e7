"""Files of a pipeline's project, read and written by the runner, which often runs as root.

A project may come from anyone (a repository, a colleague's folder), so nothing in it is
trusted: a file the runner reads must be a regular file (a FIFO hung `runink test`, a link to
/dev/zero filled the memory), opened without blocking and read up to a bound; a file it writes
(`runink test --update`) goes below the pipeline's folder through no symbolic link, each folder
opened without following one, and replaces the old file by a rename (a link planted as the
expected file had root overwrite ~/.bashrc with rows the project chose).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePosixPath

from runink.core.errors import RuninkError
from runink.core.fstree import replace_file

MAX_PROJECT_FILE = 64 << 20  # bytes of one project file the runner reads, at most

_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_FOLDER = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def read_regular(path: Path, what: str, *, limit: int = MAX_PROJECT_FILE, follow: bool = True) -> bytes:
    """The bytes of ``path`` (``what`` names it in errors), if it is a regular file of at most
    ``limit`` bytes; ``follow=False``: not through a symbolic link either."""
    flags = _READ | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise RuninkError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise RuninkError(f"cannot read {what} {path}: {_why(exc)}") from None
    try:
        return _read_fd(fd, path, what, limit)
    finally:
        os.close(fd)


def read_below(base: Path, relative: str | PurePosixPath, what: str, *, limit: int = MAX_PROJECT_FILE) -> bytes:
    """The bytes of the regular file ``relative`` below ``base``, reached through no symbolic
    link (``base`` itself is the project's folder, named by the user)."""
    parts = _parts(relative, what)
    folder = open_folder_below(base, PurePosixPath(*parts[:-1]), what)
    try:
        try:
            fd = os.open(parts[-1], _READ | os.O_NOFOLLOW, dir_fd=folder)
        except FileNotFoundError:
            raise RuninkError(f"{what} {relative} does not exist (in {base})") from None
        except OSError as exc:
            raise RuninkError(f"cannot read {what} {base / relative}: {_why(exc)}") from None
    finally:
        os.close(folder)
    try:
        return _read_fd(fd, base / relative, what, limit)
    finally:
        os.close(fd)


def write_below(base: Path, relative: str | PurePosixPath, data: bytes, what: str) -> None:
    """Write ``data`` as the file ``relative`` below ``base`` (its folders made as needed),
    through no symbolic link, replacing the old file at once (a rename: never half written)."""
    parts = _parts(relative, what)
    folder = open_folder_below(base, PurePosixPath(*parts[:-1]), what, create=True)
    try:
        replace_file(folder, parts[-1], data, 0o644)
    except OSError as exc:
        raise RuninkError(f"cannot write {what} {base / relative}: {_why(exc)}") from None
    finally:
        os.close(folder)


def open_folder_below(base: Path, relative: PurePosixPath, what: str, *, create: bool = False) -> int:
    """An O_PATH fd of the folder ``relative`` below ``base``, each of its folders opened
    without following a link (``create``: made when missing)."""
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in _parts(relative, what, allow_empty=True):
            try:
                next_fd = os.open(part, _FOLDER, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(part, _FOLDER, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except OSError as exc:
        os.close(fd)
        raise RuninkError(f"{what} {base / relative}: {_why(exc)}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _parts(relative: str | PurePosixPath, what: str, *, allow_empty: bool = False) -> list[str]:
    parts = [p for p in PurePosixPath(relative).parts if p not in ("", ".")]
    if PurePosixPath(relative).is_absolute() or ".." in parts or (not parts and not allow_empty):
        raise RuninkError(f"{what} {relative}: not a path inside the pipeline's folder")
    return parts


def _read_fd(fd: int, path: Path, what: str, limit: int) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise RuninkError(f"{what} {path}: not a regular file")
    if info.st_size > limit:
        raise RuninkError(f"{what} {path}: {info.st_size:,} bytes, more than {limit:,}")
    chunks, size = [], 0
    while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise RuninkError(f"{what} {path}: more than {limit:,} bytes")
    return b"".join(chunks)


def _why(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return "a symbolic link (or not a folder) on its way: a project's files are read and written through none"
    return exc.strerror or str(exc)
