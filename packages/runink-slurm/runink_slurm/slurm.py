"""Slurm's command-line tools, called as untrusted programs: every call is time-limited, its
output bounded, and what it prints parsed field by field.

The tools run with a scrubbed environment (``PATH``, ``HOME``, ``LANG=C`` and ``SLURM_CONF``):
nothing of the agent's environment (its secrets, ``SBATCH_*`` or ``SLURM_*`` variables that
would change what sbatch does) reaches them.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: what one call may print before the rest is dropped (squeue of a few hundred jobs is ~20 KiB)
MAX_OUTPUT = 1024 * 1024
#: job ids per squeue call
SQUEUE_BATCH = 200

#: Slurm's job states after which the job's processes are gone (squeue shows COMPLETING until then)
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
_JOB_ID = re.compile(r"^[0-9]{1,12}$")
_STATE = re.compile(r"^[A-Z_]{1,32}$")
_CONFIG_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9_]{0,63})\s*=\s?(.*)$")


class SlurmError(Exception):
    """A Slurm command could not be run, timed out, or failed."""


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def last_error(self) -> str:
        """The last non-empty line of stderr (what Slurm's tools say of a failure), bounded."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return (lines[-1] if lines else f"exit status {self.returncode}")[:500]


@dataclass(frozen=True)
class JobRow:
    """One job as squeue shows it."""

    job_id: str
    state: str
    reason: str


def valid_job_id(value: object) -> str:
    text = str(value).strip()
    if not _JOB_ID.match(text):
        raise SlurmError(f"not a Slurm job id: {text[:40]!r}")
    return text


class SlurmCli:
    """Runs ``sbatch``, ``squeue``, ``scontrol``, ``scancel`` and ``sstat``."""

    def __init__(self, bin_dir: str = "", slurm_conf: str = "", timeout: float = 30.0) -> None:
        self.bin_dir = bin_dir
        self.slurm_conf = slurm_conf
        self.timeout = timeout

    def path(self, tool: str) -> str | None:
        if self.bin_dir:
            candidate = Path(self.bin_dir) / tool
            return str(candidate) if os.access(candidate, os.X_OK) and candidate.is_file() else None
        return shutil.which(tool)

    def env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C", "LC_ALL": "C"}
        for name in ("HOME", "USER", "LOGNAME", "TZ"):
            if name in os.environ:
                env[name] = os.environ[name]
        conf = self.slurm_conf or os.environ.get("SLURM_CONF", "")
        if conf:
            env["SLURM_CONF"] = conf
        return env

    def run(self, tool: str, args: Sequence[str], timeout: float | None = None) -> Completed:
        """Run a Slurm tool; SlurmError if it cannot be started or does not end in time."""
        program = self.path(tool)
        if program is None:
            where = f"in {self.bin_dir}" if self.bin_dir else "on PATH"
            raise SlurmError(f"{tool} not found {where}")
        return run_bounded([program, *args], self.env(), timeout or self.timeout)

    # --- queries ------------------------------------------------------------------------

    def config(self) -> dict[str, str]:
        """``scontrol show config`` as key -> value (cgroup.conf's keys included)."""
        done = self.run("scontrol", ["show", "config"])
        if done.returncode != 0:
            raise SlurmError(f"scontrol show config: {done.last_error()}")
        return parse_config(done.stdout)

    def jobs(self, job_ids: Iterable[str]) -> dict[str, JobRow]:
        """The jobs slurmctld still knows among ``job_ids``, finished ones included (for
        MinJobAge after they end). A job it forgot is absent. SlurmError if squeue failed."""
        ids = [valid_job_id(job_id) for job_id in job_ids]
        found: dict[str, JobRow] = {}
        for at in range(0, len(ids), SQUEUE_BATCH):
            chunk = ids[at : at + SQUEUE_BATCH]
            done = self.run("squeue", ["--noheader", "--states=all", f"--jobs={','.join(chunk)}", "--format=%i|%T|%r"])
            if done.returncode != 0:
                # one unknown id alone is an error; several unknown ones are an empty answer
                if "Invalid job id" in done.stderr and len(chunk) == 1:
                    continue
                raise SlurmError(f"squeue: {done.last_error()}")
            for row in parse_squeue(done.stdout):
                if row.job_id in chunk:
                    found[row.job_id] = row
        return found

    def job_fields(self, job_id: str) -> dict[str, str] | None:
        """``scontrol show job -o JOB`` as key -> value; None if slurmctld no longer knows it."""
        done = self.run("scontrol", ["show", "job", "--oneliner", valid_job_id(job_id)])
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                return None
            raise SlurmError(f"scontrol show job: {done.last_error()}")
        return parse_oneliner(done.stdout)

    def accounted_state(self, job_id: str) -> tuple[str, str] | None:
        """(state, ExitCode) from accounting (sacct), if this cluster keeps it; else None."""
        try:
            jobs = f"--jobs={valid_job_id(job_id)}"
            done = self.run("sacct", ["--noheader", "--parsable2", "--allocations", jobs, "--format=State,ExitCode"])
        except SlurmError:
            return None
        if done.returncode != 0:
            return None
        for line in done.stdout.splitlines()[:5]:
            parts = line.split("|")
            if len(parts) == 2:
                state = parts[0].split(" ", 1)[0].strip()  # "CANCELLED by 0"
                if _STATE.match(state):
                    return state, parts[1].strip()[:20]
        return None

    def local_pids(self, job_id: str) -> list[int] | None:
        """The pids of the job's processes, if it runs on this machine (``scontrol listpids``
        asks the local slurmd); None when it does not run here."""
        try:
            done = self.run("scontrol", ["listpids", valid_job_id(job_id)], timeout=min(self.timeout, 10.0))
        except SlurmError:
            return None
        if done.returncode != 0:
            return None
        pids = []
        for line in done.stdout.splitlines()[1:4097]:
            first = line.split(None, 1)[0] if line.strip() else ""
            if first.isdigit():
                pids.append(int(first))
        return pids

    def step_usage(self, job_id: str) -> tuple[float, int, int] | None:
        """(cpu seconds, memory bytes, processes) of the job's batch step from ``sstat``;
        Slurm gives cpu in whole seconds. None when sstat has nothing."""
        try:
            done = self.run(
                "sstat",
                ["--noheader", "--parsable2", f"--jobs={valid_job_id(job_id)}.batch", "--format=TRESUsageInTot,Pids"],
            )
        except SlurmError:
            return None
        if done.returncode != 0:
            return None
        for line in done.stdout.splitlines()[:4]:
            parts = line.split("|")
            if len(parts) < 2:
                continue
            tres = dict(item.split("=", 1) for item in parts[0].split(",") if "=" in item)
            pids = [pid for pid in parts[1].split(",") if pid.strip().isdigit()]
            return parse_duration(tres.get("cpu", "")), parse_size(tres.get("mem", "")), max(1, len(pids))
        return None


# --- running a tool -------------------------------------------------------------------------


def run_bounded(argv: Sequence[str], env: Mapping[str, str], timeout: float) -> Completed:
    """Run ``argv``; keep at most MAX_OUTPUT bytes of each stream (the rest is read and dropped,
    so the program never blocks); kill it (its process group) when ``timeout`` passes."""
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise SlurmError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    kept: dict[int, bytearray] = {out_fd: bytearray(), err_fd: bytearray()}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        open_streams = 2
        while open_streams:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill(proc)
                raise SlurmError(f"{Path(argv[0]).name} did not answer within {timeout:g}s")
            for key, _ in selector.select(min(left, 1.0)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                buffer = kept[key.fd]
                if len(buffer) < MAX_OUTPUT:
                    buffer += chunk[: MAX_OUTPUT - len(buffer)]
    try:
        returncode = proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise SlurmError(f"{Path(argv[0]).name} did not end within {timeout:g}s") from None
    finally:
        proc.stdout.close()
        proc.stderr.close()
    return Completed(returncode, kept[out_fd].decode(errors="replace"), kept[err_fd].decode(errors="replace"))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


# --- parsing --------------------------------------------------------------------------------


def parse_config(text: str) -> dict[str, str]:
    config: dict[str, str] = {}
    for line in text.splitlines()[:2000]:
        match = _CONFIG_LINE.match(line.strip())
        if match and match.group(1) not in config:
            config[match.group(1)] = match.group(2).strip()[:1000]
    return config


def parse_squeue(text: str) -> list[JobRow]:
    rows = []
    for line in text.splitlines()[: SQUEUE_BATCH * 4]:
        parts = line.strip().split("|", 2)
        if len(parts) != 3 or not _JOB_ID.match(parts[0]) or not _STATE.match(parts[1]):
            continue
        rows.append(JobRow(parts[0], parts[1], parts[2][:300]))
    return rows


def parse_oneliner(text: str) -> dict[str, str]:
    """``Key=Value Key=Value ...`` of ``scontrol show job -o`` (values may not hold spaces,
    except the last ones Slurm prints; those are not read here)."""
    fields: dict[str, str] = {}
    line = text.strip().splitlines()[0] if text.strip() else ""
    for item in line.split(" ")[:400]:
        key, sep, value = item.partition("=")
        if sep and re.match(r"^[A-Za-z][A-Za-z0-9_/:]{0,63}$", key) and key not in fields:
            fields[key] = value[:1000]
    return fields


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """Slurm's ``ExitCode=CODE:SIGNAL`` as (code, signal); (None, None) if malformed."""
    match = re.match(r"^(\d{1,3}):(\d{1,3})$", text.strip())
    if not match:
        return None, None
    return int(match.group(1)), int(match.group(2))


def parse_duration(text: str) -> float:
    """``[D-][HH:]MM:SS[.mmm]`` (sstat's cpu times) in seconds; 0.0 if malformed."""
    match = re.match(r"^(?:(\d{1,5})-)?(?:(\d{1,2}):)?(\d{1,2}):(\d{1,2}(?:\.\d{1,6})?)$", text.strip())
    if not match:
        return 0.0
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def parse_size(text: str) -> int:
    """``1616K`` / ``2.5M`` / ``12`` (sstat's sizes, K = 1024) in bytes; 0 if malformed."""
    match = re.match(r"^(\d{1,15}(?:\.\d{1,6})?)([KMGTP]?)$", text.strip())
    if not match:
        return 0
    scale = 1024 ** "_KMGTP".index(match.group(2) or "_")
    return int(float(match.group(1)) * scale)


def minutes_for(seconds: float) -> int:
    """A Slurm time limit in whole minutes, rounded up, at least one."""
    return max(1, math.ceil(seconds / 60))
