"""The slice launcher: a single-threaded fork server that keeps isolated sandboxes warm.

Started once per agent (``python -m runink.plugins.executors.linux.launcher``), it reads one
JSON request per line on stdin and answers on stdout (the messages are the typed, versioned
structures of messages.py: LaunchRequest; Started, Exited, Failed)::

    {"v": 1, "op": "launch", "id": "s-1", "command": ["sh", "-c", "..."], "cwd": "/work/s-1",
     "binds": [{"path": "/work/s-1", "writable": true}], "hostname": "s-1", "uid": 100001,
     "gid": 100001, "network": false, "limits": {"cpu": 1, "memory": 268435456, "pids": 64},
     "stdout": ".../stdout.log", "stderr": ".../stderr.log", "status_file": ".../exit_status",
     "secrets": "/proc/<executor pid>/fd/<memfd>"}         (env and files: see payload._read_secrets)
    -> {"event": "started", "id": "s-1", "pid": 12345, "cgroup": "sandbox-77-3"}
    -> {"event": "exited", "id": "s-1", "code": 0}        (later; code is 128+N for signal N)
    -> {"event": "failed", "id": "s-1", "message": "..."}  (instead of both, if it cannot start,
                                                            or if the request is malformed)

Why warm sandboxes: on the machines measured (a VM) ``fork`` costs ~1.7 ms for a small
Python process and ~6 ms for one with pyarrow loaded (page-table copies), and building
namespaces and mounts costs another few ms. All of that is done *before* a request arrives:
each sandbox in the pool is a pair of processes, both children of the launcher, in new
pid/mount/uts/ipc(/net) namespaces:

    init, PID 1: ``runink-init`` (a small C program started with posix_spawn, no fork of
      this process; a forked Python init where it was not built), reaps orphans
    payload, PID 2: a fork of the launcher that joins its cgroup and builds the sandbox's
      root itself, then waits on a socket for its request, still root, nothing of a slice yet

inside a minimal root filesystem (a tmpfs with read-only binds of the runtime: /usr, /etc,
the interpreter and its packages; private /proc, /tmp, /dev/shm and a few device nodes), so
a slice sees nothing else of the host. On a request the launcher writes the slice's limits
to that cgroup (before any slice code runs; the slice keeps the cgroup), clones the granted
paths as detached mounts (``open_tree``) and sends them with the log fds over the socket; the
payload moves them into place (``move_mount``), sets the hostname, drops to the slice's
uid/gid (in a user namespace of its own where allowed) with no_new_privs and runs the
command: a program is started with posix_spawn and waited for, or, for
``python -m MODULE`` / ``python -c CODE`` with this interpreter, the Python code runs directly
in the forked process (the runtime given with ``--preload`` is already imported: no
interpreter start, no exec). Either way the payload writes the exit status to the task's
status file itself, so a slice whose launcher dies still leaves its status (the launcher
writes it too, when it reaps the payload: that covers deaths by signal).

No preexec_fn and no threads: the launcher only forks, which is why it must stay
single-threaded. It checks that after preloading (ARCHITECTURE: pyarrow needs
``JE_ARROW_MALLOC_CONF=background_thread:false``; polars starts threads and is imported by
the slice, never here).

This module is the launcher itself (the pool, the requests, the reaping); what runs inside a
sandbox is in payload.py, the root it builds in rootfs.py, the libc calls in syscalls.py.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import gc
import importlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runink.core.process_end import end_now
from runink.plugins.executors.linux import netguard
from runink.plugins.executors.linux import payload as slice_payload
from runink.plugins.executors.linux.cgroups import (
    CgroupError,
    CgroupLayout,
    CgroupLimits,
    CgroupManager,
    SliceCgroup,
    herd_dir_name,
)
from runink.plugins.executors.linux.grants import GrantError, IdMaps, grant_device, grant_tree, id_map_namespace
from runink.plugins.executors.linux.messages import Bind, Event, Exited, Failed, LaunchRequest, MessageError, Started
from runink.plugins.executors.linux.namespaces import NAMESPACE_FLAGS
from runink.plugins.executors.linux.payload import (
    MAX_BINDS,
    MAX_REQUEST,
    LaunchError,
    exit_code,
    leave_session,
    python_init,
    write_status,
)
from runink.plugins.executors.linux.rootfs import build_root, runtime_paths
from runink.plugins.executors.linux.seccomp import LoadableFilter, build_program
from runink.plugins.executors.linux.syscalls import MS_NODEV, MS_NOEXEC, MS_NOSUID, check, libc, mount

UID_BASE, UID_RANGE = 100_000, 50_000  # slices run as one of these: never root, never a host user
BUILD_DELAY = 0.005  # seconds of quiet before building the next warm sandbox
MAX_BUILDING = 4  # sandboxes being built at once (the launcher only forks; each builds itself)
SANDBOX_WAIT = 10.0  # seconds a request waits for a sandbox before it fails
INIT_BINARY = Path(__file__).with_name("runink-init")  # built by setup.py (runink_init.c)
# @network: the user-mode network stack attached to a granted sandbox's own net namespace
SLIRP_PACKAGE = "slirp4netns"
SLIRP_SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
SLIRP_READY_SECONDS = 10.0
DRAIN_WAIT = 2.0  # seconds the launcher waits at its end for its warm sandboxes' slirp4netns to exit
SMALL_REQUEST = 64 << 10  # bytes of a slice's request that any control socket's buffer holds
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # (Linux; Python names it only from 3.12)


def _room_for(control: socket.socket, size: int) -> None:
    """Let the sandbox's control socket send one message of ``size`` bytes: a SEQPACKET
    message must fit its send buffer whole (~208 KiB by default: a job's 240 KiB command line
    failed with EMSGSIZE). Root may force it past the system's wmem_max."""
    wanted = size + (64 << 10)
    try:
        control.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, wanted)
    except OSError:  # (not root): as far as wmem_max allows
        control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wanted)


