"""Folder trees: removing and measuring those a slice wrote, whatever their shape; keeping a
server's state folder its owner's only (``private_folder``).

A slice is untrusted: its work dir and staging folders may hold links, folders it made
read-only, and chains of folders thousands deep. ``shutil.rmtree`` and ``os.walk`` recurse (a
3,000-deep chain raised RecursionError, which no ``except OSError`` caught: the runner's end
and every later prune failed), and paths that deep pass PATH_MAX. Both walks here keep their
own stack of folder descriptors, every call relative to one (openat, unlinkat: no link is
followed, no long path is built), at most ``MAX_OPEN`` open at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from runink.core.errors import RuninkError

#: folder descriptors one walk holds at most; a folder deeper than that is moved up to the
#: tree's top before it is emptied (removal), or not counted (size)
MAX_OPEN = 64
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ForeignFolder(RuninkError):
    """A folder of this process's state belongs to another user."""


def private_folder(path: Path, what: str = "folder") -> None:
    """Make ``path`` (and its parents) if needed, and leave it its owner's only (0700): a
    folder of a server's state (a Barn member's journal holds every herd's records, a local
    cluster's folder its members' and agents'), which was made 0755 with 0644 files in it.
    One owned by another user is refused (ForeignFolder): that user could plant the files
    read from it (a snapshot unpickled as root ran their code; an agent's attempt handles named
    processes to kill and folders to delete)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise ForeignFolder(
            f"{what} {path}: owned by uid {info.st_uid}, not this user ({os.geteuid()}): "
            "another user could plant the files read from it; give a folder of your own"
        )
    if info.st_mode & 0o077:
        # an empty folder becomes its owner's only; one holding files is not changed (`server
        # --init /etc` made /etc 0700 as root, and every other user lost the system's files)
        with os.scandir(path) as entries:
            holds = next(entries, None) is not None
        if holds:
            raise ForeignFolder(
                f"{what} {path}: mode {stat.S_IMODE(info.st_mode):04o} lets other users in, and it holds "
                f"files: give a folder of its own (made 0700), or chmod 700 it if it is runink's"
            )
        os.chmod(path, 0o700)


def check_private(info: os.stat_result, path: Path, what: str, error: type[Exception] = RuninkError) -> None:
    """``error`` unless ``info`` (an open file's fstat: the file checked is the file read) is
    a regular file of this user's that no one else may read or write: a secret (a key, a
    token's signing key). Owned by another user, it could be swapped by them at will."""
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is not a regular file; refused")
    if info.st_uid != os.geteuid():
        raise error(f"{what} {path} is owned by uid {info.st_uid}, not by this user ({os.geteuid()}); refused")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise error(f"{what} {path} has mode {mode:04o}: group or others may read it; refused (chmod 600 {path})")


def read_private_file(path: Path, what: str, limit: int, error: type[RuninkError] = RuninkError) -> bytes:
    """At most ``limit + 1`` bytes of ``path`` (``what`` names it: the caller says what more
    means), a private file (``check_private``), opened through no link and without blocking
    (a FIFO put there hung a server for good); ``error`` saying why otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise error(f"{what} {path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{what} {path} is a symlink; refused (name the file itself)") from None
        raise error(f"{what} {path}: cannot open it: {exc.strerror}") from None
    try:
        check_private(os.fstat(fd), path, what, error)
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def replace_file(folder_fd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """``data`` as the file ``name`` in the folder ``folder_fd``, whole or not at all: a new
    file (through no link, ``mode`` whatever the umask), synced, renamed over the old one, the
    folder synced (when ``folder_fd`` is a readable folder, not an O_PATH one). OSError if it
    cannot be; the new file never stays behind."""
    temporary = f".tmp-{name}-{secrets.token_hex(6)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=folder_fd)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=folder_fd)
        raise
    with contextlib.suppress(OSError):  # (EBADF on an O_PATH fd)
        os.fsync(folder_fd)


def remove_tree(path: Path | str, *, dir_fd: int | None = None) -> None:
    """Remove ``path`` (relative to ``dir_fd`` if given) and all under it; a link is removed,
    never followed; a folder without write or search permission is given them first (the
    owner may). Raises OSError if something could not be removed (it stays); nothing if
    ``path`` is gone already."""
    try:
        info = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path, dir_fd=dir_fd)
        return
    top = _open_folder(path, dir_fd)
    try:
        _empty(top)
    finally:
        os.close(top)
    os.rmdir(path, dir_fd=dir_fd)


def tree_size(path: Path | str) -> int:
    """Bytes of the regular files under ``path`` (allocated blocks; links not followed, not
    counted; folders deeper than ``MAX_OPEN`` levels not counted). 0 if it cannot be read."""
    try:
        top = os.open(path, _DIRECTORY)
    except OSError:
        return 0
    total = 0
    stack: list[tuple[int, list[str]]] = []  # (a folder's descriptor, its sub-folders not walked yet)

    def enter(fd: int) -> None:
        nonlocal total
        stack.append((fd, []))
        total += _files_size(fd, stack[-1][1])

    try:
        enter(top)
        while stack:
            fd, folders = stack[-1]
            if not folders:
                stack.pop()
                os.close(fd)
                continue
            name = folders.pop()
            if len(stack) < MAX_OPEN:
                with contextlib.suppress(OSError):
                    enter(os.open(name, _DIRECTORY, dir_fd=fd))
    finally:
        for fd, _ in stack:
            os.close(fd)
    return total


def _files_size(fd: int, folders: list[str]) -> int:
    """The size of the files in the folder open as ``fd``; its sub-folders' names go to ``folders``."""
    total = 0
    with contextlib.suppress(OSError), os.scandir(fd) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    folders.append(entry.name)
                elif stat.S_ISREG(info.st_mode):
                    total += info.st_blocks * 512 if info.st_blocks else info.st_size
    return total


def _open_folder(name: Path | str, dir_fd: int | None) -> int:
    """A descriptor of the folder ``name`` (never through a link), given search and read
    permission first if it lacked them."""
    try:
        return os.open(name, _DIRECTORY, dir_fd=dir_fd)
    except PermissionError:
        # fchmodat without following: a link is refused (NotImplementedError on Linux)
        with contextlib.suppress(OSError, NotImplementedError):
            os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)
        return os.open(name, _DIRECTORY, dir_fd=dir_fd)


