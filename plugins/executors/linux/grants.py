"""Granted paths as detached, id-mapped mounts: how a slice reaches its inputs and outputs.

A grant is a host path the task spec names (its pipeline folder and source, read-only; its
work dir and staging folders, writable). The launcher turns each into a detached mount
(``open_tree``) that the slice's payload moves into its own root:

- Resolved with ``openat2(RESOLVE_NO_SYMLINKS)``: the executor hands over real paths, so a
  symbolic link anywhere on the way means someone swapped a component since: refused.
- A writable grant must be a folder owned by the launcher's own user (what the runner made
  for the slice), in a folder of that user's that no one else may enter (mode 0700): the
  launcher never mounts writable what it did not create, and since what the slice writes is
  stored as that user's, whatever it leaves (a setuid file, say) must be out of others' reach;
  the slice may change the granted folder itself, not the one around it.
- Id-mapped (``mount_setattr(MOUNT_ATTR_IDMAP)``, Linux 5.12+): on the slice's mount, the owner
  of the granted tree appears as the slice's uid/gid. The slice reads a 0600 source in a 0700
  folder and writes its outputs, whatever the modes, without anything on the host changing
  hands: what it writes is stored as owned by the tree's owner (the runner's user). A file
  system without id-mapped mounts gets a plain bind for a read-only grant (access then follows
  the modes) and refuses a writable one (the slice could not write the runner's folder).

The user namespace an id-mapping needs is made with ``clone(CLONE_NEWUSER | CLONE_VM)`` of a
child that only sleeps: no copy of the launcher's page tables (a fork of the preloaded
launcher costs 2-6 ms), ~0.15 ms measured here; the child is killed once its namespace is open.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat

from runink.plugins.executors.linux.syscalls import AT_EMPTY_PATH, AT_FDCWD, OPEN_TREE_CLONE, SYS_OPEN_TREE, libc

# The same numbers on every architecture (the syscalls are newer than the table split).
SYS_MOUNT_SETATTR, SYS_OPENAT2 = 442, 437
RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS = 0x02, 0x04
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_IDMAP = 0x1, 0x2, 0x4, 0x00100000
CLONE_VM, CLONE_NEWUSER = 0x100, 0x10000000
AT_RECURSIVE = 0x8000  # open_tree and mount_setattr: the mounts under the path too
_STACK_SIZE = 64 * 1024
_STACK = ctypes.create_string_buffer(_STACK_SIZE)  # the sleeping child's stack (one at a time)
_PAUSE = ctypes.cast(libc.pause, ctypes.c_void_p)
_clone = libc.clone
_clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_clone.restype = ctypes.c_int


class GrantError(Exception):
    """A granted path cannot be given to the slice; the message names it and why."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _errno_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def _open_no_symlinks(path: str) -> int:
    # no O_NOFOLLOW: with O_PATH it would open a trailing link itself instead of refusing it
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    fd = int(libc.syscall(SYS_OPENAT2, AT_FDCWD, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)))
    if fd < 0:
        code = ctypes.get_errno()
        if code == errno.ELOOP:
            raise GrantError(f"cannot grant {path}: a symbolic link on the way (granted paths must be real paths)")
        raise GrantError(f"cannot grant {path}: {os.strerror(code)}")
    return fd


def _check_private_parent(path: str, fd: int) -> None:
    # the parent of what was opened, through its fd: a name swapped meanwhile changes nothing
    parent = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    try:
        info = os.fstat(parent)
    finally:
        os.close(parent)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise GrantError(
            f"cannot grant {path} writable: the folder around it must be the runner's and private "
            f"(mode 0700; it is {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}), so that no one "
            "else reaches what the slice leaves in it"
        )


def id_map_namespace(owner_uid: int, owner_gid: int, uid: int, gid: int) -> int:
    """An fd of a new user namespace where ``owner_uid``/``owner_gid`` are ``uid``/``gid``."""
    top = ctypes.addressof(_STACK) + _STACK_SIZE - 64  # the stack grows down; keep it 16-byte aligned
    pid = _clone(_PAUSE, top & ~0xF, CLONE_NEWUSER | CLONE_VM | signal.SIGCHLD, None)
    if pid < 0:
        raise _errno_error("clone(CLONE_NEWUSER)")
    try:
        maps = (("uid_map", f"{owner_uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{owner_gid} {gid} 1"))
        for name, data in maps:
            fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, data.encode())
            finally:
                os.close(fd)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        # Not waited for: its death needs it scheduled (up to a ms on a busy machine). The
        # launcher's loop reaps every child it does not know.
        os.kill(pid, signal.SIGKILL)