def native_init_available() -> bool:
    """Whether runink-init was built (a C compiler at install); without it each sandbox costs one more fork."""
    return os.access(INIT_BINARY, os.X_OK)


def slirp4netns_path(unshare: str | None = None) -> str | None:
    """The slirp4netns program a sandbox with ``@network`` needs, or None if it (or util-linux's
    ``unshare``, which starts it in a private mount namespace) is not installed. ``unshare``:
    its path if the caller has looked it up already."""
    if (unshare or shutil.which("unshare", path=SLIRP_SEARCH_PATH)) is None:
        return None
    return shutil.which("slirp4netns", path=SLIRP_SEARCH_PATH)


def network_refusal() -> str:
    if shutil.which("unshare", path=SLIRP_SEARCH_PATH) is None:
        return "@network needs util-linux's unshare, which is not installed here"
    return (
        f"@network needs {SLIRP_PACKAGE}, which is not installed here "
        f"(Debian/Ubuntu: apt-get install {SLIRP_PACKAGE}; Fedora: dnf install {SLIRP_PACKAGE})"
    )


def _guard_network(slirp_ready: int | None, blocked: tuple[netguard.Prefix, ...]) -> None:
    """In a granted sandbox's payload, still root in the sandbox's net namespace (a slice, with
    no capability there, cannot undo it): prohibit routes for the host's own addresses (see
    netguard), then wait until slirp4netns has brought up tap0."""
    netguard.prohibit(blocked)
    if slirp_ready is None or not select.select([slirp_ready], [], [], SLIRP_READY_SECONDS)[0]:
        raise LaunchError(f"slirp4netns did not bring up the network within {SLIRP_READY_SECONDS:g} s")
    if os.read(slirp_ready, 1) != b"1":
        raise LaunchError("slirp4netns exited before bringing up the network")
    os.close(slirp_ready)


# --- the launcher --------------------------------------------------------------------


@dataclass
class Sandbox:
    init: int  # host pid of the sandbox's PID 1
    payload: int  # host pid of the payload (PID 2), which becomes the slice
    network: bool
    control: socket.socket  # to the payload
    ready: bool = False  # the payload is waiting for its request
    error: str | None = None
    cgroup: SliceCgroup | None = None  # the payload's cgroup (it joins it itself), kept by the slice
    limits: CgroupLimits = field(default_factory=CgroupLimits)  # what that cgroup was created with
    herd: str | None = None  # the herd whose parent that cgroup is under (None: the runink parent)
    slirp: int | None = None  # @network: the slirp4netns process attached to its net namespace
    blocked: tuple[netguard.Prefix, ...] = ()  # @network: the host's prefixes it has prohibit routes for
    uid: int = 0  # the slice's uid and gid (unless the request names one), picked when it was built
    idmap: int | None = None  # a user namespace mapping the launcher's own ids to ``uid`` (grants.py)


@dataclass
class Running:
    """A started slice: it has ended when both its payload and its init are reaped."""

    id: str
    payload: int
    init: int
    status_fd: int | None
    code: int | None = None
    init_gone: bool = False
    cgroup: SliceCgroup | None = None  # killed and removed by a launcher whose slices end with it
    uid: int = 0


