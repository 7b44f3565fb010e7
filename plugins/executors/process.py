"""The ``process`` executor: plain host processes, no isolation. The fallback where cgroups and
namespaces are not available, and the reference implementation of the Executor contract.

How it keeps the contract without isolation:

* Each task runs in its own session and process group, so ``stop`` and timeouts signal the
  whole tree (a grandchild that calls ``setsid`` itself escapes; the Linux executor's cgroup
  does not have that hole). Whatever is left of the group when the main process ends is
  killed, so a task never leaves processes behind.
* The task's command runs under a few lines of ``sh`` (about 1 ms) that write its exit status
  to ``TASK_DIR/exit_status``. That is what lets a new executor instance ``recover`` a task
  after an agent restart and still learn how it ended, although it is no longer its child.
* cpu seconds and peak memory at the end come from ``wait4``'s rusage of the supervisor,
  which covers the processes it waited for; peak memory is approximate (it can include the
  launcher's pages counted before ``exec``). The cgroup executor measures both exactly.
* Resource limits cannot be enforced here. A task that asks for one is refused unless the
  executor is configured with ``degrade = true``, in which case it runs with the limit
  recorded but not applied (``capabilities().unenforced`` says so).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from runink.core.driverload import OptionsSchema
from runink.core.errors import TaskRejectedError
from runink.core.interfaces.executor import (
    ExecutorCapabilities,
    Fingerprint,
    TaskHandle,
    TaskSpec,
    TaskStats,
)
from runink.core.processes import read_exit_status
from runink.core.taskbook import BookedTask, BookkeepingExecutor, TaskExit

# Runs "$@" as a child, so the exit status can be recorded even when no one waits for this
# shell (agent restarted). TERM/INT are caught by a no-op trap: the executor signals the
# whole process group, so the child already has the signal; the shell just keeps waiting.
_SUPERVISOR = r"""
status_file=$1; keep_pwd=$2; shift 2
[ "$keep_pwd" = 1 ] || unset PWD  # sh exports PWD by itself; the task gets only its spec's env
trap : TERM INT HUP
"$@" &
child=$!
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || break
done
printf '%s\n' "$rc" > "$status_file.tmp" && mv "$status_file.tmp" "$status_file"
exit "$rc"
"""

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_POLL_INTERVAL = 0.02


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3, the state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


@dataclass(kw_only=True)
class _Task(BookedTask):
    pid: int
    start_ticks: int | None
    status_file: Path
    is_child: bool


def _write_files(folder: Path, files: Mapping[str, str]) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    for name, content in files.items():
        if not name or "/" in name or name in (".", ".."):
            raise TaskRejectedError(f"invalid file name {name!r}")
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
    return folder


class ProcessExecutor(BookkeepingExecutor[_Task]):
    """Runs each task as a plain process group on the host."""

    name = "process"
    options_schema: ClassVar[OptionsSchema] = {"degrade": bool, "timeout_grace": float}

    def __init__(self, degrade: bool = False, timeout_grace: float = 2.0) -> None:
        """``degrade``: run tasks whose limits cannot be enforced instead of refusing them.
        ``timeout_grace``: seconds between SIGTERM and SIGKILL when a task's timeout passes.
        """
        super().__init__()
        self.degrade = bool(degrade)
        self.timeout_grace = float(timeout_grace)

    # --- describing -------------------------------------------------------------------

    def capabilities(self) -> ExecutorCapabilities:
        reason = "plain host processes: no cgroups"
        return ExecutorCapabilities(
            isolation="none",
            enforced=("timeout", "process-group kill", "clean environment"),
            unenforced={
                "cpu": reason,
                "memory": reason,
                "pids": reason,
                "gpu": reason,
                # a herd's caps (TaskSpec.herd_limits) are ignored, not refused: only the
                # scheduler's quota holds a herd here
                "herd caps": reason,
                "network": "shares the host network: no network namespace",
                "filesystem": "sees the host filesystem: no mount namespace",
            },
            supports_recover=True,
            supports_network_isolation=False,
        )

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(
            healthy=shutil.which("sh") is not None,
            health_description="ok" if shutil.which("sh") else "no sh on PATH",
            attributes={
                "os": platform.system().lower(),
                "kernel": platform.release(),
                "arch": platform.machine(),
                "cpus": str(os.cpu_count() or 1),
            },
        )

    # --- running ----------------------------------------------------------------------

    def start(self, spec: TaskSpec) -> TaskHandle:
        if not spec.command:
            raise TaskRejectedError(f"task {spec.id}: empty command")
        limits = {k: v for k, v in vars(spec.limits).items() if v}
        if limits and not self.degrade:
            raise TaskRejectedError(
                f"task {spec.id}: the process executor cannot enforce {', '.join(sorted(limits))} limits "
                "(no cgroups); use an isolating executor or set executor.options.degrade = true"
            )
        if spec.devices and not self.degrade:
            raise TaskRejectedError(
                f"task {spec.id}: the process executor cannot give devices ({len(spec.devices)} asked) to a "
                "task alone: every process here sees all of the host's; use the linux executor"
            )
        path = spec.env.get("PATH", os.defpath)
        if shutil.which(spec.command[0], path=path) is None:
            raise TaskRejectedError(f"task {spec.id}: command not found: {spec.command[0]}")
        with self._lock:
            status_file = self._new_task_dir(spec)
            task_dir = status_file.parent
            env = dict(spec.env)
            if spec.files:  # no private tmpfs here: a folder of the task dir only its user can read
                env["RUNINK_FILES"] = str(_write_files(task_dir / "files", spec.files))
            started = time.time()
            import subprocess  # local: keeps `import runink` light for CLI start

            with open(task_dir / "stdout.log", "ab") as out, open(task_dir / "stderr.log", "ab") as err:
                try:
                    proc = subprocess.Popen(
                        [
                            "/bin/sh",
                            "-c",
                            _SUPERVISOR,
                            "runink-task",
                            str(status_file),
                            "1" if "PWD" in spec.env else "0",
                            *spec.command,
                        ],
                        env=env,
                        cwd=spec.cwd or task_dir,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                        close_fds=True,
                    )
                except OSError as exc:
                    shutil.rmtree(task_dir / "files", ignore_errors=True)  # (its secrets go with it)
                    raise TaskRejectedError(f"task {spec.id}: cannot start: {exc}") from exc
            # The supervisor shell is the group leader; Popen's own bookkeeping is bypassed
            # (we reap with wait4 for rusage), so tell it not to reap this pid later.
            proc.returncode = 0
            ticks = _start_ticks(proc.pid)
            deadline = started + spec.timeout if spec.timeout else None
            handle = TaskHandle(
                task_id=spec.id,
                driver=self.name,
                task_dir=str(task_dir),
                started_at=started,
                deadline=deadline,
                driver_state={"pid": proc.pid, "start_ticks": ticks, "status_file": str(status_file)},
            )
            task = _Task(handle=handle, pid=proc.pid, start_ticks=ticks, status_file=status_file, is_child=True)
            self._tasks[spec.id] = task
            (task_dir / "handle.json").write_text(json.dumps(handle.to_dict()))
        self._watch(task)
        return handle

    def recover(self, handle: TaskHandle) -> None:
        self._check_handle(handle)
        state = handle.driver_state
        ticks = state.get("start_ticks")
        task = _Task(
            handle=handle,
            pid=int(state["pid"]),
            start_ticks=ticks if isinstance(ticks, int) and not isinstance(ticks, bool) else None,
            status_file=Path(state["status_file"]),
            is_child=False,
        )
        if self._adopt(task):
            self._watch(task)

    def _watch(self, task: _Task) -> None:
        self._watch_deadline(task)
        target = self._reap_child if task.is_child else self._poll_foreign
        threading.Thread(target=target, args=(task,), name=f"runink-task-{task.handle.task_id}", daemon=True).start()

    def _reap_child(self, task: _Task) -> None:
        while True:
            try:
                _, status, usage = os.wait4(task.pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                status, usage = -1, None
                break
        cpu = usage.ru_utime + usage.ru_stime if usage else None
        peak = usage.ru_maxrss * 1024 if usage else None
        if status == -1:
            code, sig = self._recorded_status(task)
        elif os.WIFSIGNALED(status):
            code, sig = None, os.WTERMSIG(status)
        else:
            code, sig = self._recorded_status(task)
            if code is None:
                code = os.waitstatus_to_exitcode(status)
        self._finish(task, code, sig, cpu, peak)

    def _poll_foreign(self, task: _Task) -> None:
        """A recovered task is not our child: poll until its supervisor is gone."""
        while self._alive(task):
            time.sleep(_POLL_INTERVAL * 5)
        code, sig = self._recorded_status(task)
        self._finish(task, code, sig, None, None)

    def _alive(self, task: _Task) -> bool:
        """The task's process runs: our child (its pid cannot be another's before we reap it),
        or a recovered one whose start time is the handle's. A recovered handle without one
        cannot tell the task from a process that took its pid since: taken as ended (any live
        pid counted, and a forged handle had `stop` kill that process's group)."""
        fields = _proc_stat(task.pid)
        if fields is None or fields[0] == "Z":
            return False
        if task.is_child:
            return True
        return task.start_ticks is not None and int(fields[19]) == task.start_ticks

    @staticmethod
    def _recorded_status(task: _Task) -> tuple[int | None, int | None]:
        try:
            code = read_exit_status(task.status_file)
        except (OSError, ValueError):
            return None, None
        return code, None

    def _finish(self, task: _Task, code: int | None, sig: int | None, cpu: float | None, peak: int | None) -> None:
        # Whatever the main process left running in its group goes with it (a recovered task's
        # only when its start time was known: its pid is not someone else's group)
        if task.is_child or task.start_ticks is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(task.pid, signal.SIGKILL)
        # its files (secrets among them) go with it: no tmpfs here, they were on the disk
        shutil.rmtree(Path(task.handle.task_dir) / "files", ignore_errors=True)
        self._settle(task, TaskExit(code, sig), cpu, peak)

    def _terminate(self, task: _Task, grace: float) -> None:
        """SIGTERM the group, SIGKILL it after ``grace``; returns when the task has ended."""
        if not self._alive(task) and (task.done.wait(1.0) or (not task.is_child and task.start_ticks is None)):
            return  # (ended; or a pid that cannot be told to be the task's: never signalled)
        for sig, wait_for in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(task.pid, sig)
            if task.done.wait(wait_for):
                return

    # --- controlling ------------------------------------------------------------------

    def stats(self, task_id: str) -> TaskStats:
        task = self._get(task_id)
        cpu_ticks = rss_pages = count = 0
        if not task.done.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                fields = _proc_stat(int(entry))
                # fields[3] is the session id: every process of the task shares the supervisor's.
                if fields is None or int(fields[3]) != task.pid:
                    continue
                cpu_ticks += int(fields[11]) + int(fields[12])
                rss_pages += int(fields[21])
                count += 1
        return TaskStats(task_id, cpu_ticks / _CLK_TCK, rss_pages * _PAGE_SIZE, count)