class IdMaps:
    """The id-mapping namespaces of one slice's grants, one per distinct tree owner."""

    def __init__(self, uid: int, gid: int, prepared: dict[tuple[int, int], int] | None = None) -> None:
        """``prepared``: (owner uid, owner gid) -> namespace fd made before (not closed here)."""
        self.uid, self.gid = uid, gid
        self._prepared = dict(prepared or {})
        self._fds: dict[tuple[int, int], int] = {}

    def get(self, owner_uid: int, owner_gid: int) -> int:
        key = (owner_uid, owner_gid)
        if key in self._prepared:
            return self._prepared[key]
        if key not in self._fds:
            self._fds[key] = id_map_namespace(owner_uid, owner_gid, self.uid, self.gid)
        return self._fds[key]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def grant_tree(path: str, *, writable: bool, idmaps: IdMaps | None) -> int:
    """A detached mount of ``path`` for the slice: read-only unless ``writable``, nosuid, nodev,
    id-mapped to the slice's user where the file system allows it. Raises GrantError.

    A read-only grant takes the mounts under ``path`` too, read-only as well, where each of
    them can be id-mapped: a sink's folder mounted inside the pipeline's folder (a data disk
    at ``out/``) was hidden by the pipeline folder's grant, and the slice could not reach its
    staging folder there ("Read-only file system"). Elsewhere it is ``path``'s mount alone."""
    fd = _open_no_symlinks(path)
    try:
        info = os.fstat(fd)
        if writable and not (stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()):
            raise GrantError(
                f"cannot grant {path} writable: not a folder the runner made (owner uid {info.st_uid}, "
                f"{'a folder' if stat.S_ISDIR(info.st_mode) else 'not a folder'})"
            )
        if writable:
            _check_private_parent(path, fd)
        flags = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (0 if writable else MOUNT_ATTR_RDONLY)
        if not writable and idmaps is not None:
            whole = _clone_tree(fd, path, AT_RECURSIVE)
            # (every mount of it read-only and id-mapped in one call, or none: the kernel checks all first)
            if _set_attributes(whole, flags | MOUNT_ATTR_IDMAP, idmaps.get(info.st_uid, info.st_gid), AT_RECURSIVE):
                return whole
            os.close(whole)
        tree = _clone_tree(fd, path, 0)
    finally:
        os.close(fd)
    try:
        if idmaps is not None and _set_attributes(tree, flags | MOUNT_ATTR_IDMAP, idmaps.get(info.st_uid, info.st_gid)):
            return tree
        if writable and idmaps is not None:  # the slice could not write a folder of the runner's
            raise GrantError(
                f"cannot grant {path} writable: its file system does not support id-mapped mounts "
                f"({_errno_error('mount_setattr').strerror}; Linux 5.12+ and ext4, xfs, btrfs, tmpfs 6.3+...)"
            )
        if not _set_attributes(tree, flags, 0) and ctypes.get_errno() != errno.ENOSYS:
            # (Linux before 5.12 has no mount_setattr: the payload's remount sets the flags)
            raise GrantError(f"cannot grant {path}: {_errno_error('mount_setattr').strerror}")
    except BaseException:
        os.close(tree)
        raise
    return tree


def _clone_tree(fd: int, path: str, recursive: int) -> int:
    tree = int(libc.syscall(SYS_OPEN_TREE, fd, b"", AT_EMPTY_PATH | OPEN_TREE_CLONE | os.O_CLOEXEC | recursive))
    if tree < 0:
        raise GrantError(f"cannot grant {path}: {_errno_error('open_tree').strerror}")
    return tree


def grant_device(path: str) -> int:
    """A detached mount of the character device ``path`` (a GPU's node) for the slice: read-only
    and nosuid like every grant, but not nodev, or the device could not be opened. Raises
    GrantError for a link on the way or anything but a character device."""
    fd = _open_no_symlinks(path)
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            raise GrantError(f"cannot grant device {path}: not a character device")
        tree = int(libc.syscall(SYS_OPEN_TREE, fd, b"", AT_EMPTY_PATH | OPEN_TREE_CLONE | os.O_CLOEXEC))
        if tree < 0:
            raise GrantError(f"cannot grant device {path}: {_errno_error('open_tree').strerror}")
    finally:
        os.close(fd)
    # (nodev cleared: the device's own file system may be mounted nodev, /tmp in a test)
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, 0, 0)
    done = libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr))
    if int(done) != 0 and ctypes.get_errno() != errno.ENOSYS:  # (before 5.12: the payload's remount)
        os.close(tree)
        raise GrantError(f"cannot grant device {path}: {_errno_error('mount_setattr').strerror}")
    return tree


def mount_setattr_available() -> bool:
    """Whether this kernel has mount_setattr (Linux 5.12+): asked with a bad fd, it says EBADF."""
    libc.syscall(SYS_MOUNT_SETATTR, -1, b"", 0, None, 0)
    return ctypes.get_errno() != errno.ENOSYS


def _set_attributes(tree: int, flags: int, userns: int, recursive: int = 0) -> bool:
    attr = _MountAttr(flags, 0, 0, userns)
    at = AT_EMPTY_PATH | recursive
    return int(libc.syscall(SYS_MOUNT_SETATTR, tree, b"", at, ctypes.byref(attr), ctypes.sizeof(attr))) == 0