class Launcher:
    def __init__(
        self,
        pool_size: int,
        root: str,
        extra_paths: list[str],
        out: Any,
        cgroups: CgroupManager | None = None,
        *,
        native_init: bool = True,
        slices_outlive: bool = False,
        expected: int | None = None,
    ) -> None:
        self.pool_size = pool_size
        # How many slices the executor's caller said it would start in all (`runink run`: its
        # scenarios), None: unknown (an agent). No more sandboxes are kept warm than are still
        # to come: each costs a fork and its teardown, on two cores beside the slice that runs.
        self.expected = expected
        self.requested = 0  # launch requests seen
        self.cgroups = cgroups
        self.built = 0
        # Warm cgroups get the limits of the last request: slices of a pipeline mostly ask for
        # the same, and a slice then writes no limit at all (each costs ~0.1-0.3 ms).
        self.expected_limits = CgroupLimits()
        # ...and go under the last request's herd parent (herd, caps), so a run of one herd's
        # slices moves no sandbox; a slice of another herd moves its sandbox there (see launch)
        self.expected_herd: tuple[str, CgroupLimits] | None = None
        self.root = root
        self.links, self.directories = runtime_paths(extra_paths)
        self.native_init = native_init and native_init_available()
        self.unshare = shutil.which("unshare", path=SLIRP_SEARCH_PATH)
        # None: no sandbox with the network can be built here
        self.slirp = slirp4netns_path(self.unshare) if self.unshare else None
        # the host's addresses a network sandbox blocks: re-read only when the kernel says they changed
        self.host_watch = netguard.HostAddressWatch() if self.slirp is not None else None
        self.host_prefixes: tuple[netguard.Prefix, ...] | None = None
        # A warm sandbox with the network is kept only once a slice asked for one: most runs
        # never do, and its slirp4netns costs CPU at the start and ~40 ms to exit at the end.
        self.network_asked = False
        self.out = out
        self.pool: list[Sandbox] = []
        # requests waiting for a sandbox of their kind to get ready (FIFO), with when they came:
        # the launcher serves on meanwhile instead of blocking on one sandbox's build
        self.pending: collections.deque[tuple[LaunchRequest, float]] = collections.deque()
        self.running: dict[int, Running] = {}  # by the host pids of both its payload and its init
        self.failures = 0
        files = {"pid": "pid", "mount": "mnt", "uts": "uts", "ipc": "ipc", "net": "net"}
        self.own_namespaces = {k: os.open(f"/proc/self/ns/{f}", os.O_RDONLY | os.O_CLOEXEC) for k, f in files.items()}
        self.own_cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Unless slices outlive it (an agent that recovers them), each sandbox's init holds the
        # read end of this pipe and ends its sandbox when the pipe hangs up: when this process
        # is gone, however it died. Only this process holds the write end (close-on-exec; the
        # payloads it forks close it at once).
        self.slices_outlive = slices_outlive
        self.lifeline: int | None = None
        if not slices_outlive:
            lifeline, self.lifeline_write = os.pipe()
            self.lifeline = fcntl.fcntl(lifeline, fcntl.F_DUPFD_CLOEXEC, 10)  # never fd 3 itself (see _start_init)
            os.close(lifeline)

    # events
    def emit(self, event: Event) -> None:
        try:
            self.out.write(event.to_line())
            self.out.flush()
        except BrokenPipeError:  # the executor is gone (its successor recovers the slices, if any)
            # what is still buffered goes to /dev/null: no "Exception ignored" at exit
            with contextlib.suppress(OSError, ValueError, AttributeError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.out.fileno())
                os.close(devnull)

    # sandboxes
    def create(self, network: bool) -> Sandbox:
        """Start a sandbox: enter new namespaces, start its init and fork its payload there,
        then step back into our own namespaces (setns). Raises LaunchError if that fails.

        All the launcher does is one fork (~2-6 ms: page-table copies) and a posix_spawn of
        the C init (~0.5 ms): the payload builds the rest itself, in parallel, while the
        launcher serves requests (its cgroup, whose first move waits for an RCU grace period
        of 5-13 ms; the root filesystem; /proc), then reports "ready".
        """
        # Every sandbox has its own net namespace; a granted one gets slirp4netns attached
        # (see _attach_network), never the host's namespace: that held the host's listening ports.
        kinds = ["pid", "mount", "uts", "ipc", "net"]
        slirp, exit_pipe, ready_pipe = None, None, None
        blocked: tuple[netguard.Prefix, ...] = ()
        if network:
            if self.slirp is None:
                raise LaunchError(network_refusal())
            blocked = self.blocked_now()
            exit_pipe, ready_pipe = os.pipe(), os.pipe()
        limits, herd, warm = self.expected_limits, self.expected_herd, None
        if self.cgroups is not None:
            self.built += 1
            name = f"sandbox-{os.getpid()}-{self.built}"  # kept by the slice: see launch()
            parents = self.cgroups.parents() if herd is None else self.cgroups.herd_parents(herd[0])
            warm = SliceCgroup(self.cgroups.layout, {c: p / name for c, p in parents.items()})
        control, control_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        notify_read, notify_write = os.pipe()
        init = payload = None
        try:
            check(libc.unshare(sum(NAMESPACE_FLAGS[k] for k in kinds)), "unshare")
            try:
                os.chdir("/")  # the init's cwd: moved into the new root by the payload's pivot_root
                if exit_pipe is not None:  # slirp4netns's exit fd: held by the init alone, see _attach_network
                    os.set_inheritable(exit_pipe[1], True)
                try:
                    hold = None if exit_pipe is None else exit_pipe[1]
                    init = self._start_init(notify_read, hold)  # the first process in the new pid namespace: its PID 1
                finally:
                    if exit_pipe is not None:
                        os.set_inheritable(exit_pipe[1], False)
                payload = os.fork()
                if payload == 0:
                    ready = None if ready_pipe is None else ready_pipe[0]
                    self._become_payload(
                        control_child, warm, limits, network, slirp_ready=ready, blocked=blocked, herd=herd
                    )
            finally:
                self._return_to_own_namespaces(kinds)
            os.write(notify_write, b"x")  # PID 2 exists: init watches it from now on
            if exit_pipe is not None and ready_pipe is not None:
                os.close(exit_pipe[1])  # before the spawn: slirp4netns must not hold its own exit fd
                slirp = self._attach_network(init, exit_pipe[0], ready_pipe[1])
        except OSError as exc:
            control.close()
            if init is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init, signal.SIGKILL)
            raise LaunchError(f"cannot create a sandbox: {exc}") from exc
        finally:
            for fd in (notify_read, notify_write):
                os.close(fd)
            for pipe in (exit_pipe, ready_pipe):
                for fd in pipe or ():
                    with contextlib.suppress(OSError):  # (the exit pipe's write end is closed already)
                        os.close(fd)
            control_child.close()
        in_herd = None if herd is None or warm is None else herd[0]
        sandbox = Sandbox(
            init, payload, network, control, cgroup=warm, limits=limits, herd=in_herd, slirp=slirp, blocked=blocked
        )
        self._prepare_user(sandbox)
        self.pool.append(sandbox)
        _rewarm_request_path()
        return sandbox

    def _prepare_user(self, sandbox: Sandbox) -> None:
        """Pick the sandbox's uid (one no other sandbox or running slice of this launcher has)
        and make, before any request, the id-mapping its grants need (~0.1-0.3 ms that would
        otherwise be on the slice's start: grants.py). Without it grants make their own."""
        in_use = {s.uid for s in self.pool} | {r.uid for r in self.running.values()}
        uid = UID_BASE + secrets.randbelow(UID_RANGE)
        while uid in in_use:
            uid = UID_BASE + secrets.randbelow(UID_RANGE)
        sandbox.uid = uid
        try:
            sandbox.idmap = id_map_namespace(os.geteuid(), os.getegid(), uid, uid)
        except OSError:
            sandbox.idmap = None

    def _start_init(self, notify: int, hold: int | None = None) -> int:
        """``hold``: an fd the init keeps open for its life (inherited: the caller made it inheritable)."""
        if self.native_init:
            actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_DUP2, notify, 0)]
            actions += [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
            argv = [INIT_BINARY.name]
            if self.lifeline is not None:  # fd 3 of runink-init (see runink_init.c)
                actions.append((os.POSIX_SPAWN_DUP2, self.lifeline, 3))
                argv.append("--die-with-launcher")
            default = (signal.SIGPIPE, signal.SIGXFSZ)
            # its own session too: no process of a slice stays in the runner's (its terminal)
            return os.posix_spawn(INIT_BINARY, argv, {}, file_actions=actions, setsigdef=default, setsid=True)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                keep = {notify} if self.lifeline is None else {notify, self.lifeline}
                self._detach_from_launcher(keep=keep if hold is None else keep | {hold})
                os.setsid()
                code = python_init(notify, self.lifeline)
            finally:
                os._exit(code)
        return pid

    def _attach_network(self, init: int, exit_fd: int, ready_fd: int) -> int:
        """Start slirp4netns on the new sandbox's net namespace (named by its init's pid).

        ``--configure`` gives the namespace tap0 (10.0.2.100/24, default route via 10.0.2.2,
        MTU 65520); ``--disable-host-loopback`` refuses connections to the gateway alias
        10.0.2.2, which slirp would forward to the host's 127.0.0.1; ``--disable-dns`` drops
        the 10.0.2.3 alias, which forwards any port to the host's nameserver address (a
        loopback one on many hosts). Its own mount namespace and seccomp filter limit what a
        flaw in slirp could reach. It exits when ``exit_fd`` hangs up: the write end is held
        only by the sandbox's init (the launcher closed its copy before this spawn, the
        payload closed its inherited one, and every later fork of the launcher comes after
        it was closed), so slirp4netns never outlives its sandbox, with or without the
        launcher. It writes "1" to ``ready_fd`` once tap0 is up; the payload waits for that.

        Started through ``unshare --mount --propagation private``: as root (no user namespace),
        slirp4netns's sandbox detaches the old root of a mount namespace whose mounts are still
        shared with the host's, which unmounted the host's shared mounts (measured: every
        ``ip netns`` name under /run/netns vanished). In a private copy nothing propagates back.
        """
        assert self.slirp is not None and self.unshare is not None
        command = [
            self.unshare,
            "--mount",
            "--propagation",
            "private",
            self.slirp,
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--disable-dns",
            "--enable-sandbox",
            "--enable-seccomp",
            f"--exit-fd={exit_fd}",
            f"--ready-fd={ready_fd}",
            str(init),
            "tap0",
        ]
        actions = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        for fd in (exit_fd, ready_fd):
            os.set_inheritable(fd, True)
        try:
            # its own session: a Ctrl-C in the runner's terminal is not for it (it ends with its sandbox)
            return os.posix_spawn(self.unshare, command, {}, file_actions=actions, setsid=True)
        finally:
            for fd in (exit_fd, ready_fd):
                os.set_inheritable(fd, False)

    def _become_payload(
        self,
        control: socket.socket,
        warm: SliceCgroup | None,
        limits: CgroupLimits,
        network: bool,
        *,
        slirp_ready: int | None = None,
        blocked: tuple[netguard.Prefix, ...] = (),
        herd: tuple[str, CgroupLimits] | None = None,
    ) -> None:
        code = 126
        try:
            keep = {control.fileno()} | ({slirp_ready} if slirp_ready is not None else set())
            self._detach_from_launcher(keep=keep)
            try:
                if warm is not None and self.cgroups is not None:
                    name = next(iter(warm.dirs.values())).name
                    if herd is None:
                        self.cgroups.create(name, limits)
                    else:
                        self.cgroups.create(name, limits, herd=herd[0], herd_caps=herd[1])
                    warm.attach(0)  # "0": the writing process (its pid here is not the host's)
                build_root(self.root, self.links, self.directories, network_isolated=True)
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # this pid namespace's
                if network:
                    _guard_network(slirp_ready, blocked)
                # before the request, while the sandbox is warm: setsid costs ~1 ms here (the
                # kernel makes the new session a scheduler autogroup)
                leave_session()
                slice_filter = slice_payload.SLICE_FILTER
                if slice_filter is not None:  # the filter but for what the set-up still needs
                    slice_filter[0].load()
                    slice_filter[1].warm_up()
            except BaseException as exc:
                control.send(f"error cannot build the sandbox: {exc}".encode())
                raise
            code = slice_payload.run(control)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    @staticmethod
    def _detach_from_launcher(keep: set[int]) -> None:
        """In a new child: nothing of the launcher's (its pipes, other sandboxes' sockets, its
        signal handling). A sandbox outlives the launcher (a recovered slice), so it must not
        hold the agent's stderr open either: errors go over the control socket."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        low = 3
        for fd in sorted(keep):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, os.sysconf("SC_OPEN_MAX"))

    def _return_to_own_namespaces(self, kinds: list[str]) -> None:
        try:
            for kind in kinds:
                check(libc.setns(self.own_namespaces[kind], NAMESPACE_FLAGS[kind]), f"setns {kind}")
            os.fchdir(self.own_cwd)  # entering a mount namespace moves the cwd to its root
        except OSError as exc:  # a launcher stuck in a slice's namespaces must not serve on
            os.write(2, f"runink launcher: cannot return to its own namespaces: {exc}\n".encode())
            os._exit(70)

    def on_control(self, sandbox: Sandbox) -> None:
        """A message from a payload being prepared: ready, or an error."""
        try:
            message = sandbox.control.recv(4096)
        except OSError as exc:
            message = f"error {exc}".encode()
        if message == b"ready":  # in its warm cgroup, waiting for a request
            sandbox.ready = True
            self.failures = 0
        else:
            sandbox.error = message.decode(errors="replace").removeprefix("error ") or "the sandbox died"
            self.discard(sandbox)
            self.failures += 1
            # the first request waiting for a sandbox of that kind fails with the reason
            waiting = next((p for p in self.pending if p[0].network == sandbox.network), None)
            if waiting is not None:
                self.pending.remove(waiting)
                self.emit(Failed(waiting[0].id, sandbox.error))

    def discard(self, sandbox: Sandbox) -> None:
        """End a sandbox that never ran a slice (killing its init ends its namespace, payload included)."""
        if sandbox in self.pool:
            self.pool.remove(sandbox)
        sandbox.control.close()
        if sandbox.idmap is not None:
            os.close(sandbox.idmap)
            sandbox.idmap = None
        with contextlib.suppress(ProcessLookupError):
            os.kill(sandbox.init, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(sandbox.payload, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # gone before its cgroup is removed (it may be creating it)
            os.waitpid(sandbox.payload, 0)
        if sandbox.cgroup is not None:
            with contextlib.suppress(CgroupError):
                sandbox.cgroup.remove()
            if self.cgroups is not None:
                self.cgroups.remove_herd_if_empty(sandbox.cgroup.dirs)
            sandbox.cgroup = None

    def building(self) -> list[Sandbox]:
        return [s for s in self.pool if not s.ready and s.error is None]

    def blocked_now(self) -> tuple[netguard.Prefix, ...]:
        """What a network sandbox must block now: the host's local prefixes and cloud metadata."""
        if self.host_watch is None or self.host_watch.changed() or self.host_prefixes is None:
            self.host_prefixes = netguard.host_local_prefixes() + netguard.METADATA
        return self.host_prefixes

    def take(self, network: bool) -> Sandbox:
        # A network sandbox blocks the host's addresses of when it was built: one built before
        # the host gained an address is not used.
        current = self.blocked_now() if network else ()
        for sandbox in list(self.pool):
            if sandbox.network == network and sandbox.ready:
                if sandbox.blocked != current:
                    self.discard(sandbox)
                    continue
                self.pool.remove(sandbox)
                return sandbox
        building = (s for s in self.building() if s.network == network and s.blocked == current)
        sandbox = next(building, None) or self.create(network)
        deadline = time.monotonic() + 10
        while not sandbox.ready and sandbox.error is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sandbox.control], [], [], left)[0]:
                self.discard(sandbox)
                raise LaunchError("the sandbox did not get ready within 10 s")
            self.on_control(sandbox)
        if sandbox.error is not None:
            raise LaunchError(sandbox.error)
        self.pool.remove(sandbox)
        return sandbox

    def short(self) -> tuple[bool, bool] | None:
        """Which kind of sandbox the pool lacks (network granted or not) and whether none of that
        kind is ready (build at once), or None if it lacks none.

        ``pool_size`` warm sandboxes without the network are kept, and one with it once a slice
        asked for the network (``network_asked``), but no more than the slices still expected
        (``expected``, when known); at most MAX_BUILDING are built at once;
        after 3 failed builds in a row the pool stops refilling (requests then build their own
        and report the error).
        """
        if self.failures >= 3 or len(self.building()) >= MAX_BUILDING:
            return None
        kept = self.pool_size if self.expected is None else min(self.pool_size, self.expected - self.requested)
        with_network = min(kept, 1) if self.slirp is not None and self.network_asked else 0
        for network, size in ((False, kept), (True, with_network)):
            kind = [s for s in self.pool if s.network == network]
            if len(kind) < size:
                return network, not any(s.ready for s in kind)
        return None

    # slices
    def launch(self, req: LaunchRequest) -> None:
        slice_id = req.id
        opened: list[int] = []
        status_fd = None
        sandbox: Sandbox | None = None
        try:
            herd = self._herd_of(req)
            binds = sorted(req.binds, key=Bind.depth)
            if len(binds) > MAX_BINDS:
                raise LaunchError(f"too many granted paths ({len(binds)} > {MAX_BINDS})")
            for stream in (req.stdout, req.stderr):
                opened.append(os.open(stream or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))
            # the executor's memfd, opened by path and passed on unread (see _read_secrets)
            opened.append(os.open(req.secrets or os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            if req.status_file:
                status_fd = os.open(req.status_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            opened.append(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC) if status_fd is None else os.dup(status_fd))
            sandbox = self.take(req.network)
            uid = sandbox.uid if req.uid is None else req.uid
            gid = sandbox.uid if req.gid is None else req.gid
            prepared = (
                {}
                if sandbox.idmap is None or (uid, gid) != (sandbox.uid, sandbox.uid)
                else {(os.geteuid(), os.getegid()): sandbox.idmap}
            )
            idmaps = IdMaps(uid, gid, prepared)
            try:
                for bind in binds:
                    opened.append(grant_tree(bind.path, writable=bind.writable, idmaps=idmaps))
            finally:
                idmaps.close()
            for device in req.devices:  # after the binds' fds, in the request's order (payload.run)
                opened.append(grant_device(device))
        except (OSError, LaunchError, GrantError) as exc:
            for fd in opened:
                os.close(fd)
            if status_fd is not None:
                os.close(status_fd)
            if sandbox is not None:  # unused: back to the pool
                self.pool.append(sandbox)
            self.emit(Failed(slice_id, str(exc)))
            return
        try:
            # The slice keeps its sandbox's cgroup, with its own limits in place before any of
            # its code runs. Not renamed to the slice id: a rename needs the kernel's cgroup
            # mutex, which a sandbox being built holds for an RCU grace period while it joins
            # its own cgroup (5-25 ms measured on cgroup v1).
            cgroup = sandbox.cgroup
            if cgroup is not None and self.cgroups is not None:
                asked = req.limits
                limits = CgroupLimits(asked.cpu, asked.memory, asked.pids, asked.cpuset)
                if (herd[0] if herd else None) != sandbox.herd:
                    cgroup = self._move(sandbox, limits, herd)
                else:
                    if herd is not None and self.cgroups.caps_written(herd[0]) != herd[1]:
                        self.cgroups.ensure_herd(*herd)  # a quota changed since: its new caps
                    cgroup.update(limits, sandbox.limits)
                self.expected_limits = limits
                self.expected_herd = herd
            line = replace(req, binds=tuple(binds), uid=uid, gid=gid).to_line().encode()
            if len(line) > MAX_REQUEST:  # (the payload reads no more)
                raise OSError(f"the slice's request is {len(line):,} bytes, at most {MAX_REQUEST:,}")
            if len(line) > SMALL_REQUEST:  # (a long command line): one message, so a buffer that holds it
                _room_for(sandbox.control, len(line))
            socket.send_fds(sandbox.control, [line], opened)
        except (OSError, CgroupError) as exc:
            self.discard(sandbox)
            if status_fd is not None:
                os.close(status_fd)
            self.emit(Failed(slice_id, f"cannot start the slice: {exc}"))
            return
        finally:
            for fd in opened:
                os.close(fd)
        sandbox.control.close()
        if sandbox.idmap is not None:  # the slice's mounts keep what they need of it
            os.close(sandbox.idmap)
        sandbox.cgroup = None  # the slice's now: the executor removes it when the slice ends
        running = Running(slice_id, sandbox.payload, sandbox.init, status_fd, cgroup=cgroup, uid=uid)
        self.running[sandbox.payload] = self.running[sandbox.init] = running
        name = self.cgroups.relative_name(cgroup) if cgroup is not None and self.cgroups is not None else None
        self.emit(Started(slice_id, sandbox.payload, name, uid))

    @staticmethod
    def _herd_of(req: LaunchRequest) -> tuple[str, CgroupLimits] | None:
        """The herd parent a request asks for (name, caps), None for none; LaunchError for a
        name that cannot be a cgroup's (the executor checks too: this process trusts no one)."""
        if req.herd_limits is None:
            return None
        if req.herd is None:
            raise LaunchError("herd_limits given without a herd")
        try:
            herd_dir_name(req.herd)
        except CgroupError as exc:
            raise LaunchError(str(exc)) from None
        caps = req.herd_limits
        return req.herd, CgroupLimits(caps.cpu, caps.memory, caps.pids)

    def _move(self, sandbox: Sandbox, limits: CgroupLimits, herd: tuple[str, CgroupLimits] | None) -> SliceCgroup:
        """Move a warm sandbox made for another herd (or none) into a new cgroup, with the
        slice's limits, under ``herd``'s parent. Its payload is the one process in it (its init
        never joins); memory it was charged stays with the old cgroup's herd until freed."""
        assert self.cgroups is not None and sandbox.cgroup is not None
        old = sandbox.cgroup
        name = next(iter(old.dirs.values())).name
        if herd is None:
            moved = self.cgroups.create(name, limits)
        else:
            moved = self.cgroups.create(name, limits, herd=herd[0], herd_caps=herd[1])
        try:
            moved.attach(sandbox.payload)
        except CgroupError:
            with contextlib.suppress(CgroupError):
                moved.remove()
            self.cgroups.remove_herd_if_empty(moved.dirs)
            raise
        sandbox.cgroup, sandbox.herd, sandbox.limits = moved, None if herd is None else herd[0], limits
        with contextlib.suppress(CgroupError):
            old.remove()
        self.cgroups.remove_herd_if_empty(old.dirs)
        return moved

    def on_request(self, line: bytes) -> None:
        """One line of stdin: a request is launched, or waits (in order) for a sandbox of its
        kind to get ready; a malformed one fails (its "failed" event names the field), and the
        launcher goes on serving."""
        if not line.strip():
            return
        try:
            request = LaunchRequest.from_line(line)
        except MessageError as exc:
            self.emit(Failed(exc.message_id, f"bad launch request: {exc}"))
            return
        self.network_asked = self.network_asked or request.network
        self.requested += 1
        self.pending.append((request, time.monotonic()))
        self.launch_pending()

    def launch_pending(self) -> None:
        """Launch the waiting requests, in order, while a sandbox of the first one's kind is
        ready; when none is and none is being built, start building one. A request whose
        sandbox cannot be built fails with the reason; one that waited past SANDBOX_WAIT fails.
        (A request used to wait for its sandbox with the launcher blocked: every other
        request, build and slice's end waited too.)"""
        while self.pending:
            request, came = self.pending[0]
            if any(s.ready and s.network == request.network for s in self.pool):
                self.pending.popleft()
                self.launch(request)  # (take() hands it the ready sandbox)
                continue
            if time.monotonic() - came > SANDBOX_WAIT:
                self.pending.popleft()
                self.emit(Failed(request.id, f"no sandbox got ready within {SANDBOX_WAIT:g} s"))
                continue
            if not any(s.network == request.network for s in self.building()):
                try:
                    self.create(request.network)
                except LaunchError as exc:
                    self.failures += 1
                    self.pending.popleft()
                    self.emit(Failed(request.id, str(exc)))
                    continue
            return

    def wanted(self) -> tuple[bool, bool] | None:
        """Which kind of sandbox to build next, and whether at once: one a waiting request
        needs (fewer of its kind are being built than requests wait), else what the pool lacks
        (``short``). After 3 failed builds in a row, requests build their own (launch_pending)."""
        if self.pending and self.failures < 3 and len(self.building()) < MAX_BUILDING:
            network = self.pending[0][0].network
            waiting = sum(1 for r, _ in self.pending if r.network == network)
            if len([s for s in self.building() if s.network == network]) < waiting:
                return network, True
        return self.short()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            running = self.running.get(pid)
            if running is not None:
                self._reaped(running, pid, status)
                continue
            for sandbox in list(self.pool):  # a pooled sandbox died before use (or lost its network)
                if pid in (sandbox.init, sandbox.payload, sandbox.slirp):
                    if not sandbox.ready and sandbox.error is None:
                        self.failures += 1
                    self.discard(sandbox)

    def _reaped(self, running: Running, pid: int, status: int) -> None:
        if pid == running.payload:
            running.code = exit_code(status)
            write_status(running.status_fd, running.code)
            with contextlib.suppress(ProcessLookupError):  # ends what the slice left in its namespace
                os.kill(running.init, signal.SIGKILL)
        else:
            running.init_gone = True  # (if the init went first, the kernel has killed the payload)
        if running.code is not None and running.init_gone:
            del self.running[running.payload], self.running[running.init]
            if running.status_fd is not None:
                os.close(running.status_fd)
            self.emit(Exited(running.id, running.code))

    def drain(self) -> None:
        """End the pool's sandboxes and reap their slirp4netns (each exits once its sandbox's
        init is gone), waiting DRAIN_WAIT at most: none outlives the launcher."""
        helpers = [s.slirp for s in self.pool if s.slirp is not None]
        for sandbox in list(self.pool):
            self.discard(sandbox)
        deadline = time.monotonic() + DRAIN_WAIT
        for pid in helpers:
            with contextlib.suppress(ChildProcessError):  # (reaped already)
                while os.waitpid(pid, os.WNOHANG)[0] == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)

    def end_running(self) -> None:
        """The executor is gone (or closed) and slices end with it: kill each running slice
        (its init: that ends its pid namespace; then anything left in its cgroup), remove its
        cgroup and reap it. Its "exited" event goes nowhere; its status file says 137."""
        slices = list({r.payload: r for r in self.running.values()}.values())
        for running in slices:
            with contextlib.suppress(ProcessLookupError):
                os.kill(running.init, signal.SIGKILL)
        for running in slices:
            if running.cgroup is not None:
                try:
                    running.cgroup.remove()
                except CgroupError as exc:
                    print(f"runink launcher: slice {running.id}: {exc}", file=sys.stderr, flush=True)
                if self.cgroups is not None:
                    self.cgroups.remove_herd_if_empty(running.cgroup.dirs)
        deadline = time.monotonic() + 5
        while self.running and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.01)

    def serve(self, stdin: Any, early: bytes = b"") -> None:
        """Answer the requests on ``stdin`` (``early``: bytes of them already read) until its end."""
        buffer = early
        fd = stdin.fileno()
        # SIGCHLD wakes the select at once (no polling delay between a slice's exit and its event).
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        signal.set_wakeup_fd(wake_write)
        try:
            while b"\n" in buffer:  # (requests read with an awaiting launcher's arguments)
                line, buffer = buffer.split(b"\n", 1)
                self.on_request(line)
            while True:
                controls = {s.control.fileno(): s for s in self.building()}
                missing = self.wanted()
                # Builds start once the launcher has been idle for BUILD_DELAY (a build, a fork
                # of this process, competes for the CPUs with the slice just started), at once
                # if no sandbox of that kind is ready (the next request would wait for it).
                timeout = 1.0 if missing is None else 0 if missing[1] else BUILD_DELAY
                ready, _, _ = select.select([fd, wake_read, *controls], [], [], timeout)
                if wake_read in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_read, 4096)
                for control_fd in ready:
                    if control_fd in controls and controls[control_fd] in self.pool:
                        self.on_control(controls[control_fd])
                self.launch_pending()
                if fd in ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        self.on_request(line)
                self.reap()
                # idle, or a request waits: build the next sandbox (asked again while requests
                # wait: serving them may have started builds already)
                build = self.wanted() if self.pending else None if ready else missing
                if build is not None:
                    try:
                        self.create(build[0])
                    except LaunchError as exc:
                        self.failures += 1
                        print(f"runink launcher: {exc}", file=sys.stderr, flush=True)
        finally:
            while self.pending:  # (stdin ended: nobody reads these answers, a killed one may)
                request, _ = self.pending.popleft()
                with contextlib.suppress(OSError):
                    self.emit(Failed(request.id, "the launcher stopped before a sandbox got ready"))
            if not self.slices_outlive:
                self.end_running()
            self.drain()


