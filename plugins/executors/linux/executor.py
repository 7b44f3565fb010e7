"""The ``linux`` executor: each task in its own cgroup and namespaces, started by the launcher.

Two launcher processes (fork servers, ``launcher.py``) per executor instance keep warm
sandboxes and start every slice: one with the Python runtime preloaded, which runs
``python -m MODULE`` / ``python -c CODE`` commands of this interpreter in a forked process
(no interpreter start), and a small one that execs every other command (exec from a small
process is cheaper). This class keeps the bookkeeping: the slice's cgroup (limits, usage, OOM kills,
killing the whole tree), its task dir (logs, exit status), deadlines and cancellation.

A spec with ``herd_limits`` puts the slice's cgroup under its herd's parent, capped at them
(``runink/herd-<name>``, see cgroups.py); the parent goes when its last slice or warm sandbox
does (a launcher builds its warm sandboxes under the herd of its last slice).

Final states: SUCCEEDED, FAILED (exit code), OOMKILLED (the cgroup counted an OOM kill and
the slice died of SIGKILL, or ended 137 as a slice whose command step's program was killed so
does), DEADLINE_EXCEEDED, CANCELLED. Limits the machine cannot enforce
(a missing controller, no root) refuse the task unless ``degrade = true``; nothing runs
unconfined silently. By default slices end with the executor (closed, or its process killed:
see ``Launcher.end_running`` and runink_init.c); with ``slices_outlive_executor`` they go on,
and a new instance can ``recover`` a task from its handle after the agent restarted: the
cgroup still holds the slice, and the exit status lands in the task dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import select
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from runink.core.driverload import OptionsSchema
from runink.core.errors import TaskRejectedError
from runink.core.interfaces.executor import (
    Check,
    ExecutorCapabilities,
    Fingerprint,
    TaskHandle,
    TaskSpec,
    TaskStats,
)
from runink.core.processes import read_exit_status
from runink.core.report import printable
from runink.core.taskbook import BookedTask, BookkeepingExecutor, TaskExit
from runink.plugins.executors.linux import prestart as head_start
from runink.plugins.executors.linux.cgroups import (
    HERD_PREFIX,
    CgroupError,
    CgroupManager,
    SliceCgroup,
    detect,
    herd_dir_name,
)
from runink.plugins.executors.linux.grants import mount_setattr_available
from runink.plugins.executors.linux.launcher import network_refusal, slirp4netns_path
from runink.plugins.executors.linux.logs import LogPump
from runink.plugins.executors.linux.messages import (
    Bind,
    Event,
    Exited,
    LaunchRequest,
    Limits,
    PythonCode,
    Started,
    parse_event,
)
from runink.plugins.executors.linux.namespaces import NamespaceProbe, UnprivilegedUserProbe
from runink.plugins.executors.linux.payload import FILES_DIR
from runink.plugins.executors.linux.seccomp import SeccompUnavailable, build_program
from runink.plugins.executors.linux.syscalls import open_tree

STATUS_HELD_MAX = 64 << 10  # bytes a running slice's status file may take before it is emptied
LOG_CHECK_SECONDS = 0.25  # slices that outlive the executor: how often their log files are checked
LOG_DRAIN_SECONDS = 5.0  # at a slice's end: how long its last output may take to reach the log files
DEFAULT_PRELOAD = ("pyarrow", "pyarrow.compute", "runink.core.dataplane.slice")


def _prestart_preload() -> list[str]:
    """What a prestarted launcher imports before it knows its executor's ``preload``."""
    return [*DEFAULT_PRELOAD, *_storage_modules()]


def _storage_modules() -> list[str]:
    """The modules of Runink's own storage drivers (what a pipeline slice imports first).
    Never another package's: one whose import failed, started a thread or slept stopped (or
    slowed) every run of this executor, even disabled in [plugins]; a slice imports it when
    its pipeline uses it."""
    from runink.core.driverload import installed_entry_points

    own = {ep.module for ep in installed_entry_points("runink.storage")}
    return sorted(name for name in own if name.startswith("runink.plugins."))


log = logging.getLogger(__name__)


def _held_bytes(path: Path) -> int:
    """What the regular file at ``path`` (no link followed) takes: its size or its blocks,
    whichever is more (a slice holding its log open can make it sparse and huge with
    ftruncate, or take gigabytes past its end with fallocate and keep its size 0)."""
    info = os.stat(path, follow_symlinks=False)
    return _takes(info) if stat.S_ISREG(info.st_mode) else 0


def _takes(info: os.stat_result) -> int:
    return max(info.st_size, info.st_blocks * 512)


