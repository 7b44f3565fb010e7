"""The bookkeeping every executor driver keeps the same way: its tasks by id, each task's
done event and result, its deadline timer, the final state it ends in, and the ``handle``,
``wait``, ``stop``, ``destroy`` and ``inspect`` calls that only read or change that book.

A driver subclasses ``BookkeepingExecutor`` with its own ``BookedTask`` subclass (what it
needs to find the task's processes: a pid, a cgroup) and writes only what differs between
drivers: starting, following a task to its end, ``_terminate`` and ``stats``. It calls
``_watch_deadline`` once a task runs and ``_settle`` once it has ended (exactly once).

Nothing here is part of the Executor interface: a driver that keeps its own books (a
third-party one) implements ``Executor`` directly.
"""

from __future__ import annotations

import signal as signals
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from runink.core.errors import TaskNotFoundError, TaskRejectedError
from runink.core.interfaces.executor import Executor, TaskHandle, TaskResult, TaskSpec, TaskState

STATUS_FILE = "exit_status"  # in a task's dir: its exit status, written by its wrapper when it ends


@dataclass(kw_only=True)
class BookedTask:
    """One task in the book; drivers add the fields that find its processes."""

    handle: TaskHandle
    done: threading.Event = field(default_factory=threading.Event)
    result: TaskResult | None = None
    cancelled: bool = False  # stop() was called before it ended
    deadline_hit: bool = False  # its timeout passed before it ended
    timer: threading.Timer | None = None


def _signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class TaskExit:
    """What a driver learned about how a task's process ended.

    ``code``: its exit status, None if lost (its supervisor was killed) or if it died of
    ``signal``; ``oom``: the kernel killed it for memory; ``failure``: the driver's own
    reason for a non-zero ``code``, instead of "exit code N"; ``who``: "task" or "slice",
    for the messages.
    """

    code: int | None
    signal: int | None = None
    oom: bool = False
    failure: str | None = None
    who: str = "task"


def final_state(task: BookedTask, end: TaskExit) -> tuple[TaskState, str]:
    """The state and message a task ended in, first match wins: stopped, timed out, killed
    for memory, exit 0, killed by a signal, exit status lost, the driver's reason, the exit code."""
    if task.cancelled:
        return TaskState.CANCELLED, "stopped"
    if task.deadline_hit:
        timeout = (task.handle.deadline or 0) - task.handle.started_at
        return TaskState.DEADLINE_EXCEEDED, f"timed out after {timeout:g}s"
    if end.oom:
        return TaskState.OOMKILLED, "killed by the kernel: out of memory (cgroup memory limit)"
    if end.code == 0:
        return TaskState.SUCCEEDED, ""
    if end.code is None and end.signal is not None:
        return TaskState.FAILED, f"killed by {_signal_name(end.signal)}"
    if end.code is None:
        return TaskState.FAILED, f"exit status lost: the {end.who}'s supervisor was killed"
    return TaskState.FAILED, end.failure or f"exit code {end.code}"


T = TypeVar("T", bound=BookedTask)


class BookkeepingExecutor(Executor, Generic[T]):
    """An Executor whose tasks are kept in ``_tasks`` (guarded by ``_lock``)."""

    #: seconds between SIGTERM and SIGKILL when a task's deadline passes
    timeout_grace: float = 2.0

    def __init__(self) -> None:
        self._tasks: dict[str, T] = {}
        self._lock = threading.Lock()

    @abstractmethod
    def _terminate(self, task: T, grace: float) -> None:
        """SIGTERM the task's processes, SIGKILL what is left after ``grace``; returns when it has ended."""

    # --- for the driver -------------------------------------------------------------------

    def _watch_deadline(self, task: T) -> None:
        """Past the task's deadline (if it has one), terminate it: it ends DEADLINE_EXCEEDED."""
        deadline = task.handle.deadline
        if deadline is not None:
            task.timer = threading.Timer(max(0.0, deadline - time.time()), self._on_deadline, (task,))
            task.timer.daemon = True
            task.timer.start()

    def _on_deadline(self, task: T) -> None:
        if not task.done.is_set():
            task.deadline_hit = True
            self._terminate(task, self.timeout_grace)

    def _settle(
        self,
        task: T,
        end: TaskExit,
        cpu_seconds: float | None = None,
        peak_memory_bytes: int | None = None,
    ) -> None:
        """Record how the task ended (its state from ``final_state``) and wake its waiters."""
        # the timer first: a deadline passing now must not change the state being decided
        if task.timer is not None:
            task.timer.cancel()
        state, message = final_state(task, end)
        task.result = TaskResult(
            task_id=task.handle.task_id,
            state=state,
            exit_code=end.code,
            signal=end.signal,
            message=message,
            started_at=task.handle.started_at,
            finished_at=time.time(),
            cpu_seconds=cpu_seconds,
            peak_memory_bytes=peak_memory_bytes,
        )
        task.done.set()

    def _new_task_dir(self, spec: TaskSpec) -> Path:
        """Refuse a second task with ``spec.id``, make its task dir and clear an earlier run's
        exit status there; returns the path of that status file. Call it with ``_lock`` held."""
        if spec.id in self._tasks:
            raise TaskRejectedError(f"task {spec.id}: a task with this id exists already")
        task_dir = Path(spec.task_dir)
        task_dir.mkdir(parents=True, exist_ok=True)
        status_file = task_dir / STATUS_FILE
        status_file.unlink(missing_ok=True)
        return status_file

    def _check_handle(self, handle: TaskHandle) -> None:
        """``recover`` takes only handles this driver made."""
        if handle.driver != self.name:
            raise TaskRejectedError(f"task {handle.task_id}: handle is for driver {handle.driver!r}, not {self.name!r}")

    def _adopt(self, task: T) -> bool:
        """Add a task ``recover`` found; False if this executor knows it already (nothing to do)."""
        handle = task.handle
        with self._lock:
            if handle.task_id in self._tasks:
                return False
            self._tasks[handle.task_id] = task
        return True

    def _get(self, task_id: str) -> T:
        with self._lock:
            try:
                return self._tasks[task_id]
            except KeyError:
                raise TaskNotFoundError(f"no task {task_id!r} in the {self.name} executor") from None

    # --- the Executor calls that only read or change the book -----------------------------

    def handle(self, task_id: str) -> TaskHandle:
        return self._get(task_id).handle

    def wait(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        task = self._get(task_id)
        return task.result if task.done.wait(timeout) else None

    def stop(self, task_id: str, grace: float = 10.0) -> None:
        task = self._get(task_id)
        if task.done.is_set():
            return
        task.cancelled = True
        self._terminate(task, grace)

    def destroy(self, task_id: str) -> None:
        task = self._get(task_id)
        if not task.done.is_set():
            self.stop(task_id, grace=0)
        with self._lock:
            self._tasks.pop(task_id, None)

    def inspect(self, task_id: str) -> TaskState:
        task = self._get(task_id)
        return task.result.state if task.result else TaskState.RUNNING
