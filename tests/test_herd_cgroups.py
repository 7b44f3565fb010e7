"""A herd's slices on a node go under that herd's own cgroup parent, capped at its quota.

Real cgroup v1 here (as root; skipped, with the reason, elsewhere); v2 against a fake tree, as
tests/test_cgroups.py does (this machine's v2 mount has no controllers to make children with).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from runink.core.control.records import Herd, Quota, RunState, TaskRecord
from runink.core.errors import TaskRejectedError
from runink.core.interfaces.executor import TaskSpec, TaskState
from runink.core.model import Resources
from runink.plugins.executors.linux.cgroups import CgroupError, CgroupLimits, CgroupManager, detect, herd_dir_name
from runink.plugins.executors.linux.executor import LinuxExecutor
from runink.plugins.executors.linux.launcher import Launcher, LaunchError
from runink.plugins.executors.linux.messages import LaunchRequest, Limits
from runink.plugins.executors.process import ProcessExecutor

MiB = 1024**2
PROBLEMS = LinuxExecutor._detect_problems()
needs_linux = pytest.mark.skipif(bool(PROBLEMS), reason=f"the linux executor cannot isolate here: {PROBLEMS}")
LAYOUT = detect()
needs_v1 = pytest.mark.skipif(
    os.geteuid() != 0 or LAYOUT.version != 1 or not {"cpu", "memory", "pids"} <= set(LAYOUT.own),
    reason="needs root and cgroup v1 cpu, memory and pids controllers",
)


def spec(tmp_path: Path, herd: str, caps: Resources | None, *command: str, limits: Resources | None = None) -> TaskSpec:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    os.chmod(work, 0o777)
    task_id = f"h-{uuid.uuid4().hex[:8]}"
    return TaskSpec(
        task_id,
        command or ("sleep", "30"),
        tmp_path / task_id,
        env={"PATH": "/usr/bin:/bin"},
        cwd=work,
        limits=limits or Resources(),
        herd=herd,
        herd_limits=caps,
    )


def cgroup_dirs(executor: LinuxExecutor, task_id: str) -> dict[str, Path]:
    return {c: Path(d) for c, d in executor.handle(task_id).driver_state["cgroup"].items()}


def v1_caps(parent: dict[str, Path]) -> tuple[int, int, str]:
    """(cpu quota in µs per 100 ms, memory limit, pids.max) of a v1 herd parent."""
    return (
        int((parent["cpu"] / "cpu.cfs_quota_us").read_text()),
        int((parent["memory"] / "memory.limit_in_bytes").read_text()),
        (parent["pids"] / "pids.max").read_text().strip(),
    )


@needs_linux
@needs_v1
def test_a_herds_slices_share_its_capped_parent_and_another_herd_has_its_own(
    linux: LinuxExecutor, tmp_path: Path
) -> None:
    assert linux.cgroups is not None
    runink = linux.cgroups.parents()
    caps_a = Resources(cpu=1.5, memory=256 * MiB, pids=100)
    first, second = spec(tmp_path, "a", caps_a), spec(tmp_path, "a", caps_a)
    other = spec(tmp_path, "b", Resources(cpu=0.5, memory=128 * MiB))
    for s in (first, second, other):
        linux.start(s)
    dirs = {s.id: cgroup_dirs(linux, s.id) for s in (first, second, other)}
    for controller in ("cpu", "memory", "pids"):
        assert dirs[first.id][controller].parent == runink[controller] / "herd-a"
        assert dirs[second.id][controller].parent == runink[controller] / "herd-a"
        assert dirs[other.id][controller].parent == runink[controller] / "herd-b"
        assert dirs[first.id][controller] != dirs[second.id][controller]  # each slice its own cgroup
    # the slices' processes are in there for real
    pids = {p for d in ("memory",) for p in (dirs[first.id][d] / "cgroup.procs").read_text().split()}
    assert pids
    herd_a = {c: runink[c] / "herd-a" for c in runink}
    herd_b = {c: runink[c] / "herd-b" for c in runink}
    assert v1_caps(herd_a) == (150_000, 256 * MiB, "100")
    cpu_b, memory_b, pids_b = v1_caps(herd_b)
    assert (cpu_b, memory_b, pids_b) == (50_000, 128 * MiB, "max")  # pids 0: no cap
    # a changed quota: the caps follow on the herd's next start
    third = spec(tmp_path, "a", Resources(cpu=2, memory=192 * MiB))
    linux.start(third)
    assert v1_caps(herd_a) == (200_000, 192 * MiB, "max")
    for s in (first, second, other, third):
        linux.stop(s.id, grace=0.1)
        linux.destroy(s.id)
    # each slice's cgroup is gone; a herd parent stays only while a warm sandbox waits in it
    assert not any(d.exists() for found in dirs.values() for d in found.values())
    launcher = linux._launcher
    linux.close()
    assert launcher is not None and launcher.wait(10) == 0
    # the warm sandboxes' cgroups went with the launchers, and the herd parents with them
    assert linux.cgroups.leftovers() == []


@needs_linux
@needs_v1
def test_an_empty_herd_parent_is_removed_when_its_last_slice_ends(linux: LinuxExecutor, tmp_path: Path) -> None:
    assert linux.cgroups is not None
    runink = linux.cgroups.parents()
    only = spec(tmp_path, "once", Resources(memory=128 * MiB), "true")
    linux.start(only)
    # the next start is of another herd: the warm sandboxes move there, none waits in "once"
    later = spec(tmp_path, "next", Resources(memory=128 * MiB), "true")
    linux.start(later)
    for s in (only, later):
        result = linux.wait(s.id, 30)
        assert result is not None and result.state is TaskState.SUCCEEDED, result
    deadline = time.monotonic() + 10
    while (runink["memory"] / "herd-once").exists() and time.monotonic() < deadline:
        # sandboxes built for "once" before "next" came go on waiting there until used: use them
        filler = spec(tmp_path, "next", Resources(memory=128 * MiB), "true")
        linux.start(filler)
        assert (result := linux.wait(filler.id, 30)) is not None and result.state is TaskState.SUCCEEDED
    assert not any((parent / "herd-once").exists() for parent in runink.values())


@needs_linux
@needs_v1
def test_an_empty_herd_parent_left_by_a_crash_is_swept_at_start(linux: LinuxExecutor, tmp_path: Path) -> None:
    assert linux.cgroups is not None
    linux.cgroups.prepare()
    left = {c: p / "herd-crashed" for c, p in linux.cgroups.parents().items()}
    for directory in left.values():
        directory.mkdir()
    linux.start(first := spec(tmp_path, "default", None, "true"))  # its launcher's start sweeps
    assert (result := linux.wait(first.id, 30)) is not None and result.state is TaskState.SUCCEEDED
    assert not any(d.exists() for d in left.values())


@needs_linux
@needs_v1
def test_the_herd_memory_cap_stops_a_slice_that_has_no_limit_of_its_own(linux: LinuxExecutor, tmp_path: Path) -> None:
    hog = spec(tmp_path, "small", Resources(memory=64 * MiB), "sh", "-c", "head -c 600M /dev/zero | tail > /dev/null")
    linux.start(hog)
    dirs = cgroup_dirs(linux, hog.id)
    assert (dirs["memory"] / "memory.limit_in_bytes").read_text().strip() != str(64 * MiB)  # not the slice's own
    result = linux.wait(hog.id, 60)
    assert result is not None and result.state is TaskState.OOMKILLED, result
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes <= 64 * MiB + 4096


@needs_linux
def test_a_herd_name_that_is_not_a_plain_name_is_refused(linux: LinuxExecutor, tmp_path: Path) -> None:
    for bad in ("a/b", "..", "../runink", "a..b", "", "x" * 64, "Upper"):
        with pytest.raises(TaskRejectedError, match="not usable as a cgroup name"):
            linux.start(spec(tmp_path, bad, Resources(memory=64 * MiB), "true"))
    # the launcher checks again (it trusts no one either)
    with pytest.raises(LaunchError, match="not usable as a cgroup name"):
        Launcher._herd_of(LaunchRequest(id="x", command=("true",), herd="../../etc", herd_limits=Limits()))
    with pytest.raises(LaunchError, match="without a herd"):
        Launcher._herd_of(LaunchRequest(id="x", command=("true",), herd_limits=Limits()))
    assert Launcher._herd_of(LaunchRequest(id="x", command=("true",), herd="lab")) is None  # no caps: no herd parent


def test_herd_dir_names() -> None:
    assert herd_dir_name("lab-1.x_y") == "herd-lab-1.x_y"
    for bad in ("a/b", ".", "..", "-a", "a" * 64, "a\0b"):
        with pytest.raises(CgroupError, match="herd"):
            herd_dir_name(bad)


@needs_v1
def test_concurrent_starts_and_removals_under_one_herd_never_fail_nor_run_uncapped() -> None:
    """Several processes make and remove a herd's parent (the executor, its launchers): here
    threads with a manager each, creating slices under one herd and removing them (and the
    parent, when empty) as fast as they can; every create succeeds and finds the caps in place."""
    parent_name = f"runink-test-{uuid.uuid4().hex[:8]}"
    caps = CgroupLimits(cpu=1.0, memory=96 * MiB, pids=50)
    errors: list[BaseException] = []
    uncapped: list[str] = []

    def churn(worker: int) -> None:
        manager = CgroupManager(LAYOUT, parent_name=parent_name)
        try:
            for n in range(40):
                cgroup = manager.create(f"s-{worker}-{n}", CgroupLimits(memory=32 * MiB), herd="race", herd_caps=caps)
                parent = {c: d.parent for c, d in cgroup.dirs.items()}
                if v1_caps(parent) != (100_000, 96 * MiB, "50"):
                    uncapped.append(cgroup.dirs["memory"].name)
                cgroup.remove()
                manager.remove_herd_if_empty(cgroup.dirs)
        except BaseException as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    manager = CgroupManager(LAYOUT, parent_name=parent_name)
    try:
        assert errors == [] and uncapped == []
        assert manager.leftovers() == []  # the herd parent went with its last slice
    finally:
        for parent in manager.parents().values():
            for child in sorted(parent.glob("**/"), reverse=True):
                with contextlib.suppress(OSError):
                    child.rmdir()


def fake_v2(tmp_path: Path) -> tuple[Path, Path]:
    fs, proc = tmp_path / "fs", tmp_path / "proc"
    own = fs / "sys/fs/cgroup/system.slice/runink.service"
    own.mkdir(parents=True)
    (fs / "sys/fs/cgroup/cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text("25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    (proc / "self" / "cgroup").write_text("0::/system.slice/runink.service\n")
    return fs, proc


def test_v2_herd_parent_delegates_the_controllers_and_holds_the_caps(tmp_path: Path) -> None:
    fs, proc = fake_v2(tmp_path)
    manager = CgroupManager(detect(proc, fs_root=fs))
    cgroup = manager.create("s-1", CgroupLimits(memory=64 * MiB), herd="lab", herd_caps=CgroupLimits(2, 512 * MiB, 80))
    herd = fs / "sys/fs/cgroup/system.slice/runink.service/runink/herd-lab"
    assert cgroup.dirs["memory"] == herd / "s-1" and manager.relative_name(cgroup) == "herd-lab/s-1"
    # v2: a parent passes controllers down only through its subtree_control (it holds no process)
    assert (herd / "cgroup.subtree_control").read_text() == "+cpu +memory +pids +cpuset"
    assert (herd / "cpu.max").read_text() == "200000 100000"
    assert (herd / "memory.max").read_text() == str(512 * MiB)
    assert (herd / "pids.max").read_text() == "80"
    assert (herd / "s-1" / "memory.max").read_text() == str(64 * MiB)
    # a start that brings other caps (the quota changed) writes them; 0 is "max"
    manager.create("s-2", herd="lab", herd_caps=CgroupLimits(memory=256 * MiB))
    assert (herd / "memory.max").read_text() == str(256 * MiB)
    assert (herd / "cpu.max").read_text() == "max 100000" and (herd / "pids.max").read_text() == "max"
    # another process's manager finds the parent made: with the caps in place it writes none...
    other = CgroupManager(detect(proc, fs_root=fs))
    before = {f: (herd / f).stat().st_mtime_ns for f in ("cpu.max", "memory.max", "pids.max")}
    time.sleep(0.01)
    other.create("s-3", herd="lab", herd_caps=CgroupLimits(memory=256 * MiB))
    assert {f: (herd / f).stat().st_mtime_ns for f in before} == before
    # ...and writes them where the process that made it has not yet
    (herd / "memory.max").write_text("max")
    other.create("s-4", herd="lab", herd_caps=CgroupLimits(memory=256 * MiB))
    assert (herd / "memory.max").read_text() == str(256 * MiB)


def test_the_process_executor_takes_herd_limits_and_ignores_them(tmp_path: Path) -> None:
    executor = ProcessExecutor()
    try:
        task = TaskSpec(
            "p-1",
            ("/bin/sh", "-c", "exit 0"),
            tmp_path / "p-1",
            env={"PATH": "/usr/bin:/bin"},
            herd="lab",
            herd_limits=Resources(cpu=1, memory=64 * MiB),
        )
        executor.start(task)
        result = executor.wait("p-1", 30)
        assert result is not None and result.state is TaskState.SUCCEEDED
        assert "herd caps" in executor.capabilities().unenforced  # said, not silently skipped
    finally:
        executor.close()


def test_the_quota_goes_with_the_task_over_the_agents_stream() -> None:
    from runink.core.agent.grpc_control import _task
    from runink.core.server.agent_service import task_message

    task = TaskRecord(
        id="t-1",
        job_id="j-1",
        herd="lab",
        command=["true"],
        state=RunState.SCHEDULED,
        attempt=1,
        token=7,
        node="n1",
        herd_quota=Quota(cpu=2, memory=512 * MiB, gpu=1, max_slices=3),
    )
    assert _task(task_message(task)).herd_quota == task.herd_quota
    assert _task(task_message(task.model_copy(update={"herd_quota": None}))).herd_quota is None
    assert Herd(name="lab", quota=task.herd_quota).quota.node_caps() == Resources(cpu=2, memory=512 * MiB)


@needs_linux
@needs_v1
def test_through_the_scheduler_and_the_agent_a_slice_lands_under_its_herds_capped_parent(tmp_path: Path) -> None:
    """The scheduler copies the herd's quota into the task it places; the agent hands it to
    the linux executor as the herd's caps."""
    from agent_helpers import sync_until

    from runink.core.agent import Agent
    from runink.core.control.lifecycle import Lifecycle
    from runink.core.control.records import Amount
    from runink.core.control.scheduler import Scheduler
    from runink.core.control.store import ClusterStore
    from runink.core.drivers import load_driver
    from runink.core.interfaces import SchedulerPolicy
    from runink.core.interfaces.executor import Executor
    from runink.plugins.barn.memory import MemoryBarn
    from runink.testing import plugin_manager

    store = ClusterStore(MemoryBarn())
    quota = Quota(cpu=2, memory=256 * MiB, max_slices=4)
    store.create_herd(Herd(name="lab", quota=quota))
    life = Lifecycle(store)
    executor = load_driver(Executor, "linux", {"cgroup_parent": f"runink-test-{uuid.uuid4().hex[:8]}"})
    assert isinstance(executor, LinuxExecutor) and executor.cgroups is not None
    agent = Agent(life, executor, "n1", Amount(cpu=4, memory=1 << 30), work_dir=tmp_path, stop_grace=1.0)
    try:
        agent.sync()  # registers
        job = life.submit_command("lab", ["sleep", "30"], Amount(memory=64 * MiB))
        with plugin_manager() as manager:
            placed = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread")).run_pass(now=time.time())
        assert list(placed.placed.values()) == ["n1"]
        (versioned,) = store.job_tasks(store.job(job.id).record)
        assert versioned.record.herd_quota == quota
        sync_until(agent, lambda: bool(agent.running))
        (run,) = agent.running.values()
        dirs = {c: Path(d) for c, d in run.handle.driver_state["cgroup"].items()}
        runink = executor.cgroups.parents()
        assert all(dirs[c].parent == runink[c] / "herd-lab" for c in ("cpu", "memory", "pids"))
        assert v1_caps({c: d.parent for c, d in dirs.items()}) == (200_000, 256 * MiB, "max")
        assert (dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(64 * MiB)  # its own limit
    finally:
        for run in list(agent.running.values()):
            executor.destroy(run.executor_id)
        executor.close()
        for parent in set(executor.cgroups.parents().values()):
            with contextlib.suppress(OSError):
                parent.rmdir()


def test_a_quota_that_caps_neither_cpu_nor_memory_makes_no_herd_parent() -> None:
    """(`runink run`'s herd has no quota: its slices stay where they always were)"""
    assert Quota().node_caps() is None
    assert Quota(max_slices=3, gpu=1).node_caps() is None
    assert Quota(memory=MiB).node_caps() == Resources(cpu=0, memory=MiB)
