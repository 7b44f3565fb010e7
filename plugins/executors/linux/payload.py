"""What runs inside a sandbox: its payload (PID 2) and, where runink-init was not built, its init.

The payload is a fork of the launcher that waits, warm (``_warm_up``), for its request on the
control socket; then it moves the granted mounts into its root, writes the task's private
files, drops to the slice's uid/gid (in a user namespace of its own where allowed) with
no_new_privs and the seccomp filter, and runs the command or the Python code (``run``). It
writes the exit status to the task's status file itself (``write_status``).

The module's globals (WARM_PYTHON, SLICE_FILTER, SLICE_UMASK) are set by the launcher's
``main`` before it forks any sandbox, as attributes of this module: the forked payloads read
them here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import importlib
import io
import json
import os
import platform
import select
import shutil
import signal
import socket
import stat
import sys
import traceback
from typing import Any

from runink.plugins.executors.linux.messages import MAX_DEVICES, Bind, LaunchRequest, Limits, PythonCode
from runink.plugins.executors.linux.namespaces import NAMESPACE_FLAGS
from runink.plugins.executors.linux.seccomp import LoadableFilter
from runink.plugins.executors.linux.syscalls import (
    KEYCTL_JOIN_SESSION_KEYRING,
    LINUX_CAPABILITY_VERSION_3,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REMOUNT,
    PR_GET_DUMPABLE,
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    SYS_KEYCTL,
    CapData,
    CapHeader,
    check,
    libc,
    mount,
    move_mount,
)

MAX_BINDS = 200  # granted paths in one request
MAX_REQUEST = 1 << 20  # bytes of a slice's request (its command line, env, binds): the launcher sends no more
FILES_DIR = "/run/runink/files"  # inside the sandbox: the task's granted files (tmpfs)
# Left to the command: the waiting payload ignores them (the executor signals every process
# of a slice); reset to the default in the command, with SIGPIPE and SIGXFSZ that Python ignores.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
COMMAND_DEFAULT_SIGNALS = (*FORWARDED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ)

# Cleared by the launcher's main() for a launcher without preloaded modules, whose slices are
# commands: its payloads do not warm up the paths of Python code run in the slice (see _warm_up).
WARM_PYTHON = True
# The slices' seccomp filter, built once before any sandbox is forked (None: --no-seccomp)
SLICE_FILTER: tuple[LoadableFilter, LoadableFilter] | None = None  # (warm part, final part): seccomp.py
# The umask the launcher was started with, given back to each slice (its outputs' modes);
# the launcher itself builds with 022, or a runner's 077 would make the sandbox's own
# folders (the way to its grants) unreachable for the slice's user.
SLICE_UMASK = 0o022


class LaunchError(Exception):
    pass


def exit_code(status: int) -> int:
    """A wait status as an exit code (128+N for signal N, as a shell reports it)."""
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def python_init(notify: int, lifeline: int | None = None) -> int:
    """PID 1 where runink-init was not built: the same protocol (see runink_init.c), in Python.

    With a ``lifeline`` (the read end of the launcher's pipe) it dies with the launcher."""
    watched = []
    if lifeline is not None:
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(pdeathsig)")
        if select.select([lifeline], [], [], 0)[0]:  # hung up: the launcher died before the prctl
            return 1
        watched.append(lifeline)
    if os.read(notify, 1) != b"x":
        return 0
    os.close(notify)
    try:
        payload = os.pidfd_open(2)
    except ProcessLookupError:
        return 0
    while True:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        ready = select.select([payload, *watched], [], [], 0.2)[0]
        if payload in ready:  # the payload exited: the namespace ends with us
            return 0
        if ready:  # the launcher died: so does the slice
            return 1


def write_status(fd: int | None, code: int) -> None:
    """The exit status for an executor that follows the slice without the launcher (a restart)."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        data = str(code).encode()
        os.pwrite(fd, data, 0)  # the launcher and the payload share the file offset: write at 0
        os.ftruncate(fd, len(data))


_WARM_UP_CODE = """
import os, sys, time
stamp = b"%.9f" % time.monotonic()
sizes = [len(part) for part in (stamp, b"x") if part]
if sizes and sys.argv is not None:
    text = f"{sizes[0]}:" + ", ".join(str(size) for size in sizes)
def step(batch, *, scale=1):
    return {"rows": len(batch) * scale}
step(sizes, scale=2)
"""


# A request like a real one (made before any fork, so the forks share it): the warm-up parses it
# with the same code as the real request (payload.run), paying that path's page faults ahead.
WARM_UP_REQUEST = (
    LaunchRequest(
        id="s",
        command=("x",),
        cwd="/",
        binds=(Bind("/", writable=False),),
        hostname="s",
        uid=1,
        gid=1,
        userns=True,
        limits=Limits(1.0, 1, 1),
        stdout="/proc/1/fd/1",
        stderr="/proc/1/fd/2",
        status_file="/s",
        secrets="/proc/1/fd/3",
        env={"A": "b"},
        python=PythonCode(code="x", args=("a",)),
    )
    .to_line()
    .encode()
)


def _warm_up() -> None:
    """Touch, before the request comes, what the request's path will touch.

    A forked process pays a copy-on-write page fault for every page it first writes (reference
    counts make reading Python objects a write), and page faults are slow on virtual
    machines: doing the work here takes ~1 ms off each slice's start. ``gc.freeze`` keeps the
    collector from walking (and so copying) every inherited object later.
    """
    gc.freeze()  # no collection here: the launcher froze its heap at start; this adds the few newer objects
    LaunchRequest.from_line(WARM_UP_REQUEST)
    json.loads(b'{"env": {"A": "b"}, "files": {}}')  # the secrets (_read_secrets)
    if WARM_PYTHON:  # the compiler's and the evaluation loop's common paths, as a step's first lines take them
        exec(compile(_WARM_UP_CODE, "<warm-up>", "exec"), {"__name__": "__warm_up__"})
    os.environ.clear()  # the slice's environment is its request's alone (and clearing it later cost ~0.2 ms)
    os.environ.update({"A": "b"})
    os.environ.clear()
    for stream in (sys.stdout, sys.stderr):  # readable live in the log, as with PYTHONUNBUFFERED
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    os.fstat(0)
    # ctypes calls of the request's path (a first call in a fork costs ~0.15 ms of page faults):
    # harmless ones, with the same argument types
    libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
    libc.capget(ctypes.byref(CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), (CapData * 2)())
    placeholder = b"runink-sandbox"  # in the sandbox's own uts namespace; the request renames it
    libc.sethostname(placeholder, len(placeholder))
    with contextlib.suppress(OSError):
        os.makedirs("/", exist_ok=True)
    # No throwaway posix_spawn for a command's first copy-on-write faults: it cost a command
    # slice ~1.1 ms of CPU and did not make the command start sooner (bench/README.md, issue 19).


def run(control: socket.socket) -> int:
    """Wait for the request, finish the sandbox with it, drop privileges, run the command."""
    _warm_up()
    control.send(b"ready")
    # fds: stdout, stderr, the secrets memfd, the status file, then one per granted path
    message, fds, _flags, _addr = socket.recv_fds(control, MAX_REQUEST, MAX_BINDS + MAX_DEVICES + 4)
    if not message:
        return 0  # the launcher drained its pool
    stdout_fd, stderr_fd, secrets_fd, status_fd, *mount_fds = fds
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    os.set_inheritable(status_fd, False)
    slice_id = "?"
    try:
        req = LaunchRequest.from_line(message)  # the launcher's: it checked the executor's request
        slice_id = req.id
        if req.uid is None or req.gid is None:  # (the launcher fills them in)
            raise LaunchError("the request names no uid or gid")
        uid, gid = req.uid, req.gid
        secrets = _read_secrets(secrets_fd)
        files = {**req.files, **secrets.get("files", {})}
        device_fds = mount_fds[len(mount_fds) - len(req.devices) :]
        mount_fds = mount_fds[: len(mount_fds) - len(req.devices)]
        for bind, fd in zip(req.binds, mount_fds, strict=True):
            target = bind.path
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if not os.path.exists(target):
                    open(target, "w").close()
            move_mount(fd, target)  # id-mapped already where the kernel can (grants.py)
            # the flags again: mount_setattr set them too, but a kernel before 5.12 has none
            flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (0 if bind.writable else MS_RDONLY)
            mount(None, target, None, flags)
        if req.devices:
            _add_devices(req.devices, device_fds)
        for path in req.hidden:  # (inside a read-only grant: a config holding credentials)
            _hide(path)
        if files:
            _private_files(files, uid, gid)
        mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        hostname = (req.hostname or req.id).encode()
        check(libc.sethostname(hostname, len(hostname)), "sethostname")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.closerange(3, status_fd)
        os.closerange(status_fd + 1, os.sysconf("SC_OPEN_MAX"))
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if req.userns:
            _enter_user_namespace(uid, gid)
        # not dumpable, on every path: left to the uid change, it depended on fs.suid_dumpable
        # (see _enter_user_namespace: a command read its payload's memory)
        check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(not dumpable)")
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
        if SLICE_FILTER is not None and not req.userns:
            # last: it denies what the set-up above needed (mount, move_mount, unshare). In a user
            # namespace of its own the slice can do none of those already (no capability, no
            # nested user namespace), and the ~0.05 ms of loading it is saved.
            SLICE_FILTER[1].load()
        os.umask(SLICE_UMASK)
        cwd = req.cwd or "/"
        os.chdir(cwd)
        env = {str(k): str(v) for k, v in {**req.env, **secrets.get("env", {})}.items()}
        python, command = _sealed(req, secrets) if req.sealed else (req.python, list(req.command))
    except BaseException as exc:
        os.write(2, f"runink: cannot set up slice {slice_id}: {exc}\n".encode())
        return 126
    code = _run_python(python, env, cwd) if python is not None else _run_command(command, env)
    write_status(status_fd, code)
    return code


def leave_session() -> None:
    """Nothing of the runner's session: no controlling terminal (a new session; with no tty
    device in the sandbox it cannot get one, so it cannot type into the user's shell with
    TIOCSTI), and a fresh, empty session keyring instead of the one it inherited (the
    runner's keys). The seccomp filter then denies the keyring calls and TIOCSTI outright."""
    os.setsid()
    keyctl = SYS_KEYCTL.get(platform.machine())
    if keyctl is not None and libc.syscall(keyctl, KEYCTL_JOIN_SESSION_KEYRING, None, 0, 0) < 0:
        code = ctypes.get_errno()
        if code != errno.ENOSYS:  # a kernel without keyrings has none to leak
            raise OSError(code, f"keyctl(join session keyring): {os.strerror(code)}")


def _run_command(command: list[str], env: dict[str, str]) -> int:
    """Start the program and wait for it, to record its exit status (see the module docstring)."""
    found = command[0] if "/" in command[0] else shutil.which(command[0], path=env.get("PATH", os.defpath))
    if found is None:
        os.write(2, f"runink: cannot start {command[0]}: not found in PATH\n".encode())
        return 127
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    try:
        child = os.posix_spawn(found, command, env, setsigdef=COMMAND_DEFAULT_SIGNALS)
    except OSError as exc:
        os.write(2, f"runink: cannot start {command[0]}: {exc.strerror}\n".encode())
        return 126 if exc.errno in (errno.EACCES, errno.ENOEXEC) else 127
    return exit_code(os.waitpid(child, 0)[1])


def _enter_user_namespace(uid: int, gid: int) -> None:
    """Put the (already unprivileged) slice in a user namespace of its own, where it may do
    nothing a user namespace would allow: its uid and gid map to themselves, it holds no
    capability, and it may create no nested user namespace (``user.max_user_namespaces`` is 0
    in it), so no other namespace either. Without this, on a host that lets unprivileged
    users create user namespaces, a slice could give itself root-in-a-namespace and reach
    the kernel code (mounts, netfilter...) that brings.

    Done after setuid: a process may map its own ids without privilege. Its /proc/self files
    must be its own to write the maps (a uid change made it non-dumpable), and are not after
    (the caller makes it non-dumpable again): dumpable, this process (a fork of the launcher,
    which once held earlier slices' requests) let a command it runs, of the same uid, read and
    write its memory through /proc/2/mem (a review). Its /proc/self files that only their
    owner may read (``environ``, ``mem``) are then root's: a slice reads its environment from
    ``os.environ``.
    """
    check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(dumpable)")
    check(libc.unshare(NAMESPACE_FLAGS["user"]), "unshare(user)")
    for name, data in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)
    fd = os.open("/proc/sys/user/max_user_namespaces", os.O_WRONLY)  # while it may (CAP_SYS_RESOURCE)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
    none = (CapData * 2)()  # the capabilities creating the namespace gave it there: all dropped
    check(libc.capset(ctypes.byref(CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), none), "capset")


