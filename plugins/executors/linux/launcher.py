"""The slice launcher: a small single-threaded fork server that starts isolated processes.

Started once per agent (``python -m runink.plugins.executors.linux.launcher``), it reads one
JSON request per line on stdin and answers on stdout::

    {"op": "launch", "id": "s-1", "command": ["sh", "-c", "..."], "env": {...}, "cwd": "/work/s-1",
     "writable": ["/work/s-1"], "hostname": "s-1", "uid": 100001, "gid": 100001, "network": false,
     "cgroup_procs": [".../cgroup.procs"], "stdout": ".../stdout.log", "stderr": ".../stderr.log"}
    -> {"event": "started", "id": "s-1", "pid": 12345}
    -> {"event": "exited", "id": "s-1", "code": 0}        (later; code is 128+N for signal N)

Each launch forks a child that joins the slice's cgroup *before* anything else runs, unshares
pid, mount, uts, ipc (and net unless granted) namespaces, and forks the slice's PID 1. PID 1
makes mounts private, mounts a fresh /proc, a private /tmp, binds the writable folders,
remounts / read-only, sets the hostname, brings loopback up, then forks the payload, which
drops to the slice's uid/gid with no_new_privs and execs the command. PID 1 reaps everything
and exits with the payload's status; the kernel then kills whatever is left in the namespace.

No preexec_fn and no threads: the launcher only forks, which is why it must stay
single-threaded (ARCHITECTURE: runtime preloading must not start threads).

Not yet done (issue 5): submounts other than / stay writable (the slice runs as an
unprivileged uid, so root-owned ones are still protected), user namespaces, the Python-step
fast path (running a step in the forked child without exec), and the executor driver.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
from typing import Any

from runink.plugins.executors.linux.namespaces import NAMESPACE_FLAGS

libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


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


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _slice_init(req: dict[str, Any]) -> int:
    """PID 1 of the slice: set up the mount/uts/net namespaces, run the payload, reap, return its status."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Writable folders are held open across the private /tmp (which may hide them) and bound
    # back in place through /proc/self/fd after it.
    writable = [(path, os.open(path, os.O_RDONLY | os.O_DIRECTORY)) for path in req.get("writable", [])]
    _mount("/", "/", None, MS_BIND | MS_REC)
    _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=256m,mode=1777")
    for path, fd in writable:
        if path == "/tmp" or path.startswith("/tmp/"):
            os.makedirs(path, exist_ok=True)  # inside the new, empty /tmp
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)  # read-write, unlike /
        os.close(fd)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    hostname = req.get("hostname", req["id"]).encode()
    _check(libc.sethostname(hostname, len(hostname)), "sethostname")
    if not req.get("network"):
        _loopback_up()
    payload = os.fork()
    if payload == 0:
        try:
            os.setgroups([])
            os.setgid(int(req["gid"]))
            os.setuid(int(req["uid"]))
            _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
            os.chdir(req.get("cwd") or "/")
            command = list(req["command"])
            os.execvpe(command[0], command, dict(req.get("env", {})))
        except BaseException as exc:
            os.write(2, f"runink: cannot start {req['command'][0]}: {exc}\n".encode())
            os._exit(127)
    while True:  # reap everything; the payload's status is the slice's
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == payload:
            return _code(status)


def _code(status: int) -> int:
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def launch(req: dict[str, Any]) -> int:
    """Fork the isolated slice; returns the host pid of the process whose exit status is the slice's."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: nothing of the slice runs before it is in its cgroup and namespaces
        signal.set_wakeup_fd(-1)  # the launcher's SIGCHLD wake-up is not the slice's
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for procs in req.get("cgroup_procs", []):
            with open(procs, "w") as fh:
                fh.write(str(os.getpid()))
        # stdio: the task's logs (or /dev/null), never the launcher's pipes, and no other fd:
        # a slice must not be able to read requests or write events.
        for stream, fd in (("stdout", 1), ("stderr", 2)):
            target = os.open(req.get(stream) or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            os.dup2(target, fd)
            os.close(target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        # Opened before unshare: PID 1 is about to remount / read-only and /tmp private in
        # the mount namespace this process shares with it.
        status_fd = (
            os.open(req["status_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            if req.get("status_file")
            else None
        )
        flags = sum(NAMESPACE_FLAGS[n] for n in ("pid", "mount", "uts", "ipc"))
        if not req.get("network"):
            flags |= NAMESPACE_FLAGS["net"]
        _check(libc.unshare(flags), "unshare")
        init = os.fork()  # the first child in a new pid namespace is its PID 1
        if init == 0:
            if status_fd is not None:
                os.close(status_fd)  # only the supervisor writes the status
            os._exit(_slice_init(req))
        _, status = os.waitpid(init, 0)
        code = _code(status)
        if status_fd is not None:  # read by an executor that recovers the slice after a restart
            os.write(status_fd, str(code).encode())
            os.fsync(status_fd)
        os._exit(code)
    except BaseException as exc:
        os.write(2, f"runink launcher: slice {req.get('id')}: {exc}\n".encode())
        os._exit(126)


def serve(stdin: Any = None, stdout: Any = None) -> None:
    """The launcher's loop: requests on stdin, events on stdout, until stdin closes."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout
    running: dict[int, str] = {}
    buffer = b""
    fd = stdin.fileno()
    # SIGCHLD wakes the select at once (no polling delay between a slice's exit and its event).
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    signal.set_wakeup_fd(wake_write)
    while True:
        ready, _, _ = select.select([fd, wake_read], [], [], 1.0)
        if wake_read in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 4096)
        if fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                req = json.loads(line)
                if req.get("op") == "launch":
                    pid = launch(req)
                    running[pid] = req["id"]
                    stdout.write(json.dumps({"event": "started", "id": req["id"], "pid": pid}) + "\n")
                    stdout.flush()
        while running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            slice_id = running.pop(pid, None)
            if slice_id is not None:
                stdout.write(json.dumps({"event": "exited", "id": slice_id, "code": _code(status)}) + "\n")
                stdout.flush()


if __name__ == "__main__":
    serve()