def _cap_log(path: Path, cap: int) -> None:
    """Rotate ``path`` when it holds more than ``cap`` bytes: its newest ``cap`` bytes at most
    to ``<name>.1``, then truncated (which frees what fallocate took past its end too). The
    whole file was copied: a slice's ftruncate to 1 GiB made the agent write 1 GiB of zeros,
    and one to 1 TiB would have filled the node's disk (a review)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or _takes(info) <= cap:
            return
        rotated = path.with_name(f"{path.name}.1")
        temporary = rotated.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(temporary, flags, stat.S_IMODE(info.st_mode) & 0o666)
        try:
            offset = max(0, info.st_size - cap)
            while offset < info.st_size:
                chunk = os.pread(fd, min(1 << 20, info.st_size - offset), offset)
                if not chunk:  # (truncated meanwhile)
                    break
                os.write(out, chunk)
                offset += len(chunk)
        finally:
            os.close(out)
        os.replace(temporary, rotated)
        os.truncate(path, 0)
    finally:
        os.close(fd)


def _wait_exited(process: subprocess.Popen[str], timeout: float) -> None:
    """Wait up to ``timeout`` for ``process`` to exit, woken by its exit: ``Popen.wait`` with a
    timeout polls, with sleeps growing to 50 ms (measured: the end of a `runink run` waited
    ~8 ms past its launcher's exit). A pidfd (Linux 5.3+) becomes readable when it exits."""
    if process.returncode is not None:  # (reaped already: its pid may be another's now)
        return
    try:
        pidfd = os.pidfd_open(process.pid)
    except (OSError, AttributeError):  # (older kernels, an exited and reaped process)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
        return
    try:
        if select.select([pidfd], [], [], timeout)[0]:
            process.wait()  # (reaps it: it has exited)
    finally:
        os.close(pidfd)


def _matching(parent: Path, pattern: str) -> list[str]:
    """The paths under ``parent`` that ``pattern`` matches, relative to it; none if ``parent``
    is gone (removed meanwhile: on Python 3.11 a glob there raises)."""
    try:
        return [str(found.relative_to(parent)) for found in parent.glob(pattern)]
    except OSError:
        return []


def _adopt_prestarted(arguments: list[str]) -> subprocess.Popen[str] | None:
    """The prestarted launcher, given ``arguments`` (what it would have been started with), or
    None when there is none or it is gone."""
    launcher = head_start.take()
    if launcher is None:
        return None
    if launcher.poll() is None:
        assert launcher.stdin is not None
        try:
            launcher.stdin.write(json.dumps(arguments) + "\n")
            launcher.stdin.flush()
            return launcher
        except OSError:
            pass
    launcher.kill()  # (gone or not listening: a fresh one is started instead)
    launcher.wait()
    return None


def _end_its_group(launcher: subprocess.Popen[str]) -> None:
    """Once ``launcher`` has exited, kill what is left in its process group: the children it
    forked that have no session of their own yet. A launcher killed while it was building a
    sandbox (SIGKILL, the OOM killer) leaves them: the holder of an id-mapping namespace
    (grants.py, paused until the launcher kills it) or a payload still setting itself up. They
    hold copies of the launcher's descriptors, the warm sandboxes' sockets among them, so those
    sandboxes would wait for a request forever. Running slices and warm sandboxes are in
    sessions of their own: not touched. The group is killed before the launcher is reaped, so
    its id (the launcher's pid) cannot be another process's meanwhile."""
    if launcher.returncode is not None:  # reaped already: its pid may be another's by now
        return
    try:
        os.waitid(os.P_PID, launcher.pid, os.WEXITED | os.WNOWAIT)  # (exited, not reaped)
    except ChildProcessError:  # (reaped by another thread meanwhile)
        return
    if launcher.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(launcher.pid, signal.SIGKILL)


LAUNCHER_EXIT_WAIT = 10.0  # seconds close() waits for each launcher to exit
LAUNCHER_GONE_GRACE = 1.0  # a launcher found dead: how long its last answers may take to be read
ORPHAN_SWEEP_SECONDS = 2.0  # after a launcher died: how long its warm sandboxes' cgroups are swept


def _is_launcher(pid: int) -> bool:
    """Whether ``pid`` is a running slice launcher (of any executor on this host)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"runink.plugins.executors.linux.launcher" in cmdline


def _sweep_stale_roots() -> None:
    """Remove the empty sandbox mount points (``<tmp>/runink-root-<pid>-*``) of launchers that
    are gone: one that could not remove its own (a sandbox still holding it) leaves it."""
    for root in Path(tempfile.gettempdir()).glob("runink-root-*-*"):
        try:
            pid = int(root.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if not _is_launcher(pid):
            with contextlib.suppress(OSError):  # (not empty, not a folder, not ours: left alone)
                os.rmdir(root)


def _python_fast_path(command: tuple[str, ...]) -> PythonCode | None:
    """``python -m MODULE ...`` or ``python -c CODE ...`` with this interpreter -> what the
    preloaded launcher runs in a forked process; None for anything else (exec'ed)."""
    if len(command) < 3 or command[1] not in ("-m", "-c"):
        return None
    if command[0] != sys.executable and os.path.realpath(command[0]) != os.path.realpath(sys.executable):
        return None
    if command[1] == "-m":
        return PythonCode(module=command[2], args=command[3:])
    return PythonCode(code=command[2], args=command[3:])


def _secrets(spec: TaskSpec, python: PythonCode | None) -> int:
    """A memfd holding the task's command (or ``python`` code), environment and files, for the
    launcher to pass on unread (a sealed request).

    Sandboxes are forks of the launcher: anything the launcher ever held in memory (earlier
    slices' variables, files and command lines) would be readable by a later slice's code, so
    it never sees them; the payload reads them from this fd.
    """
    env = {**spec.env, "RUNINK_FILES": FILES_DIR} if spec.files else dict(spec.env)
    sealed = {"python": python.to_dict()} if python is not None else {"command": list(spec.command)}
    data = json.dumps({"env": env, "files": dict(spec.files), **sealed}).encode()
    fd = os.memfd_create(f"runink-{spec.id}", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return fd


def _setup_failure(stderr: Path) -> str | None:
    """The payload's one line when it could not set a slice up (exit 126), so the console
    names the path and the reason rather than an exit code (read: the log's last 4 KiB)."""
    try:
        fd = os.open(stderr, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        tail = os.pread(fd, 4096, max(0, size - 4096)).decode(errors="replace")
    finally:
        os.close(fd)
    lines = [line for line in tail.splitlines() if line.startswith("runink: cannot set up slice")]
    # (the slice writes that log too: what is shown is made safe to print)
    return printable(lines[-1].removeprefix("runink: "), 1000) if lines else None


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    message: str | None = None
    cgroup: dict[str, str] | None = None  # the slice's cgroup directories, once started
    # a request start() gave up on: the fds the launcher opens by /proc path stay open until it
    # answers (closed, their numbers could name another file by then), and a late start is killed
    abandoned_fds: list[int] = field(default_factory=list)

    @property
    def abandoned(self) -> bool:
        return bool(self.abandoned_fds)  # (it always holds the secrets fd)

    def close_abandoned(self) -> None:
        for fd in self.abandoned_fds:
            os.close(fd)

    launcher: subprocess.Popen[str] | None = None  # the one it was sent to


@dataclass(kw_only=True)
class _Task(BookedTask):
    cgroup: SliceCgroup
    status_file: Path
    launcher: subprocess.Popen[str] | None = None  # the one that started it (None: recovered)
    logs_drained: list[threading.Event] = field(default_factory=list)  # its log pipes' ends (see logs.py)


class LinuxExecutor(BookkeepingExecutor[_Task]):
    name = "linux"
    options_schema: ClassVar[OptionsSchema] = {
        "degrade": bool,
        "timeout_grace": float,
        "cgroup_parent": str,
        "pool": int,
        "preload": (list, tuple),
        "readable": (list, tuple),
        "log_max_bytes": int,
        "user_namespace": bool,
        "slices_outlive_executor": bool,
    }

    def __init__(
        self,
        *,
        degrade: bool = False,
        timeout_grace: float = 2.0,
        cgroup_parent: str = "runink",
        pool: int = 2,
        preload: list[str] | tuple[str, ...] = (),
        readable: list[str] | tuple[str, ...] = (),
        log_max_bytes: int = 10 * 1024**2,
        user_namespace: bool = True,
        slices_outlive_executor: bool = False,
    ) -> None:
        super().__init__()
        self.degrade = bool(degrade)
        self.timeout_grace = float(timeout_grace)
        self.pool = int(pool)
        self.preload = [*_prestart_preload(), *preload]
        self.readable = [str(p) for p in readable]
        self.log_max_bytes = int(log_max_bytes)
        # False (the embedded runner): running slices end when this executor closes or its
        # process dies (the launcher kills them at the end of its stdin, their init dies with
        # the launcher). True (an agent that recovers them after a restart): they go on.
        self.slices_outlive_executor = bool(slices_outlive_executor)
        self._swept = False
        self._roots_swept = False
        self._log_keeper: threading.Thread | None = None
        self._logs: LogPump | None = None
        self._problems = self._detect_problems()
        # A user namespace per slice where the kernel lets an unprivileged process make one
        # (see launcher._enter_user_namespace); reported, not required. (Its probe started
        # before the checks above, a slice that outlived its killed launcher was, 4 times in
        # 25, never seen to end by test_a_slice_outlives_its_launcher; cause not found: kept
        # after them.)
        userns = UnprivilegedUserProbe() if user_namespace and os.geteuid() == 0 else None
        self.userns_refusal: str | None = "disabled (user_namespace = false)"
        if user_namespace:
            self.userns_refusal = self._problems.get("root") or (userns.result() if userns else None)
        # @network: the slice's own net namespace with slirp4netns attached (see the launcher)
        self.network_refusal: str | None = None if slirp4netns_path() else network_refusal()
        self.cgroups = CgroupManager(detect(), parent_name=cgroup_parent) if "cgroups" not in self._problems else None
        self._launchers: dict[str, subprocess.Popen[str]] = {}
        self._expected_starts: int | None = None  # (prepare's hint)

        self._pending: dict[str, _Pending] = {}

    # --- describing -------------------------------------------------------------------

    @staticmethod
    def _detect_problems() -> dict[str, str]:
        problems = {}
        namespaces = NamespaceProbe(["pid", "mount", "uts", "ipc", "net"])  # (answered at the end)
        if os.geteuid() != 0:
            problems["root"] = "not root: cannot create slice cgroups and namespaces"
        if "root" not in problems:
            try:  # grants are moved into warm sandboxes with the new mount API
                os.close(open_tree("/"))
            except OSError as exc:
                problems["mount API"] = f"open_tree/move_mount (Linux 5.2+) unavailable: {exc.strerror}"
        try:
            layout = detect()
            if not {"cpu", "memory", "pids"} <= set(layout.own):
                problems["cgroups"] = "; ".join(f"{c}: {r}" for c, r in layout.missing.items()) or "missing"
        except OSError as exc:
            problems["cgroups"] = str(exc)
        if "root" not in problems and not mount_setattr_available():
            problems["id-mapped mounts"] = "mount_setattr (Linux 5.12+) unavailable: outputs cannot be granted"
        try:
            build_program()
        except (SeccompUnavailable, OSError) as exc:
            problems["seccomp"] = f"{exc} (Debian: apt install libseccomp2; pip install pyseccomp)"
        refused = {f"{name} namespace": reason for name, reason in namespaces.result().items() if reason is not None}
        root = {"root": problems.pop("root")} if "root" in problems else {}
        return {**root, **refused, **problems}  # (in the order they were always reported)

    def capabilities(self) -> ExecutorCapabilities:
        unenforced: dict[str, str] = {}
        if "root" in self._problems:
            unenforced["gpu"] = self._problems["root"]
        if self.userns_refusal is not None:
            unenforced["user namespace"] = self.userns_refusal
        if self.network_refusal is not None:
            unenforced["network grant"] = f"{self.network_refusal}: @network tasks are refused"
        if "cgroups" in self._problems or "root" in self._problems:
            reason = self._problems.get("cgroups") or self._problems["root"]
            unenforced.update({"cpu": reason, "memory": reason, "pids": reason, "herd caps": reason})
        if "seccomp" in self._problems:
            unenforced["seccomp"] = self._problems["seccomp"]
        enforced = tuple(
            k
            for k in (
                "cpu",
                "memory",
                "pids",
                "herd caps",
                "network",
                "filesystem",
                "gpu",  # a slice sees its own GPUs' device nodes only
                "timeout",
                "process-tree kill",
                "clean environment",
                "user namespace",
                "seccomp",
                "no terminal",
            )
            if k not in unenforced
        )
        return ExecutorCapabilities(
            "cgroup+namespaces",
            enforced,
            unenforced,
            # a restarted agent finds its slices only if they outlived the executor that ran them
            supports_recover=self.slices_outlive_executor,
            supports_network_isolation=True,
        )

    def fingerprint(self) -> Fingerprint:
        healthy = not self._problems
        return Fingerprint(
            healthy,
            "ok" if healthy else "; ".join(f"{k}: {v}" for k, v in self._problems.items()),
            {"kernel": platform.release(), "cgroup": f"v{self.cgroups.layout.version}" if self.cgroups else "none"},
        )

    # --- launcher ---------------------------------------------------------------------

    @classmethod
    def prestart(cls) -> None:
        """Start the Python launcher now, importing the runtime slices share (~0.25 s), before
        the caller has loaded its config and built this executor; the first instance adopts it
        and sends it the rest of its arguments (``launcher --await-config``). Only as root
        (else no instance can use it); nothing adopts it: it ends with this process."""
        head_start.start(*_prestart_preload())

    @classmethod
    def prestart_entry(cls) -> tuple[str, list[str]]:
        """``prestart`` without importing this module: prestart.py's ``start`` (see it)."""
        return f"{head_start.__name__}:{head_start.start.__name__}", _prestart_preload()

    def prepare(self, starts: int | None = None) -> None:
        """Start the runtime-preloaded launcher now (~0.3-0.4 s of imports), not at the first
        slice: ``runink run`` goes on with its setup meanwhile. Nothing where start() refuses.
        ``starts`` (the slices to come, when known): it keeps no more sandboxes warm than that."""
        if starts is not None:
            self._expected_starts = max(0, int(starts))
        if (self._problems and not self.degrade) or self.cgroups is None:
            return
        with self._lock:
            self._launcher_process("python")

    def _launcher_process(self, kind: str) -> subprocess.Popen[str]:
        """The ``python`` (runtime preloaded) or ``exec`` launcher, started on first use."""
        launcher = self._launchers.get(kind)
        if launcher is None or launcher.poll() is not None:
            command = [sys.executable, "-m", head_start.LAUNCHER_MODULE, "--pool", str(self.pool)]
            if kind == "python":
                command += ["--preload", ",".join(self.preload)]
                if self._expected_starts is not None:
                    command += ["--expect", str(self._expected_starts)]
            for path in self.readable:
                command += ["--readable", path]
            if self.slices_outlive_executor:
                command += ["--slices-outlive"]
            if "seccomp" in self._problems:  # only reached with degrade = true (start() refuses otherwise)
                command += ["--no-seccomp"]
            if self.cgroups is not None:
                self.cgroups.prepare()
                layout = self.cgroups.layout
                cgroups = {"version": layout.version, "own": {c: str(d) for c, d in layout.own.items()}}
                command += ["--cgroups", json.dumps({**cgroups, "parent": self.cgroups.parent_name})]
                if not self._swept:
                    self._swept = True
                    self._sweep_stale_cgroups()
            if not self._roots_swept:
                self._roots_swept = True
                _sweep_stale_roots()
            adopted = _adopt_prestarted(command[3:]) if kind == "python" else None
            if adopted is not None:
                log.debug("took over the prestarted launcher (pid %d)", adopted.pid)
            launcher = adopted or head_start.launcher_popen(command)
            self._launchers[kind] = launcher
            threading.Thread(
                target=self._read_events, args=(launcher,), daemon=True, name=f"runink-launcher-{kind}"
            ).start()
        return launcher

    def _sweep_stale_cgroups(self) -> None:
        """Remove the empty ``sandbox-<pid>-*`` cgroups of launchers that are gone (a runner
        killed with SIGKILL whose launcher was killed too, a crash), and empty herd parents:
        nothing else removes them.
        A cgroup that still holds processes (a slice outliving its agent) is left to ``recover``."""
        assert self.cgroups is not None
        parents = self.cgroups.parents()
        names = {
            str(d.relative_to(parent))
            for parent in parents.values()
            if parent.is_dir()
            for pattern in ("sandbox-*-*", f"{HERD_PREFIX}*/sandbox-*-*")
            for d in parent.glob(pattern)
        }
        for name in sorted(names):
            try:
                pid = int(name.rpartition("/")[2].split("-")[1])
            except ValueError:
                continue
            if _is_launcher(pid):
                continue
            stale = SliceCgroup(self.cgroups.layout, {c: p / name for c, p in parents.items()})
            if not stale.pids():
                with contextlib.suppress(CgroupError):
                    stale.remove(timeout=0.5)
                self.cgroups.remove_herd_if_empty(stale.dirs)
        for parent in parents.values():  # herd parents left empty (safe: see cgroups.py)
            for herd in parent.glob(f"{HERD_PREFIX}*") if parent.is_dir() else ():
                with contextlib.suppress(OSError):
                    herd.rmdir()

    @property
    def _launcher(self) -> subprocess.Popen[str] | None:
        """The launcher that execs commands (tests look for its children)."""
        return self._launchers.get("exec")

    def _read_events(self, launcher: subprocess.Popen[str]) -> None:
        assert launcher.stdout is not None
        for line in launcher.stdout:
            try:
                self._on_event(parse_event(line))
            except Exception as exc:  # one bad event must not stop the events of every other slice
                print(f"runink linux executor: launcher event {line.strip()!r}: {exc!r}", file=sys.stderr)
        self._on_launcher_gone(launcher)

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, Exited):  # Started or Failed
            with self._lock:  # (start() abandons a request under it, only while still pending)
                pending = self._pending.pop(event.id, None)
            cgroup_name = event.cgroup if isinstance(event, Started) else None
            if pending is not None and pending.abandoned:
                pending.close_abandoned()
                if cgroup_name and self.cgroups is not None:
                    late = {c: p / cgroup_name for c, p in self.cgroups.parents().items()}
                    with contextlib.suppress(CgroupError):
                        SliceCgroup(self.cgroups.layout, late).remove()  # (kills what is in it first)
                return
            if pending is not None:
                pending.message = None if isinstance(event, Started) else event.message
                if cgroup_name and self.cgroups is not None:  # set before its "exited" is read
                    dirs = {c: p / cgroup_name for c, p in self.cgroups.parents().items()}
                    with self._lock:
                        task = self._tasks.get(event.id)
                    if task is not None:
                        task.cgroup = SliceCgroup(self.cgroups.layout, dirs)
                    pending.cgroup = {c: str(d) for c, d in dirs.items()}
                pending.event.set()
        else:
            with self._lock:
                task = self._tasks.get(event.id)
            if task is not None:
                self._finish(task, event.code)

    def _on_launcher_gone(self, launcher: subprocess.Popen[str]) -> None:
        """The launcher is gone (closed, killed, crashed): its slices run on in their
        sandboxes; follow them through their cgroups and status files, as after a restart."""
        with self._lock:  # requests it never answered: nothing will open their fds now
            for task_id, pending in list(self._pending.items()):
                if pending.launcher is not launcher:
                    continue
                del self._pending[task_id]
                if pending.abandoned:
                    pending.close_abandoned()
                else:  # start() is waiting for it: it will not come
                    pending.message = "the launcher exited before it started the slice"
                    pending.event.set()
        with self._lock:
            orphans = [t for t in self._tasks.values() if not t.done.is_set() and t.launcher is launcher]
        for task in orphans:
            threading.Thread(target=self._poll_recovered, args=(task,), daemon=True).start()
        _end_its_group(launcher)
        if launcher.wait() != 0 and self.cgroups is not None:  # it could not remove its warm sandboxes' cgroups
            # A sandbox being built when the launcher died creates its cgroup itself, possibly
            # after this first looks: look again for a while.
            deadline = time.monotonic() + ORPHAN_SWEEP_SECONDS
            while True:
                with self._lock:
                    in_use = {d.name for t in self._tasks.values() for d in t.cgroup.dirs.values()}
                names = {
                    name
                    for parent in self.cgroups.parents().values()
                    for pattern in (f"sandbox-{launcher.pid}-*", f"{HERD_PREFIX}*/sandbox-{launcher.pid}-*")
                    for name in _matching(parent, pattern)
                }
                for name in names:
                    if name.rpartition("/")[2] in in_use:
                        continue
                    warm = SliceCgroup(self.cgroups.layout, {c: p / name for c, p in self.cgroups.parents().items()})
                    with contextlib.suppress(CgroupError):
                        warm.remove()
                    self.cgroups.remove_herd_if_empty(warm.dirs)
                if time.monotonic() > deadline:
                    return
                time.sleep(0.1)

    # --- running ----------------------------------------------------------------------

    def start(self, spec: TaskSpec) -> TaskHandle:
        if not spec.command:
            raise TaskRejectedError(f"task {spec.id}: empty command")
        if self._problems and not self.degrade:
            raise TaskRejectedError(
                f"task {spec.id}: the linux executor cannot isolate here: "
                + "; ".join(f"{k}: {v}" for k, v in self._problems.items())
            )
        if spec.limits.gpu and not spec.devices and not self.degrade:
            raise TaskRejectedError(
                f"task {spec.id}: asks for {spec.limits.gpu} GPU(s) but is given no GPU device "
                "(does this node have any?)"
            )
        network = spec.network
        if network and self.network_refusal is not None:
            if not self.degrade:
                raise TaskRejectedError(f"task {spec.id}: {self.network_refusal}")
            # degraded: never the host's network (its listening ports), only the slice's loopback
            print(
                f"runink linux executor: task {spec.id}: {self.network_refusal}; running it without network",
                file=sys.stderr,
            )
            network = False
        if self.cgroups is None:
            raise TaskRejectedError(f"task {spec.id}: no usable cgroups: {self._problems.get('cgroups')}")
        herd_limits = None
        if spec.herd_limits is not None:
            try:  # the Barn checked the name; it becomes a path here, so it is checked again
                herd_dir_name(spec.herd)
            except CgroupError as exc:
                raise TaskRejectedError(f"task {spec.id}: {exc}") from None
            caps = spec.herd_limits  # (gpu: not a cgroup cap; a slice's GPUs are its devices)
            herd_limits = Limits(float(caps.cpu), int(caps.memory), int(caps.pids))
        with self._lock:
            status_file = self._new_task_dir(spec)
        task_dir = status_file.parent
        # Taken as given, never resolved here: the launcher refuses a symbolic link anywhere on
        # the way (a link in a folder someone else can write would redirect a grant).
        binds = {str(p): False for p in spec.readable}
        binds.update({str(p): True for p in (*spec.writable, *([spec.cwd] if spec.cwd else []))})
        started = time.time()
        deadline = started + spec.timeout if spec.timeout else None
        handle = TaskHandle(spec.id, self.name, str(task_dir), started, deadline, {"status_file": str(status_file)})
        python = _python_fast_path(spec.command)
        secrets_fd = _secrets(spec, python)
        # stdout and stderr: pipes this process reads into capped files (see logs.py), unless
        # the slice must outlive it (then files the slice appends to, capped by polling)
        log_fds: list[int] = []
        drained: list[threading.Event] = []
        if not self.slices_outlive_executor:
            for stream in ("stdout", "stderr"):
                write_end, done = self._log_pump().add(task_dir / f"{stream}.log")
                log_fds.append(write_end)
                drained.append(done)
            stdout, stderr = (f"/proc/{os.getpid()}/fd/{fd}" for fd in log_fds)  # opened by the launcher
        else:
            stdout, stderr = str(task_dir / "stdout.log"), str(task_dir / "stderr.log")
        request = LaunchRequest(
            id=spec.id,
            sealed=True,  # (the command in the memfd: see _secrets)
            cwd=str(spec.cwd or "/"),
            binds=tuple(Bind(path, writable) for path, writable in binds.items()),
            hostname=spec.id[:63],
            # no uid: the launcher gives each sandbox its own, with its id-mapping made ahead
            network=network,
            userns=self.userns_refusal is None,
            limits=Limits(float(spec.limits.cpu), int(spec.limits.memory), int(spec.limits.pids)),
            herd=spec.herd if herd_limits is not None else None,
            herd_limits=herd_limits,
            devices=tuple(spec.devices),
            hidden=tuple(str(path) for path in spec.hidden),
            stdout=stdout,
            stderr=stderr,
            status_file=str(status_file),
            # the command, env and files go through a memfd, never through the launcher (see _secrets)
            secrets=f"/proc/{os.getpid()}/fd/{secrets_fd}",
        )
        # The slice's cgroup is its warm sandbox's (the launcher reports which): renaming it to
        # the slice id would wait behind other sandboxes joining theirs (see cgroups.py).
        task = _Task(
            handle=handle, cgroup=SliceCgroup(self.cgroups.layout, {}), status_file=status_file, logs_drained=drained
        )
        pending = _Pending()
        with self._lock:
            self._tasks[spec.id] = task
            self._pending[spec.id] = pending
            launcher = self._launcher_process("python" if python else "exec")
            task.launcher = pending.launcher = launcher
            assert launcher.stdin is not None
            try:
                launcher.stdin.write(request.to_line())
                launcher.stdin.flush()
                sent = True
            except OSError:  # it died since it was started (killed): no answer will come
                sent = False
        if not sent:
            self._give_up(spec.id, pending)
        started_in_time = self._wait_started(spec.id, pending, launcher, 30)
        with self._lock:
            if not started_in_time and spec.id in self._pending:  # the launcher may still act on it
                pending.abandoned_fds = [secrets_fd, *log_fds]
            answered = not pending.abandoned
        if answered:
            started_in_time = pending.event.wait(5)  # (an answer being handled right now)
            for fd in (secrets_fd, *log_fds):  # the launcher opened its own; the payload has them
                os.close(fd)
        if not started_in_time or pending.message is not None:
            with self._lock:
                self._tasks.pop(spec.id, None)
            reason = pending.message or "the launcher did not start it within 30 s"
            raise TaskRejectedError(f"task {spec.id}: {reason}")
        handle = dataclasses.replace(handle, driver_state={**handle.driver_state, "cgroup": pending.cgroup or {}})
        task.handle = handle
        (task_dir / "handle.json").write_text(json.dumps(handle.to_dict()))
        self._watch(task)
        return handle

    def _wait_started(self, task_id: str, pending: _Pending, launcher: subprocess.Popen[str], timeout: float) -> bool:
        """Wait up to ``timeout`` for the launcher's answer to ``task_id``'s request. A launcher
        that died unanswered is noticed by its process ending, not only by the end of its
        output: a process it forked may hold that open."""
        deadline = time.monotonic() + timeout
        gone_since: float | None = None
        while not pending.event.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            now = time.monotonic()
            if now >= deadline:
                return False
            if launcher.poll() is None:
                continue
            gone_since = gone_since or now
            if now - gone_since >= LAUNCHER_GONE_GRACE:  # (its last lines had time to be read)
                self._give_up(task_id, pending)
        return True

    def _give_up(self, task_id: str, pending: _Pending) -> None:
        """The launcher will never answer ``task_id``'s request: start() says so."""
        with self._lock:
            if self._pending.get(task_id) is pending:
                del self._pending[task_id]
                pending.message = "the launcher exited before it started the slice"
                pending.event.set()

    def recover(self, handle: TaskHandle) -> None:
        self._check_handle(handle)
        assert self.cgroups is not None
        dirs = {k: Path(v) for k, v in handle.driver_state["cgroup"].items()}
        task = _Task(
            handle=handle,
            cgroup=SliceCgroup(self.cgroups.layout, dirs),
            status_file=Path(handle.driver_state["status_file"]),
        )
        if self._adopt(task):
            self._watch(task)
            threading.Thread(target=self._poll_recovered, args=(task,), daemon=True).start()

    def _poll_recovered(self, task: _Task) -> None:
        """Follow a task without launcher events: it ended when its cgroup is empty; its
        sandbox's PID 1 writes the exit status just after (allow it a second)."""
        while not task.done.is_set():
            if not task.cgroup.pids():
                code = -1
                for _ in range(20):
                    try:
                        code = read_exit_status(task.status_file)
                        break
                    except (OSError, ValueError):
                        time.sleep(0.05)
                self._finish(task, code)
                return
            time.sleep(0.1)

    def _log_pump(self) -> LogPump:
        if self._logs is None:
            self._logs = LogPump(self.log_max_bytes)
        return self._logs

    def _keep_files_capped(self) -> None:
        """Background thread: every LOG_CHECK_SECONDS, the files running slices hold open on
        the host are capped (``_cap_files``)."""
        while True:
            time.sleep(LOG_CHECK_SECONDS)
            with self._lock:
                running = [t for t in self._tasks.values() if not t.done.is_set()]
            for task in running:
                self._cap_files(task)

    def _cap_files(self, task: _Task) -> None:
        """The host files a slice holds open, capped. Its status file (a Python step's slice
        holds it: its payload is the step's process) is emptied once it takes more than a
        status needs, whatever the logs are. For slices that outlive the executor, whose logs
        are files they append to (not pipes this process reads), a log holding more than
        ``log_max_bytes`` (its size or the blocks it took) has its newest ``log_max_bytes``
        copied to ``<stream>.log.1`` (replacing the previous one, with the live one's mode) and
        is truncated (logrotate's copytruncate: the slice appends with O_APPEND and never
        notices; lines written during the copy can be lost). A slice that writes faster than
        this polls can exceed the cap until the next check (fallocate, which took gigabytes at
        once, is refused to slices: seccomp.py)."""
        with contextlib.suppress(OSError):
            if _held_bytes(task.status_file) > STATUS_HELD_MAX:  # (written at its end, a few bytes)
                os.truncate(task.status_file, 0)
        if task.logs_drained or self.log_max_bytes <= 0:
            return
        folder = Path(task.handle.task_dir)
        for stream in ("stdout", "stderr"):
            with contextlib.suppress(OSError):
                _cap_log(folder / f"{stream}.log", self.log_max_bytes)

    def read_log(self, task_id: str, stream: str = "stdout") -> str:
        """The task's ``stdout`` or ``stderr``: the rotated part (if the cap was hit) then the current."""
        folder = Path(self.handle(task_id).task_dir)
        parts = [folder / f"{stream}.log.1", folder / f"{stream}.log"]
        return "".join(p.read_text(errors="replace") for p in parts if p.exists())

    def _watch(self, task: _Task) -> None:
        if self._log_keeper is None:
            self._log_keeper = threading.Thread(target=self._keep_files_capped, daemon=True, name="runink-file-cap")
            self._log_keeper.start()
        self._watch_deadline(task)

    def _finish(self, task: _Task, code: int) -> None:
        if task.done.is_set():
            return
        # Every process of the slice is gone: its last output is in the pipes, written to the
        # log files in a moment (the runner reads stderr.log once the task is done).
        drain_until = time.monotonic() + LOG_DRAIN_SECONDS
        for drained in task.logs_drained:
            drained.wait(max(0.0, drain_until - time.monotonic()))
        usage = task.cgroup.usage()
        self._cap_files(task)  # (once more: what it took since the last check stayed on disk)
        with contextlib.suppress(CgroupError):
            task.cgroup.remove()
        if self.cgroups is not None:  # its herd's parent too, if that was its last slice here
            self.cgroups.remove_herd_if_empty(task.cgroup.dirs)
        failure = None
        if code == 126:  # the payload could not set the slice up: its stderr says why
            failure = _setup_failure(Path(task.handle.task_dir) / "stderr.log")
        end = TaskExit(
            code if code >= 0 else None,  # (the launcher reports 128 + N for a signal N)
            code - 128 if code > 128 else None,
            oom=code == 137 and bool(usage.oom_kills),
            failure=failure,
            who="slice",
        )
        self._settle(task, end, usage.cpu_seconds, usage.memory_peak or None)

    def _terminate(self, task: _Task, grace: float) -> None:
        task.cgroup.send_signal(signal.SIGTERM)
        if task.done.wait(grace):
            return
        with contextlib.suppress(CgroupError):
            task.cgroup.kill()
        task.done.wait(10)

    def close(self) -> None:
        """Stop the launchers (their warm sandboxes end with them). Running slices end too (the
        launchers kill them at the end of their stdin), unless ``slices_outlive_executor``."""
        with self._lock:
            launchers, self._launchers = list(self._launchers.values()), {}
        for launcher in launchers:
            with contextlib.suppress(OSError):
                assert launcher.stdin is not None
                launcher.stdin.close()
            _wait_exited(launcher, LAUNCHER_EXIT_WAIT)

    # --- controlling ------------------------------------------------------------------

    def stats(self, task_id: str) -> TaskStats:
        task = self._get(task_id)
        usage = task.cgroup.usage()
        return TaskStats(task_id, usage.cpu_seconds, usage.memory_current, len(task.cgroup.pids()))

    def pids(self, task_id: str) -> list[int]:
        """The host pids of the task's processes (its cgroup's): what a disk limit looks into
        for files they hold open after unlinking them (core/agent/disk_limits.py)."""
        return self._get(task_id).cgroup.pids()

    # --- runink doctor ----------------------------------------------------------------

    def diagnose(self) -> list[Check]:
        """The host probes this driver depends on (cgroups, namespaces, seccomp, slirp4netns),
        then its health and limits (the interface's default), then whether runink-init was built."""
        from runink.plugins.executors.linux.launcher import INIT_BINARY, native_init_available
        from runink.plugins.executors.linux.namespaces import probe_all

        checks: list[Check] = []
        try:
            layout = detect()
            checks.append(Check("cgroups", "version", True, f"cgroup v{layout.version}"))
            for controller, path in sorted(layout.own.items()):
                writable = os.access(path, os.W_OK)
                detail = str(path) if writable else f"{path} is not writable"
                checks.append(Check("cgroups", controller, writable, detail))
            checks += [Check("cgroups", name, False, reason) for name, reason in sorted(layout.missing.items())]
        except OSError as exc:
            checks.append(Check("cgroups", "detect", False, f"cannot read cgroup mounts: {exc}"))
        for name, refusal in probe_all().items():
            checks.append(Check("namespaces", name, refusal is None, "permitted" if refusal is None else refusal))
        seccomp = self._problems.get("seccomp")
        checks.append(Check("linux", "seccomp", seccomp is None, seccomp or "the slices' syscall filter builds"))
        slirp = slirp4netns_path()
        checks.append(Check("linux", "slirp4netns", slirp is not None, slirp or str(self.network_refusal)))
        checks += super().diagnose()
        built = native_init_available()
        detail = str(INIT_BINARY) if built else "not built (no C compiler at install): each sandbox costs one more fork"
        checks.append(Check("executor", f"{self.name}: runink-init", built, detail))
        return checks
