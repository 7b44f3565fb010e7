"""GPUs: found with nvidia-smi, placed by id, and each slice shown only its own device nodes.

No GPU is needed: a fake ``nvidia-smi`` on PATH lists two GPUs whose device nodes are real
character devices made with mknod in a test folder (with /dev/null's and /dev/zero's numbers,
so a slice can really open and write the one it is given).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from agent_helpers import keeping_attempts
from fixture_types import CliRunner
from runink_processes import server_and_agent

from runink.core.agent.gpus import GpuInventory, find_gpus, grant_gpus
from runink.core.control.records import Amount, Herd, NodeRecord, RunState, TaskRecord, keys
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.errors import RuninkError, TaskRejectedError
from runink.core.interfaces import SchedulerPolicy
from runink.core.interfaces.executor import TaskSpec, TaskState
from runink.core.model import Resources
from runink.plugins.barn.memory import MemoryBarn
from runink.plugins.executors.linux.executor import LinuxExecutor
from runink.plugins.executors.process import ProcessExecutor
from runink.testing import plugin_manager

PROBLEMS = LinuxExecutor._detect_problems()
UUIDS = ("GPU-1a2b3c4d-0000-1111-2222-333344445555", "GPU-9f8e7d6c-0000-1111-2222-333344445555")


def fake_nvidia(root: Path, lines: str | None = None, exit_code: int = 0) -> tuple[Path, Path]:
    """(a folder with a fake nvidia-smi, a device folder with nvidia0, nvidia1 and nvidiactl)."""
    devices = root / "dev"
    devices.mkdir(parents=True)
    for name, numbers in (("nvidia0", (1, 3)), ("nvidia1", (1, 5)), ("nvidiactl", (1, 3))):
        os.mknod(devices / name, stat.S_IFCHR | 0o666, os.makedev(*numbers))
        os.chmod(devices / name, 0o666)  # (mknod applies the umask)
    if lines is None:
        lines = "".join(
            f"{i}, {gpu}, Fake A100-SXM4-40GB, 40960, 00000000:0{i + 1}:00.0\n" for i, gpu in enumerate(UUIDS)
        )
    bin_dir = root / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        '[ "$1" = "--query-gpu=index,uuid,name,memory.total,pci.bus_id" ] || { echo "bad query: $1" >&2; exit 2; }\n'
        f"cat <<'EOF'\n{lines}EOF\nexit {exit_code}\n"
    )
    smi.chmod(0o755)
    return bin_dir, devices


# --- finding them --------------------------------------------------------------------------


def test_gpus_are_found_with_their_device_nodes_and_the_control_ones(tmp_path: Path) -> None:
    bin_dir, devices = fake_nvidia(tmp_path)
    found = find_gpus(devices, smi=str(bin_dir / "nvidia-smi"))
    assert found.ids == list(UUIDS)
    assert [(g.index, g.device, g.memory) for g in found.gpus] == [
        (0, str(devices / "nvidia0"), 40960 * 2**20),
        (1, str(devices / "nvidia1"), 40960 * 2**20),
    ]
    assert found.gpus[0].name == "Fake A100-SXM4-40GB"
    assert found.control == (str(devices / "nvidiactl"),)
    assert found.limited_to(1).ids == [UUIDS[0]]
    with pytest.raises(RuninkError, match=r"--gpus 3: this node has 2 usable GPU\(s\)"):
        found.limited_to(3)


def test_what_nvidia_smi_says_is_checked_and_a_bad_gpu_left_out(tmp_path: Path) -> None:
    lines = (
        f"0, {UUIDS[0]}, Fine, 1024, 00000000:01:00.0\n"
        "1, not-a-uuid, Bad, 1024, 00000000:02:00.0\n"  # not a GPU UUID
        f"2, {UUIDS[1]}, No device node, 1024, 00000000:03:00.0\n"  # /dev/nvidia2 is not there
        f"0, {UUIDS[0]}, Twice, 1024, 00000000:01:00.0\n"
        "x, y\n"
    )
    bin_dir, devices = fake_nvidia(tmp_path, lines)
    found = find_gpus(devices, smi=str(bin_dir / "nvidia-smi"))
    assert found.ids == [UUIDS[0]]


def test_no_nvidia_smi_or_a_failing_one_offers_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, devices = fake_nvidia(tmp_path / "failing", exit_code=9)
    assert find_gpus(devices, smi=str(bin_dir / "nvidia-smi")) == GpuInventory()
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi on it
    assert find_gpus(devices) == GpuInventory()


def test_a_task_is_given_only_gpus_of_its_node() -> None:
    inventory = GpuInventory()
    spec = TaskSpec("t", ("true",), Path("/tmp"))
    assert grant_gpus(spec, [], inventory) is spec
    with pytest.raises(RuninkError, match="is not one of this node's"):
        grant_gpus(spec, ["GPU-someone-elses"], inventory)


# --- placing them --------------------------------------------------------------------------


def test_the_scheduler_gives_each_task_gpus_no_other_task_holds() -> None:
    store = ClusterStore(MemoryBarn())
    node = NodeRecord(id="g1", capacity=Amount(cpu=8, memory=2**34, gpu=2), gpus=list(UUIDS))
    store.commit([(keys.node("g1"), 0)], [(keys.node("g1"), node)])
    store.create_herd(Herd(name="ml"))
    for i in range(3):
        task = TaskRecord(id=f"t{i}", job_id=f"t{i}", herd="ml", command=["/bin/true"], resources=Amount(gpu=1))
        store.commit([(keys.task("ml", task.id), 0)], [(keys.task("ml", task.id), task)])
    with plugin_manager() as manager:
        scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "binpack"))

        def tasks() -> dict[str, TaskRecord]:
            return {v.record.id: v.record for v in store.live()}

        scheduler.run_pass(time.time())
        now = tasks()
        placed = [t for t in now.values() if t.state is RunState.SCHEDULED]
        assert len(placed) == 2 and sorted(g for t in placed for g in t.gpus) == sorted(UUIDS)
        (waiting,) = [t for t in now.values() if t.state is RunState.PENDING]
        assert waiting.gpus == [] and "gpu 1 > free 0" in waiting.pending_reason
        # one ends: the waiting task gets the GPU it held, and only that one
        done = placed[0]
        ended = done.moved_to(RunState.RUNNING).moved_to(RunState.SUCCEEDED)
        store.commit([], [(keys.task("ml", done.id), ended)])
        scheduler.run_pass(time.time())
        assert tasks()[waiting.id].gpus == done.gpus


def test_a_node_must_list_as_many_gpus_as_it_offers() -> None:
    with pytest.raises(ValueError, match=r"gpus: 2 listed but capacity.gpu is 1"):
        NodeRecord(id="g1", capacity=Amount(cpu=1, gpu=1), gpus=list(UUIDS))
    with pytest.raises(ValueError, match="gpu"):
        NodeRecord(id="g1", capacity=Amount(cpu=1, gpu=2), gpus=[UUIDS[0], UUIDS[0]])


# --- isolating them ------------------------------------------------------------------------

# What a slice given one GPU finds: its devices, its own GPU usable, the others unreachable.
PROBE = textwrap.dedent(
    """
    import errno, json, os, stat, sys, time
    result = {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "devices": sorted(n for n in os.listdir("/dev") if n.startswith("nvidia"))}
    own = [n for n in result["devices"] if n != "nvidiactl"]
    fd = os.open("/dev/" + own[0], os.O_RDWR)
    result["wrote"] = os.write(fd, b"x")
    os.close(fd)
    result["refused"] = {}
    hold = [float(a[5:]) for a in sys.argv[1:] if a.startswith("hold=")]
    for path in ["/dev/nvidia0", "/dev/nvidia1", *(a for a in sys.argv[1:] if a.startswith("/"))]:
        if os.path.basename(path) in own and path.startswith("/dev/"):
            continue
        try:
            os.close(os.open(path, os.O_RDWR))
            result["refused"][path] = "opened"
        except OSError as exc:
            result["refused"][path] = errno.errorcode[exc.errno]
    try:
        os.mknod("/tmp/my-gpu", stat.S_IFCHR | 0o666, os.makedev(195, 1))
        result["mknod"] = "made"
    except OSError as exc:
        result["mknod"] = errno.errorcode[exc.errno]
    print(json.dumps(result), flush=True)
    time.sleep(hold[0] if hold else 0)
    """
)


def _spec(tmp_path: Path, *command: str, gpus: int = 0, env: dict[str, str] | None = None) -> TaskSpec:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    os.chmod(work, 0o777)
    task_id = f"g-{uuid.uuid4().hex[:8]}"
    return TaskSpec(
        task_id,
        command,
        tmp_path / task_id,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        cwd=work,
        limits=Resources(gpu=gpus),
    )


@pytest.mark.skipif(bool(PROBLEMS), reason=f"cannot isolate here: {PROBLEMS}")
def test_two_slices_each_see_and_open_only_their_own_gpu(linux: LinuxExecutor, tmp_path: Path) -> None:
    bin_dir, devices = fake_nvidia(tmp_path / "node")
    inventory = find_gpus(devices, smi=str(bin_dir / "nvidia-smi"))
    host_paths = [str(devices / "nvidia0"), str(devices / "nvidia1")]
    specs = [
        grant_gpus(_spec(tmp_path, sys.executable, "-c", PROBE, *host_paths, "hold=1", gpus=1), [gpu], inventory)
        for gpu in UUIDS
    ]
    for spec in specs:  # both at once: each holds its GPU while the other looks for it
        linux.start(spec)
    for spec, gpu, own, other in zip(specs, UUIDS, ("nvidia0", "nvidia1"), ("nvidia1", "nvidia0"), strict=True):
        result = linux.wait(spec.id, 60)
        assert result is not None and result.state is TaskState.SUCCEEDED, linux.read_log(spec.id, "stderr")
        seen = json.loads(linux.read_log(spec.id))
        assert seen["visible"] == gpu
        assert seen["devices"] == sorted([own, "nvidiactl"])
        assert seen["wrote"] == 1  # its own GPU opens and works
        # the other slice's GPU: not in its /dev, not reachable by the host's path either
        assert seen["refused"] == {f"/dev/{other}": "ENOENT", **dict.fromkeys(host_paths, "ENOENT")}
        assert seen["mknod"] == "EPERM"  # and it cannot make itself a device node


@pytest.mark.skipif(bool(PROBLEMS), reason=f"cannot isolate here: {PROBLEMS}")
def test_only_a_real_character_device_is_given(linux: LinuxExecutor, tmp_path: Path) -> None:
    _, devices = fake_nvidia(tmp_path / "node")
    (devices / "nvidia7").write_text("not a device")
    os.symlink(devices / "nvidia0", devices / "nvidia8")
    for path, why in ((devices / "nvidia7", "not a character device"), (devices / "nvidia8", "symbolic link")):
        spec = _spec(tmp_path, "/bin/true", gpus=1)
        spec = TaskSpec(**{**vars(spec), "devices": (str(path),)})
        with pytest.raises(TaskRejectedError, match=why):
            linux.start(spec)
    # a gpu asked for with no device given: refused, never run without its GPU
    with pytest.raises(TaskRejectedError, match="given no GPU device"):
        linux.start(_spec(tmp_path, "/bin/true", gpus=1))


def test_the_process_executor_refuses_devices_it_cannot_hide(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "/bin/true")
    spec = TaskSpec(**{**vars(spec), "devices": ("/dev/null",)})
    with pytest.raises(TaskRejectedError, match="cannot give devices"):
        ProcessExecutor().start(spec)


# --- end to end ----------------------------------------------------------------------------


@pytest.mark.skipif(bool(PROBLEMS), reason=f"cannot isolate here: {PROBLEMS}")
def test_exec_gpu_on_a_cluster_agent_with_two_gpus(tmp_path: Path, run_cli: CliRunner) -> None:
    """`runink agent` finds the GPUs, `runink exec --gpu 1` runs where one is free, each slice
    with its own; a third waits PENDING until one is given back."""
    bin_dir, devices = fake_nvidia(tmp_path / "node")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    agent_args = ("--gpu-device-dir", str(devices))
    with server_and_agent(tmp_path, env, node="g1", agent_args=agent_args) as agent:
        assert agent["gpus"] == list(UUIDS)
        (node,) = json.loads(run_cli("nodes", "list", "--json", env=env).stdout)
        assert node["capacity"]["gpu"] == 2 and node["gpus"] == list(UUIDS)
        assert run_cli("herd", "create", "default", "--cpu", "4", env=env).returncode == 0
        python = "/usr/bin/python3"
        jobs = []
        for _ in range(3):  # each holds its GPU 3 s: the third waits for one of the first two
            job = run_cli("exec", "--gpu", "1", "--detach", "--", python, "-c", PROBE, "hold=3", env=env)
            assert job.returncode == 0, job.stderr
            jobs.append(job.stdout.strip())
        third = json.loads(run_cli("status", jobs[2], "--explain", "--json", env=env).stdout)
        assert third["job"]["state"] == "PENDING" and "gpu 1 > free 0" in third["tasks"][0]["pending_reason"]
        given = []
        for job_id in jobs:
            status = _ended(run_cli, job_id, env)
            assert status["job"]["state"] == "SUCCEEDED", status
            (task,) = status["tasks"]
            assert len(task["gpus"]) == 1
            seen = json.loads(run_cli("logs", job_id, env=env).stdout)
            assert seen["visible"] == task["gpus"][0]
            assert len(seen["devices"]) == 2 and seen["mknod"] == "EPERM"
            assert set(seen["refused"].values()) == {"ENOENT"}
            given.append(task["gpus"][0])
        assert set(given[:2]) == set(UUIDS) and given[2] in UUIDS
        too_many = run_cli("exec", "--gpu", "3", "--detach", "--", "/bin/true", env=env)
        assert too_many.returncode == 1 and "gpu 3 > capacity 2" in too_many.stderr  # refused at once


def _ended(run_cli: CliRunner, job_id: str, env: dict[str, str], timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, object] = json.loads(run_cli("status", job_id, "--json", env=env).stdout)
        if status["job"]["state"] not in ("PENDING", "SCHEDULED", "RUNNING"):  # type: ignore[index]
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status['job']} after {timeout} s"
        time.sleep(0.2)


def test_a_pipeline_scenarios_slice_is_given_its_gpus_too(run_cli: CliRunner, tmp_path: Path) -> None:
    """`@requires(gpu=1)` on a cluster: the node's ScenarioAttempts grants the scenario's slice
    the GPU its task was given, as a command's (the executor double keeps the spec it got)."""
    from runink.core.control.records import ScenarioRef

    assert run_cli("init", "project").returncode == 0
    dsl = tmp_path / "project" / "pipeline.dsl"
    dsl.write_text(dsl.read_text().replace('@requires(cpu=1, memory="256Mi"', '@requires(cpu=1, gpu=1, memory="256Mi"'))
    bin_dir, devices = fake_nvidia(tmp_path / "node")
    inventory = find_gpus(devices, smi=str(bin_dir / "nvidia-smi"))
    attempts, given = keeping_attempts(tmp_path / "work")
    attempts.gpus = inventory
    task = TaskRecord(
        id="t1", job_id="job-1", herd="default", attempt=1, token=5, resources=Amount(gpu=1), gpus=[UUIDS[1]],
        scenario=ScenarioRef(pipeline=str(dsl), scenario="Clean orders", run="r1", roots=[str(tmp_path)]),
    )  # fmt: skip
    with pytest.raises(RuninkError, match="kept, not run"):
        attempts.start_scenario(task, "t1-a1")
    (spec,) = given
    assert spec.limits.gpu == 1 and spec.env["CUDA_VISIBLE_DEVICES"] == UUIDS[1]
    assert spec.devices == (str(devices / "nvidia1"), str(devices / "nvidiactl"))
