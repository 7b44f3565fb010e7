"""The Executor driver interface: how a node runs one task (a slice or a command).

Shaped after Nomad's task-driver API (fingerprint, capabilities, start, wait, stop, destroy,
inspect, stats, recover): the agent (or the embedded runner) owns scheduling and retries; the
executor only runs processes and reports what happened to them.

Contract, checked by ``runink.testing.ExecutorConformance``:

* ``start`` returns as soon as the task's process exists; it never waits for it to finish.
  A task gets exactly ``spec.env`` as its environment (nothing inherited from the agent).
* Every task ends in exactly one final state (SUCCEEDED, FAILED, OOMKILLED,
  DEADLINE_EXCEEDED, CANCELLED). ``wait`` returns it; the result stays readable until
  ``destroy``.
* ``stop`` sends SIGTERM to the whole process tree, waits ``grace`` seconds, then SIGKILLs it.
* ``spec.timeout`` is enforced by the executor itself: past it the tree is killed and the
  state is DEADLINE_EXCEEDED.
* A task whose spec asks for a limit the executor cannot enforce is refused with
  ``TaskRejectedError`` unless the executor is configured to degrade; it never runs a task
  unconfined silently. ``capabilities().unenforced`` says what it cannot enforce.
* Every executor driver takes the keyword option ``degrade`` (a bool, default False): the
  loader (``runink.core.drivers.load_driver``) always passes it, as a bool, and refuses a
  driver whose factory does not take it. ``runink run`` sets it for a driver that isolates
  nothing (``capabilities().isolation == "none"``) unless configured, and says so.
* ``recover(handle)`` re-attaches, in a new executor instance (after an agent restart), to a
  task started by a previous one: ``wait``, ``stop`` and ``stats`` then work on it again.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from runink.core.model import Resources


class TaskState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    OOMKILLED = "OOMKILLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        return self not in (TaskState.PENDING, TaskState.RUNNING)


@dataclass(frozen=True)
class TaskSpec:
    """What to run and under which limits.

    ``command`` is an argv list, exec'ed without a shell. ``limits`` are hard limits the
    executor must enforce (zero means none). ``task_dir`` is where the executor keeps the
    task's logs and state; it must be writable and private to this task.

    ``readable`` and ``writable`` are the host paths the task is granted (its inputs and its
    outputs' folders); ``cwd`` is writable too. An executor that isolates the filesystem
    (``filesystem`` in its capabilities) shows the task nothing else of the host but its
    runtime; one that does not ignores them. Grants are real paths (resolve links before):
    the linux executor refuses a symbolic link anywhere on the way, and a writable grant that
    is not a folder owned by its own user (what the caller made for the task); it maps the
    owner of each granted tree to the task's user, so the caller changes no owner or mode.
    ``files`` (name -> content: credentials, a config) are given to the task as files in a
    private folder named by ``$RUNINK_FILES``:
    a tmpfs only the task sees with the linux executor, never written to the host's disk.
    """

    id: str
    command: tuple[str, ...]
    task_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    limits: Resources = field(default_factory=Resources)
    timeout: float | None = None
    network: bool = False
    readable: tuple[Path, ...] = ()
    # files inside ``readable`` the task must not read (the config in use, which may hold
    # credentials): an isolating runtime shows them empty; one that does not ignores them
    hidden: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    herd: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    # the herd's caps on this node (its quota's cpu and memory; pids 0: none), for an executor
    # that puts a herd's slices under a parent of their own capped at them (the linux one:
    # ``herd-<name>``); None: no herd parent (the local runner). gpu is not a cap here.
    herd_limits: Resources | None = None
    # device nodes the task is given (host paths of character devices: its GPUs' own and their
    # driver's control nodes, see core/agent/gpus.py). An executor that isolates devices shows
    # the task these at /dev/<name> and no others; one that cannot refuses the task unless it
    # is configured to degrade. ``limits.gpu`` is how many GPUs the task asked for.
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskHandle:
    """Everything a new executor instance needs to re-attach to a running task (JSON-serialisable).

    The agent persists handles (in the Barn) so it can recover its tasks after a restart.
    ``driver_state`` is private to the driver that made the handle.
    """

    task_id: str
    driver: str
    task_dir: str
    started_at: float
    deadline: float | None = None
    driver_state: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskHandle:
        return cls(**data)


@dataclass(frozen=True)
class TaskResult:
    """How a task ended, with its resource usage."""

    task_id: str
    state: TaskState
    exit_code: int | None = None
    signal: int | None = None
    message: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None

    @property
    def duration(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


@dataclass(frozen=True)
class TaskStats:
    """A live sample of a running task's usage (the whole process tree)."""

    task_id: str
    cpu_seconds: float
    memory_bytes: int
    processes: int


@dataclass(frozen=True)
class ExecutorCapabilities:
    """What the driver can do and enforce on this node.

    ``isolation`` is "none" (plain processes) or e.g. "cgroup+namespaces".
    ``enforced`` lists the limits and isolation it applies (``cpu``, ``memory``, ``pids``,
    ``network``...); ``unenforced`` lists what it cannot, each with the reason, so
    ``runink plugins list`` and ``runink doctor`` can say it.
    """

    isolation: str
    enforced: tuple[str, ...] = ()
    unenforced: Mapping[str, str] = field(default_factory=dict)
    supports_recover: bool = True
    supports_network_isolation: bool = False


@dataclass(frozen=True)
class Fingerprint:
    """Node attributes the driver detected, reported to the scheduler (e.g. kernel, cgroup version)."""

    healthy: bool
    health_description: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One line of ``runink doctor``: what was checked (``area``, ``check``), whether it holds, and why.

    A check in the ``executor`` area whose name has no ``:`` decides doctor's exit status (the
    driver's health); ``name: detail`` ones are information (what it enforces, what it cannot).
    """

    area: str
    check: str
    ok: bool
    detail: str


class Executor(ABC):
    """Runs tasks on this node. One instance per agent; methods are safe to call from several threads."""

    GROUP: ClassVar[str] = "runink.executors"
    #: the name it is registered under; set by subclasses.
    name: ClassVar[str] = ""
    #: run tasks whose limits cannot be enforced here without them, instead of refusing them;
    #: every driver's factory takes it as a keyword option (see the module's contract).
    degrade: bool = False

    @abstractmethod
    def capabilities(self) -> ExecutorCapabilities:
        """What this driver can enforce here. Cheap; called often."""

    @abstractmethod
    def fingerprint(self) -> Fingerprint:
        """Detect node attributes and health. Called at agent start and periodically."""

    @abstractmethod
    def start(self, spec: TaskSpec) -> TaskHandle:
        """Start the task and return its handle once the process exists.

        Raises TaskRejectedError for a spec it will not run (an unenforceable limit, a
        duplicate id, a command that cannot be executed).
        """

    @abstractmethod
    def wait(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        """Block until the task ends and return its result; ``None`` if ``timeout`` passed first."""

    @abstractmethod
    def stop(self, task_id: str, grace: float = 10.0) -> None:
        """Cancel: SIGTERM the process tree, SIGKILL what is left after ``grace`` seconds.

        Returns once the tree is gone. The final state is CANCELLED unless the task had
        already ended. Stopping an ended task does nothing.
        """

    @abstractmethod
    def destroy(self, task_id: str) -> None:
        """Kill the task if still running and forget it (its task_dir is the caller's to delete)."""

    @abstractmethod
    def inspect(self, task_id: str) -> TaskState:
        """The task's current state."""

    @abstractmethod
    def stats(self, task_id: str) -> TaskStats:
        """A live usage sample of a running task."""

    @abstractmethod
    def recover(self, handle: TaskHandle) -> None:
        """Re-attach to a task started by an earlier instance of this driver (agent restart)."""

    @classmethod
    def prestart(cls) -> None:
        """Begin what every instance of this driver waits for first (a helper process's start)
        before the caller has even loaded its config: ``runink run`` calls it at its start
        when its last run with the same config used this driver. The instance built later
        takes it over (in ``prepare`` or its first ``start``); what no instance takes over
        must end with the calling process. Optional; it must not raise for a guess that
        turns out wrong (another driver chosen this time). Default: nothing.
        """
        return None

    @classmethod
    def prestart_entry(cls) -> tuple[str, list[str]] | None:
        """``prestart`` as a function of a module light to import (``"MODULE:FUNCTION"``, a
        module under ``runink.``: the CLI imports no other) and the text arguments to call it
        with, or None (default: ``runink run`` imports this driver and calls ``prestart``).
        ``runink run`` keeps it with the driver's name and calls it at its next start without
        importing the driver (or reading entry points): sooner. The function must be marked
        with ``runink.core.cli.prestart.prestart_function`` (an index edited by hand may name
        no other function).
        Asked when a run chose this driver: what it returns must stay right while the config
        and the installed packages are unchanged (the kept entry is dropped when they change).
        """
        return None

    def prepare(self, starts: int | None = None) -> None:
        """Begin, without waiting, what the first ``start`` would otherwise wait for (a helper
        process's start), so it overlaps the caller's own setup. Optional: ``start`` works
        without it, and it never raises for what ``start`` would refuse (``start`` says so).

        ``starts``: how many tasks the caller expects to start in all, if it knows (``runink
        run``: one per scenario; None from an agent): a hint, so a driver keeps no more ready
        than will be used (linux: warm sandboxes). A start past it still works, if slower.

        Called by ``runink run`` as soon as its executor is chosen. Default: nothing.
        """
        return None

    def close(self) -> None:
        """Release what the driver started for itself (helper processes); running tasks go on.

        Called when the agent or ``runink run`` is done with the executor. Default: nothing.
        """
        return None

    def diagnose(self) -> list[Check]:
        """What ``runink doctor`` shows of this driver on this machine: its health and what it
        enforces or cannot. Default: built from ``fingerprint()`` and ``capabilities()``; a driver
        that probes the host (cgroups, namespaces...) adds those probes in their own areas.
        """
        caps = self.capabilities()
        fingerprint = self.fingerprint()
        health = fingerprint.health_description or "healthy"
        name = self.name or type(self).__name__
        checks = [Check("executor", name, fingerprint.healthy, f"isolation {caps.isolation}; {health}")]
        if caps.enforced:
            checks.append(Check("executor", f"{name}: enforces", True, ", ".join(caps.enforced)))
        for limit, reason in sorted(caps.unenforced.items()):
            checks.append(Check("executor", f"{name}: {limit}", False, f"not enforced: {reason}"))
        return checks

    def read_log(self, task_id: str, stream: str = "stdout") -> str:
        """The task's captured ``stdout`` or ``stderr`` so far (default: files in its task_dir)."""
        path = Path(self.handle(task_id).task_dir) / f"{stream}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @abstractmethod
    def handle(self, task_id: str) -> TaskHandle:
        """The handle of a known task (as returned by ``start``)."""