def _rewarm_request_path() -> None:
    """Touch, after a fork, what serving the next request touches in this process.

    A fork shares every page of this process with the child copy-on-write, this side's too:
    the first write to a page after a fork faults and copies it, and reading a Python object
    writes its reference count. A request's Python path (its parse, the message to the
    payload, the "started" event) would pay ~50 such faults (~0.2 ms on a VM) on the slice's
    start; paid here, after the build, while the launcher is idle, they are not.
    """
    request = LaunchRequest.from_line(slice_payload.WARM_UP_REQUEST)
    binds = sorted(request.binds, key=Bind.depth)
    replace(request, binds=tuple(binds), uid=1, gid=1).to_line().encode()
    limits = request.limits
    CgroupLimits(limits.cpu, limits.memory, limits.pids, limits.cpuset)
    with contextlib.suppress(GrantError):  # a detached read-only mount of /, dropped at once
        os.close(grant_tree("/", writable=False, idmaps=None))
    Started(request.id, 1, "s", 1).to_line()


def preload(modules: list[str], *, guessed: bool = False) -> None:
    """Import the runtime slices share; refuse if that started a thread (forks must stay safe).
    ``guessed``: the list a prestart guessed (``--await-config``), imported as far as it can be:
    one that fails is left to the executor's own ``--preload`` that follows, which must import."""
    # Arrow's allocator for the slices: jemalloc, not its default mimalloc. A slice's threads
    # (reader, checks, steps, writers) each allocate; mimalloc kept ~80 MiB of freed pages
    # resident per 1M-row run where ~15 MiB were in use (peak RSS 216-224 MiB against
    # 166-172 with jemalloc, the same time: bench/README.md). One named in runink's own
    # environment is kept (prestart.launcher_popen passes it on).
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    # Both read at load time: pyarrow's jemalloc would start a background thread, and
    # OpenBLAS (loaded with numpy) a pool of them. A slice can raise the BLAS threads again
    # (threadpoolctl); the forked slices keep jemalloc without its background thread.
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            if not guessed:
                raise
        _single_threaded(name)  # (after each: the message names the module)
    if "pyarrow" in sys.modules:  # chosen now, from this environment (a slice's is its request's)
        sys.modules["pyarrow"].default_memory_pool()
        _single_threaded("pyarrow's memory pool")


