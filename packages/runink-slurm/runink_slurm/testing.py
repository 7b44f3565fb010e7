"""A throwaway Slurm cluster on this machine, for tests and benches: a munged, one slurmctld
and one slurmd of its own, with their configuration, key, state and logs in one folder.

    with LocalSlurm(folder) as slurm:        # needs root and Debian's slurm-wlm and munge
        subprocess.run(["srun", "true"], env={**os.environ, **slurm.env})

* munge: a key generated into the folder, munged in the foreground on a socket of its own
  (``AuthInfo=socket=...`` tells every Slurm program where it is).
* Slurm: loopback, two free high ports, ``select/cons_tres`` with ``CR_Core_Memory``
  (``DefMemPerCPU`` 256 MiB, so a job without ``--mem`` does not take the node's memory),
  ``jobacct_gather/linux`` (its ``jobacct_gather/cgroup`` reported no cpu here),
  ``batch_sched_delay=0`` (sbatch's jobs start on the scheduler's next second, not up to 3 s
  later), no accounting database (sacct has nothing), a random ``FirstJobId`` (two local
  clusters on one machine share cgroup names, ``slurm_<host>/uid_N/job_ID``).
* cgroups (``cgroups="auto"``): where the cgroup v1 controllers are mounted at
  ``/sys/fs/cgroup/<controller>`` and writable (Debian 12 hosts and containers with a
  hybrid layout), ``proctrack/cgroup`` + ``task/cgroup`` with ``ConstrainCores`` and
  ``ConstrainRAMSpace``: Slurm then enforces memory (OUT_OF_MEMORY) and cpus. Elsewhere
  (cgroup v2 only: Slurm 22.05's cgroup/v2 wants slurmd under systemd), ``proctrack/pgid``
  + ``task/none``: nothing confined, and ``enforces_memory`` is False.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from runink.core.ports import free_ports

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")
CGROUP_V1_CONTROLLERS = ("memory", "cpuset", "freezer", "cpuacct")

SLURM_CONF = """# written by runink_slurm.testing.LocalSlurm
ClusterName=runinktest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={spool}
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType={proctrack}
TaskPlugin={task_plugin}
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=300
FirstJobId={first_job_id}
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=runink Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

CGROUP_CONF = """CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
CgroupAutomount=no
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainDevices=no
"""


def missing() -> str | None:
    """Why a LocalSlurm cannot start here (None: it can)."""
    absent = [name for name in PROGRAMS if shutil.which(name) is None]
    if absent:
        return f"Slurm and munge are not installed (apt-get install slurm-wlm munge): no {', '.join(absent)}"
    if os.geteuid() != 0:
        return "a local Slurm needs root (slurmd runs jobs as their users)"
    return None


def cgroup_v1_usable() -> bool:
    """The v1 controllers Slurm's cgroup plugins use are mounted where it looks, and writable."""
    mounts = Path("/proc/mounts").read_text().splitlines()
    for controller in CGROUP_V1_CONTROLLERS:
        folder = f"/sys/fs/cgroup/{controller}"
        if not any(line.split()[1:3] == [folder, "cgroup"] for line in mounts if len(line.split()) > 2):
            return False
        probe = Path(folder) / f"runink-slurm-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError:
            return False
    return True