def _empty(top: int) -> None:
    """Remove everything in the folder open as ``top``. Each folder on the stack keeps the
    names of its sub-folders still to empty; one at depth MAX_OPEN is moved up into ``top``
    (renameat, within the tree) and emptied from there. Raises the first OSError met (what
    could not be removed stays)."""
    errors: list[OSError] = []
    stack: list[tuple[int, str, list[str]]] = [(top, "", _remove_files(top, errors))]  # (fd, name, folders left)
    try:
        while stack:
            fd, name, folders = stack[-1]
            if not folders:  # emptied: closed, then removed from its parent (the top is the caller's)
                stack.pop()
                if stack:
                    os.close(fd)
                    try:
                        _in_writable(stack[-1][0], os.rmdir, name)
                    except OSError as exc:
                        _note(errors, exc)
                continue
            folder = folders.pop()
            try:
                if len(stack) >= MAX_OPEN:
                    up = f".runink-deep-{secrets.token_hex(8)}"  # (a name the slice cannot have made first)
                    _in_writable(fd, _rename_up, folder, up, top)
                    stack[0][2].append(up)
                else:
                    child = _open_folder(folder, fd)
                    stack.append((child, folder, []))
                    stack[-1][2].extend(_remove_files(child, errors))
            except OSError as exc:
                _note(errors, exc)
    finally:
        for fd, _, _ in stack[1:]:
            os.close(fd)
    if errors:
        raise errors[0]


def _note(errors: list[OSError], exc: OSError) -> None:
    if not errors:  # (the first is enough to say why; a tree of millions must not fill memory)
        errors.append(exc)


def _rename_up(name: str, up: str, top: int, *, dir_fd: int) -> None:
    os.rename(name, up, src_dir_fd=dir_fd, dst_dir_fd=top)


def _remove_files(fd: int, errors: list[OSError]) -> list[str]:
    """Unlink every entry of the folder open as ``fd`` but its folders, whose names it returns;
    what cannot be removed goes to ``errors`` (and stays)."""
    try:
        with os.scandir(fd) as entries:
            names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    except OSError as exc:
        _note(errors, exc)
        return []
    folders = []
    for name, is_folder in names:
        if is_folder:
            folders.append(name)
            continue
        try:
            _in_writable(fd, os.unlink, name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            _note(errors, exc)
    return folders


def _in_writable(fd: int, change: Callable[..., None], *args: object) -> None:
    """``change(*args, dir_fd=fd)``, a removal in the folder open as ``fd``; if refused, the
    folder is given write and search permission (its owner may) and it is tried once more."""
    try:
        change(*args, dir_fd=fd)
    except PermissionError:
        os.fchmod(fd, 0o700)
        change(*args, dir_fd=fd)
