"""The ``slurm`` executor (packages/runink-slurm, a third-party package) against a real Slurm.

The package is pip-installed (offline, as tests/test_third_party_package.py does) into a
throwaway virtualenv; `runink plugins list` there shows its driver. That venv's site-packages
is then put on this process's path (and on PYTHONPATH for the subprocesses the conformance
suite starts), so the driver is loaded by name through its entry point, as an agent loads it.

The Slurm is Debian's slurm-wlm: a munged, slurmctld and slurmd started by the module's
fixture as root in a temp dir (``runink_slurm.testing.LocalSlurm``: loopback, free ports, its
own munge key and socket; task/cgroup on cgroup v1 where this machine has it, so Slurm
enforces memory). Skipped, saying why, without the packages or root.

The tests run as root, as agents do, so the driver is given ``run_as`` (every herd's jobs as
``nobody``) unless a test says otherwise, and their folders are made where that user can
pass (pytest's own temp folders are root's, 0700).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pwd
import shutil
import site
import subprocess
import sys
import tempfile
import time
import uuid
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runink.core.drivers import load_driver
from runink.core.errors import DriverLoadError, TaskRejectedError
from runink.core.interfaces import Executor, TaskHandle, TaskSpec, TaskState
from runink.core.model import Resources
from runink.testing import ExecutorConformance

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "packages" / "runink-slurm"
SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")
_absent = [name for name in SLURM_PROGRAMS if shutil.which(name) is None]

pytestmark = [
    pytest.mark.skipif(bool(_absent), reason=f"needs Debian's slurm-wlm and munge (missing: {', '.join(_absent)})"),
    pytest.mark.skipif(os.geteuid() != 0, reason="starts slurmctld and slurmd, which need root"),
]

BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
MiB = 1024 * 1024
JOB_USER = "nobody"
#: what an agent run as root is given: every herd's jobs as an unprivileged user
AS_USER = {"run_as": {"*": JOB_USER}}


def _load(**options: Any) -> Executor:
    return load_driver(Executor, "slurm", {**AS_USER, **options})


@pytest.fixture(scope="module")
def jobs_base() -> Iterator[Path]:
    """A folder the jobs' user may pass through (0711), for the tests' task and work dirs."""
    base = Path(tempfile.mkdtemp(prefix="runink-slurm-jobs-"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tmp_path(jobs_base: Path) -> Path:
    """(this module's: under ``jobs_base``, so a job run as JOB_USER reaches its task dir)"""
    path = Path(tempfile.mkdtemp(dir=jobs_base))
    path.chmod(0o711)
    return path


def _work_dir(path: Path) -> Path:
    """A work dir outside the task dir: the caller's to give the job's user."""
    path.mkdir(parents=True, exist_ok=True)
    user = pwd.getpwnam(JOB_USER)
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNINK_", "PYTHON"))}
    env.update(kwargs.pop("env", {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env, **kwargs)


def _purelib(python: Path) -> Path:
    return Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv seeing this environment's packages (runink), with runink-slurm pip-installed:
    offline, no build isolation, from a copy (the build writes nothing into the repository)."""
    root = tmp_path_factory.mktemp("slurm-venv")
    source = root / "src"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv.EnvBuilder(with_pip=False, system_site_packages=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    parents = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if Path(p).is_dir()]
    purelib = _purelib(python)
    (purelib / "_runink_parent_env.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parents) + "\n"
    )
    pip = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation"]
    install = _run([*pip, "--disable-pip-version-check", str(source)], cwd=root)
    assert install.returncode == 0, install.stdout + install.stderr
    return python


@pytest.fixture(scope="module")
def installed(venv_python: Path) -> Iterator[Path]:
    """The venv's site-packages (runink_slurm and its dist-info) on this process's path and on
    PYTHONPATH: the driver is found by its entry point here and in subprocesses."""
    purelib = _purelib(venv_python)
    saved = os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(purelib))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(purelib), saved]))
    importlib.invalidate_caches()
    try:
        yield purelib
    finally:
        sys.path.remove(str(purelib))
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
        for name in [name for name in sys.modules if name.split(".")[0] == "runink_slurm"]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def slurm(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running local Slurm; SLURM_CONF points every client (and the driver) at it."""
    from runink_slurm.testing import LocalSlurm

    # LOCAL_SLURM_CGROUPS=none runs the module against a Slurm that confines nothing (as where
    # there is no cgroup v1): the limits are then unenforced and refused
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), cgroups=os.environ.get("LOCAL_SLURM_CGROUPS", "auto"))
    cluster.start()
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        cluster.stop()


@pytest.fixture
def slurm_executor(slurm: Any) -> Iterator[Executor]:
    executor = _load(poll_interval=0.1)
    try:
        yield executor
    finally:
        executor.close()
        slurm.cancel_all()


def _spec(tmp_path: Path, *command: str, **overrides: Any) -> TaskSpec:
    work = _work_dir(tmp_path / "work")
    task_id = overrides.pop("id", f"t-{uuid.uuid4().hex[:10]}")
    values: dict[str, Any] = {
        "id": task_id,
        "command": command,
        "task_dir": tmp_path / "tasks" / task_id,
        "env": dict(BASE_ENV),
        "cwd": work,
    }
    values.update(overrides)
    return TaskSpec(**values)


def _job(executor: Executor, task_id: str) -> dict[str, str]:
    """``scontrol show job`` of the task's job, as key -> value."""
    job_id = executor.handle(task_id).driver_state["job_id"]
    out = _run(["scontrol", "show", "job", "--oneliner", str(job_id)]).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def _until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# --- the package ------------------------------------------------------------------------


def test_the_package_is_a_discovered_third_party_driver(venv_python: Path, tmp_path: Path) -> None:
    out = _run([str(venv_python), "-m", "runink", "plugins", "list", "--json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    row = rows["slurm"]
    assert (row["kind"], row["group"], row["status"]) == ("driver", "runink.executors", "loaded"), row
    assert (row["package"], row["version"], row["source"]) == ("runink-slurm", "0.1.0", "third-party"), row


def test_not_visible_outside_where_it_is_installed(tmp_path: Path) -> None:
    out = _run([sys.executable, "-m", "runink", "plugins", "list", "--json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "runink-slurm" not in out.stdout


# --- the Executor contract -------------------------------------------------------------


class TestSlurmConformance(ExecutorConformance):
    """The whole conformance suite. Memory is enforced here (task/cgroup), so the case for a
    refused unenforceable memory limit skips; the limits Slurm does not enforce (pids, gpu
    without gres, network, filesystem) are in ``capabilities().unenforced``."""

    driver_name = "slurm"
    driver_options = {"poll_interval": 0.1, **AS_USER}

    @pytest.fixture
    def work(self, tmp_path: Path) -> Path:
        return _work_dir(tmp_path / "work")

    @pytest.fixture
    def executor(self, slurm: Any) -> Iterator[Executor]:
        executor = load_driver(Executor, self.driver_name, self.driver_options)
        try:
            yield executor
        finally:
            executor.close()
            slurm.cancel_all()


# --- what it says it enforces ------------------------------------------------------------


def test_capabilities_follow_the_cluster(slurm: Any, slurm_executor: Executor) -> None:
    caps = slurm_executor.capabilities()
    assert caps.isolation == "slurm"
    assert {"pids", "network", "filesystem", "herd caps", "gpu"} <= set(caps.unenforced)
    assert "GresTypes" in caps.unenforced["gpu"]
    if slurm.enforces_memory:
        assert {"cpu", "memory", "timeout"} <= set(caps.enforced)
    else:
        assert {"cpu", "memory"} <= set(caps.unenforced)
    fingerprint = slurm_executor.fingerprint()
    assert fingerprint.healthy and fingerprint.attributes["slurm.cluster"] == "runinktest"
    doctor = {check.check: check for check in slurm_executor.diagnose()}
    assert doctor["slurm"].ok and "isolation slurm" in doctor["slurm"].detail
    assert not doctor["slurm: pids"].ok


def test_limits_become_the_jobs_request(slurm: Any, slurm_executor: Executor, tmp_path: Path) -> None:
    """cpu (rounded up), memory (MiB), timeout (minutes, rounded up) reach Slurm, which confines the job."""
    probe = "cat /proc/self/cgroup > cgroup.txt; sleep 30"
    spec = _spec(tmp_path, "sh", "-c", probe, limits=Resources(cpu=1.5, memory=100 * MiB), timeout=90)
    if not slurm.enforces_memory:  # refused as it is, asked of Slurm with degrade
        with pytest.raises(TaskRejectedError, match=r"cannot enforce cpu, memory limits"):
            slurm_executor.start(spec)
        slurm_executor = _load(poll_interval=0.1, degrade=True)
    slurm_executor.start(spec)
    job = _job(slurm_executor, spec.id)
    assert job["JobState"] == "RUNNING"
    assert job["JobName"] == f"runink-{spec.id}"
    assert job["CPUs/Task"] == "2" and job["MinMemoryNode"] == "100M" and job["TimeLimit"] == "00:02:00"
    assert job["StdOut"] == str(spec.task_dir / "stdout.log") and job["WorkDir"] == str(tmp_path / "work")
    if slurm.enforces_memory:
        _until((tmp_path / "work" / "cgroup.txt").exists, 10, "the job never wrote its cgroup")
        lines = (tmp_path / "work" / "cgroup.txt").read_text().splitlines()
        memory = next(line for line in lines if ":memory:" in line)
        job_cgroup = memory.split(":", 2)[2].split("/step_")[0]
        limit = Path("/sys/fs/cgroup/memory", job_cgroup.lstrip("/"), "memory.limit_in_bytes").read_text()
        assert int(limit) == 100 * MiB
    slurm_executor.stop(spec.id, grace=1)


# --- Slurm's final states -----------------------------------------------------------------


def test_over_its_memory_is_oomkilled(slurm: Any, slurm_executor: Executor, tmp_path: Path) -> None:
    if not slurm.enforces_memory:
        pytest.skip("this Slurm runs without task/cgroup (no cgroup v1 here): memory is not enforced")
    grow = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"
    spec = _spec(tmp_path, "sh", "-c", grow, limits=Resources(memory=64 * MiB))
    slurm_executor.start(spec)
    result = slurm_executor.wait(spec.id, 60)
    assert result is not None and result.state is TaskState.OOMKILLED, result
    assert "OUT_OF_MEMORY" in result.message
    assert _job(slurm_executor, spec.id)["JobState"] == "OUT_OF_MEMORY"
    assert "survived" not in slurm_executor.read_log(spec.id)


def test_past_its_timeout_is_deadline_exceeded_to_the_second(slurm_executor: Executor, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "sleep", "60", timeout=2)
    started = time.monotonic()
    slurm_executor.start(spec)
    assert _job(slurm_executor, spec.id)["TimeLimit"] == "00:01:00"  # Slurm's own limit: the backstop
    result = slurm_executor.wait(spec.id, 30)
    assert result is not None and result.state is TaskState.DEADLINE_EXCEEDED, result
    assert result.message == "timed out after 2s"
    assert 2 <= result.duration < 5 and time.monotonic() - started < 15


@pytest.mark.slow
def test_slurm_time_limit_is_deadline_exceeded(slurm_executor: Executor, tmp_path: Path) -> None:
    """Slurm's TIMEOUT (its limit in minutes, checked every 30 s): about 90 s."""
    spec = _spec(tmp_path, "sleep", "600")
    slurm_executor.start(spec)
    job_id = str(slurm_executor.handle(spec.id).driver_state["job_id"])
    assert _run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=1"]).returncode == 0
    result = slurm_executor.wait(spec.id, 150)
    assert result is not None and result.state is TaskState.DEADLINE_EXCEEDED, result
    assert "TIMEOUT" in result.message


def test_stopped_is_cancelled_in_slurm_too(slurm_executor: Executor, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "sleep", "60")
    slurm_executor.start(spec)
    slurm_executor.stop(spec.id, grace=5)
    result = slurm_executor.wait(spec.id, 1)
    assert result is not None and result.state is TaskState.CANCELLED and result.message == "stopped"
    assert _job(slurm_executor, spec.id)["JobState"] in ("CANCELLED", "FAILED")  # TERM: the job script exits 143


def test_cancelled_by_an_operator_is_a_failure(slurm_executor: Executor, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "sleep", "60")
    slurm_executor.start(spec)
    job_id = str(slurm_executor.handle(spec.id).driver_state["job_id"])
    assert _run(["scancel", job_id]).returncode == 0
    result = slurm_executor.wait(spec.id, 30)
    assert result is not None and result.state is TaskState.FAILED, result
    assert "cancelled in Slurm, not by Runink" in result.message


def test_exit_code_is_exact(slurm_executor: Executor, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "sh", "-c", "echo bye >&2; exit 3")
    slurm_executor.start(spec)
    result = slurm_executor.wait(spec.id, 30)
    assert result is not None
    assert (result.state, result.exit_code, result.message) == (TaskState.FAILED, 3, "exit code 3")
    job = _job(slurm_executor, spec.id)
    assert (job["JobState"], job["ExitCode"]) == ("FAILED", "3:0")
    assert "bye" in slurm_executor.read_log(spec.id, "stderr")


# --- the environment, logs, recovery -------------------------------------------------------


def test_env_is_exact_and_on_no_command_line(slurm: Any, slurm_executor: Executor, tmp_path: Path) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    env = {**BASE_ENV, "API_TOKEN": secret, "QUOTED": 'it\'s "$HOME" `x`\nline two'}
    spec = _spec(tmp_path, "sh", "-c", "env > env.txt; : > ready; sleep 30", env=env)
    slurm_executor.start(spec)
    work = tmp_path / "work"
    _until((work / "ready").exists, 15, "the task never ran")
    launch = spec.task_dir / "launch"
    assert launch.stat().st_mode & 0o777 == 0o600 and launch.stat().st_uid == pwd.getpwnam(JOB_USER).pw_uid
    for entry in Path("/proc").iterdir():  # no process shows it in its arguments
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            assert secret.encode() not in cmdline, f"pid {entry.name}: {cmdline[:200]!r}"
    job_id = str(slurm_executor.handle(spec.id).driver_state["job_id"])
    stored = _run(["scontrol", "write", "batch_script", job_id, "-"])
    assert stored.returncode == 0 and "runink-slurm" in stored.stdout
    assert secret not in stored.stdout  # the script Slurm keeps
    assert secret not in _run(["scontrol", "show", "job", job_id]).stdout
    slurm_executor.stop(spec.id, grace=1)
    seen = (work / "env.txt").read_text()
    assert f"API_TOKEN={secret}\n" in seen and 'QUOTED=it\'s "$HOME" `x`\nline two\n' in seen
    names = {line.split("=", 1)[0] for line in seen.splitlines() if "=" in line and not line.startswith("line two")}
    assert names - {"PWD", "SHLVL", "_"} == set(env)  # nothing of Slurm's or the agent's
    assert not launch.exists(), "the task's environment outlived it"
    for log in Path(slurm.root).glob("*.log"):
        assert secret not in log.read_text(errors="replace"), log


def test_environment_names_a_shell_cannot_carry_are_refused(slurm_executor: Executor, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "true", env={**BASE_ENV, "NOT-A-NAME": "x"})
    with pytest.raises(TaskRejectedError, match="NOT-A-NAME"):
        slurm_executor.start(spec)


def test_output_streams_back_while_it_runs(slurm_executor: Executor, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "sh", "-c", "echo first; sleep 30")
    slurm_executor.start(spec)
    _until(lambda: "first" in slurm_executor.read_log(spec.id), 10, "no output while running")
    assert slurm_executor.inspect(spec.id) is TaskState.RUNNING
    slurm_executor.stop(spec.id, grace=1)


def test_stats_through_sstat_off_the_node(
    slurm_executor: Executor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the job does not run on the agent's machine (`scontrol listpids` finds nothing),
    its usage comes from sstat, cpu in whole seconds; the result's cpu is the job's own count."""
    burn = "i=0; while [ $i -lt 2500000 ]; do i=$((i+1)); done; : > burnt; sleep 30"
    spec = _spec(tmp_path, "sh", "-c", burn)
    slurm_executor.start(spec)
    _until((tmp_path / "work" / "burnt").exists, 30, "the burn never ended")
    monkeypatch.setattr(slurm_executor.cli, "local_pids", lambda job_id: None)  # type: ignore[attr-defined]
    stats = slurm_executor.stats(spec.id)
    assert stats.processes >= 1 and stats.memory_bytes > 0
    assert stats.cpu_seconds >= 1 and stats.cpu_seconds == int(stats.cpu_seconds)
    slurm_executor.stop(spec.id, grace=2)
    result = slurm_executor.wait(spec.id, 5)
    assert result is not None and result.cpu_seconds is not None and result.cpu_seconds > 1  # the shell's `times`


def test_recover_a_job_that_ended_meanwhile(slurm: Any, tmp_path: Path) -> None:
    """The agent was down while the job ended: a new instance still learns its exit code."""
    first = _load(poll_interval=0.1)
    spec = _spec(tmp_path, "sh", "-c", "exit 5")
    handle = first.start(spec)
    first.close()
    saved = TaskHandle.from_dict(json.loads(json.dumps(handle.to_dict())))  # as the agent stores it
    _until((spec.task_dir / "state" / "exit_status").exists, 20, "the job never ended")
    time.sleep(0.5)
    second = _load(poll_interval=0.1)
    try:
        second.recover(saved)
        result = second.wait(spec.id, 20)
        assert result is not None and (result.state, result.exit_code) == (TaskState.FAILED, 5)
    finally:
        second.close()


def test_a_job_cannot_stretch_its_timeout_over_an_agent_restart(slurm: Any, tmp_path: Path) -> None:
    """The job writes its start marker's folder: one that kept touching the marker made a
    recovering executor count its timeout from the restart (here: 7 s after its start, not 4)."""
    first = _load(poll_interval=0.1)
    touch = "while :; do touch ../tasks/$RUNINK_ID/state/started; sleep 0.1; done"
    spec = _spec(tmp_path, "sh", "-c", touch, timeout=4)
    spec = dataclasses.replace(spec, env={**spec.env, "RUNINK_ID": spec.id})
    handle = first.start(spec)
    began = handle.started_at
    assert handle.deadline == began + 4
    first.close()
    saved = TaskHandle.from_dict(json.loads(json.dumps(handle.to_dict())))  # as the agent stores it
    time.sleep(max(0.0, began + 3 - time.time()))
    second = _load(poll_interval=0.1)
    try:
        second.recover(saved)
        result = second.wait(spec.id, 20)
        assert result is not None and result.state is TaskState.DEADLINE_EXCEEDED, result
        assert time.time() - began < 6, "its timeout counted from the restart"
    finally:
        second.close()


def test_a_job_that_deletes_its_start_marker_gains_no_time(slurm_executor: Executor, tmp_path: Path) -> None:
    """Without a marker the start is Slurm's StartTime: it was "now" once Slurm had shown the
    job running for NO_MARKER_AFTER (5) seconds, which its timeout then counted from."""
    remove = "rm -f ../tasks/$RUNINK_ID/state/started; exec sleep 60"
    spec = _spec(tmp_path, "sh", "-c", remove, timeout=3)
    spec = dataclasses.replace(spec, env={**spec.env, "RUNINK_ID": spec.id})
    submitted = time.time()
    slurm_executor.start(spec)
    result = slurm_executor.wait(spec.id, 30)
    assert result is not None and result.state is TaskState.DEADLINE_EXCEEDED, result
    # (Slurm's StartTime is to the second: the second after it counts)
    assert result.started_at - submitted < 3.5, "its timeout counted from when the marker was missed"


def test_recover_refuses_a_foreign_or_forged_handle(slurm_executor: Executor) -> None:
    with pytest.raises(TaskRejectedError, match="driver 'process'"):
        slurm_executor.recover(TaskHandle("x", "process", "/tmp/x", 0.0))
    with pytest.raises(TaskRejectedError, match="not a slurm executor handle"):
        slurm_executor.recover(TaskHandle("x", "slurm", "/tmp/x", 0.0, driver_state={"job_id": "1; rm -rf /"}))


# --- limits Slurm does not enforce here, and bad options --------------------------------------


def test_gpus_are_refused_where_slurm_has_none(slurm: Any, tmp_path: Path) -> None:
    strict = _load()
    with pytest.raises(TaskRejectedError, match="gpu"):
        strict.start(_spec(tmp_path, "true", limits=Resources(gpu=1)))
    degraded = _load(degrade=True)
    with pytest.raises(TaskRejectedError, match="Slurm refused it"):  # asked of Slurm: no gres here
        degraded.start(_spec(tmp_path, "true", limits=Resources(gpu=1)))


def test_a_partition_slurm_does_not_have_is_refused_by_slurm(slurm: Any, tmp_path: Path) -> None:
    executor = _load(partition="nosuch")
    with pytest.raises(TaskRejectedError, match=r"Slurm refused it: .*[Pp]artition"):
        executor.start(_spec(tmp_path, "true"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sbatch_args": ["--export=ALL"]}, "--export is not allowed in sbatch_args"),
        ({"sbatch_args": ["--wrap=rm -rf /"]}, "--wrap is not allowed"),
        ({"sbatch_args": ["-p", "debug"]}, "is not a long option"),
        ({"sbatch_args": ["--qos=normal\n--uid=0"]}, "is not a long option"),
        ({"partition": "a b"}, "option partition 'a b' is not a Slurm name"),
        ({"account": "--uid=0"}, "is not a Slurm name"),
        ({"poll_interval": 0}, "option poll_interval must be between"),
        ({"bin_dir": "relative/bin"}, "option bin_dir must be an absolute path"),
        ({"bin_dir": "/nonexistent/runink-slurm-bin"}, "is not a directory"),
        ({"poll_interval": "often"}, "option poll_interval must be float"),
        ({"colour": "blue"}, "bad options \\['colour'\\]"),
    ],
)
def test_bad_options_are_refused_clearly(installed: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(DriverLoadError, match=message):
        load_driver(Executor, "slurm", options)


def test_allowed_sbatch_args_reach_slurm(slurm_executor: Executor, slurm: Any, tmp_path: Path) -> None:
    executor = _load(sbatch_args=["--comment=from-runink"], partition="runink")
    try:
        spec = _spec(tmp_path, "sleep", "30")
        executor.start(spec)
        job = _job(executor, spec.id)
        assert job["Partition"] == "runink"
        assert "from-runink" in _run(["scontrol", "show", "job", str(job["JobId"])]).stdout
        executor.stop(spec.id, grace=1)
    finally:
        executor.close()


def test_files_a_job_writes_are_read_without_following_a_link_or_blocking(installed: Path, tmp_path: Path) -> None:
    """The job writes its task dir: a FIFO put in place of its exit status held the agent's one
    monitor thread (every task of the node, for good), and a stdout.log linked to /etc/shadow
    was read as root."""
    from runink_slurm import executor as slurm_module

    secret = tmp_path / "secret"
    secret.write_text("root:*:20228:0:99999:7:::\n")
    os.mkfifo(tmp_path / "exit_status")
    (tmp_path / "times").symlink_to(secret)
    began = time.monotonic()
    assert slurm_module._read_int(tmp_path / "exit_status") is None
    assert slurm_module._read_times(tmp_path / "times") is None
    assert time.monotonic() - began < 1
    (tmp_path / "status").write_text("3\n")
    assert slurm_module._read_int(tmp_path / "status") == 3


# --- whose jobs: an agent run as root submits each herd's as its own unprivileged user ---------


def _finished(executor: Executor, spec: TaskSpec, within: float = 30) -> Any:
    executor.start(spec)
    result = executor.wait(spec.id, within)
    assert result is not None, f"{spec.id} did not end"
    return result


def test_a_root_agent_refuses_a_herd_without_a_user_unless_root_jobs_are_allowed(slurm: Any, tmp_path: Path) -> None:
    """Before run_as, an agent run as root submitted every job as root: a job could leave its
    cgroup, read the other jobs' folders (their secrets) and cancel them."""
    bare = load_driver(Executor, "slurm", {"poll_interval": 0.1})
    assert "tasks apart" in bare.capabilities().enforced  # (by refusing what it cannot keep apart)
    with pytest.raises(TaskRejectedError, match=r"herd 'default' has no Slurm user .*run_as.*allow_root_jobs"):
        bare.start(_spec(tmp_path, "id", "-u"))
    allowed = load_driver(Executor, "slurm", {"poll_interval": 0.1, "allow_root_jobs": True})
    try:
        assert "root" in allowed.capabilities().unenforced["tasks apart"]
        spec = _spec(tmp_path, "id", "-u")
        assert _finished(allowed, spec).state is TaskState.SUCCEEDED
        assert allowed.read_log(spec.id).strip() == "0"
    finally:
        allowed.close()


def _as_agent(spec: TaskSpec) -> TaskSpec:
    """``spec`` with its task dir and work dir as an agent makes them: the task dir root's and
    private (0700), the work dir in it."""
    spec.task_dir.parent.mkdir(parents=True, exist_ok=True)
    spec.task_dir.mkdir(mode=0o700)
    work = spec.task_dir / "work"
    work.mkdir()
    return dataclasses.replace(spec, cwd=work)


def test_each_herd_s_jobs_run_as_its_user_and_cannot_reach_another_herd_s(slurm: Any, tmp_path: Path) -> None:
    """run_as maps herds to users: herd a's job runs as nobody and can read neither a root-only
    file nor herd b's launch file (its environment: its secrets) nor its work dir; its own work
    dir and output are its own; the task dir stays the agent's (0711), so nothing the job does
    there can swap what the agent reads for a link."""
    executor = load_driver(Executor, "slurm", {"poll_interval": 0.1, "run_as": {"a": JOB_USER, "b": "daemon:daemon"}})
    try:
        secret = tmp_path / "root-only"
        secret.write_text("root's\n")
        secret.chmod(0o600)
        b_spec = _as_agent(_spec(tmp_path / "b", "sh", "-c", "echo b-data > mine.txt; id -un; sleep 30", herd="b"))
        executor.start(b_spec)
        b_work = Path(str(b_spec.cwd))
        _until((b_work / "mine.txt").exists, 15, "herd b's job never wrote its file")
        probe = (
            "id -un; id -u; echo x > own.txt && echo wrote-own; "
            f"cat {secret} || echo no-root-file; cat {b_spec.task_dir / 'launch'} || echo no-b-launch; "
            f"cat {b_work / 'mine.txt'} || echo no-b-work; touch {b_spec.task_dir / 'planted'} || echo no-b-task-dir"
        )
        a_spec = _as_agent(_spec(tmp_path / "a", "sh", "-c", probe, herd="a"))
        assert _finished(executor, a_spec).state is TaskState.SUCCEEDED
        out = executor.read_log(a_spec.id).split()
        assert out[:3] == [JOB_USER, str(pwd.getpwnam(JOB_USER).pw_uid), "wrote-own"], out
        assert {"no-root-file", "no-b-launch", "no-b-work", "no-b-task-dir"} <= set(out), out
        assert "root's" not in out and "b-data" not in out
        assert "daemon" in executor.read_log(b_spec.id)
        info = os.stat(a_spec.task_dir)
        assert (info.st_uid, info.st_mode & 0o777) == (0, 0o711)
        assert os.stat(a_spec.task_dir / "state").st_uid == pwd.getpwnam(JOB_USER).pw_uid
        assert not (b_spec.task_dir / "planted").exists()
        assert os.stat(b_work).st_uid == pwd.getpwnam("daemon").pw_uid  # (given by the executor)
        executor.stop(b_spec.id, grace=1)
    finally:
        executor.close()


def test_herds_sharing_a_run_as_user_are_said_not_kept_apart(installed: Path) -> None:
    """Two herds mapped to one user (or '*', which covers every herd it names none for) can read
    each other's launch files, their secrets: capabilities() said "tasks apart" all the same."""
    for run_as in ({"a": JOB_USER, "b": JOB_USER}, {"*": JOB_USER}, {"a": "daemon", "*": "daemon"}):
        caps = load_driver(Executor, "slurm", {"run_as": run_as}).capabilities()
        assert "tasks apart" not in caps.enforced and "more than one herd" in caps.unenforced["tasks apart"], run_as
    apart = load_driver(Executor, "slurm", {"run_as": {"a": JOB_USER, "b": "daemon"}}).capabilities()
    assert "tasks apart" in apart.enforced and "tasks apart" not in apart.unenforced


def test_a_task_its_job_s_user_could_not_reach_is_refused_saying_where(
    slurm_executor: Executor, tmp_path: Path
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # root's
    with pytest.raises(TaskRejectedError, match=rf"user {JOB_USER} cannot reach its task dir .*: {private} is not"):
        slurm_executor.start(_spec(private, "true"))
    with pytest.raises(TaskRejectedError, match=r"writable path .* is outside its task dir"):
        slurm_executor.start(_spec(tmp_path, "true", writable=(private,)))


@pytest.mark.parametrize(
    ("run_as", "message"),
    [
        ({"*": "root"}, "is root"),
        ({"*": "0"}, "is root"),
        ({"*": "nobody:root"}, "is root"),
        ({"*": "runink-no-such-user"}, "no user 'runink-no-such-user' on this node"),
        ({"*": "nobody:runink-no-such-group"}, "no group"),
        ({"Bad Herd": "nobody"}, "is not a herd name"),
        ({"*": "a b"}, "is not USER or USER:GROUP"),
    ],
)
def test_a_run_as_that_is_root_or_unknown_is_refused_at_load(
    installed: Path, run_as: dict[str, str], message: str
) -> None:
    with pytest.raises(DriverLoadError, match=message):
        load_driver(Executor, "slurm", {"run_as": run_as})


@pytest.mark.parametrize(
    ("limits", "timeout"),
    [({"cpu": float("inf")}, None), ({"cpu": float("nan")}, None), ({}, float("inf")), ({}, 1e12)],
)
def test_a_limit_or_timeout_that_is_no_finite_number_is_refused_as_a_task(
    slurm_executor: Executor, tmp_path: Path, limits: dict[str, float], timeout: float | None
) -> None:
    """inf and nan raised OverflowError and ValueError out of start(); 1e12 s crashed the
    deadline's timer thread (the control plane refuses them first: defence in depth)."""
    spec = _spec(tmp_path, "/bin/true", limits=Resources(**limits), timeout=timeout)
    with pytest.raises(TaskRejectedError, match=r"not a finite number|at most a year"):
        slurm_executor.start(spec)
