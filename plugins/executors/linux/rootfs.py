"""The minimal root a sandbox sees: a tmpfs with the runtime bound read-only, a few devices.

Built by each sandbox's payload in its own mount namespace (``build_root``), before any
request: the system layout (/usr, /etc, /lib...), this interpreter and its packages, private
/tmp, /dev/shm and device nodes, then ``pivot_root`` into it.
"""

from __future__ import annotations

import os
import platform
import sys

from runink.plugins.executors.linux.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_MOVE,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    SYS_PIVOT_ROOT,
    check,
    libc,
    loopback_up,
    mount,
)

# no tty: a slice has no controlling terminal (its own session), so nothing it can type into
DEVICES = ("null", "zero", "full", "random", "urandom")
ROOT_LAYOUT = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")


def runtime_paths(extra: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, str], list[str]]:
    """The host paths every sandbox sees read-only: (symlinks at the top level, directories).

    The system layout (/usr, /etc, /lib...), this interpreter's prefixes and import path, and
    the folders of the runink package itself (an editable install lives outside
    site-packages). Nested paths are dropped: their parent is bound already.
    """
    import runink
    import runink.core
    import runink.plugins

    links: dict[str, str] = {}
    found: list[str] = []
    for path in ROOT_LAYOUT:
        if os.path.islink(path):
            links[path] = os.readlink(path)
        elif os.path.isdir(path):
            found.append(path)
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    candidates.append(os.path.dirname(os.path.realpath(sys.executable)))
    candidates += [p for p in sys.path[1:] if p]
    for package in (runink, runink.core, runink.plugins):
        candidates += list(package.__path__)
    candidates += list(extra)
    for path in candidates:
        real = os.path.realpath(path)
        if os.path.isdir(real):
            found.append(real)
    return links, _outermost(found)


def _outermost(paths: list[str]) -> list[str]:
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def build_root(root: str, links: dict[str, str], directories: list[str], network_isolated: bool) -> None:
    """In the new mount namespace: a tmpfs root with the runtime bound read-only, then pivot into it."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=16m")
    # The private /tmp first: runtime paths under /tmp (a virtualenv there) are bound inside it.
    os.makedirs(root + "/tmp")
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m")
    for path, target in links.items():
        os.symlink(target, root + path)
    for path in directories:
        inside = root + path
        os.makedirs(inside, exist_ok=True)
        mount(path, inside, None, MS_BIND)
        mount(None, inside, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    dev = root + "/dev"
    os.makedirs(dev, exist_ok=True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=64k")
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            open(f"{dev}/{name}", "w").close()
            mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")):
        os.symlink(target, f"{dev}/{name}")
    os.symlink("/proc/self/fd/2", f"{dev}/stderr")
    os.makedirs(f"{dev}/shm")
    mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
    mount(None, dev, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
    os.makedirs(root + "/proc", exist_ok=True)  # mounted after: a proc shows its mounter's pid namespace
    old = root + "/.old-root"
    os.mkdir(old)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is not None:
        check(libc.syscall(number, root.encode(), old.encode()), "pivot_root")
        os.chdir("/")
        check(libc.umount2(b"/.old-root", MNT_DETACH), "umount old root")
        os.rmdir("/.old-root")
    else:  # switch_root's way: move the new root over / and chroot into it
        os.chdir(root)
        mount(root, "/", None, MS_MOVE)
        os.chroot(".")
        os.chdir("/")
    if network_isolated:
        loopback_up()
