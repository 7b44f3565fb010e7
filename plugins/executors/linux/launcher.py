"""The slice launcher: a single-threaded fork server that keeps isolated sandboxes warm.

Started once per agent (``python -m runink.plugins.executors.linux.launcher``), it reads one
JSON request per line on stdin and answers on stdout::

    {"op": "launch", "id": "s-1", "command": ["sh", "-c", "..."], "env": {...}, "cwd": "/work/s-1",
     "binds": [{"path": "/work/s-1", "writable": true}], "hostname": "s-1", "uid": 100001,
     "gid": 100001, "network": false, "cgroup_procs": [".../cgroup.procs"],
     "stdout": ".../stdout.log", "stderr": ".../stderr.log", "status_file": ".../exit_status"}
    -> {"event": "started", "id": "s-1", "pid": 12345}
    -> {"event": "exited", "id": "s-1", "code": 0}        (later; code is 128+N for signal N)
    -> {"event": "failed", "id": "s-1", "message": "..."}  (instead of both, if it cannot start)

Why warm sandboxes: on the machines measured (a VM) ``fork`` costs ~1.7 ms for a small
Python process and ~5 ms for one with pyarrow loaded (page-table copies), and building
namespaces and mounts costs another few ms. All of that is done *before* a request arrives:
each sandbox in the pool is a pair of processes

    init, PID 1 of new pid/mount/uts/ipc(/net) namespaces, a child of the launcher (reaps,
    records the exit status in the task dir, exits with it)
      -> payload: waits on a socket for its request, still root, nothing of a slice yet

inside a minimal root filesystem (a tmpfs with read-only binds of the runtime: /usr, /etc,
the interpreter and its packages; private /proc, /tmp, /dev/shm and a few device nodes), so
a slice sees nothing else of the host. On a request the launcher moves the payload into the
slice's cgroup (before any slice code runs), clones the granted paths as detached mounts
(``open_tree``) and sends them with the log fds over the socket; the payload moves them into
place (``move_mount``), sets the hostname, drops to the slice's uid/gid with no_new_privs and
runs the command: ``exec`` for a program, or, for ``python -m MODULE`` / ``python -c CODE``
with this interpreter, the Python code directly in the forked process (the runtime given
with ``--preload`` is already imported: no interpreter start, no exec).

No preexec_fn and no threads: the launcher only forks, which is why it must stay
single-threaded. It checks that after preloading (ARCHITECTURE: pyarrow needs
``JE_ARROW_MALLOC_CONF=background_thread:false``; polars starts threads and is imported by
the slice, never here).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import gc
import importlib
import io
import json
import os
import platform
import select
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runink.plugins.executors.linux.cgroups import CgroupError, CgroupLayout, CgroupLimits, CgroupManager, SliceCgroup
from runink.plugins.executors.linux.namespaces import NAMESPACE_FLAGS

libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 38, 1
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
# The new mount API (Linux 5.2): the same numbers on every architecture.
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429
OPEN_TREE_CLONE, AT_EMPTY_PATH, AT_FDCWD = 1, 0x1000, -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
ROOT_LAYOUT = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
MAX_BINDS = 200
FILES_DIR = "/run/runink/files"  # inside the sandbox: the task's granted files (tmpfs)
BUILD_DELAY = 0.005  # seconds of quiet before building the next warm sandbox


class LaunchError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        libc.mount(
            source and source.encode(), target.encode(), fstype and fstype.encode(), flags, data and data.encode()
        ),
        f"mount {target}",
    )


def open_tree(path: str) -> int:
    """A detached copy of the mount at ``path`` (only that mount, not the ones below it)."""
    fd = int(libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | os.O_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot grant {path}: {os.strerror(err)}")
    return fd


def _move_mount(fd: int, target: str) -> None:
    _check(
        libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH),
        f"move_mount {target}",
    )


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _code(status: int) -> int:
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


# --- what a slice sees --------------------------------------------------------------


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


def _build_root(root: str, links: dict[str, str], directories: list[str], network_isolated: bool) -> None:
    """In the new mount namespace: a tmpfs root with the runtime bound read-only, then pivot into it."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=16m")
    # The private /tmp first: runtime paths under /tmp (a virtualenv there) are bound inside it.
    os.makedirs(root + "/tmp")
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m")
    for path, target in links.items():
        os.symlink(target, root + path)
    for path in directories:
        inside = root + path
        os.makedirs(inside, exist_ok=True)
        _mount(path, inside, None, MS_BIND)
        _mount(None, inside, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    dev = root + "/dev"
    os.makedirs(dev, exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=64k")
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            open(f"{dev}/{name}", "w").close()
            _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")):
        os.symlink(target, f"{dev}/{name}")
    os.symlink("/proc/self/fd/2", f"{dev}/stderr")
    os.makedirs(f"{dev}/shm")
    _mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
    _mount(None, dev, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
    os.makedirs(root + "/proc", exist_ok=True)
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    old = root + "/.old-root"
    os.mkdir(old)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is not None:
        _check(libc.syscall(number, root.encode(), old.encode()), "pivot_root")
        os.chdir("/")
        _check(libc.umount2(b"/.old-root", MNT_DETACH), "umount old root")
        os.rmdir("/.old-root")
    else:  # switch_root's way: move the new root over / and chroot into it
        os.chdir(root)
        _mount(root, "/", None, 8192)  # MS_MOVE
        os.chroot(".")
        os.chdir("/")
    if network_isolated:
        _loopback_up()


# --- inside a sandbox ----------------------------------------------------------------


def _init(
    control: socket.socket,
    status: socket.socket,
    *,
    root: str,
    links: dict[str, str],
    directories: list[str],
    network: bool,
) -> int:
    """PID 1: build the sandbox, fork the waiting payload, reap everything, record and
    return the payload's status."""
    try:
        _build_root(root, links, directories, network_isolated=not network)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            control.send(f"error cannot build the sandbox: {exc}".encode())
        return 126
    payload = os.fork()
    if payload == 0:
        code = 126
        try:
            code = _payload(control)
        except BaseException:
            traceback.print_exc()
        os._exit(code)
    control.close()
    code = 1
    while True:  # reap everything; the payload's status is the slice's
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        if pid == payload:
            code = _code(wait_status)
            break
    status.setblocking(False)
    with contextlib.suppress(OSError):  # no status fd: the sandbox was never used
        _, fds, _, _ = socket.recv_fds(status, 16, 1)
        for fd in fds:  # read by an executor that recovers the slice after a restart
            os.write(fd, str(code).encode())
            os.fsync(fd)
    return code


def _warm_up() -> None:
    """Touch, before the request comes, what the request's path will touch.

    A forked process pays a copy-on-write page fault for every page it first writes (reference
    counts make reading Python objects a write), and page faults are slow on virtual
    machines: doing the work here takes ~1 ms off each slice's start. ``gc.freeze`` keeps the
    collector from walking (and so copying) every inherited object later.
    """
    gc.freeze()  # no collection here: the launcher froze its heap at start; this adds the few newer objects
    sample = {"id": "s", "command": ["x"], "env": {"A": "b"}, "binds": [{"path": "/", "writable": False}], "uid": 1}
    json.loads(json.dumps(sample))
    compile("pass", "<string>", "exec")
    dict(os.environ).update({"A": "b"})
    os.fstat(0)
    with contextlib.suppress(OSError):
        os.makedirs("/", exist_ok=True)


def _payload(control: socket.socket) -> int:
    """Wait for the request, finish the sandbox with it, drop privileges, run the command."""
    _warm_up()
    control.send(b"ready")  # the launcher learns this process's host pid from the credentials
    message, fds, _flags, _addr = socket.recv_fds(control, 1 << 20, MAX_BINDS + 3)
    if not message:
        return 0  # the launcher drained its pool
    req = json.loads(message)
    stdout_fd, stderr_fd, secrets_fd, *mount_fds = fds
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    try:
        secrets = _read_secrets(secrets_fd)
        files = {**req.get("files", {}), **secrets.get("files", {})}
        for bind, fd in zip(req.get("binds", []), mount_fds, strict=True):
            target = bind["path"]
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if not os.path.exists(target):
                    open(target, "w").close()
            _move_mount(fd, target)
            flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (0 if bind.get("writable") else MS_RDONLY)
            _mount(None, target, None, flags)
        if files:
            _private_files(files, int(req["uid"]), int(req["gid"]))
        _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        hostname = str(req.get("hostname") or req["id"]).encode()
        _check(libc.sethostname(hostname, len(hostname)), "sethostname")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.setgroups([])
        os.setgid(int(req["gid"]))
        os.setuid(int(req["uid"]))
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
        cwd = req.get("cwd") or "/"
        os.chdir(cwd)
        env = {str(k): str(v) for k, v in {**req.get("env", {}), **secrets.get("env", {})}.items()}
    except BaseException as exc:
        os.write(2, f"runink: cannot set up slice {req.get('id')}: {exc}\n".encode())
        return 126
    python = req.get("python")
    if python:
        return _run_python(python, env, cwd)
    command = list(req["command"])
    try:
        os.execvpe(command[0], command, env)
    except BaseException as exc:
        os.write(2, f"runink: cannot start {command[0]}: {exc}\n".encode())
    return 127


def _read_secrets(fd: int) -> dict[str, Any]:
    """The slice's environment and files, read from the fd the executor filled (a memfd).

    They never pass through the launcher's memory: sandboxes are forks of the launcher, so
    whatever it once held (earlier slices' secrets) would be readable by a later slice's code.
    """
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    os.close(fd)
    data = b"".join(chunks)
    return json.loads(data) if data.strip() else {}


def _private_files(files: dict[str, str], uid: int, gid: int) -> None:
    """The task's granted files in a tmpfs only its mount namespace has, readable by it alone."""
    os.makedirs(FILES_DIR)
    _mount("tmpfs", FILES_DIR, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0500,size=16m")
    for name, content in files.items():
        if not name or "/" in name or name in (".", ".."):
            raise LaunchError(f"invalid file name {name!r}")
        path = os.path.join(FILES_DIR, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        try:
            os.write(fd, content.encode())
            os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
    os.chown(FILES_DIR, uid, gid)


def _run_python(python: dict[str, Any], env: dict[str, str], cwd: str) -> int:
    """``python -m MODULE ARGS`` or ``python -c CODE ARGS`` in this (forked, preloaded) interpreter."""
    os.environ.clear()
    os.environ.update(env)
    for stream in (sys.stdout, sys.stderr):  # readable live in the log, as with PYTHONUNBUFFERED
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    args = [str(a) for a in python.get("args", [])]
    code = 0
    try:
        if "module" in python:
            name = str(python["module"])
            sys.argv = [name, *args]
            sys.path[0] = cwd
            module = importlib.import_module(name)
            main = getattr(module, "main", None)
            if callable(main):
                code = main(args) or 0
            else:
                import runpy

                runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            sys.argv = ["-c", *args]
            sys.path[0] = ""
            exec(compile(str(python["code"]), "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return int(code)


# --- the launcher --------------------------------------------------------------------


@dataclass
class Sandbox:
    init: int  # host pid of the sandbox's PID 1, whose exit status is the slice's
    network: bool
    control: socket.socket  # to the payload (and, while it builds, the init)
    status: socket.socket  # to PID 1: the exit-status file's fd
    payload: int | None = None  # host pid of the payload, once ready
    error: str | None = None
    cgroup: SliceCgroup | None = None  # a warm cgroup the payload is in, claimed by the slice
    limits: CgroupLimits = field(default_factory=CgroupLimits)  # what that cgroup was created with


class Launcher:
    def __init__(
        self, pool_size: int, root: str, extra_paths: list[str], out: Any, cgroups: CgroupManager | None = None
    ) -> None:
        self.pool_size = pool_size
        self.cgroups = cgroups
        self.built = 0
        # Warm cgroups get the limits of the last request: slices of a pipeline mostly ask for
        # the same, and a claim then only renames (each limit written costs ~0.1-0.3 ms).
        self.expected_limits = CgroupLimits()
        self.root = root
        self.links, self.directories = runtime_paths(extra_paths)
        self.out = out
        self.pool: list[Sandbox] = []
        self.running: dict[int, str] = {}  # PID 1 (host pid) -> slice id
        self.failures = 0
        files = {"pid": "pid", "mount": "mnt", "uts": "uts", "ipc": "ipc", "net": "net"}
        self.own_namespaces = {k: os.open(f"/proc/self/ns/{f}", os.O_RDONLY | os.O_CLOEXEC) for k, f in files.items()}
        self.own_cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    # events
    def emit(self, **event: Any) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    # sandboxes
    def create(self, network: bool) -> Sandbox:
        """Start building a sandbox: unshare, fork its PID 1, and step back into our namespaces.

        Two forks per sandbox (PID 1, then the payload), not three: the launcher itself
        enters the new namespaces for the fork and returns to its own right after (setns),
        so no intermediate process is needed to hold them.
        """
        control, control_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        status, status_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        control.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        keep = {control_child.fileno(), status_child.fileno()}
        kinds = ["pid", "mount", "uts", "ipc"] + ([] if network else ["net"])
        _check(libc.unshare(sum(NAMESPACE_FLAGS[k] for k in kinds)), "unshare")
        try:
            pid = os.fork()  # the first child in a new pid namespace is its PID 1
        except OSError:
            self._return_to_own_namespaces(kinds)
            raise
        if pid:
            self._return_to_own_namespaces(kinds)
            control_child.close()
            status_child.close()
            sandbox = Sandbox(pid, network, control, status)
            self.pool.append(sandbox)
            return sandbox
        code = 126
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # Nothing of the launcher's: a sandbox outlives it (a recovered slice), so it must
            # not hold the agent's stderr open either. Build errors go over the control socket.
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            for name in os.listdir("/proc/self/fd"):  # other sandboxes' sockets, the launcher's pipes
                if int(name) > 2 and int(name) not in keep:
                    with contextlib.suppress(OSError):
                        os.close(int(name))
            code = _init(
                control_child,
                status_child,
                root=self.root,
                links=self.links,
                directories=self.directories,
                network=network,
            )
        except BaseException as exc:
            with contextlib.suppress(OSError):
                control_child.send(f"error cannot create the sandbox: {exc}".encode())
        os._exit(code)

    def _return_to_own_namespaces(self, kinds: list[str]) -> None:
        try:
            for kind in kinds:
                _check(libc.setns(self.own_namespaces[kind], NAMESPACE_FLAGS[kind]), f"setns {kind}")
            os.fchdir(self.own_cwd)  # entering a mount namespace moves the cwd to its root
        except OSError as exc:  # a launcher stuck in a slice's namespaces must not serve on
            os.write(2, f"runink launcher: cannot return to its own namespaces: {exc}\n".encode())
            os._exit(70)

    def on_control(self, sandbox: Sandbox) -> None:
        """A message from a sandbox being built: ready (with the payload's pid) or an error."""
        try:
            message, ancillary, _, _ = sandbox.control.recvmsg(4096, socket.CMSG_SPACE(12))
        except OSError as exc:
            message, ancillary = f"error {exc}".encode(), []
        if message == b"ready":
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sandbox.payload = struct.unpack("iII", data[:12])[0]
            if self.cgroups is not None and sandbox.payload is not None:
                self.built += 1
                try:  # the slow first move into a cgroup happens now, not when a slice starts
                    sandbox.limits = self.expected_limits
                    sandbox.cgroup = self.cgroups.create(f"warm-{os.getpid()}-{self.built}", sandbox.limits)
                    sandbox.cgroup.attach(sandbox.payload)
                except (OSError, CgroupError) as exc:
                    sandbox.error = f"cannot prepare its cgroup: {exc}"
                    self.discard(sandbox)
                    self.failures += 1
                    return
            self.failures = 0
        else:
            sandbox.error = message.decode(errors="replace").removeprefix("error ") or "the sandbox died"
            self.discard(sandbox)
            self.failures += 1

    def discard(self, sandbox: Sandbox) -> None:
        if sandbox in self.pool:
            self.pool.remove(sandbox)
        sandbox.control.close()
        sandbox.status.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(sandbox.init, signal.SIGKILL)
        if sandbox.cgroup is not None:
            with contextlib.suppress(CgroupError):
                sandbox.cgroup.remove()
            sandbox.cgroup = None

    def building(self) -> list[Sandbox]:
        return [s for s in self.pool if s.payload is None and s.error is None]

    def take(self, network: bool) -> Sandbox:
        for sandbox in self.pool:
            if sandbox.network == network and sandbox.payload is not None:
                self.pool.remove(sandbox)
                return sandbox
        sandbox = next((s for s in self.building() if s.network == network), None) or self.create(network)
        deadline = time.monotonic() + 10
        while sandbox.payload is None and sandbox.error is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sandbox.control], [], [], left)[0]:
                self.discard(sandbox)
                raise LaunchError("the sandbox did not get ready within 10 s")
            self.on_control(sandbox)
        if sandbox.error is not None:
            raise LaunchError(sandbox.error)
        self.pool.remove(sandbox)
        return sandbox

    def short(self) -> bool | None:
        """Which kind of sandbox the pool lacks (network granted or not), None if none.

        One warm sandbox with the network is kept, ``pool_size`` without; builds happen one at
        a time, so a request waits for at most one build; after 3 failed builds in a row the
        pool stops refilling (requests then build their own and report the error).
        """
        if self.failures >= 3 or self.building():
            return None
        for network, size in ((False, self.pool_size), (True, min(self.pool_size, 1))):
            if sum(1 for s in self.pool if s.network == network) < size:
                return network
        return None

    # slices
    def launch(self, req: dict[str, Any]) -> None:
        slice_id = req["id"]
        opened: list[int] = []
        try:
            binds = sorted(req.get("binds", []), key=lambda b: b["path"].rstrip("/").count("/"))
            if len(binds) > MAX_BINDS:
                raise LaunchError(f"too many granted paths ({len(binds)} > {MAX_BINDS})")
            for stream in ("stdout", "stderr"):
                opened.append(os.open(req.get(stream) or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))
            # the executor's memfd, opened by path and passed on unread (see _read_secrets)
            opened.append(os.open(req.get("secrets") or os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            for bind in binds:
                opened.append(open_tree(bind["path"]))
            status_fd = (
                os.open(req["status_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                if req.get("status_file")
                else None
            )
            sandbox = self.take(bool(req.get("network")))
        except (OSError, LaunchError) as exc:
            for fd in opened:
                os.close(fd)
            self.emit(event="failed", id=slice_id, message=str(exc))
            return
        try:
            assert sandbox.payload is not None
            if self.cgroups is not None and sandbox.cgroup is not None:  # limits in place before any slice code
                limits = CgroupLimits(**req.get("limits", {}))
                sandbox.cgroup = self.cgroups.claim(sandbox.cgroup, slice_id, limits, applied=sandbox.limits)
                self.expected_limits = limits
            if status_fd is not None:
                socket.send_fds(sandbox.status, [b"s"], [status_fd])
            socket.send_fds(sandbox.control, [json.dumps({**req, "binds": binds}).encode()], opened)
        except (OSError, CgroupError) as exc:
            self.discard(sandbox)
            self.emit(event="failed", id=slice_id, message=f"cannot start the slice: {exc}")
            return
        finally:
            for fd in opened:
                os.close(fd)
            if status_fd is not None:
                os.close(status_fd)
        sandbox.control.close()
        sandbox.status.close()
        sandbox.cgroup = None  # the slice's now: the executor removes it when the slice ends
        self.running[sandbox.init] = slice_id
        self.emit(event="started", id=slice_id, pid=sandbox.init)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slice_id = self.running.pop(pid, None)
            if slice_id is not None:
                self.emit(event="exited", id=slice_id, code=_code(status))
                continue
            for sandbox in list(self.pool):  # a pooled sandbox died before use
                if sandbox.init == pid:
                    if sandbox.payload is None and sandbox.error is None:
                        self.failures += 1
                    self.discard(sandbox)

    def drain(self) -> None:
        for sandbox in list(self.pool):
            self.discard(sandbox)

    def serve(self, stdin: Any) -> None:
        buffer = b""
        fd = stdin.fileno()
        # SIGCHLD wakes the select at once (no polling delay between a slice's exit and its event).
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        signal.set_wakeup_fd(wake_write)
        try:
            while True:
                controls = {s.control.fileno(): s for s in self.building()}
                missing = self.short()
                # Builds start once the launcher has been idle for BUILD_DELAY: a build (a fork
                # of this process, mounts) competes for the CPUs with the slice just started.
                timeout = 1.0 if missing is None else BUILD_DELAY
                ready, _, _ = select.select([fd, wake_read, *controls], [], [], timeout)
                if wake_read in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_read, 4096)
                for control_fd in ready:
                    if control_fd in controls and controls[control_fd] in self.pool:
                        self.on_control(controls[control_fd])
                if fd in ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        req = json.loads(line)
                        if req.get("op") == "launch":
                            self.launch(req)
                self.reap()
                if not ready and missing is not None:  # idle: build the next warm sandbox
                    self.create(missing)
        finally:
            self.drain()


def preload(modules: list[str]) -> None:
    """Import the runtime slices share; refuse if that started a thread (forks must stay safe)."""
    # Both read at load time: pyarrow's jemalloc would start a background thread, and
    # OpenBLAS (loaded with numpy) a pool of them. A slice can raise the BLAS threads again
    # (threadpoolctl); the forked slices keep jemalloc without its background thread.
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    for name in modules:
        importlib.import_module(name)
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise SystemExit(
            f"runink launcher: preloading {', '.join(modules)} started {threads - 1} thread(s); "
            "a fork server must stay single-threaded (for pyarrow set JE_ARROW_MALLOC_CONF=background_thread:false)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runink.plugins.executors.linux.launcher")
    parser.add_argument("--pool", type=int, default=2, help="warm sandboxes kept ready (per network mode)")
    parser.add_argument("--preload", default="", help="comma-separated modules to import once, for every slice")
    parser.add_argument("--readable", action="append", default=[], help="an extra host path every slice sees")
    parser.add_argument(
        "--cgroups",
        default="",
        help='JSON {"version": 1|2, "own": {controller: dir}, "parent": name}: slices\' cgroups go under own/parent',
    )
    args = parser.parse_args(argv)
    cgroups = None
    if args.cgroups:
        spec = json.loads(args.cgroups)
        layout = CgroupLayout(int(spec["version"]), {c: Path(d) for c, d in spec["own"].items()})
        cgroups = CgroupManager(layout, parent_name=spec["parent"], prepared=True)
    if args.preload:
        preload([m for m in args.preload.split(",") if m])
    gc.collect()
    gc.freeze()  # what every sandbox inherits: never walked by the collector (no copy-on-write)
    root = tempfile.mkdtemp(prefix=f"runink-root-{os.getpid()}-")  # the sandboxes' mount point (in their namespaces)
    try:
        Launcher(max(0, args.pool), root, args.readable, sys.stdout, cgroups).serve(sys.stdin.buffer)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
