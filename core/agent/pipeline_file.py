"""Reading a submitted pipeline's .dsl on a node, where the agent runs as root.

The path comes from a herd's member (``POST /v1/pipelines``), so nothing about it is trusted:
it must lie in one of the herd's roots (the folders a cluster admin gave the herd, copied into
the task by the server), with no symbolic link on the way (each folder is opened without
following one, from /), in a folder that not everyone may write (a slice is granted the
.dsl's whole folder: /tmp would have been all of /tmp), and be a regular file of at most
MAX_DSL_BYTES, opened without blocking (a FIFO once held the node's every start). A link to
/etc/shadow, read as root, had its first line quoted back in the parse error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from collections.abc import Sequence

from runink.core.control.records import under_root
from runink.core.errors import RuninkError
from runink.core.report import printable

MAX_DSL_BYTES = 1 << 20  # a pipeline's .dsl, at most (a parser holds dozens of times its size)


def read_submitted(path: str, roots: Sequence[str]) -> str:
    """The text of the .dsl at ``path`` if a node may compile it for a herd with ``roots``;
    RuninkError saying why not (never the file's content)."""
    shown = printable(path, 400)
    normal = posixpath.normpath(path)
    if not path.startswith("/") or normal != path.rstrip("/") or not path.endswith(".dsl"):
        raise RuninkError(f"pipeline {shown}: not an absolute, normalised path to a .dsl file")
    if not roots:
        raise RuninkError(f"pipeline {shown}: its herd has no folders pipelines may be in (submitted before it had)")
    if not under_root(path, roots):
        raise RuninkError(f"pipeline {shown}: not in a folder its herd's pipelines may be in ({', '.join(roots)})")
    folder = _open_folder(posixpath.dirname(path), shown)
    try:
        mode = os.fstat(folder).st_mode
        if mode & (stat.S_IWOTH | stat.S_ISVTX):
            raise RuninkError(
                f"pipeline {shown}: its folder may be written by anyone (as /tmp), and a slice is granted "
                "its pipeline's whole folder: put the pipeline in a folder of its own"
            )
        try:
            fd = os.open(
                posixpath.basename(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder
            )
        except OSError as exc:
            raise RuninkError(f"pipeline {shown}: {_why(exc)}") from None
    finally:
        os.close(folder)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RuninkError(f"pipeline {shown}: not a regular file")
        if info.st_size > MAX_DSL_BYTES:
            raise RuninkError(f"pipeline {shown}: {info.st_size:,} bytes, at most {MAX_DSL_BYTES:,}")
        data = os.read(fd, MAX_DSL_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_DSL_BYTES:
        raise RuninkError(f"pipeline {shown}: over {MAX_DSL_BYTES:,} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RuninkError(f"pipeline {shown}: not UTF-8 text") from None


def _open_folder(folder: str, shown: str) -> int:
    """An fd of ``folder``, each of its folders opened from / without following a link."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in [p for p in folder.split("/") if p]:
            try:
                next_fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                raise RuninkError(f"pipeline {shown}: {_why(exc)}") from None
            os.close(fd)
            fd = next_fd
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd


def _why(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return "a symbolic link on its way (give its real path), or a part of it is not a folder"
    return exc.strerror or str(exc)
