"""The bookkeeping both executor drivers share (runink.core.taskbook): one final-state ladder,
one copy of handle/wait/stop/destroy/inspect, the same refusals from either driver."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from runink.core.errors import TaskNotFoundError, TaskRejectedError
from runink.core.interfaces.executor import TaskHandle, TaskSpec, TaskState
from runink.core.taskbook import BookedTask, BookkeepingExecutor, TaskExit, final_state
from runink.plugins.executors.linux.executor import LinuxExecutor
from runink.plugins.executors.process import ProcessExecutor

DRIVERS = (ProcessExecutor, LinuxExecutor)


def _task(*, cancelled: bool = False, deadline_hit: bool = False) -> BookedTask:
    handle = TaskHandle("t", "process", "/nonexistent", started_at=100.0, deadline=101.5)
    return BookedTask(handle=handle, cancelled=cancelled, deadline_hit=deadline_hit)


@pytest.mark.parametrize(
    ("task", "end", "expected"),
    [
        # what the driver saw last never hides that the task was stopped or timed out
        (_task(cancelled=True, deadline_hit=True), TaskExit(137, 9, oom=True), (TaskState.CANCELLED, "stopped")),
        (_task(deadline_hit=True), TaskExit(0), (TaskState.DEADLINE_EXCEEDED, "timed out after 1.5s")),
        (
            _task(),
            TaskExit(137, 9, oom=True),
            (TaskState.OOMKILLED, "killed by the kernel: out of memory (cgroup memory limit)"),
        ),
        (_task(), TaskExit(0), (TaskState.SUCCEEDED, "")),
        (_task(), TaskExit(None, signal.SIGKILL), (TaskState.FAILED, "killed by SIGKILL")),
        (_task(), TaskExit(None, 200), (TaskState.FAILED, "killed by signal 200")),
        (_task(), TaskExit(None), (TaskState.FAILED, "exit status lost: the task's supervisor was killed")),
        (
            _task(),
            TaskExit(None, who="slice"),
            (TaskState.FAILED, "exit status lost: the slice's supervisor was killed"),
        ),
        # an exit code with a signal behind it (the linux launcher's 128 + N) says the code
        (_task(), TaskExit(137, 9), (TaskState.FAILED, "exit code 137")),
        (
            _task(),
            TaskExit(126, failure="cannot set up slice: /x: not a folder"),
            (TaskState.FAILED, "cannot set up slice: /x: not a folder"),
        ),
        (_task(), TaskExit(3), (TaskState.FAILED, "exit code 3")),
    ],
)
def test_final_state_ladder(task: BookedTask, end: TaskExit, expected: tuple[TaskState, str]) -> None:
    assert final_state(task, end) == expected


@pytest.mark.parametrize("driver", DRIVERS)
def test_drivers_keep_one_copy_of_the_bookkeeping(driver: type[ProcessExecutor] | type[LinuxExecutor]) -> None:
    assert issubclass(driver, BookkeepingExecutor)
    for method in ("handle", "wait", "stop", "destroy", "inspect", "_watch_deadline", "_settle", "_get"):
        assert getattr(driver, method) is getattr(BookkeepingExecutor, method), f"{driver.__name__}.{method} copied"


@pytest.mark.parametrize("driver", DRIVERS)
def test_both_drivers_refuse_alike(driver: type[ProcessExecutor] | type[LinuxExecutor], tmp_path: Path) -> None:
    executor = driver(degrade=True)
    try:
        with pytest.raises(TaskNotFoundError, match=f"no task 'nope' in the {driver.name} executor"):
            executor.wait("nope", 0)
        foreign = TaskHandle("t1", "elsewhere", str(tmp_path), time.time(), None, {})
        with pytest.raises(TaskRejectedError, match=f"handle is for driver 'elsewhere', not '{driver.name}'"):
            executor.recover(foreign)
    finally:
        executor.close()


def test_a_task_is_forgotten_only_by_destroy(tmp_path: Path) -> None:
    executor = ProcessExecutor()
    spec = TaskSpec(id="t1", command=("sh", "-c", "exit 4"), task_dir=tmp_path / "t1", env={"PATH": "/usr/bin:/bin"})
    executor.start(spec)
    result = executor.wait("t1", 10)
    assert result is not None and (result.state, result.exit_code, result.message) == (
        TaskState.FAILED,
        4,
        "exit code 4",
    )
    with pytest.raises(TaskRejectedError, match="exists already"):  # ended, still known: the id is taken
        executor.start(spec)
    assert executor.inspect("t1") is TaskState.FAILED
    executor.destroy("t1")
    with pytest.raises(TaskNotFoundError):
        executor.inspect("t1")
    executor.start(spec)  # the id is free again; the earlier run's exit status is not read
    result = executor.wait("t1", 10)
    assert result is not None and result.exit_code == 4
