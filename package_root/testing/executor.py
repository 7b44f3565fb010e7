"""The Executor conformance suite: the contract of ``runink.core.interfaces.executor``, as tests.

Use it from a driver's test module::

    from runink.testing import ExecutorConformance

    class TestMyExecutor(ExecutorConformance):
        driver_name = "my-executor"          # its entry-point name in runink.executors
        driver_options = {"degrade": True}   # keyword arguments for the driver

Override the ``executor`` fixture to build the driver yourself. Every case is bounded in
time; they use only ``sh``, ``sleep`` and ``true`` from the host. Tasks observe each other
through files in a work dir, never through host pids, so drivers with pid namespaces pass too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from runink.core.drivers import load_driver
from runink.core.errors import TaskNotFoundError, TaskRejectedError
from runink.core.interfaces.executor import (
    Executor,
    ExecutorCapabilities,
    Fingerprint,
    TaskHandle,
    TaskResult,
    TaskSpec,
    TaskState,
)
from runink.core.model import Resources

BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
# Variables a POSIX shell may export by itself; not inherited from the agent.
SHELL_OWN_VARS = {"PWD", "SHLVL", "_", "OLDPWD"}


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


class ExecutorConformance:
    driver_name: ClassVar[str] = ""
    driver_options: ClassVar[Mapping[str, Any]] = {}

    # --- fixtures ---------------------------------------------------------------------

    @pytest.fixture
    def executor(self) -> Executor:
        executor: Executor = load_driver(Executor, self.driver_name, self.driver_options)
        return executor

    @pytest.fixture
    def work(self, tmp_path: Path) -> Path:
        """A directory tasks run in (cwd) and write marker files to."""
        work = tmp_path / "work"
        work.mkdir()
        os.chmod(work, 0o777)  # drivers that drop privileges must still write here
        return work

    def spec(self, tmp_path: Path, work: Path, *command: str, **overrides: Any) -> TaskSpec:
        task_id = overrides.pop("id", f"t-{uuid.uuid4().hex[:10]}")
        values: dict[str, Any] = {
            "id": task_id,
            "command": tuple(command),
            "task_dir": tmp_path / "tasks" / task_id,
            "env": dict(BASE_ENV),
            "cwd": work,
        }
        values.update(overrides)
        return TaskSpec(**values)

    def run(self, executor: Executor, spec: TaskSpec, timeout: float = 20.0) -> TaskResult:
        executor.start(spec)
        result = executor.wait(spec.id, timeout)
        assert result is not None, f"task {spec.id} did not end within {timeout}s"
        return result

    @staticmethod
    def assert_stops_beating(beat: Path, within: float = 5.0) -> None:
        """The heartbeat file written every 50 ms by a task's process stops changing."""
        deadline = time.monotonic() + within
        while _mtime_ns(beat) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _mtime_ns(beat) is not None, "the task never wrote its heartbeat"
        last = _mtime_ns(beat)
        time.sleep(0.4)
        assert _mtime_ns(beat) == last, "a process of the task is still running after it ended"

    BEAT = "while :; do : > beat; sleep 0.05; done"

    # --- describing -------------------------------------------------------------------

    def test_describes_itself(self, executor: Executor) -> None:
        assert executor.name, "the driver class must set `name`"
        caps = executor.capabilities()
        assert isinstance(caps, ExecutorCapabilities)
        assert isinstance(caps.isolation, str) and caps.isolation
        assert not set(caps.enforced) & set(caps.unenforced), "a limit cannot be both enforced and not"
        fingerprint = executor.fingerprint()
        assert isinstance(fingerprint, Fingerprint)
        assert fingerprint.healthy, fingerprint.health_description

    # --- outcomes ---------------------------------------------------------------------

    def test_success(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        spec = self.spec(tmp_path, work, "true")
        handle = executor.start(spec)
        assert isinstance(handle, TaskHandle) and handle.task_id == spec.id
        result = executor.wait(spec.id, 20)
        assert result is not None
        assert result.state is TaskState.SUCCEEDED and result.exit_code == 0
        assert result.finished_at >= result.started_at > 0
        assert executor.inspect(spec.id) is TaskState.SUCCEEDED

    def test_prepare_is_optional_and_harmless(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        executor.prepare()
        executor.prepare()  # (twice: nothing more)
        result = self.run(executor, self.spec(tmp_path, work, "true"))
        assert result.state is TaskState.SUCCEEDED and result.exit_code == 0

    def test_failure_reports_exit_code(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        result = self.run(executor, self.spec(tmp_path, work, "sh", "-c", "exit 3"))
        assert result.state is TaskState.FAILED
        assert result.exit_code == 3
        assert "3" in result.message

    def test_missing_command_is_rejected_or_fails(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        spec = self.spec(tmp_path, work, "/nonexistent/runink-no-such-command")
        try:
            result = self.run(executor, spec)
        except TaskRejectedError as exc:
            assert "runink-no-such-command" in str(exc)  # noqa: PT017
        else:
            assert result.state is TaskState.FAILED and result.exit_code == 127

    def test_captures_stdout_and_stderr(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        spec = self.spec(tmp_path, work, "sh", "-c", "echo to-out; echo to-err >&2")
        assert self.run(executor, spec).state is TaskState.SUCCEEDED
        assert "to-out" in executor.read_log(spec.id, "stdout")
        assert "to-err" in executor.read_log(spec.id, "stderr")
        assert "to-err" not in executor.read_log(spec.id, "stdout")

    def test_environment_is_only_the_spec(
        self, executor: Executor, tmp_path: Path, work: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RUNINK_AGENT_SECRET_FOR_TEST", "must-not-leak")
        env = {**BASE_ENV, "GRANTED": "yes"}
        spec = self.spec(tmp_path, work, "sh", "-c", "env > env.txt", env=env)
        assert self.run(executor, spec).state is TaskState.SUCCEEDED
        seen = dict(line.split("=", 1) for line in (work / "env.txt").read_text().splitlines() if "=" in line)
        assert seen.get("GRANTED") == "yes"
        assert "RUNINK_AGENT_SECRET_FOR_TEST" not in seen
        assert set(seen) - SHELL_OWN_VARS == set(env)

    def test_granted_files_are_given(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        files = {"token": "s3cret", "config.toml": "a = 1\n"}
        spec = self.spec(tmp_path, work, "sh", "-c", 'cat "$RUNINK_FILES/token"; ls "$RUNINK_FILES"', files=files)
        result = self.run(executor, spec)
        assert result.state is TaskState.SUCCEEDED, executor.read_log(spec.id, "stderr")
        out = executor.read_log(spec.id, "stdout")
        assert out.startswith("s3cret") and "config.toml" in out

    # --- deadlines and cancellation -------------------------------------------------

    def test_wait_with_timeout_returns_none_while_running(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        spec = self.spec(tmp_path, work, "sleep", "30")
        executor.start(spec)
        try:
            assert executor.wait(spec.id, 0.2) is None
            assert executor.inspect(spec.id) is TaskState.RUNNING
        finally:
            executor.stop(spec.id, grace=1)

    def test_timeout_kills_the_tree(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        spec = self.spec(tmp_path, work, "sh", "-c", f"({self.BEAT}) & {self.BEAT}", timeout=0.5)
        started = time.monotonic()
        result = self.run(executor, spec, timeout=15)
        assert result.state is TaskState.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 10
        self.assert_stops_beating(work / "beat")

    def test_stop_cancels(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        spec = self.spec(tmp_path, work, "sh", "-c", self.BEAT)
        executor.start(spec)
        time.sleep(0.2)
        executor.stop(spec.id, grace=5)
        result = executor.wait(spec.id, 1)
        assert result is not None and result.state is TaskState.CANCELLED
        self.assert_stops_beating(work / "beat")
        executor.stop(spec.id, grace=1)  # stopping an ended task is a no-op
        assert executor.inspect(spec.id) is TaskState.CANCELLED

    def test_stop_escalates_to_kill(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        spec = self.spec(tmp_path, work, "sh", "-c", f"trap '' TERM; {self.BEAT}")
        executor.start(spec)
        time.sleep(0.2)
        started = time.monotonic()
        executor.stop(spec.id, grace=0.5)
        assert time.monotonic() - started < 8, "stop must SIGKILL after the grace period"
        result = executor.wait(spec.id, 1)
        assert result is not None and result.state is TaskState.CANCELLED
        self.assert_stops_beating(work / "beat")

    def test_stop_kills_grandchildren(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        spec = self.spec(tmp_path, work, "sh", "-c", f"sh -c '{self.BEAT}' & wait")
        executor.start(spec)
        time.sleep(0.3)
        executor.stop(spec.id, grace=2)
        self.assert_stops_beating(work / "beat")

    def test_leftover_processes_end_with_the_task(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        spec = self.spec(tmp_path, work, "sh", "-c", f"({self.BEAT}) & sleep 0.2; exit 0")
        assert self.run(executor, spec).state is TaskState.SUCCEEDED
        self.assert_stops_beating(work / "beat")

    # --- bookkeeping ------------------------------------------------------------------

    def test_unknown_task(self, executor: Executor) -> None:
        for call in (executor.inspect, executor.stats, executor.handle):
            with pytest.raises(TaskNotFoundError):
                call("no-such-task")
        with pytest.raises(TaskNotFoundError):
            executor.wait("no-such-task", 0.1)

    def test_duplicate_id_is_rejected(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        spec = self.spec(tmp_path, work, "sleep", "30")
        executor.start(spec)
        try:
            with pytest.raises(TaskRejectedError):
                executor.start(spec)
        finally:
            executor.stop(spec.id, grace=1)

    def test_destroy_forgets_the_task(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        spec = self.spec(tmp_path, work, "sh", "-c", self.BEAT)
        executor.start(spec)
        time.sleep(0.2)
        executor.destroy(spec.id)
        with pytest.raises(TaskNotFoundError):
            executor.inspect(spec.id)
        self.assert_stops_beating(work / "beat")

    def test_stats_and_usage(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        burn = "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; : > burnt; sleep 30"
        spec = self.spec(tmp_path, work, "sh", "-c", burn)
        executor.start(spec)
        deadline = time.monotonic() + 20
        while not (work / "burnt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = executor.stats(spec.id)
        assert stats.processes >= 1
        assert stats.memory_bytes > 0
        assert stats.cpu_seconds > 0.05
        executor.stop(spec.id, grace=1)
        result = executor.wait(spec.id, 5)
        assert result is not None
        assert result.cpu_seconds is None or result.cpu_seconds > 0.05

    def test_unenforceable_limit_is_refused(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        caps = executor.capabilities()
        if "memory" not in caps.unenforced:
            pytest.skip("this driver enforces memory limits")
        if getattr(executor, "degrade", False):
            pytest.skip("this driver is configured to degrade")
        spec = self.spec(tmp_path, work, "true", limits=Resources(memory=64 * 1024**2))
        with pytest.raises(TaskRejectedError, match="memory"):
            executor.start(spec)

    # --- recovery ---------------------------------------------------------------------

    def test_recover_after_agent_restart(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        """A task started by an agent that then exits is re-attached by a new executor instance."""
        if not executor.capabilities().supports_recover:
            pytest.skip("driver does not support recover")
        spec = self.spec(tmp_path, work, "sh", "-c", "while [ ! -e release ]; do sleep 0.05; done; exit 4")
        starter = textwrap.dedent(
            f"""
            import json, sys
            from pathlib import Path
            from runink.core.drivers import load_driver
            from runink.core.interfaces import Executor
            from runink.core.interfaces.executor import TaskSpec
            ex = load_driver(Executor, {self.driver_name!r}, {dict(self.driver_options)!r})
            handle = ex.start(TaskSpec(id={spec.id!r}, command={spec.command!r}, task_dir=Path({str(spec.task_dir)!r}),
                                       env={dict(spec.env)!r}, cwd=Path({str(work)!r})))
            print(json.dumps(handle.to_dict()))
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", starter], capture_output=True, text=True, timeout=60, check=False, cwd=work
        )
        assert done.returncode == 0, done.stderr
        handle = TaskHandle.from_dict(json.loads(done.stdout.strip().splitlines()[-1]))
        executor.recover(handle)
        assert executor.inspect(spec.id) is TaskState.RUNNING
        (work / "release").touch()
        result = executor.wait(spec.id, 20)
        assert result is not None
        assert result.state is TaskState.FAILED and result.exit_code == 4

    def test_recovered_task_can_be_stopped(self, executor: Executor, tmp_path: Path, work: Path) -> None:
        if not executor.capabilities().supports_recover:
            pytest.skip("driver does not support recover")
        spec = self.spec(tmp_path, work, "sh", "-c", self.BEAT)
        first = executor.start(spec)
        time.sleep(0.2)
        other = type(executor)(**dict(self.driver_options))  # a second instance, as after a restart
        other.recover(first)
        other.stop(spec.id, grace=2)
        result = other.wait(spec.id, 5)
        assert result is not None and result.state is TaskState.CANCELLED
        self.assert_stops_beating(work / "beat")
