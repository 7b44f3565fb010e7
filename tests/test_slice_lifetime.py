"""Slices end with their runner: `runink run` killed (SIGTERM or SIGKILL) leaves no slice
process and no slice cgroup behind, and a slice does not run past its deadline without it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from proc_tree import descendants

from runink.plugins.executors.linux.cgroups import CgroupManager, detect
from runink.plugins.executors.linux.executor import LinuxExecutor

T = TypeVar("T")

PROBLEMS = LinuxExecutor._detect_problems()
pytestmark = pytest.mark.skipif(bool(PROBLEMS), reason=f"cannot isolate here: {PROBLEMS}")
SLICE_UIDS = range(100_000, 150_000)


@pytest.fixture
def parent_name() -> Iterator[str]:
    """A cgroup parent of this test's own (other test runs' slices do not disturb the checks)."""
    name = f"runink-test-{uuid.uuid4().hex[:8]}"
    yield name
    for parent in set(CgroupManager(detect(), parent_name=name).parents().values()):
        for child in parent.glob("*"):
            if child.is_dir():
                child.rmdir()  # fails the test's teardown if a slice is still in it
        if parent.exists():
            parent.rmdir()


def _project(root: Path, parent_name: str) -> Path:
    root.mkdir()
    (root / "in.csv").write_text("id\n1\n")
    (root / "steps.py").write_text("import time\n\ndef slow(batch):\n    time.sleep(120)\n    return batch\n")
    (root / "runink.toml").write_text(
        textwrap.dedent(
            f"""
            [executor]
            driver = "linux"
            [executor.options]
            cgroup_parent = "{parent_name}"
            """
        )
    )
    dsl = root / "p.dsl"
    dsl.write_text(
        'Feature: lifetime\n  @requires(timeout="100s")\n  Scenario: a\n    @source("in.csv")\n'
        '    @step("steps:slow")\n    @sink("out/a.csv")\n'
    )
    return dsl


def _start_run(project: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINK_")}
    env["RUNINK_CONFIG"] = str(project / "runink.toml")
    return subprocess.Popen(
        [sys.executable, "-m", "runink", "run", "p.dsl"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_slice(runner: subprocess.Popen[str] | subprocess.Popen[bytes]) -> tuple[list[int], list[int]]:
    """(launcher pids, slice pids) once the slice runs its step."""
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        below = descendants(runner.pid)
        slices = [pid for pid, uid in below if uid in SLICE_UIDS]
        if slices:
            launchers = [pid for pid, _ in below if b"linux.launcher" in _cmdline(pid)]
            return launchers, slices
        assert runner.poll() is None, runner.communicate()
        time.sleep(0.1)
    raise AssertionError("the slice did not start within 40 s")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _sandbox_cgroups(parent_name: str, launchers: list[int]) -> list[Path]:
    parents = set(CgroupManager(detect(), parent_name=parent_name).parents().values())
    return sorted(d for p in parents for launcher in launchers for d in p.glob(f"sandbox-{launcher}-*"))


def _settle(check: Callable[[], T], seconds: float = 10.0) -> T:
    deadline = time.monotonic() + seconds
    while (found := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_runink_run_leaves_no_slice_and_no_cgroup(tmp_path: Path, parent_name: str, signum: int) -> None:
    project = _project(tmp_path / "proj", parent_name).parent
    runner = _start_run(project)
    try:
        launchers, slices = _wait_for_slice(runner)
        assert launchers and _sandbox_cgroups(parent_name, launchers)
        runner.send_signal(signum)
        code = runner.wait(30)
        if signum == signal.SIGTERM:  # treated like Ctrl-C: the run is cancelled, and says so
            assert code == 143 and "terminated" in runner.communicate()[1]
        else:
            assert code == -signal.SIGKILL
        assert _settle(lambda: [p for p in slices if _alive(p)]) == []
        assert _settle(lambda: [p for p in launchers if _alive(p)]) == []
        assert _settle(lambda: _sandbox_cgroups(parent_name, launchers)) == []
        stale = list((project / "out").glob(".runink-stage-*"))
        if signum == signal.SIGTERM:
            assert stale == []  # a cancelled run removes its staging folders
        else:  # nothing ran to remove them: the next run in that folder does
            assert stale
            from runink.core.datasets import DatasetRef
            from runink.core.pipeline.compile import CompiledScenario, CompiledSink
            from runink.core.pipeline.model import Scenario
            from runink.core.staging import stage_sinks as _stage_sinks
            from runink.core.staging import unstage as _unstage

            # at once, not a minute later: the folders name their maker, a process of this
            # machine that has ended (a fresh folder of a live runner is left a minute to lock)
            ref = DatasetRef("csv", project / "out" / "a.csv", "out/a.csv")  # stage_sinks reads only its path
            _unstage(_stage_sinks(CompiledScenario(Scenario("a"), ref, (CompiledSink(ref, "valid", {}),))))
            assert list((project / "out").glob(".runink-stage-*")) == []
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


DRIVER = """
import sys, time
from pathlib import Path
from runink.core.interfaces.executor import TaskSpec
from runink.plugins.executors.linux.executor import LinuxExecutor
executor = LinuxExecutor(cgroup_parent=sys.argv[1])
executor.start(TaskSpec("lifetime-1", ("sleep", "100"), Path(sys.argv[2]), env={"PATH": "/usr/bin:/bin"}))
time.sleep(100)
"""


def test_slices_die_with_their_launcher_and_a_new_executor_sweeps_their_cgroups(
    tmp_path: Path, parent_name: str
) -> None:
    """The process that owns the executor and its launcher both killed (nothing left to clean
    up): the slice's init dies with its launcher, and the next executor removes the cgroups."""
    owner = subprocess.Popen([sys.executable, "-c", DRIVER, parent_name, str(tmp_path / "task")])
    try:
        launchers, slices = _wait_for_slice(owner)
        for pid in [owner.pid, *launchers]:
            os.kill(pid, signal.SIGKILL)
        owner.wait(10)
        assert _settle(lambda: [p for p in slices if _alive(p)]) == []
        assert _sandbox_cgroups(parent_name, launchers)  # no one left to remove them
        executor = LinuxExecutor(cgroup_parent=parent_name, pool=0)
        try:
            from runink.core.interfaces.executor import TaskSpec

            spec = TaskSpec(f"l-{uuid.uuid4().hex[:8]}", ("true",), tmp_path / "t", env={"PATH": "/usr/bin:/bin"})
            executor.start(spec)
            assert executor.wait(spec.id, 30) is not None
            executor.destroy(spec.id)
            assert _sandbox_cgroups(parent_name, launchers) == []  # swept when its launcher started
        finally:
            executor.close()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