def _read_secrets(fd: int) -> dict[str, Any]:
    """The slice's environment and files, read from the fd the executor filled (a memfd).

    They never pass through the launcher's memory: sandboxes are forks of the launcher, so
    whatever it once held (earlier slices' secrets) would be readable by a later slice's code.
    """
    size = os.fstat(fd).st_size  # a memfd (or /dev/null): read exactly, no 1 MiB buffer per slice
    chunks = []
    while size > 0 and (chunk := os.read(fd, size)):
        chunks.append(chunk)
        size -= len(chunk)
    os.close(fd)
    data = b"".join(chunks)
    return json.loads(data) if data.strip() else {}


def _sealed(req: LaunchRequest, secrets: dict[str, Any]) -> tuple[PythonCode | None, list[str]]:
    """The Python code or the command a sealed request's memfd holds (the executor's)."""
    if secrets.get("python") is not None:
        return PythonCode.from_dict(secrets["python"], req.id), []
    command = secrets.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise LaunchError("a sealed request's fd holds no command")
    return None, command


def _add_devices(devices: tuple[str, ...], fds: list[int]) -> None:
    """The granted device nodes (the launcher's detached mounts) at /dev/<name>: /dev, read-only
    otherwise, is writable only meanwhile. The slice can make no device node of its own (no
    CAP_MKNOD), so these are the only GPUs it can open."""
    mount(None, "/dev", None, MS_BIND | MS_REMOUNT | MS_NOSUID)
    for path, fd in zip(devices, fds, strict=True):
        target = "/dev/" + path.rsplit("/", 1)[-1]  # (a plain name: messages._devices)
        open(target, "x").close()
        move_mount(fd, target)
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_RDONLY)  # not nodev: a device
    mount(None, "/dev", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)


def _hide(path: str) -> None:
    """Show the file at ``path`` empty: /dev/null mounted over it, read-only. A path that is
    not there, or is a folder, is left (the runner names files it found)."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    mount("/dev/null", path, None, MS_BIND)
    mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC)


def _private_files(files: dict[str, str], uid: int, gid: int) -> None:
    """The task's granted files in a tmpfs only its mount namespace has, readable by it alone."""
    os.makedirs(FILES_DIR)
    mount("tmpfs", FILES_DIR, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0500,size=16m")
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


def _run_python(python: PythonCode, env: dict[str, str], cwd: str) -> int:
    """``python -m MODULE ARGS`` or ``python -c CODE ARGS`` in this (forked, preloaded) interpreter."""
    os.environ.clear()
    os.environ.update(env)
    for stream in (sys.stdout, sys.stderr):  # readable live in the log, as with PYTHONUNBUFFERED
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    args = list(python.args)
    code = 0
    try:
        if python.module is not None:
            name = python.module
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
            exec(compile(str(python.code), "<string>", "exec"), {"__name__": "__main__"})
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
