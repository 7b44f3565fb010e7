"""The agent: registers its node, heartbeats, runs its assignments through an Executor and
reports what they did.

It talks to the control plane only through ``Control`` (the Lifecycle's own methods), so the
in-process deployment passes a Lifecycle and a remote one passes a client with the same
methods. Every report names the attempt and fencing token it ran: after the control plane
placed a task again (this node found dead, a partition), its late reports are refused there.
An attempt is what the agent runs; one it is no longer assigned (cancelled, placed again
elsewhere) is stopped.

Each running attempt's TaskHandle is kept in the work dir (``attempts/``) until its final
report was answered, so a new Agent over the same work dir and node id re-attaches to the
slices that outlived the old one (``Executor.recover``) and follows them as running attempts;
an attempt its executor cannot re-attach to is reported FAILED, saying so. When an attempt ends
its result is written into its handle file first, so one that ended while the control plane
was away is reported from that result after a restart (its slice may be gone by then).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runink.core import logs, metrics
from runink.core.agent.disk_room import DiskRoom
from runink.core.agent.gpus import GpuInventory, grant_gpus
from runink.core.agent.lineage import LineageOutbox
from runink.core.agent.logs import LogShipper
from runink.core.agent.scenarios import ScenarioAttempts
from runink.core.agent.secrets import SecretsRefused, masked_text, masks_of, with_secrets
from runink.core.agent.slice_lines import SliceLines
from runink.core.agent.task_dirs import TaskDirSweeper
from runink.core.control.lifecycle import MAX_MESSAGE
from runink.core.control.records import (
    MAX_UNFIT,
    MAX_USAGE_TASKS,
    Accounting,
    Amount,
    NodeRecord,
    NodeUsage,
    RecordError,
    RunState,
    TaskRecord,
    TaskReport,
    TaskUsage,
)
from runink.core.control.store import NotFound, Refused
from runink.core.errors import RuninkError
from runink.core.interfaces.executor import Executor, TaskHandle, TaskResult, TaskSpec, TaskState
from runink.core.model import MetricSample
from runink.core.report import one_line, printable
from runink.core.units import MAX_MEMORY

HEARTBEAT_INTERVAL = 1.0  # seconds between heartbeats (liveness timeouts are several of them)
#: times one node gives a task back for want of room before it fails it there (a quota no free
#: count shows, a server that places it here again), and how many such tasks it remembers
MAX_GIVE_BACKS, MAX_GIVEN_BACK_KEPT = 3, 4096
MAX_STARTS_PER_ROUND = 16  # slices a round starts at most (the rest the next round)
LONG_POLL = 3.0  # seconds a long-poll for new assignments waits (a control that has them)
#: seconds `runink agent` holds a started attempt's RUNNING report (Agent.hold_running): a task
#: that ends by then is reported once, start and end in one commit (most short tasks do)
RUNNING_HOLD = 0.05
#: a usage sample costs at most this share of the time between samples: one that took longer
#: (the process executor reads every process's /proc entry for each task) spaces the next
USAGE_BUDGET = 0.1
log = logging.getLogger(__name__)

MAX_BATCH = 64  # reports sent at once (the agent service's MAX_REPORTS)
MAX_BATCH_BYTES = 128 * 1024  # of their messages: the batch stays under a gRPC message's limit
#: the environment a task gets (nothing is inherited from the agent)
TASK_PATH = "/usr/local/bin:/usr/bin:/bin"


class Control(Protocol):
    """What an agent asks of the control plane (Lifecycle implements it in process)."""

    def register_node(self, node: NodeRecord) -> NodeRecord: ...

    def heartbeat(self, node_id: str, incarnation: str, usage: NodeUsage | None = None, unfit: str = "") -> bool: ...

    def assignments(self, node_id: str) -> list[TaskRecord]: ...

    def report(
        self,
        herd: str,
        task_id: str,
        attempt: int,
        token: int,
        state: RunState,
        *,
        exit_code: int | None = None,
        message: str = "",
        started: float | None = None,  # passed only by an agent with hold_running
        accounting: Accounting | None = None,  # passed only with an ended attempt's
    ) -> bool: ...

    def task_secrets(self, herd: str, task_id: str, attempt: int, token: int, node: str | None) -> dict[str, bytes]:
        """The values of the secrets an attempt placed on ``node`` receives (its record's names)."""
        ...


#: one attempt of a task: (herd, task id, attempt, fencing token)
Attempt = tuple[str, str, int, int]


def attempt_of(task: TaskRecord) -> Attempt:
    return (task.herd, task.id, task.attempt, task.token)


@dataclass
class Running:
    attempt: Attempt
    executor_id: str  # the executor's task id: the task's id with its attempt number
    handle: TaskHandle | None = None
    started: float = field(default_factory=time.monotonic)
    scenario: bool = False  # a pipeline scenario's attempt (see core/agent/scenarios.py)
    job: str = ""  # its job's id (the labels of its output lines)


#: how an attempt ended, as reported: (state, exit code, message)
Outcome = tuple[RunState, int | None, str]


@dataclass
class _Report:
    """A report not answered yet."""

    attempt: Attempt
    state: RunState
    exit_code: int | None = None
    message: str = ""
    last: bool = False  # final (or given back): once answered its handle and task are forgotten
    destroy: bool = False  # the executor knows the attempt: destroyed once the report was answered
    started: float | None = None  # when the attempt started (time.time()): its RUNNING goes with this report
    accounting: Accounting | None = None  # an ended attempt's (its executor's), priced by the server


def executor_id_of(attempt: Attempt) -> str:
    return f"{attempt[1]}-a{attempt[2]}"


def _describe(exc: BaseException) -> str:
    """One line for a log or a report; an error that is not Runink's says what kind it is."""
    text = str(exc) if isinstance(exc, RuninkError) else f"{type(exc).__name__}: {exc}"
    return printable(text, 400)


class Agent:
    def __init__(
        self,
        control: Control,
        executor: Executor,
        node_id: str,
        capacity: Amount,
        *,
        labels: dict[str, str] | None = None,
        work_dir: Path | str = ".",
        stop_grace: float = 10.0,
        max_running: int | None = None,
        hold_running: float = 0.0,
        lineage: LineageOutbox | None = None,
        slice_lines: SliceLines | None = None,
        gpus: GpuInventory | None = None,
        disk_room: DiskRoom | None = None,
    ) -> None:
        self.control = control
        self.executor = executor
        self.node_id = node_id
        self.capacity = capacity
        self.labels = dict(labels or {})
        # the GPUs it offers (capacity.gpu of them when any): tasks are given theirs by id
        self.gpus = gpus or GpuInventory()
        if isinstance(executor, ScenarioAttempts):  # a scenario's slice is given its GPUs there
            executor.gpus = self.gpus
        self.work_dir = Path(work_dir)
        # whether its work dir's disk has room for new tasks (none given: always, as the local
        # runner's one node, where a task waiting for room elsewhere would wait for ever)
        self.disk_room = disk_room
        self._unfit = ""  # (what the last heartbeat said: its changes are logged)
        self._given_back: dict[str, int] = {}  # task id -> times given back here for want of room
        # a command attempt's task dir goes once its final report is answered (task_dirs.py)
        self.task_dirs = TaskDirSweeper(self.work_dir / "tasks")
        self.stop_grace = stop_grace
        # Slices run at once here (default: 4 per core, at least 4): assignments past it wait
        # SCHEDULED until one ends. Tasks asking for no cpu would otherwise all land here at
        # once, and starting hundreds in one round would starve the node's heartbeat.
        self.max_running = max_running or max(4, int(4 * capacity.cpu))
        self._beating = threading.Event()  # set while a heartbeat thread runs (run_forever)
        self._must_register = False  # the heartbeat thread was refused: register again
        self.incarnation = ""
        self.draining = False
        self.running: dict[Attempt, Running] = {}
        self.refused_reports = 0  # reports the control plane refused (fenced, not allowed)
        self._done: set[Attempt] = set()  # ended here: never started again
        self._stopping: set[Attempt] = set()  # asked to stop (a thread each): collected when they end
        # reports not answered yet; the last one of an attempt (final, or given back) forgets its handle
        self._outbox: list[_Report] = []
        self._in_round = False  # in sync(): reports wait for the round's flush
        self._recovered: set[Attempt] = set()  # re-attached after a restart, not seen assigned yet
        self._loaded = False  # the handles a previous agent left were looked at
        self.logs = LogShipper()  # sends running attempts' stdout and stderr
        self.lineage = lineage  # the lineage events of the scenarios this node runs, to send
        self.slice_lines = slice_lines  # every line its slices print, to the log exporters ([log] slice_output)
        # set when a running attempt's slice ends (one waiter thread per attempt) or the node's
        # assignments change (the long-poll): run_forever starts its next round then, not at
        # the end of its interval
        self.wake = threading.Event()
        # Seconds a started attempt's RUNNING report waits: one that ends by then is reported
        # once, its start (with its time) and its end together, one commit instead of two. 0:
        # at once (a control whose report() takes no ``started``).
        self.hold_running = hold_running
        self._held: dict[Attempt, tuple[float, float]] = {}  # attempt -> (send by, monotonic; started, time.time())
        # Usage: sampled at most every ``usage_every`` seconds (run_forever: its heartbeat
        # interval), by a thread of its own there, so a slow sample never delays a heartbeat;
        # the next heartbeat carries the sample not sent yet.
        self.usage_every = HEARTBEAT_INTERVAL
        self._usage_due = 0.0  # (monotonic) when the next sample is due
        self._usage_lock = threading.Lock()
        self._unsent_usage: NodeUsage | None = None
        self._last_usage: NodeUsage | None = None  # (its /metrics gauges)
        self.last_beat_ok: float | None = None  # (monotonic) its last heartbeat the servers took: /readyz
        self._last_sample: tuple[float, dict[Attempt, float]] | None = None  # (monotonic, cpu seconds by attempt)

    # --- one round ---------------------------------------------------------------------

    def register(self) -> NodeRecord:
        node = self.control.register_node(
            NodeRecord(
                id=self.node_id,
                capacity=self.capacity,
                labels=self.labels,
                gpus=self.gpus.ids,
                slots=self.max_running,  # (the scheduler places no more here)
                unfit=self._fitness(),
            )
        )
        self.incarnation = node.incarnation
        return node

    def _fitness(self) -> str:
        """Why the node takes no new task now ("" when it does: DiskRoom), its changes logged."""
        unfit = one_line(self.disk_room.unfit() if self.disk_room is not None else "", MAX_UNFIT)
        if unfit != self._unfit:
            if unfit:
                log.warning("node %s: unfit, it takes no new task: %s", self.node_id, unfit)
            else:
                log.warning("node %s: fit again, it takes new tasks (%s: room again)", self.node_id, self.work_dir)
            self._unfit = unfit
        return unfit

    def sync(self) -> None:
        """One round: heartbeat (register again if refused), report what ended, stop what is
        no longer assigned here, start what is newly assigned (unless draining). The first
        round re-attaches first to the attempts a previous agent left running (``recover``).
        Reports made during the round are sent together: those of what ended once all ended
        were collected, the rest at the round's end."""
        self._in_round = True
        try:
            self._round()
        finally:
            self._in_round = False
            self._flush()

    def _round(self) -> None:
        if not self._loaded:
            self.recover()
        if not self.incarnation or self._must_register:
            self._must_register = False
            self.register()
        elif not self._beating.is_set():
            if time.monotonic() >= self._usage_due:
                self._keep_usage(self.sample_usage())
            if not self._heartbeat():
                self.register()
        self._flush()
        for run in list(self.running.values()):
            self.logs.ship(self.control, run.attempt, self._task_dir(run.executor_id))
            self._export_lines(run)
        self._collect()
        self._send_held(time.monotonic())
        self._flush()  # (what ended, at once: before the round's other work)
        assigned = {attempt_of(t): t for t in self.control.assignments(self.node_id)}
        for attempt in self._recovered & set(assigned):
            # the old agent may have died before its RUNNING report was sent
            if assigned[attempt].state is RunState.SCHEDULED and attempt in self.running:
                self._report(attempt, RunState.RUNNING)
        self._recovered.clear()
        for attempt, task in assigned.items():
            # RUNNING here by the record, yet neither run nor ended by this agent: an agent before
            # a restart started it and died before its handle was saved. Nothing follows it now.
            if task.state is RunState.RUNNING and attempt not in self.running and attempt not in self._done:
                self._done.add(attempt)
                why = f"node {self.node_id}'s agent restarted with no handle for this running attempt: outcome unknown"
                self._report(attempt, RunState.FAILED, None, why)
        active = {a for a, t in assigned.items() if t.state in (RunState.SCHEDULED, RunState.RUNNING)}
        if any(a not in active for a in self.running) and (ask := getattr(self.control, "current_assignments", None)):
            # A pushed list (a long-poll's or heartbeat's answer) may have been read before a
            # placement this agent already acted on: only a list read now says that an attempt
            # really left (else the attempt it just started would be stopped as "not assigned").
            assigned = {attempt_of(t): t for t in ask(self.node_id)}
            active = {a for a, t in assigned.items() if t.state in (RunState.SCHEDULED, RunState.RUNNING)}
        for attempt in [a for a in self.running if a not in active]:
            self._stop(attempt, "no longer assigned to this node (cancelled or placed again)")
        for attempt, task in assigned.items():
            # cancelled before it started here: nothing to stop, its room on the node goes back now
            if task.state is RunState.CANCELLED and attempt not in self.running and attempt not in self._done:
                self._done.add(attempt)
                self._report(attempt, RunState.CANCELLED, None, "cancelled before it started on this node")
        self._done &= set(assigned)  # forget attempts the control plane forgot
        if self.draining:
            return
        started = 0
        for attempt, task in assigned.items():
            if len(self.running) >= self.max_running or started >= MAX_STARTS_PER_ROUND:
                break  # the rest next round: a round stays short
            if task.state is RunState.SCHEDULED and attempt not in self.running and attempt not in self._done:
                self._start(task)
                started += 1

    def drain(self, grace: float) -> None:
        """Take no new work; let running tasks end for up to ``grace`` seconds, then stop the
        rest and give them back to be placed again."""
        self.draining = True
        deadline = time.monotonic() + grace
        if self.running:
            why = "node %s: draining: %d running task(s) may end for up to %gs"
            log.warning(why, self.node_id, len(self.running), grace)
        while self.running and time.monotonic() < deadline:
            try:
                self.sync()
            except Exception as exc:  # one failed round (away server, full disk) is not the end
                log.warning("node %s: sync while draining failed: %s", self.node_id, _describe(exc))
            if self.running:
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        for attempt in list(self.running):
            run = self.running[attempt]
            self.executor.stop(run.executor_id, self.stop_grace)  # does nothing to one that ended
            result = self.executor.wait(run.executor_id, self.stop_grace)
            # only what the stop ended goes back to be placed again; what ended itself says how
            self._finish(attempt, result, give_back=result is not None and result.state is TaskState.CANCELLED)
        self._flush()

    def run_forever(self, interval: float, stop: threading.Event, heartbeat: float = HEARTBEAT_INTERVAL) -> None:
        """Sync every ``interval`` seconds, and at once when a running slice ends or the node's
        assignments change (a control with ``wait_assignments`` long-polls for that), until
        ``stop`` is set; a failed round is logged in one line and tried again (the control
        plane may be away for a while, a disk full): an agent that exited would only be
        restarted into the same round. Heartbeats go from a thread of their own every
        ``heartbeat`` seconds, so a long round (many slices starting, a slow report) never
        makes the node look dead."""
        beats = threading.Thread(target=self._beat, args=(heartbeat, stop), daemon=True, name="heartbeat")
        beats.start()
        unregister = metrics.register_gauges(self._node_gauges)
        self.usage_every = heartbeat
        threading.Thread(target=self._sample, args=(stop,), daemon=True, name="usage").start()
        # a round also starts as soon as a slice ends or the node's assignments change
        # (``wake``); ``stop`` wakes the loop too

        def wake_on_stop() -> None:
            stop.wait()
            self.wake.set()

        threading.Thread(target=wake_on_stop, daemon=True, name="agent-stop").start()
        wait_for = getattr(self.control, "wait_assignments", None)
        if wait_for is not None:
            threading.Thread(
                target=self._poll_assignments, args=(wait_for, interval, stop), daemon=True, name="assignments-poll"
            ).start()
        try:
            while not stop.is_set():
                self.wake.clear()  # (a slice ending from here on starts another round)
                try:
                    self.sync()
                except Exception as exc:  # see above
                    log.warning("node %s: sync failed: %s", self.node_id, _describe(exc))
                self.wake.wait(self._round_wait(interval))
        finally:
            self._beating.clear()
            unregister()

    def _node_gauges(self) -> list[MetricSample]:
        """The node's capacity and its slices' use at the last usage sample (for /metrics)."""
        node = self.node_id
        found = [
            metrics.sample("runink_node_cpus", self.capacity.cpu, node=node),
            metrics.sample("runink_node_memory_bytes", self.capacity.memory, node=node),
        ]
        if (usage := self._last_usage) is not None:
            found.append(metrics.sample("runink_node_cpus_used", usage.cpu, node=node))
            found.append(metrics.sample("runink_node_memory_used_bytes", usage.memory, node=node))
            herd_of = {attempt[1]: attempt[0] for attempt in list(self.running)}
            by_herd: dict[str, tuple[float, int]] = {}
            for task_id, used in usage.tasks.items():
                if (herd := herd_of.get(task_id)) is not None:  # (still running here)
                    cpu, memory = by_herd.get(herd, (0.0, 0))
                    by_herd[herd] = (cpu + used.cpu, memory + used.memory)
            for herd, (cpu, memory) in sorted(by_herd.items()):
                found.append(metrics.sample("runink_slices_cpus_used", cpu, node=node, herd=herd))
                found.append(metrics.sample("runink_slices_memory_bytes", memory, node=node, herd=herd))
        return found

    def _poll_assignments(self, wait_for: Any, interval: float, stop: threading.Event) -> None:
        """Long-poll the control plane (one call at a time) for a change of this node's
        assignments, and wake the round loop when one comes: a new assignment starts without
        waiting for the interval."""
        known = ""
        while not stop.is_set():
            if not self.incarnation or self._must_register:  # the rounds register first
                stop.wait(min(interval, 0.05))
                continue
            began = time.monotonic()
            try:
                version = str(wait_for(self.node_id, known, LONG_POLL))
            except Exception as exc:  # the control plane away: the rounds still run every interval
                log.info("node %s: assignments long-poll failed: %s", self.node_id, _describe(exc))
                stop.wait(1.0)
                continue
            if version != known:
                known = version
                self.wake.set()
            elif time.monotonic() - began < LONG_POLL / 2:  # answered early with no change: no busy loop
                stop.wait(min(interval, 1.0))

    def _beat(self, every: float, stop: threading.Event) -> None:
        self._beating.set()
        while not stop.is_set() and self._beating.is_set():
            if self.incarnation and not self._must_register:
                try:
                    if not self._heartbeat():
                        self._must_register = True  # the next round registers
                except Exception as exc:  # the control plane away: the next beat tries again
                    log.warning("node %s: heartbeat failed: %s", self.node_id, _describe(exc))
            stop.wait(every)

    def _heartbeat(self) -> bool:
        """One heartbeat, with the usage sample not sent yet if there is one."""
        with self._usage_lock:
            usage, self._unsent_usage = self._unsent_usage, None
        accepted = self.control.heartbeat(self.node_id, self.incarnation, usage=usage, unfit=self._fitness())
        if accepted:
            self.last_beat_ok = time.monotonic()
        return accepted

    def _keep_usage(self, usage: NodeUsage) -> None:
        with self._usage_lock:
            self._unsent_usage = self._last_usage = usage

    def _sample(self, stop: threading.Event) -> None:
        """Sample usage every ``usage_every`` seconds for the heartbeat thread to send."""
        while not stop.is_set():
            try:
                self._keep_usage(self.sample_usage())
            except Exception as exc:  # a sample is never worth the agent: the next one tries again
                log.warning("node %s: usage not sampled: %s", self.node_id, _describe(exc))
                self._usage_due = time.monotonic() + self.usage_every
            stop.wait(max(0.0, self._usage_due - time.monotonic()))

    def sample_usage(self) -> NodeUsage:
        """What the attempts running here use now, by the executor's ``stats``: per task its
        cpu seconds so far, memory and processes now, and its cores in use since the last
        sample; for the node the sums. An attempt whose stats fail (it ended meanwhile) is left
        out. Sets when the next sample is due: ``usage_every`` seconds on, or later when this
        one took more than USAGE_BUDGET of that."""
        began = time.monotonic()
        since, before = self._last_sample or (None, {})
        tasks: dict[str, TaskUsage] = {}
        cpu_seconds: dict[Attempt, float] = {}
        for attempt, run in self.running.copy().items():  # (a copy: the rounds change it meanwhile)
            if len(tasks) >= MAX_USAGE_TASKS:
                break
            try:
                stats = self.executor.stats(run.executor_id)
            except Exception as exc:  # ended and forgotten meanwhile, an executor without stats
                log.debug("node %s: %s: no usage: %s", self.node_id, run.executor_id, _describe(exc))
                continue
            # cores since the last sample: from the cpu time then, or from 0 for an attempt
            # started after it (none for the first sample, or one re-attached after a restart)
            previous = before.get(attempt, 0.0 if since is not None and run.started > since else None)
            elapsed = 0.0 if since is None else began - since
            cores = 0.0 if previous is None or elapsed <= 0 else (stats.cpu_seconds - previous) / elapsed
            try:
                usage = TaskUsage.model_validate(  # (an executor's numbers: checked)
                    {
                        "attempt": attempt[2],
                        "cpu_seconds": stats.cpu_seconds,
                        "cpu": min(max(cores, 0.0), 4096.0),
                        "memory": stats.memory_bytes,
                        "processes": stats.processes,
                    }
                )
            except RecordError as exc:
                log.debug("node %s: %s: usage out of bounds: %s", self.node_id, run.executor_id, exc)
                continue
            if (known := tasks.get(attempt[1])) is None or known.attempt < usage.attempt:
                tasks[attempt[1]] = usage
                cpu_seconds[attempt] = stats.cpu_seconds
        now = time.monotonic()
        self._last_sample = (began, cpu_seconds)
        self._usage_due = began + max(self.usage_every, (now - began) / USAGE_BUDGET)
        return NodeUsage(
            cpu=min(sum(t.cpu for t in tasks.values()), 4096.0),
            memory=min(sum(t.memory for t in tasks.values()), MAX_MEMORY),
            tasks=tasks,
            at=time.time(),
        )

    # --- handles kept across restarts -----------------------------------------------------

    @property
    def handles_dir(self) -> Path:
        return self.work_dir / "attempts"

    def _handle_path(self, executor_id: str) -> Path:
        return self.handles_dir / f"{executor_id}.json"

    def _task_dir(self, executor_id: str) -> Path:
        if isinstance(self.executor, ScenarioAttempts) and (found := self.executor.task_dir(executor_id)):
            return found  # a scenario attempt works in its pipeline run's folder
        return self.work_dir / "tasks" / executor_id

    def _save_handle(
        self, attempt: Attempt, handle: TaskHandle, outcome: Outcome | None = None, *, scenario: bool = False
    ) -> None:
        """Write the attempt's handle, and how it ended once it did, atomically (a temp file
        renamed over), readable by root only.

        Not fsynced: the file only has to outlive this agent's process (the page cache does),
        not the machine. A machine that goes down takes its slices with it, and its next agent
        registers under a new incarnation: the control plane places their tasks again, and an
        attempt the record says RUNNING that this agent knows nothing of is reported FAILED
        (``_round``). A file cut short that way is skipped with a warning (``recover``). Two
        fsyncs per task were 1.5-4 ms of each short job's way (a disk shared with the Barn)."""
        self.handles_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        herd, task_id, number, token = attempt
        data: dict[str, Any] = {
            "herd": herd,
            "task": task_id,
            "attempt": number,
            "token": token,
            "handle": handle.to_dict(),
            "scenario": scenario,
        }
        if outcome is not None:
            state, exit_code, message = outcome
            data["result"] = {"state": str(state), "exit_code": exit_code, "message": message}
        target = self._handle_path(handle.task_id)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(temporary, target)

    def _forget_handle(self, executor_id: str) -> None:
        self._handle_path(executor_id).unlink(missing_ok=True)

    def recover(self) -> None:
        """Re-attach to the attempts a previous agent over this work dir left running: each is
        followed as a running attempt again (the control plane is told nothing unless it ended
        meanwhile, or the old agent's RUNNING report was lost). One the executor cannot re-attach
        to is reported FAILED with the reason. One that had ended (its handle holds its result)
        is reported from that result, its final report having not been answered. Called by the
        first ``sync``."""
        self._loaded = True
        handles = sorted(self.handles_dir.glob("*.json")) if self.handles_dir.is_dir() else []
        # what a previous agent left: dirs of attempts no handle names (ended, forgotten)
        self.task_dirs.sweep_leftovers(path.stem for path in handles)
        if not handles:
            return
        can_recover = self.executor.capabilities().supports_recover
        for path in handles:
            try:
                attempt, handle, outcome, scenario = _read_handle(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("node %s: %s: not an attempt's handle, left alone: %s", self.node_id, path, exc)
                continue
            if attempt in self.running or attempt in self._done:
                continue
            if outcome is not None:
                self._report_ended(attempt, handle, outcome, can_recover)
                continue
            why = None
            if scenario:
                # its outputs' staging lived in the old agent: nothing would publish them
                why = "the agent restarted during this pipeline scenario's attempt: it is not re-attached"
                self._discard(handle, can_recover)
            elif not can_recover:
                why = (
                    f"the agent restarted and its {self.executor.name or 'executor'} executor cannot re-attach "
                    "to running slices (supports_recover is false): the attempt's outcome is unknown"
                )
            else:
                try:
                    self.executor.recover(handle)
                except (RuninkError, OSError, KeyError, ValueError, TypeError) as exc:
                    why = f"the agent restarted and could not re-attach to the attempt's slice: {exc}"
            if why is not None:
                log.warning("node %s: %s: %s", self.node_id, handle.task_id, why)
                self._done.add(attempt)
                self._outbox.append(_Report(attempt, RunState.FAILED, None, why, last=True))
                continue
            log.info("node %s: re-attached to %s", self.node_id, handle.task_id)
            self.running[attempt] = Running(attempt, handle.task_id, handle)
            self._recovered.add(attempt)
            self._wake_when_ended(handle.task_id)

    def _discard(self, handle: TaskHandle, can_recover: bool) -> None:
        """Stop and forget a slice the old agent left that this one will not follow."""
        if not can_recover:
            return
        try:
            self.executor.recover(handle)
            self.executor.stop(handle.task_id, self.stop_grace)
            self.executor.destroy(handle.task_id)
        except (RuninkError, OSError, KeyError, ValueError, TypeError) as exc:
            log.info("node %s: %s: not stopped after the restart: %s", self.node_id, handle.task_id, exc)

    def _report_ended(self, attempt: Attempt, handle: TaskHandle, outcome: Outcome, can_recover: bool) -> None:
        """Queue the reports of an attempt that ended before a restart, from its saved result."""
        self._done.add(attempt)
        known = False  # re-attached only so the executor can destroy what is left of it
        if can_recover:
            try:
                self.executor.recover(handle)
                known = True
            except (RuninkError, OSError, KeyError, ValueError, TypeError) as exc:
                log.info("node %s: %s ended; not re-attached to clean up: %s", self.node_id, handle.task_id, exc)
        state, exit_code, message = outcome
        log.info("node %s: %s ended %s before the restart: reporting it", self.node_id, handle.task_id, state)
        # its RUNNING report may have been lost too (repeating one changes nothing)
        self._outbox.append(_Report(attempt, RunState.RUNNING))
        self._outbox.append(_Report(attempt, state, exit_code, message, last=True, destroy=known))

    # --- tasks ---------------------------------------------------------------------------

    def _report(
        self,
        attempt: Attempt,
        state: RunState,
        exit_code: int | None = None,
        message: str = "",
        *,
        last: bool = False,
        destroy: bool = False,
        started: float | None = None,
        accounting: Accounting | None = None,
    ) -> None:
        # (bounded: one report too large would hold up the rest; a secret the task was given, masked)
        message = printable(masked_text(message, self.logs.masks(attempt)), MAX_MESSAGE)
        self._outbox.append(
            _Report(
                attempt, state, exit_code, message, last=last, destroy=destroy, started=started, accounting=accounting
            )
        )
        if not self._in_round:  # (in a round, sent with the round's others)
            self._flush()

    def _report_start(self, attempt: Attempt) -> None:
        """RUNNING, now or (``hold_running``) with the attempt's end if it ends soon enough."""
        if self.hold_running <= 0:
            self._report(attempt, RunState.RUNNING)
            return
        self._held[attempt] = (time.monotonic() + self.hold_running, time.time())

    def _send_held(self, now: float) -> None:
        """Report RUNNING for the held attempts still running past their hold."""
        for attempt, (send_by, started) in list(self._held.items()):
            if send_by <= now:
                del self._held[attempt]
                self._report(attempt, RunState.RUNNING, started=started)

    def _round_wait(self, interval: float) -> float:
        """Seconds until the next round: ``interval``, or less when a held RUNNING is due."""
        if not self._held:
            return interval
        due = min(send_by for send_by, _ in self._held.values())
        return max(0.0, min(interval, due - time.monotonic()))

    def _flush(self) -> None:
        """Send the reports not answered yet, in order; what cannot be sent now (the control
        plane away) is sent on a later round, so an ended task's report is not lost. An
        attempt's last output goes before its final report, so a reader that sees it ended has
        it all; only once that report was answered are its task and handle forgotten. A control
        with ``report_many`` gets them a round at a time (one round trip for all). Lineage
        events go first: a reader that sees a scenario's task ended finds its lineage."""
        if self.lineage is not None and len(self.lineage) and callable(getattr(self.control, "lineage", None)):
            self.lineage.send(self.control)
        if callable(getattr(self.control, "report_many", None)):
            while self._outbox and self._flush_batch():
                pass
            return
        while self._outbox:
            report = self._outbox[0]
            herd, task_id, number, token = report.attempt
            executor_id = executor_id_of(report.attempt)
            if report.last and not self.logs.ship(self.control, report.attempt, self._task_dir(executor_id), last=True):
                return  # its output could not all be sent now: tried again on a later round
            try:
                # ``started`` and ``accounting`` only when there are: a control may not take them
                extra: dict[str, Any] = {} if report.started is None else {"started": report.started}
                if report.accounting is not None:
                    extra["accounting"] = report.accounting
                accepted = self.control.report(
                    herd,
                    task_id,
                    number,
                    token,
                    report.state,
                    exit_code=report.exit_code,
                    message=report.message,
                    **extra,
                )
            except (RuninkError, OSError) as exc:
                log.warning("node %s: report for task %s not sent yet: %s", self.node_id, task_id, exc)
                return
            self._outbox.pop(0)
            if report.last:  # answered (accepted or fenced): a restarted agent has nothing to follow
                self._forget(executor_id, destroy=report.destroy)
            if not accepted:
                self.refused_reports += 1
                why = "report %s for task %s attempt %d refused"
                log.info("node %s: " + why, self.node_id, report.state, task_id, number)

    def _flush_batch(self) -> bool:
        """Send the outbox's first reports at once (each last one's output shipped first, up to
        the first that cannot be); True if all of them were answered."""
        batch: list[_Report] = []
        size, blocked = 0, False
        for report in self._outbox[:MAX_BATCH]:
            size += len(report.message.encode())
            if size > MAX_BATCH_BYTES:
                break
            executor_id = executor_id_of(report.attempt)
            if report.last and not self.logs.ship(self.control, report.attempt, self._task_dir(executor_id), last=True):
                blocked = True  # its output could not all be sent now: it and what follows, on a later round
                break
            batch.append(report)
        if not batch:
            return False
        try:
            accepted = self.control.report_many(  # type: ignore[attr-defined]
                [TaskReport(*r.attempt, r.state, r.exit_code, r.message, r.started, r.accounting) for r in batch]
            )
        except (RuninkError, OSError) as exc:
            log.warning("node %s: %d report(s) not sent yet: %s", self.node_id, len(batch), exc)
            return False
        del self._outbox[: len(batch)]
        for report, ok in zip(batch, accepted, strict=True):
            if report.last:  # answered (accepted or fenced): a restarted agent has nothing to follow
                self._forget(executor_id_of(report.attempt), destroy=report.destroy)
            if not ok:
                self.refused_reports += 1
                why = "report %s for task %s attempt %d refused"
                log.info("node %s: " + why, self.node_id, report.state, report.attempt[1], report.attempt[2])
        return not blocked

    def _forget(self, executor_id: str, *, destroy: bool) -> None:
        folder = self._task_dir(executor_id)  # (before the destroy: a scenario's is known until then)
        if destroy:
            try:
                self.executor.destroy(executor_id)
            except (RuninkError, OSError) as exc:
                log.warning("node %s: %s: not destroyed in the executor: %s", self.node_id, executor_id, _describe(exc))
        try:
            self._forget_handle(executor_id)
        except OSError as exc:  # a restart reports it again; the control plane answers that as before
            log.warning("node %s: %s: handle not removed: %s", self.node_id, executor_id, _describe(exc))
            return
        if destroy:
            self.task_dirs.remove(folder)  # (a command's only: a scenario's is its pipeline run's)

    def _start(self, task: TaskRecord) -> None:
        with logs.correlation(job=task.job_id, task=task.id):
            self._start_task(task)

    def _start_task(self, task: TaskRecord) -> None:
        attempt = attempt_of(task)
        executor_id = f"{task.id}-a{task.attempt}"
        # As the local runner does: the task dir is private (0700) and holds the slice's work
        # dir, the one folder it may write (an isolating executor grants only such a folder).
        try:
            secrets = self._secrets(task)
        except (SecretsRefused, Refused, NotFound) as exc:  # the control plane said no: it fails
            self._done.add(attempt)
            self._report(attempt, RunState.FAILED, None, f"its secrets: {_describe(exc)}")
            return
        except (RuninkError, OSError) as exc:  # the control plane away a moment: a later round starts it
            log.warning("node %s: task %s not started yet, its secrets not read: %s", self.node_id, task.id, exc)
            return
        if masks := masks_of(secrets):  # (kept with its output's positions: masked in what it reports too)
            self.logs.mask(attempt, masks)
        if task.scenario is not None:
            self._start_scenario(task, executor_id, secrets)
            return
        task_dir = self._task_dir(executor_id)
        cwd = task_dir / "work"
        spec = TaskSpec(
            id=executor_id,
            command=tuple(task.command),
            task_dir=task_dir,
            env={
                "PATH": TASK_PATH,
                "HOME": str(cwd),
                "RUNINK_TASK": task.id,
                "RUNINK_JOB": task.job_id,
                "RUNINK_ATTEMPT": str(task.attempt),
            },
            cwd=cwd,
            limits=task.resources.resources(),
            timeout=task.timeout,
            herd=task.herd,
            herd_limits=None if task.herd_quota is None else task.herd_quota.node_caps(),
        )
        try:
            spec = with_secrets(spec, task.herd, secrets, task.secrets_env)
            spec = grant_gpus(spec, task.gpus, self.gpus)
            task_dir.parent.mkdir(parents=True, exist_ok=True)
            task_dir.mkdir(mode=0o700, exist_ok=True)
            cwd.mkdir(exist_ok=True)
            handle = self.executor.start(spec)
        except RuninkError as exc:  # refused by the executor (a limit, a missing program)
            self._could_not_start(attempt, exc, str(exc))
            return
        except OSError as exc:  # the disk (full, read-only): this attempt fails, the agent goes on
            self._could_not_start(attempt, exc, f"node {self.node_id} could not start it: {_describe(exc)}")
            return
        self._started(attempt, handle, job=task.job_id)

    def _could_not_start(self, attempt: Attempt, exc: BaseException, why: str) -> None:
        """Report an attempt that could not start here (``exc``, said as ``why``): FAILED, or
        given back (PENDING, placed elsewhere) when the work dir's disk had no room, and the
        node says so from now on (DiskRoom). The heartbeat that says so goes first, so that
        the task is not placed here again. A task given back MAX_GIVE_BACKS times already
        (each placement takes an attempt, and so one of its retries) fails instead."""
        self._done.add(attempt)
        task_id = attempt[1]
        given = self._given_back.get(task_id, 0)
        if self.disk_room is None or not self.disk_room.failed(exc) or given >= MAX_GIVE_BACKS:
            self._report(attempt, RunState.FAILED, None, why)
            return
        self._given_back[task_id] = given + 1
        while len(self._given_back) > MAX_GIVEN_BACK_KEPT:  # (the oldest first: a dict keeps its order)
            del self._given_back[next(iter(self._given_back))]
        try:
            self._heartbeat()
        except Exception as beat:  # (the control plane away: the report waits for it anyway)
            log.warning("node %s: heartbeat failed: %s", self.node_id, _describe(beat))
        self._report(attempt, RunState.PENDING, None, f"{why}: given back")

    def _secrets(self, task: TaskRecord) -> dict[str, bytes]:
        """The values of the secrets ``task`` names, asked of the control plane for this attempt
        (it gives them only to the node the attempt is placed on)."""
        if not task.secrets:
            return {}
        return self.control.task_secrets(task.herd, task.id, task.attempt, task.token, self.node_id)

    def _start_scenario(self, task: TaskRecord, executor_id: str, secrets: dict[str, bytes]) -> None:
        """Start a pipeline scenario's attempt through the node's ScenarioAttempts."""
        attempt = attempt_of(task)
        scenarios = self.executor if isinstance(self.executor, ScenarioAttempts) else None
        try:
            if scenarios is None:
                raise RuninkError(f"node {self.node_id} runs commands only: its agent was given no pipelines")
            handle = scenarios.start_scenario(task, executor_id, secrets)
        except (RuninkError, OSError) as exc:
            self._could_not_start(attempt, exc, _describe(exc))
            return
        except Exception as exc:  # anything else its pipeline made raise: this attempt fails, not every round
            log.exception("node %s: scenario task %s could not start", self.node_id, task.id)
            self._done.add(attempt)
            self._report(attempt, RunState.FAILED, None, f"node {self.node_id} could not start it: {_describe(exc)}")
            return
        self._started(attempt, handle, scenario=True, job=task.job_id)

    def _started(self, attempt: Attempt, handle: TaskHandle, *, scenario: bool = False, job: str = "") -> None:
        try:
            self._save_handle(attempt, handle, scenario=scenario)
        except OSError as exc:  # it runs; only a restart of this agent would lose it
            why = "handle not saved, a restart cannot re-attach"
            log.warning("node %s: %s: %s: %s", self.node_id, handle.task_id, why, exc)
        self.running[attempt] = Running(attempt, handle.task_id, handle, scenario=scenario, job=job)
        self._wake_when_ended(handle.task_id)
        self._report_start(attempt)

    def _wake_when_ended(self, executor_id: str) -> None:
        """Set ``wake`` when the slice ``executor_id`` ends: a thread blocked in the executor's
        wait (the round itself still collects the result)."""

        def wait() -> None:
            try:
                self.executor.wait(executor_id, None)
            except Exception as exc:  # (forgotten by the executor meanwhile): the rounds go on as before
                log.debug("node %s: %s: not followed to its end: %s", self.node_id, executor_id, _describe(exc))
            self.wake.set()

        threading.Thread(target=wait, name=f"wait-{executor_id}", daemon=True).start()

    def _collect(self) -> None:
        for attempt, run in list(self.running.items()):
            result = self.executor.wait(run.executor_id, timeout=0)
            if result is not None:
                self._finish(attempt, result)

    def _stop(self, attempt: Attempt, why: str) -> None:
        """Stop the attempt's slice from a thread of its own: a stop waits up to the grace for
        the slice to end, and a slice that ignores SIGTERM once held the whole round (every
        other slice's start and end, the heartbeat's report) for it, stop after stop. The
        round collects the end as any other (``_collect``)."""
        if attempt in self._stopping:
            return
        self._stopping.add(attempt)
        run = self.running[attempt]
        log.info("node %s: stopping %s: %s", self.node_id, run.executor_id, why)

        def stop() -> None:
            try:
                self.executor.stop(run.executor_id, self.stop_grace)
            except Exception as exc:  # (ended and forgotten meanwhile): its end is collected as any
                log.warning("node %s: %s: stop failed: %s", self.node_id, run.executor_id, _describe(exc))
            self.wake.set()

        threading.Thread(target=stop, name=f"stop-{run.executor_id}", daemon=True).start()

    def _export_lines(self, run: Running, *, last: bool = False) -> None:
        if self.slice_lines is None:
            return
        herd, task_id, number, _ = run.attempt
        labels = {"herd": herd, "job": run.job, "task": task_id, "attempt": str(number)}
        try:
            self.slice_lines.read(run.executor_id, self._task_dir(run.executor_id), labels, last=last)
        except Exception as exc:  # its lines are never worth the agent: the next round tries again
            log.warning("node %s: %s: output lines not exported: %s", self.node_id, run.executor_id, _describe(exc))

    def _finish(self, attempt: Attempt, result: TaskResult | None, *, give_back: bool = False) -> None:
        with logs.correlation(job=self.running[attempt].job, task=attempt[1]):
            self._finish_attempt(attempt, result, give_back=give_back)

    def _finish_attempt(self, attempt: Attempt, result: TaskResult | None, *, give_back: bool = False) -> None:
        run = self.running.pop(attempt)
        self._stopping.discard(attempt)
        self._export_lines(run, last=True)
        self._done.add(attempt)
        held = self._held.pop(attempt, None)  # its RUNNING goes with the end, with its time
        if result is None:  # not ended within the stop grace: nothing true to report
            # (its handle stays: a restarted agent re-attaches and reports how it ended)
            log.warning("node %s: %s did not end after stop", self.node_id, run.executor_id)
            self.logs.ship(self.control, attempt, self._task_dir(run.executor_id))
            self.logs.forget(attempt)
            return
        outcome: Outcome
        if give_back:
            outcome = (RunState.PENDING, None, f"node {self.node_id} drained: {result.state}")
        else:
            outcome = (RunState(result.state.value), result.exit_code, result.message)
        if run.handle is not None:
            try:  # so a restart before the report is answered reports it, not a lost attempt
                self._save_handle(attempt, run.handle, outcome, scenario=run.scenario)
            except OSError as exc:
                log.warning("node %s: %s: result not saved: %s", self.node_id, run.executor_id, _describe(exc))
        # destroyed in the executor only once the report was answered (a restart before then reports the result)
        self._report(
            attempt,
            *outcome,
            last=True,
            destroy=True,
            started=None if held is None else held[1],
            accounting=_accounting(result),
        )


def _accounting(result: TaskResult) -> Accounting | None:
    """What the ended attempt used, if its executor accounted it (cpu time and peak memory)."""
    if result.cpu_seconds is None or result.peak_memory_bytes is None:
        return None
    cpu = result.cpu_seconds if math.isfinite(result.cpu_seconds) and result.cpu_seconds >= 0 else 0.0
    return Accounting(cpu, max(0, int(result.peak_memory_bytes)), result.duration)


def _read_handle(path: Path) -> tuple[Attempt, TaskHandle, Outcome | None, bool]:
    data: Any = json.loads(path.read_text())
    attempt: Attempt = (str(data["herd"]), str(data["task"]), int(data["attempt"]), int(data["token"]))
    handle = TaskHandle.from_dict(data["handle"])
    if handle.task_id != executor_id_of(attempt) or path.name != f"{handle.task_id}.json":
        raise ValueError(f"names task {handle.task_id!r}, not the attempt its file is named for")
    outcome: Outcome | None = None
    if (result := data.get("result")) is not None:
        exit_code = result["exit_code"]
        outcome = (RunState(result["state"]), None if exit_code is None else int(exit_code), str(result["message"]))
    return attempt, handle, outcome, data.get("scenario") is True