@pytest.mark.parametrize("init", ["runink-init", "python"])
def test_a_slice_dies_with_its_launcher(tmp_path: Path, init: str) -> None:
    """PID 1 dies with the launcher (and with it the pid namespace): C init and Python fallback."""
    work = tmp_path / "work"
    work.mkdir()
    args = ["--pool", "0", *(["--python-init"] if init == "python" else [])]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "runink.plugins.executors.linux.launcher", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert launcher.stdin is not None and launcher.stdout is not None
        request = {
            "op": "launch",
            "id": "s-1",
            "command": ["sleep", "100"],
            "env": {"PATH": "/usr/bin:/bin"},
            "cwd": "/",
            "uid": 100_001,
            "gid": 100_001,
            "stdout": str(work / "out.log"),
            "stderr": str(work / "err.log"),
        }
        launcher.stdin.write(json.dumps(request) + "\n")
        launcher.stdin.flush()
        assert json.loads(launcher.stdout.readline())["event"] == "started", (work / "err.log").read_text()
        _settle(lambda: not [p for p, uid in descendants(launcher.pid) if uid == 100_001])  # the command runs
        sandbox = descendants(launcher.pid)  # its init, the payload, the command
        assert any(uid == 100_001 for _, uid in sandbox)
        launcher.kill()
        launcher.wait(10)
        assert _settle(lambda: [p for p, _ in sandbox if _alive(p)]) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