class LocalSlurm:
    """A munged, slurmctld and slurmd in ``root`` (created), started by ``start`` or ``with``."""

    def __init__(self, root: Path, cgroups: str = "auto") -> None:
        if cgroups not in ("auto", "v1", "none"):
            raise ValueError(f"cgroups must be auto, v1 or none, got {cgroups!r}")
        self.root = Path(root).absolute()
        self.host = platform.node().split(".")[0]
        self.cgroups = ("v1" if cgroup_v1_usable() else "none") if cgroups == "auto" else cgroups
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.env = {"SLURM_CONF": str(self.conf)}
        self._processes: list[subprocess.Popen[bytes]] = []
        self._names: dict[int, str] = {}
        # slurmd's spool, where a job's script is exec'd as the job's user: in a folder of its
        # own that every user can pass through, as /var/spool/slurmd is (``root`` may be
        # anywhere: a test's private temp folder)
        self.spool: Path | None = None

    @property
    def enforces_memory(self) -> bool:
        return self.cgroups == "v1"

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def start(self, within: float = 60.0) -> LocalSlurm:
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        for folder in ("state", "munge", "munge-key"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.spool = Path(tempfile.mkdtemp(prefix="runink-slurmd-spool-"))
        os.chmod(self.spool, 0o755)
        os.chmod(self.root / "munge", 0o755)  # the socket's folder: every job's user reaches it
        os.chmod(self.root / "munge-key", 0o700)
        key = self.root / "munge-key" / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(1024))
        ctld_port, d_port = free_ports(2)
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        values = {
            "host": self.host,
            "ctld_port": ctld_port,
            "d_port": d_port,
            "munge_socket": self.munge_socket,
            "root": self.root,
            "spool": self.spool,
            # without cgroups, pgid: the job's process group is killed as it ends (linuxproc
            # follows the process tree, which a task's orphaned children leave)
            "proctrack": "proctrack/cgroup" if self.cgroups == "v1" else "proctrack/pgid",
            "task_plugin": "task/cgroup" if self.cgroups == "v1" else "task/none",
            "cpus": os.cpu_count() or 1,
            "memory": max(512, min(8192, memory_mb // 2)),
            # two local clusters on one machine share cgroup names (slurm_<host>/uid_N/job_ID):
            # job ids of their own keep them apart
            "first_job_id": random.randrange(1000, 60_000_000, 1000),
        }
        self.conf.write_text(SLURM_CONF.format(**values))
        if self.cgroups == "v1":
            (self.root / "cgroup.conf").write_text(CGROUP_CONF)
        env = {**os.environ, **self.env}
        deadline = time.monotonic() + within
        try:
            self._spawn(
                "munged",
                [
                    "munged",
                    "--foreground",
                    "--force",
                    f"--key-file={key}",
                    f"--socket={self.munge_socket}",
                    f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                    f"--log-file={self.root / 'munged.log'}",
                    f"--seed-file={self.root / 'munge-key' / 'munged.seed'}",
                ],
                env,
            )
            self._until(self.munge_socket.exists, deadline, "munged made no socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)], env)
            self._until(lambda: self._ask(["scontrol", "ping"], "is UP"), deadline, "slurmctld did not answer")
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)], env)
            self._until(lambda: self._ask(["sinfo", "-h", "-o", "%T"], "idle"), deadline, "the node is not idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.root / f"{name}.out", "ab") as out:
            process = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._processes.append(process)
        self._names[process.pid] = name

    def _ask(self, argv: list[str], wanted: str) -> bool:
        try:
            done = subprocess.run(argv, env=self.client_env(), capture_output=True, text=True, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            return False
        return wanted in done.stdout

    def _until(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while not ready():
            for process in self._processes:
                if process.poll() is not None:
                    name = self._names.get(process.pid, "a daemon")
                    raise RuntimeError(f"{name} exited ({process.returncode}): {self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} in time: {self.logs()}")
            time.sleep(0.1)

    def logs(self, lines: int = 15) -> str:
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            path = self.root / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)

    def cancel_all(self, within: float = 30.0) -> None:
        """Cancel every job of the cluster (kill their processes) and wait until none runs."""
        env = self.client_env()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            user = f"--user={os.geteuid()}"
            for args in (["--full", "--signal=KILL", user], [user]):
                subprocess.run(["scancel", *args], env=env, timeout=15, capture_output=True, check=False)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                squeue = ["squeue", "-h", "-o", "%i"]
                done = subprocess.run(squeue, env=env, capture_output=True, text=True, timeout=10, check=False)
                if done.returncode == 0 and not done.stdout.strip():
                    return
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop slurmd, slurmctld and munged (in that order); jobs still running are killed."""
        if not self._processes:
            return
        with contextlib.suppress(Exception):
            if all(p.poll() is None for p in self._processes):
                self.cancel_all(within=15)
        for process in reversed(self._processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
        self._processes.clear()
        if self.spool is not None:
            shutil.rmtree(self.spool, ignore_errors=True)
            self.spool = None