def _single_threaded(after: str) -> None:
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise SystemExit(
            f"runink launcher: preloading {after} started {threads - 1} thread(s); a fork server must stay "
            "single-threaded (for pyarrow set JE_ARROW_MALLOC_CONF=background_thread:false)"
        )


MAX_CONFIG_LINE = 1 << 20  # bytes of the awaited arguments' line


def _read_config_line(fd: int) -> tuple[list[str] | None, bytes]:
    """The arguments the executor sends an awaiting launcher, a JSON list of strings on one line
    (None: end of input first), and the bytes read past that line: the requests that came
    right behind it, which ``serve`` must see first (it reads the descriptor, not a buffer)."""
    data = b""
    while b"\n" not in data:
        if len(data) > MAX_CONFIG_LINE:
            raise SystemExit("runink launcher: the awaited arguments' line is too long")
        chunk = os.read(fd, 65536)
        if not chunk:
            if data:
                raise SystemExit("runink launcher: the awaited arguments' line is cut")
            return None, b""
        data += chunk
    line, rest = data.split(b"\n", 1)
    try:
        given = json.loads(line)
    except ValueError:
        raise SystemExit("runink launcher: the awaited arguments are not JSON") from None
    if not isinstance(given, list) or not all(isinstance(arg, str) for arg in given):
        raise SystemExit("runink launcher: the awaited arguments must be a JSON list of strings")
    return given, rest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runink.plugins.executors.linux.launcher")
    parser.add_argument("--pool", type=int, default=2, help="warm sandboxes kept ready (per network mode)")
    parser.add_argument(
        "--expect",
        type=int,
        default=None,
        help="the slices to be asked for in all, if known: no more sandboxes are kept warm than are still to come",
    )
    parser.add_argument("--preload", default="", help="comma-separated modules to import once, for every slice")
    parser.add_argument("--readable", action="append", default=[], help="an extra host path every slice sees")
    parser.add_argument(
        "--cgroups",
        default="",
        help='JSON {"version": 1|2, "own": {controller: dir}, "parent": name}: slices\' cgroups go under own/parent',
    )
    parser.add_argument(
        "--python-init", action="store_true", help="use the pure-Python PID 1 even where runink-init is built"
    )
    parser.add_argument(
        "--slices-outlive",
        action="store_true",
        help="running slices go on when this launcher ends (an agent recovers them); default: they end with it",
    )
    parser.add_argument(
        "--no-seccomp", action="store_true", help="run slices without the seccomp filter (the executor's degrade)"
    )
    parser.add_argument(
        "--await-config",
        action="store_true",
        help="import --preload now, then read the other arguments as a JSON list on the first line of stdin "
        "(a launcher started before its executor knew them; end of input first: exit 0)",
    )
    args = parser.parse_args(argv)
    early = b""  # (requests read with the awaited arguments)
    if args.await_config:
        if args.preload:  # the slow part, done while the executor is still being set up
            preload([m for m in args.preload.split(",") if m], guessed=True)
        given, early = _read_config_line(sys.stdin.fileno())
        if given is None:  # nobody came for it (the run chose another driver, or ended first)
            return 0
        args = parser.parse_args(given)
        if args.await_config:
            raise SystemExit("runink launcher: the awaited arguments ask to await again")
    # The payload's globals (it reads them in the forks), set once, before any sandbox is forked.
    slice_payload.SLICE_UMASK = os.umask(0o022)
    if not args.no_seccomp:
        slice_payload.SLICE_FILTER = (LoadableFilter(build_program("warm")), LoadableFilter(build_program("final")))
    cgroups = None
    if args.cgroups:
        spec = json.loads(args.cgroups)
        layout = CgroupLayout(int(spec["version"]), {c: Path(d) for c, d in spec["own"].items()})
        cgroups = CgroupManager(layout, parent_name=spec["parent"], prepared=True)
    if args.preload:
        preload([m for m in args.preload.split(",") if m])
    else:
        slice_payload.WARM_PYTHON = False
    # What every sandbox inherits: never walked by the collector (no copy-on-write). No
    # gc.collect() first: it found ~5 unreachable objects after the preload, for ~10 ms on
    # the way to the first slice.
    gc.freeze()
    root = tempfile.mkdtemp(prefix=f"runink-root-{os.getpid()}-")  # the sandboxes' mount point (in their namespaces)
    try:
        native = not args.python_init
        launcher = Launcher(
            max(0, args.pool),
            root,
            args.readable,
            sys.stdout,
            cgroups,
            native_init=native,
            slices_outlive=args.slices_outlive,
            expected=None if args.expect is None else max(0, args.expect),
        )
        launcher.serve(sys.stdin.buffer, early)
    finally:
        _remove_root(root)
    return 0


def _remove_root(root: str, timeout: float = 8.0) -> None:
    """Remove the sandboxes' mount point. A sandbox killed by the drain may hold it busy for a
    moment (its mount namespace goes with its last process; seconds on a loaded machine): try
    again for up to ``timeout``. One left behind is removed by the next executor's sweep."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(root)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                print(f"runink launcher: cannot remove {root}: {exc.strerror}", file=sys.stderr, flush=True)
                return
            time.sleep(0.02)


if __name__ == "__main__":
    end_now(main())  # (no teardown of the preloaded runtime: ~15 ms of every run's end)
