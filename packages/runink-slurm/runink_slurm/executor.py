"""The ``slurm`` executor: an agent on a Slurm submit node runs each task as a Slurm batch job.

How it keeps the Executor contract (``runink.core.interfaces.executor``) through Slurm:

* ``start`` writes the task's environment and command to ``TASK_DIR/launch`` (mode 0600: the
  environment may hold secrets; it is never on a command line, in the job script Slurm
  stores, or in a log) and submits ``TASK_DIR/job.sh`` with ``sbatch --parsable``: job name
  ``runink-<task id>``, ``--cpus-per-task`` / ``--mem`` / ``--time`` / ``--gres=gpu:N`` from
  the task's limits and timeout, ``--chdir``, ``--output`` / ``--error`` to ``stdout.log`` /
  ``stderr.log`` in the task dir, ``--no-requeue``, and for an agent run as root the herd's
  ``run_as`` user (``--uid`` / ``--gid``; users.py). It returns once the job's script runs (it
  touches ``TASK_DIR/state/started``), waiting at most ``start_timeout`` seconds: a job Slurm
  keeps queued longer is returned still PENDING, and its timeout counts from when it starts.
* The job script clears the environment Slurm gives it (``env -i``) and runs a few lines of
  ``sh`` that start the command with exactly the task's environment (from ``launch``, then
  deleted by the executor once the task ends) and record its exit status and cpu time in the
  task dir's ``state/``, so the result is exact and a new executor instance can still read it.
* sbatch itself runs with a scrubbed environment (PATH, HOME, LANG, SLURM_CONF) and
  ``--export=ALL``: so nothing of the agent's environment reaches the job. (``--export=NONE``
  makes slurmd load the user's login environment on the node, ``su - USER``, about a second a
  job here, only for the job script to throw it away.)
* One thread follows every job with ``squeue --states=all`` each ``poll_interval``. A job has
  ended when Slurm says it has (its processes are gone then: squeue shows COMPLETING until
  they are). Slurm's final states map to Runink's: COMPLETED -> SUCCEEDED (exit 0) or FAILED;
  FAILED, NODE_FAIL, BOOT_FAIL, PREEMPTED -> FAILED; OUT_OF_MEMORY -> OOMKILLED; TIMEOUT,
  DEADLINE -> DEADLINE_EXCEEDED; CANCELLED -> CANCELLED when this executor stopped it, else
  FAILED (an operator's scancel). A job slurmctld has forgotten (older than MinJobAge) is
  looked up in accounting (sacct) when the cluster keeps it, else the recorded exit status
  decides.
* ``stop``: ``scancel --full --signal=TERM`` (the job script and every process of the job),
  ``grace`` seconds, then SIGKILL: ``scancel --batch --signal=USR2`` makes the job script
  SIGKILL its process group, and Slurm kills what is left as the job ends (Slurm's own
  ``--signal=KILL`` is a cancel, which waits the cluster's KillWait, 30 s by default, after a
  TERM); ``scancel`` if the job is still there 10 s later. The task's timeout
  is enforced here to the second (DEADLINE_EXCEEDED), and given to Slurm as ``--time``
  rounded up to minutes as a backstop.
* What Slurm enforces depends on the cluster: ``capabilities()`` reads ``scontrol show
  config``. Memory is enforced with ``TaskPlugin=task/cgroup`` and ``ConstrainRAMSpace=yes``,
  cpus (whole cores) with ``ConstrainCores=yes`` or ``task/affinity``, GPUs with ``GresTypes``
  naming gpu and ``ConstrainDevices=yes``; every process of a job is killed with it
  (``job kill``) with ``proctrack/cgroup``. A task asking for a limit the cluster does not
  enforce is refused unless ``degrade`` is set. pids, network and filesystem isolation and a
  herd's node caps are never enforced; a TaskSpec's ``devices`` are ignored (Slurm assigns
  the GPUs; the job keeps Slurm's ``CUDA_VISIBLE_DEVICES``).
* ``stats`` reads the job's processes in /proc when it runs on this machine (``scontrol
  listpids``), else asks ``sstat`` (cpu in whole seconds).

The task dir must be on a file system the compute nodes share with the agent (the job
writes its logs and status there), as Slurm's output files are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from runink.core.agent.logs import output_file
from runink.core.driverload import OptionsSchema
from runink.core.errors import TaskNotFoundError, TaskRejectedError
from runink.core.interfaces.executor import (
    Executor,
    ExecutorCapabilities,
    Fingerprint,
    TaskHandle,
    TaskResult,
    TaskSpec,
    TaskState,
    TaskStats,
)
from runink_slurm.slurm import FINAL_STATES, JobRow, SlurmCli, SlurmError, minutes_for, parse_exit_code, valid_job_id
from runink_slurm.users import ANY_HERD, JobUser, parse_run_as, unreachable

log = logging.getLogger("runink.executor.slurm")

MiB = 1024 * 1024
#: largest log read_log returns (its last bytes); the agent ships the files itself
MAX_LOG = 8 * MiB
MAX_TIMEOUT = 366 * 86400.0  # seconds: a task's timeout, at most (1e12 crashed the deadline's timer)
#: seconds a job may run (says squeue) before its marker shows, before it counts as started
NO_MARKER_AFTER = 5.0
#: sbatch options an operator may add (``sbatch_args``); the executor sets the others itself
ALLOWED_SBATCH = frozenset(
    {
        "acctg-freq",
        "comment",
        "constraint",
        "cores-per-socket",
        "cpu-freq",
        "exclude",
        "exclusive",
        "gres-flags",
        "hint",
        "licenses",
        "mail-type",
        "mail-user",
        "mcs-label",
        "nice",
        "nodelist",
        "qos",
        "reservation",
        "sockets-per-node",
        "switches",
        "threads-per-core",
        "tmp",
        "wckey",
    }
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
_SBATCH_ARG = re.compile(r"^--([a-z][a-z-]{0,31})(?:=([^\x00-\x1f\x7f]{1,512}))?$")
# Variables Slurm sets in a GPU job naming its GPUs: kept from Slurm's environment for such a
# job (the agent's values would name the submit node's devices)
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")

# Runs in the job with an empty environment: marks the start, runs the command from the
# launch file as a child (with exactly its environment), records its exit status and the cpu
# time of what it waited for. TERM/INT/HUP are caught by a no-op: scancel --full signals every
# process of the job, so the child has the signal already; this shell keeps waiting. USR2
# (``scancel --batch``: this shell only) SIGKILLs its process group, itself included: Slurm's
# own SIGKILL (scancel --signal=KILL) cancels the job, which waits KillWait (30 s by default)
# after a TERM before it kills; what left the group dies as the job's step ends.
RUNNER = r"""dir=$1
state=$2
PATH=/usr/local/bin:/usr/bin:/bin
: > "$state/started" || exit 125
trap : TERM INT HUP
trap 'kill -KILL 0' USR2
/bin/sh -c '. "$1" && exec "$@"' runink-task "$dir/launch" &
child=$!
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || break
done
times > "$state/times.tmp" 2>/dev/null && mv -f "$state/times.tmp" "$state/times"
printf '%s\n' "$rc" > "$state/exit_status.tmp" && mv -f "$state/exit_status.tmp" "$state/exit_status"
exit "$rc"
"""
#: the folder of the task dir the job script writes (its start marker, exit status, cpu time):
#: the job's user's own, in a task dir that stays the agent's (see ``JobUser``)
STATE_DIR = "state"


@dataclass(eq=False)
class _Task:
    handle: TaskHandle
    job_id: str
    task_dir: Path
    timeout: float | None
    state_dir: Path  # where its job script writes its marker, exit status and cpu time
    done: threading.Event = field(default_factory=threading.Event)
    result: TaskResult | None = None
    cancelled: bool = False  # stop() was called before it ended
    deadline_hit: bool = False  # its timeout passed before it ended
    started_at: float | None = None  # when its job script started (None: still queued)
    timer: threading.Timer | None = None
    slurm: JobRow | None = None  # the last squeue row seen
    missing: int = 0  # polls in a row that did not find the job
    running_polls: int = 0  # polls that saw it running before its marker did
    hurry: bool = False  # being stopped: poll often
    lock: threading.Lock = field(default_factory=threading.Lock)


def _check_name(option: str, value: str) -> str:
    if value and not _NAME.match(value):
        raise ValueError(f"slurm executor: option {option} {value[:80]!r} is not a Slurm name (letters, digits, _ . -)")
    return value


def check_sbatch_args(args: Sequence[str]) -> list[str]:
    """Operator-given sbatch options: long options from ALLOWED_SBATCH only, one per item."""
    if len(args) > 32:
        raise ValueError(f"slurm executor: option sbatch_args has {len(args)} items (at most 32)")
    checked = []
    for arg in args:
        if not isinstance(arg, str):
            raise ValueError(f"slurm executor: sbatch_args items must be text, got {type(arg).__name__}")
        match = _SBATCH_ARG.match(arg)
        if not match:
            raise ValueError(
                f"slurm executor: sbatch_args item {arg[:80]!r} is not a long option (--name or --name=value, "
                "no control characters)"
            )
        if match.group(1) not in ALLOWED_SBATCH:
            raise ValueError(
                f"slurm executor: sbatch option --{match.group(1)} is not allowed in sbatch_args (the executor "
                f"sets the job's resources, files and environment itself); allowed: {', '.join(sorted(ALLOWED_SBATCH))}"
            )
        checked.append(arg)
    return checked


def _bounded(value: float, option: str, low: float, high: float) -> float:
    number = float(value)
    if not low <= number <= high:
        raise ValueError(f"slurm executor: option {option} must be between {low:g} and {high:g}, got {number:g}")
    return number


class SlurmExecutor(Executor):
    """Runs each task as a Slurm batch job, from the node the agent runs on (a submit node)."""

    name = "slurm"
    options_schema: ClassVar[OptionsSchema] = {
        "degrade": bool,
        "partition": str,
        "account": str,
        "sbatch_args": list,
        "poll_interval": float,
        "bin_dir": str,
        "slurm_conf": str,
        "timeout_grace": float,
        "start_timeout": float,
        "command_timeout": float,
        "run_as": dict,
        "allow_root_jobs": bool,
    }

    def __init__(
        self,
        *,
        degrade: bool = False,
        partition: str = "",
        account: str = "",
        sbatch_args: Sequence[str] = (),
        poll_interval: float = 0.5,
        bin_dir: str = "",
        slurm_conf: str = "",
        timeout_grace: float = 2.0,
        start_timeout: float = 30.0,
        command_timeout: float = 30.0,
        run_as: Mapping[str, str] | None = None,
        allow_root_jobs: bool = False,
    ) -> None:
        """``partition`` / ``account``: sbatch's; ``sbatch_args``: more sbatch options (from
        ALLOWED_SBATCH); ``poll_interval``: seconds between squeue calls; ``bin_dir``: where
        the Slurm commands are (default: PATH); ``slurm_conf``: the slurm.conf they read
        (default: $SLURM_CONF, else theirs); ``timeout_grace``: seconds between TERM and KILL
        when a timeout passes; ``start_timeout``: how long ``start`` waits for a queued job to
        start; ``command_timeout``: the bound on each Slurm command. ``run_as``: herd (or
        ``*``) -> the unprivileged ``user[:group]`` its jobs run as, for an agent run as root
        (users.py); such an agent refuses the tasks of a herd with none unless
        ``allow_root_jobs``."""
        self.degrade = bool(degrade)
        self.partition = _check_name("partition", str(partition))
        self.account = _check_name("account", str(account))
        self.sbatch_args = check_sbatch_args(list(sbatch_args))
        self.poll_interval = _bounded(poll_interval, "poll_interval", 0.05, 60)
        self.timeout_grace = _bounded(timeout_grace, "timeout_grace", 0, 3600)
        self.start_timeout = _bounded(start_timeout, "start_timeout", 0, 86400)
        command_timeout = _bounded(command_timeout, "command_timeout", 1, 600)
        for option, path in (("bin_dir", bin_dir), ("slurm_conf", slurm_conf)):
            if path and (not os.path.isabs(path) or any(ord(c) < 32 for c in path) or len(path) > 4096):
                raise ValueError(f"slurm executor: option {option} must be an absolute path, got {path[:200]!r}")
        if bin_dir and not os.path.isdir(bin_dir):
            raise ValueError(f"slurm executor: option bin_dir {bin_dir!r} is not a directory")
        self.cli = SlurmCli(str(bin_dir), str(slurm_conf), command_timeout)
        self.run_as = parse_run_as(run_as or {})
        self.allow_root_jobs = bool(allow_root_jobs)
        self.as_root = os.geteuid() == 0
        if self.run_as and not self.as_root:
            raise ValueError(
                "slurm executor: option run_as needs the agent to run as root (sbatch --uid is root's); "
                "an unprivileged agent's jobs run as its own user"
            )
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._monitor: threading.Thread | None = None
        self._config: dict[str, str] | None = None
        self._config_error = ""
        self._config_read_at = 0.0

    # --- describing -------------------------------------------------------------------

    def _cluster_config(self, refresh: bool = False) -> dict[str, str] | None:
        """The cluster's configuration, read once (again when ``refresh`` and a minute old,
        or every 30 s while it cannot be read)."""
        now = time.monotonic()
        stale = self._config is None and now - self._config_read_at > 30
        if self._config_read_at == 0 or stale or (refresh and now - self._config_read_at > 60):
            self._config_read_at = now
            try:
                self._config = self.cli.config()
                self._config_error = ""
            except SlurmError as exc:
                self._config_error = str(exc)
        return self._config

    def capabilities(self) -> ExecutorCapabilities:
        config = self._cluster_config()
        enforced = ["timeout", "clean environment"]
        unenforced = {
            "pids": "Slurm has no limit on a job's process count",
            "herd caps": "a herd's node caps are not applied: Slurm's accounts and QOS limit groups of jobs",
            "network": "jobs share their node's network: no network namespace",
            "filesystem": "jobs see their node's file systems: no mount namespace",
        }
        shared = self._shared_users()
        if self.as_root and self.allow_root_jobs and ANY_HERD not in self.run_as:
            unenforced["tasks apart"] = (
                "allow_root_jobs: the jobs of herds run_as does not name run as root, and a root job can "
                "leave its cgroup (its limits), read other jobs' folders (their secrets) and cancel them"
            )
        elif shared:
            unenforced["tasks apart"] = (
                f"run_as gives {shared} to more than one herd: their jobs can read each other's folders "
                "(their secrets) and signal each other; map each herd to a user of its own"
            )
        else:  # (each herd's jobs as its own unprivileged user, or as this unprivileged agent's)
            enforced.append("tasks apart")
        if config is None:
            why = f"Slurm's configuration could not be read: {self._config_error}"
            unenforced.update({"cpu": why, "memory": why, "gpu": why})
        else:
            proctrack = config.get("ProctrackType", "")
            if proctrack == "proctrack/cgroup":
                enforced.append("job kill")
            else:
                unenforced["job kill"] = (
                    f"{proctrack or '?'}: a process that leaves the job's process group or tree (setsid, "
                    "a daemon) can outlive the job; proctrack/cgroup kills every process of a job"
                )
            for limit, reason in _cluster_limits(config).items():
                if reason:
                    unenforced[limit] = reason
                else:
                    enforced.append(limit)
        return ExecutorCapabilities(
            isolation="slurm",
            enforced=tuple(enforced),
            unenforced=unenforced,
            supports_recover=True,
            supports_network_isolation=False,
        )

    def _shared_users(self) -> str:
        """The run_as users more than one herd's jobs run as ('*' covers any number of herds),
        named; "" when each herd has a user of its own."""
        counts: dict[int, int] = {}
        for herd, user in self.run_as.items():
            counts[user.uid] = counts.get(user.uid, 0) + (2 if herd == ANY_HERD else 1)
        names = sorted({u.name for u in self.run_as.values() if counts[u.uid] > 1})
        return ", ".join(names)

    def fingerprint(self) -> Fingerprint:
        missing = [tool for tool in ("sbatch", "squeue", "scancel", "scontrol") if self.cli.path(tool) is None]
        if missing:
            where = f"in {self.cli.bin_dir}" if self.cli.bin_dir else "on PATH"
            return Fingerprint(False, f"Slurm commands not found {where}: {', '.join(missing)}")
        config = self._cluster_config(refresh=True)
        if config is None:
            return Fingerprint(False, f"Slurm's controller does not answer: {self._config_error}")
        attributes = {
            "slurm.version": config.get("SLURM_VERSION", ""),
            "slurm.cluster": config.get("ClusterName", ""),
            "slurm.task_plugin": config.get("TaskPlugin", ""),
            "slurm.proctrack": config.get("ProctrackType", ""),
        }
        if self.partition:
            attributes["slurm.partition"] = self.partition
        cluster = config.get("ClusterName", "?")
        return Fingerprint(
            True,
            f"Slurm {config.get('SLURM_VERSION', '?')}, cluster {cluster}",
            {k: v[:200] for k, v in attributes.items() if v},
        )

    # --- running ----------------------------------------------------------------------

    def start(self, spec: TaskSpec) -> TaskHandle:
        if not spec.command:
            raise TaskRejectedError(f"task {spec.id}: empty command")
        self._check_limits(spec)
        task_dir = Path(spec.task_dir).absolute()
        cwd = Path(spec.cwd).absolute() if spec.cwd else task_dir
        for what, path in (("task dir", task_dir), ("work dir", cwd)):
            if any(c in str(path) for c in "%\\") or any(ord(c) < 32 for c in str(path)):
                raise TaskRejectedError(f"task {spec.id}: its {what} {str(path)[:200]!r} has a character Slurm reads")
        user = self._job_user(spec, task_dir, cwd)
        launch = self._launch_text(spec, cwd)
        with self._lock:
            if spec.id in self._tasks:
                raise TaskRejectedError(f"task {spec.id}: a task with this id exists already")
            placeholder = TaskHandle(spec.id, self.name, str(task_dir), time.time())
            # the id is taken while sbatch runs (a task without a job id is not found by the calls)
            self._tasks[spec.id] = _Task(
                handle=placeholder, job_id="", task_dir=task_dir, timeout=None, state_dir=task_dir / STATE_DIR
            )
        try:
            job_id = self._submit(spec, task_dir, cwd, launch, user)
        except BaseException:
            with self._lock:
                self._tasks.pop(spec.id, None)
            _remove_secrets(task_dir)
            raise
        submitted = time.time()
        timeout = spec.timeout if spec.timeout and spec.timeout > 0 else None
        task = _Task(
            handle=TaskHandle(spec.id, self.name, str(task_dir), submitted),
            job_id=job_id,
            task_dir=task_dir,
            timeout=timeout,
            state_dir=task_dir / STATE_DIR,
        )
        with self._lock:
            self._tasks[spec.id] = task
        self._ensure_monitor()
        self._await_start(task)
        started = task.started_at
        handle = TaskHandle(
            task_id=spec.id,
            driver=self.name,
            task_dir=str(task_dir),
            started_at=started or submitted,
            deadline=(started + timeout) if started and timeout else None,
            driver_state={"job_id": job_id, "timeout": timeout, "state": STATE_DIR},
        )
        task.handle = handle
        with contextlib.suppress(OSError):
            _write_private(task_dir / "handle.json", json.dumps(handle.to_dict()))
        return handle

    def _job_user(self, spec: TaskSpec, task_dir: Path, cwd: Path) -> JobUser | None:
        """The user the task's job runs as (None: this agent's own), or TaskRejectedError: an
        agent run as root submits a herd's jobs as its ``run_as`` user, or as root only when
        ``allow_root_jobs`` says so. That user is given the task dir's parts the job writes
        (nothing else: a writable path outside it is refused) and must reach them."""
        if not self.as_root:
            return None
        user = self.run_as.get(spec.herd) or self.run_as.get(ANY_HERD)
        if user is None:
            if self.allow_root_jobs:
                return None
            raise TaskRejectedError(
                f"task {spec.id}: herd {spec.herd!r} has no Slurm user and this agent runs as root, so its job "
                "would run as root and could reach every other job; map the herd to an unprivileged user "
                f'(executor.options.run_as = {{ "{spec.herd}" = "USER" }}) or set allow_root_jobs = true'
            )
        for path in spec.writable:
            if Path(path) != task_dir and task_dir not in Path(path).parents:
                raise TaskRejectedError(
                    f"task {spec.id}: writable path {str(path)[:200]!r} is outside its task dir, and the slurm "
                    f"executor gives its job's user ({user.name}) only that (a pipeline's outputs need "
                    "allow_root_jobs, or an agent run as that user)"
                )
        task_dir.mkdir(parents=True, exist_ok=True)  # (folders it would make: as the umask says)
        for what, path in (("task dir", task_dir), ("work dir", cwd)):
            blocked = unreachable(path, user, passable=task_dir)  # (the task dir: made 0711 below)
            if blocked is not None:
                raise TaskRejectedError(
                    f"task {spec.id}: its job's user {user.name} cannot reach its {what} {str(path)[:200]!r}: "
                    f"{blocked} is not searchable by it (chmod o+x, or a work dir elsewhere)"
                )
        return user

    def _check_limits(self, spec: TaskSpec) -> None:
        caps = self.capabilities()
        asked = {"cpu": spec.limits.cpu, "memory": spec.limits.memory, "gpu": spec.limits.gpu, "pids": spec.limits.pids}
        for limit, value in asked.items():
            if value and (not math.isfinite(value) or value < 0):  # (inf and nan: an error of this driver's)
                raise TaskRejectedError(f"task {spec.id}: {limit} limit {value!r} is not a finite number >= 0")
        if spec.timeout is not None and not 0 < spec.timeout <= MAX_TIMEOUT:
            raise TaskRejectedError(f"task {spec.id}: timeout {spec.timeout!r} is not above 0 and at most a year")
        unenforceable = sorted(limit for limit, value in asked.items() if value and limit in caps.unenforced)
        if unenforceable and not self.degrade:
            reasons = "; ".join(f"{limit}: {caps.unenforced[limit]}" for limit in unenforceable)
            raise TaskRejectedError(
                f"task {spec.id}: the slurm executor cannot enforce {', '.join(unenforceable)} limits here "
                f"({reasons}); set executor.options.degrade = true to run it anyway"
            )

    def _launch_text(self, spec: TaskSpec, cwd: Path) -> str:
        """The private file the job script sources: the task's environment and command."""
        env = dict(spec.env)
        if spec.limits.gpu:
            for name in GPU_VARIABLES:  # Slurm's assignment on the compute node wins
                env.pop(name, None)
        for name in env:
            if not _ENV_NAME.match(name):
                raise TaskRejectedError(
                    f"task {spec.id}: environment variable name {name[:80]!r} cannot be given through a POSIX shell "
                    "(letters, digits and _ only, not starting with a digit)"
                )
        lines = [f"cd {shlex.quote(str(cwd))} || exit 125", "unset PWD OLDPWD"]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
        lines.append("set -- " + " ".join(shlex.quote(str(word)) for word in spec.command))
        return "\n".join(lines) + "\n"

    def _submit(self, spec: TaskSpec, task_dir: Path, cwd: Path, launch: str, user: JobUser | None) -> str:
        task_dir.mkdir(parents=True, exist_ok=True)
        for name in ("launch", "job.sh", "handle.json"):
            (task_dir / name).unlink(missing_ok=True)
        owner = None if user is None else (user.uid, user.gid)
        state_dir = task_dir / STATE_DIR
        shutil.rmtree(state_dir, ignore_errors=True)  # (an earlier submission's; never follows a link)
        state_dir.mkdir(mode=0o700)
        if user is not None:
            _give_task_dir(task_dir, cwd, state_dir, user)
        if spec.files:
            files = _write_files(task_dir / "files", spec.files, spec.id, owner)
            launch = launch.replace("\nset -- ", f"\nexport RUNINK_FILES={shlex.quote(str(files))}\nset -- ", 1)
        _write_private(task_dir / "launch", launch, owner)
        keep_gpus = " ".join(f'${{{name}+"{name}=${name}"}}' for name in GPU_VARIABLES) if spec.limits.gpu else ""
        script = (
            "#!/bin/sh\n"
            f"# runink-slurm: task {_job_name(spec.id)}; its environment and command are in its task dir's "
            "launch file (mode 0600), never here\n"
            f"exec /usr/bin/env -i {keep_gpus + ' ' if keep_gpus else ''}/bin/sh -c {shlex.quote(RUNNER)} "
            f"runink-slurm {shlex.quote(str(task_dir))} {shlex.quote(str(state_dir))}\n"
        )
        _write_private(task_dir / "job.sh", script)
        args = [
            "--parsable",
            f"--job-name=runink-{_job_name(spec.id)}",
            f"--chdir={cwd}",
            f"--output={task_dir / 'stdout.log'}",
            f"--error={task_dir / 'stderr.log'}",
            "--open-mode=append",
            "--export=ALL",
            "--no-requeue",
            "--nodes=1",
            "--ntasks=1",
        ]
        if spec.limits.cpu:
            args.append(f"--cpus-per-task={max(1, math.ceil(spec.limits.cpu))}")
        if spec.limits.memory:
            args.append(f"--mem={max(1, math.ceil(spec.limits.memory / MiB))}M")
        if spec.timeout and spec.timeout > 0:
            args.append(f"--time={minutes_for(spec.timeout)}")
        if spec.limits.gpu:
            args.append(f"--gres=gpu:{int(spec.limits.gpu)}")
        if user is not None:  # (root's right: the job runs as the herd's user, not as root)
            args += [f"--uid={user.uid}", f"--gid={user.gid}"]
        if self.partition:
            args.append(f"--partition={self.partition}")
        if self.account:
            args.append(f"--account={self.account}")
        args += self.sbatch_args
        args.append(str(task_dir / "job.sh"))
        try:
            done = self.cli.run("sbatch", args)
        except SlurmError as exc:
            raise TaskRejectedError(f"task {spec.id}: not submitted to Slurm: {exc}") from exc
        if done.returncode != 0:
            raise TaskRejectedError(f"task {spec.id}: Slurm refused it: {done.last_error()}")
        first = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
        try:
            return valid_job_id(first.split(";", 1)[0])
        except SlurmError as exc:
            raise TaskRejectedError(f"task {spec.id}: sbatch answered no job id: {first[:100]!r}") from exc

    def _await_start(self, task: _Task) -> None:
        """Until the job script runs (its marker appears), the job ended, or ``start_timeout``
        passed. A job Slurm has shown RUNNING for NO_MARKER_AFTER seconds without a visible
        marker (a task dir the compute node does not share) counts as started then."""
        deadline = time.monotonic() + self.start_timeout
        next_poll = time.monotonic() + self.poll_interval
        running_since: float | None = None
        while not task.done.is_set():
            if self._note_start(task):
                return
            now = time.monotonic()
            if now >= deadline:
                why = "task %s: Slurm job %s still queued after %gs"
                log.info(why, task.handle.task_id, task.job_id, self.start_timeout)
                return
            if task.slurm is not None and task.slurm.state not in ("PENDING", "CONFIGURING", "REQUEUED"):
                running_since = running_since or now
                if now - running_since >= NO_MARKER_AFTER:
                    self._note_start(task, running=True)
                    return
            if now >= next_poll:  # the monitor polls now rather than in a whole interval
                next_poll = now + self.poll_interval
                self._wake.set()
            task.done.wait(0.02)

    def _note_start(self, task: _Task, running: bool = False, not_after: float | None = None) -> bool:
        """Record when the job started (its marker's time, at most ``not_after``; now if Slurm
        says it runs but the marker is not visible here) and arm its deadline; True once started."""
        with task.lock:
            if task.started_at is not None:
                return True
        try:
            started = min(time.time(), os.stat(task.state_dir / "started", follow_symlinks=False).st_mtime)
        except OSError:
            if not running:
                return False
            # (no marker, Slurm says it runs: since when, by Slurm's clock; a job that deleted
            # its marker gained NO_MARKER_AFTER, or its timeout again after an agent restart)
            started = min(time.time(), self._slurm_start(task.job_id) or time.time())
        self._arm(task, started if not_after is None else min(started, not_after))
        return True

    def _arm(self, task: _Task, started: float) -> None:
        """The job started at ``started``: its deadline counts from then."""
        with task.lock:
            if task.started_at is None:
                task.started_at = started
                if task.timeout is not None and not task.done.is_set():
                    delay = max(0.0, started + task.timeout - time.time())
                    task.timer = threading.Timer(delay, self._on_deadline, (task,))
                    task.timer.daemon = True
                    task.timer.start()

    def _slurm_start(self, job_id: str) -> float | None:
        """When Slurm says the job started (its StartTime, local time to the second, so the
        second after it), or None."""
        with contextlib.suppress(SlurmError):
            fields = self.cli.job_fields(job_id) or {}
            with contextlib.suppress(ValueError, OverflowError):
                return time.mktime(time.strptime(fields.get("StartTime", ""), "%Y-%m-%dT%H:%M:%S")) + 1.0
        return None

    def _on_deadline(self, task: _Task) -> None:
        if not task.done.is_set():
            task.deadline_hit = True
            self._terminate(task, self.timeout_grace)

    def recover(self, handle: TaskHandle) -> None:
        if handle.driver != self.name:
            raise TaskRejectedError(f"task {handle.task_id}: handle is for driver {handle.driver!r}, not {self.name!r}")
        state = handle.driver_state
        try:
            job_id = valid_job_id(state.get("job_id", ""))
            timeout = state.get("timeout")
            timeout = float(timeout) if timeout is not None else None
            deadline = float(handle.deadline) if handle.deadline is not None else None
            if deadline is not None and not math.isfinite(deadline):
                raise ValueError(f"deadline {deadline!r}")
        except (SlurmError, TypeError, ValueError) as exc:
            raise TaskRejectedError(f"task {handle.task_id}: not a slurm executor handle: {exc}") from exc
        task_dir = Path(handle.task_dir)
        task = _Task(
            handle=handle,
            job_id=job_id,
            task_dir=task_dir,
            timeout=timeout if timeout and timeout > 0 else None,
            # (a handle of a version before the state folder: its job writes the task dir itself)
            state_dir=task_dir / STATE_DIR if state.get("state") == STATE_DIR else task_dir,
        )
        with self._lock:
            if handle.task_id in self._tasks:
                return
            self._tasks[handle.task_id] = task
        # Its deadline counts from its start as the handle recorded it, never from the marker
        # as it is now: the job writes that folder and could touch it again to stretch its
        # timeout over the agent's restart (Slurm's own start time bounds a marker read now).
        if deadline is not None and task.timeout is not None:
            self._arm(task, deadline - task.timeout)
        else:
            self._note_start(task, not_after=self._slurm_start(job_id))
        self._ensure_monitor()
        self._poll([task])  # its state now, not one interval later

    # --- following jobs ---------------------------------------------------------------

    def _ensure_monitor(self) -> None:
        with self._lock:
            if self._monitor is None or not self._monitor.is_alive():
                self._monitor = threading.Thread(target=self._follow, name="runink-slurm-monitor", daemon=True)
                self._monitor.start()
        self._wake.set()

    def _follow(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                live = [task for task in self._tasks.values() if task.job_id and not task.done.is_set()]
            if live:
                try:
                    self._poll(live)
                except Exception:  # never let the one thread following every job die
                    log.exception("slurm executor: polling Slurm failed")
            hurry = any(task.hurry for task in live)
            self._wake.wait(min(self.poll_interval, 0.05) if hurry else (self.poll_interval if live else 5.0))
            self._wake.clear()

    def _poll(self, tasks: list[_Task]) -> None:
        try:
            rows = self.cli.jobs(task.job_id for task in tasks)
        except SlurmError as exc:  # the controller away a moment: nothing is concluded
            log.warning("slurm executor: squeue failed, jobs not followed this round: %s", exc)
            return
        for task in tasks:
            if task.done.is_set():
                continue
            row = rows.get(task.job_id)
            if row is None:
                task.missing += 1
                if task.missing >= 2:  # twice in a row: slurmctld forgot it (MinJobAge)
                    self._finish(task, None)
                continue
            task.missing = 0
            task.slurm = row
            if row.state in ("RUNNING", "COMPLETING") and task.started_at is None:
                task.running_polls += 1
                # its marker, or (a task dir the compute node does not share) Slurm's word
                self._note_start(task, running=task.running_polls * self.poll_interval >= NO_MARKER_AFTER)
            if row.state in FINAL_STATES:
                self._finish(task, row)

    def _finish(self, task: _Task, row: JobRow | None) -> None:
        code = _read_int(task.state_dir / "exit_status")
        cpu = _read_times(task.state_dir / "times")
        state_name = row.state if row else ""
        slurm_code: tuple[int | None, int | None] = (None, None)
        if row is None or code is None:
            fields = None
            with contextlib.suppress(SlurmError):
                fields = self.cli.job_fields(task.job_id)
            if fields is not None:
                state_name = state_name or fields.get("JobState", "")
                slurm_code = parse_exit_code(fields.get("ExitCode", ""))
            elif row is None:
                accounted = self.cli.accounted_state(task.job_id)
                if accounted is not None:
                    state_name, exit_text = accounted
                    slurm_code = parse_exit_code(exit_text)
        if task.started_at is None and os.path.lexists(task.state_dir / "started"):
            self._note_start(task)
        with task.lock:
            if task.done.is_set():
                return
            if task.timer is not None:
                task.timer.cancel()
            state, message, exit_code, signal = _final_state(task, state_name, code, slurm_code, row)
            started = task.started_at or task.handle.started_at
            task.result = TaskResult(
                task_id=task.handle.task_id,
                state=state,
                exit_code=exit_code,
                signal=signal,
                message=message,
                started_at=started,
                finished_at=max(time.time(), started),
                cpu_seconds=cpu,
                peak_memory_bytes=None,
            )
            _remove_secrets(task.task_dir)  # its environment and files go with it
            task.done.set()

    # --- controlling ------------------------------------------------------------------

    def _get(self, task_id: str) -> _Task:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None or not task.job_id:
            raise TaskNotFoundError(f"no task {task_id!r} in the slurm executor")
        return task

    def handle(self, task_id: str) -> TaskHandle:
        return self._get(task_id).handle

    def wait(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        task = self._get(task_id)
        return task.result if task.done.wait(timeout) else None

    def inspect(self, task_id: str) -> TaskState:
        task = self._get(task_id)
        if task.result is not None:
            return task.result.state
        return TaskState.RUNNING if task.started_at is not None else TaskState.PENDING

    def stop(self, task_id: str, grace: float = 10.0) -> None:
        task = self._get(task_id)
        if task.done.is_set():
            return
        task.cancelled = True
        self._terminate(task, grace)

    def _terminate(self, task: _Task, grace: float) -> None:
        """TERM every process of the job, KILL them after ``grace``, cancel the job; returns
        once Slurm says it has ended (bounded)."""
        task.hurry = True
        self._wake.set()
        if task.started_at is None:  # still queued: cancelled at once (unless it just started)
            self._scancel(task)
            if task.done.wait(2.0):
                return
        self._scancel(task, "--full", "--signal=TERM")
        if task.done.wait(max(0.0, grace)):
            return
        self._scancel(task, "--batch", "--signal=USR2")  # the job script SIGKILLs its processes
        if task.done.wait(10.0):
            return
        self._scancel(task)  # Slurm's own cancel: TERM, KillWait, KILL
        if not task.done.wait(120):
            log.warning("task %s: Slurm job %s not ended 120 s after scancel", task.handle.task_id, task.job_id)

    def _scancel(self, task: _Task, *args: str) -> None:
        try:
            done = self.cli.run("scancel", [*args, task.job_id])
        except SlurmError as exc:
            log.warning("task %s: scancel %s failed: %s", task.handle.task_id, task.job_id, exc)
            return
        if done.returncode != 0 and "already completing or completed" not in done.stderr:
            log.info("task %s: scancel %s: %s", task.handle.task_id, task.job_id, done.last_error())

    def destroy(self, task_id: str) -> None:
        task = self._get(task_id)
        if not task.done.is_set():
            self.stop(task_id, grace=0)
        with self._lock:
            self._tasks.pop(task_id, None)
        _remove_secrets(task.task_dir)

    def stats(self, task_id: str) -> TaskStats:
        task = self._get(task_id)
        if task.done.is_set() or task.started_at is None:
            return TaskStats(task_id, 0.0, 0, 0)
        pids = self.cli.local_pids(task.job_id)
        if pids:
            return _proc_stats(task_id, pids)
        usage = self.cli.step_usage(task.job_id)
        if usage is None:
            return TaskStats(task_id, 0.0, 0, 1)
        cpu, memory, processes = usage
        return TaskStats(task_id, cpu, memory, processes)

    def read_log(self, task_id: str, stream: str = "stdout") -> str:
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"no log stream {stream!r}: stdout or stderr")
        path = Path(self.handle(task_id).task_dir) / f"{stream}.log"
        # the job writes that folder: no link followed (one to /etc/shadow was read as root),
        # no blocking read (a FIFO), a regular file only
        with output_file(path, f"task {task_id}") as opened:
            if opened is None:
                return ""
            fd, size = opened
            skipped = max(0, size - MAX_LOG)
            data = os.pread(fd, MAX_LOG, skipped).decode(errors="replace")
        return (f"[runink-slurm: {skipped} earlier bytes not shown]\n" if skipped else "") + data

    def close(self) -> None:
        """Stop following the jobs; they run on (a new instance ``recover``s them), and no
        deadline of this instance stops one any more."""
        self._closed.set()
        self._wake.set()
        with self._lock:
            tasks = list(self._tasks.values())
        for task in tasks:
            with task.lock:
                if task.timer is not None:
                    task.timer.cancel()


# --- helpers ----------------------------------------------------------------------------


def _cluster_limits(config: Mapping[str, str]) -> dict[str, str]:
    """limit -> "" if this cluster enforces it, else the reason it does not."""
    task_plugin = config.get("TaskPlugin", "")
    cgroup = "task/cgroup" in task_plugin

    def yes(key: str) -> bool:
        return config.get(key, "").strip().lower() == "yes"

    limits = {}
    if cgroup and yes("ConstrainRAMSpace"):
        limits["memory"] = ""
    else:
        limits["memory"] = (
            f"Slurm does not confine memory here (TaskPlugin={task_plugin or '?'}; "
            "needs task/cgroup with ConstrainRAMSpace=yes)"
        )
    if (cgroup and yes("ConstrainCores")) or "task/affinity" in task_plugin:
        limits["cpu"] = ""
    else:
        limits["cpu"] = (
            f"Slurm does not bind jobs to their cpus here (TaskPlugin={task_plugin or '?'}; "
            "needs task/cgroup with ConstrainCores=yes, or task/affinity)"
        )
    if "gpu" in config.get("GresTypes", "") and cgroup and yes("ConstrainDevices"):
        limits["gpu"] = ""
    else:
        limits["gpu"] = "Slurm does not confine GPUs here (needs GresTypes=gpu, task/cgroup and ConstrainDevices=yes)"
    return limits


def _final_state(
    task: _Task, slurm_state: str, code: int | None, slurm_code: tuple[int | None, int | None], row: JobRow | None
) -> tuple[TaskState, str, int | None, int | None]:
    """(state, message, exit code, signal): stopped, timed out, Slurm's verdict, the exit code."""
    if code is None:
        code = slurm_code[0] if slurm_code[1] in (None, 0) else None
    signal = (slurm_code[1] or None) if code is None else None
    where = f"Slurm job {task.job_id}"
    if task.cancelled:
        return TaskState.CANCELLED, "stopped", code, signal
    if task.deadline_hit:
        return TaskState.DEADLINE_EXCEEDED, f"timed out after {task.timeout:g}s", code, signal
    if slurm_state == "OUT_OF_MEMORY":
        message = f"killed for memory: {where} went over its memory limit (OUT_OF_MEMORY)"
        return TaskState.OOMKILLED, message, code, signal
    if slurm_state in ("TIMEOUT", "DEADLINE"):
        return TaskState.DEADLINE_EXCEEDED, f"{where} reached its Slurm time limit ({slurm_state})", code, signal
    if slurm_state == "CANCELLED":
        return TaskState.FAILED, f"{where} was cancelled in Slurm, not by Runink (scancel or an operator)", code, signal
    if slurm_state in ("NODE_FAIL", "BOOT_FAIL", "PREEMPTED", "REVOKED"):
        reason = f" ({row.reason})" if row and row.reason not in ("", "None") else ""
        return TaskState.FAILED, f"{where} ended {slurm_state}{reason}", code, signal
    if code == 0 and slurm_state in ("COMPLETED", ""):
        return TaskState.SUCCEEDED, "", 0, None
    if code is not None and code != 0:
        return TaskState.FAILED, f"exit code {code}", code, None
    if signal:
        return TaskState.FAILED, f"{where} killed by signal {signal}", None, signal
    if not slurm_state:
        return TaskState.FAILED, f"{where} is no longer known to Slurm and recorded no exit status", None, None
    return TaskState.FAILED, f"{where} ended {slurm_state} without running the task (see its stderr.log)", code, None


def _job_name(task_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task_id)[:100] or "task"


def _write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """A new file only its owner (``owner``: uid, gid; else this process's) can read (an
    earlier one, or a link there, is replaced)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        if owner is not None:
            os.fchown(fh.fileno(), *owner)
        fh.write(text)


def _write_files(folder: Path, files: Mapping[str, str], task_id: str, owner: tuple[int, int] | None = None) -> Path:
    for name in files:
        if not name or "/" in name or name in (".", "..") or any(ord(c) < 32 for c in name):
            raise TaskRejectedError(f"task {task_id}: invalid file name {name[:80]!r}")
    shutil.rmtree(folder, ignore_errors=True)  # (an earlier submission's, perhaps its user's: made anew)
    folder.mkdir(mode=0o700)
    if owner is not None:
        os.chown(folder, *owner, follow_symlinks=False)
    for name, content in files.items():
        _write_private(folder / name, content, owner)
    return folder


def _give_task_dir(task_dir: Path, cwd: Path, state_dir: Path, user: JobUser) -> None:
    """Set the task dir up for a job run as ``user``: the task dir stays this agent's (0711:
    passed through, not listed or written), so the job cannot swap what the agent reads there
    for a link; the job's user gets the folder its script writes, its output files (opened by
    slurmd as that user) and its work dir when it is the task dir's own."""
    fd = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise TaskRejectedError(f"task dir {str(task_dir)[:200]!r} is not this agent's")
        os.fchmod(fd, 0o711)
    finally:
        os.close(fd)
    os.chown(state_dir, user.uid, user.gid, follow_symlinks=False)
    for stream in ("stdout.log", "stderr.log"):
        out = os.open(task_dir / stream, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchown(out, user.uid, user.gid)
        finally:
            os.close(out)
    if cwd.parent == task_dir and cwd.exists():  # (a work dir elsewhere is the caller's to give)
        work = os.open(cwd, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if os.fstat(work).st_uid == os.geteuid():
                os.fchown(work, user.uid, user.gid)
                os.fchmod(work, 0o700)  # (the task dir is passed through by all: the work dir is not)
        finally:
            os.close(work)


def _remove_secrets(task_dir: Path) -> None:
    (task_dir / "launch").unlink(missing_ok=True)
    shutil.rmtree(task_dir / "files", ignore_errors=True)


def _read_small(path: Path, limit: int) -> bytes | None:
    """The first ``limit`` bytes of a file the job wrote, read as the job cannot abuse: no link
    followed, no blocking open or read (a FIFO put in its place held the monitor thread, so
    every task of the agent, for good), a regular file only; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_int(path: Path) -> int | None:
    data = _read_small(path, 32)
    text = "" if data is None else data.decode(errors="replace").strip()
    return int(text) if re.fullmatch(r"\d{1,3}", text) else None


def _read_times(path: Path) -> float | None:
    """The children's user + system cpu from the shell's ``times`` (its second line)."""
    data = _read_small(path, 512)
    if data is None:
        return None
    lines = data.decode(errors="replace").splitlines()
    if len(lines) < 2:
        return None
    found = re.findall(r"(\d{1,7})m(\d{1,7}(?:\.\d{1,9})?)s", lines[1])
    if len(found) != 2:
        return None
    return sum(int(minutes) * 60 + float(seconds) for minutes, seconds in found)


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _proc_stats(task_id: str, pids: list[int]) -> TaskStats:
    cpu_ticks = rss_pages = count = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                data = fh.read(4096).decode(errors="replace")
        except OSError:
            continue
        fields = data[data.rfind(")") + 2 :].split()
        if len(fields) < 22:
            continue
        cpu_ticks += int(fields[11]) + int(fields[12])
        rss_pages += int(fields[21])
        count += 1
    return TaskStats(task_id, cpu_ticks / _CLK_TCK, rss_pages * _PAGE_SIZE, count)
