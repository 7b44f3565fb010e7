"""The job and task lifecycle: what the API and the agents ask of the control plane.

Submissions are checked and stored at once (a job and its tasks, all or none); agents
register, heartbeat, read their assignments and report what their tasks did. Every report
names the attempt and fencing token it is for: one from an older attempt (a late or
partitioned agent) is refused and changes nothing. A task's change and its job's derived
state are written in one commit, checked against the revisions read, so a job's state never
disagrees with its tasks'. The same code serves ``runink server`` and the in-process
deployment of ``runink run``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import secrets
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from runink.core.config import CostConfig
from runink.core.control.cost import used as attempt_cost
from runink.core.control.records import (
    MAX_PIPELINE_TASKS,
    MAX_UNFIT,
    RESTRICTED_LABELS,
    Accounting,
    Amount,
    Herd,
    JobRecord,
    LocalInput,
    Near,
    NodeRecord,
    NodeUsage,
    PipelineTask,
    Quota,
    Record,
    RecordError,
    RunState,
    TaskRecord,
    TaskReport,
    capped,
    job_of,
    job_state,
    job_task_id,
    keys,
    new_id,
    parse_usage,
)
from runink.core.control.store import (
    MAX_CONFLICT_RETRIES,
    ClusterStore,
    Conflict,
    NotFound,
    Refused,
    StaleRead,
    Versioned,
    assigned_to,
)
from runink.core.interfaces.barn import TxnOp
from runink.core.interfaces.secrets import SecretBackend, SecretError
from runink.core.pipeline.compile import CompiledPipeline
from runink.core.report import one_line, printable
from runink.core.units import amount_text

if TYPE_CHECKING:
    from runink.core.control.admission import Gate

log = logging.getLogger(__name__)
#: places a submission's tasks and has the callable given store them so, with the scheduling
#: epoch to compare; returns what it returned, or None having called nothing (ControlLoop.place_with)
Placer = Callable[[list[TaskRecord], Callable[[list[TaskRecord], tuple[str, int]], int]], int | None]

#: final states that count as a failure of the attempt: retried while retries are left
REPORT_THREADS = 16  # reports of different jobs a process applies at once (report_many)
#: a cancelled task's message when its attempt ended SUCCEEDED before the cancel reached it
DONE_BEFORE_CANCEL = (
    "cancelled after attempt {attempt} had ended SUCCEEDED: its work was done (a scenario's outputs published)"
)
MAX_MESSAGE = 4000  # characters of an agent's message kept (it comes from the node: bounded, printable)
RETRIED = frozenset({RunState.FAILED, RunState.OOMKILLED, RunState.DEADLINE_EXCEEDED})
#: what an agent may report: the task started, ended, or was given back to be placed again
REPORTABLE = frozenset(
    {
        RunState.PENDING,
        RunState.RUNNING,
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.OOMKILLED,
        RunState.DEADLINE_EXCEEDED,
        RunState.CANCELLED,
    }
)


class PlacedElsewhere(Refused):
    """A report from a node that the attempt it names was not placed on."""


@functools.cache
def _appliers() -> ThreadPoolExecutor:
    """The threads ``report_many`` applies the reports of different jobs on (a process's
    lifecycles share them: each report is a few Barn round trips, mostly waiting)."""
    return ThreadPoolExecutor(max_workers=REPORT_THREADS, thread_name_prefix="report")


def placed_on(task: TaskRecord, attempt: int) -> str | None:
    """The node ``task``'s ``attempt`` was placed on, when its record says (None: never placed,
    or not known). The current attempt's node, else (it left its node: cancelled, taken back)
    the node its placement named."""
    if task.attempt == attempt and task.node is not None:
        return task.node
    placed = [t.node for t in task.transitions if t.attempt == attempt and t.state is RunState.SCHEDULED]
    return placed[-1] if placed else None


def _refusal(exc: RecordError, what: str) -> Refused:
    return Refused(f"{what}: {exc}")


def pipeline_tasks(
    compiled: CompiledPipeline, *, clamp: Amount | None = None, shared_paths: Sequence[Path | str] = ()
) -> list[PipelineTask]:
    """A compiled pipeline's scenarios as a pipeline job's tasks, in dependency order, each
    after the scenarios producing its source. ``clamp``: resources no task asks past (the
    embedded deployment's one node: a scenario asking more cpu than it has runs there with
    all of it, as it always did). A source written by another scenario is the task's
    ``local_input`` (it runs where that was written) unless it is remote (``s3://``) or under
    one of ``shared_paths`` (folders every node sees: ``[cluster] shared_paths``); with one
    node, as ``runink run`` has, that always holds."""
    shared = _real_folders(shared_paths)
    tasks = []
    for item in compiled.scenarios:
        scenario, req = item.scenario, item.scenario.requires
        # (pids too: the node gives the slice what its task asked, not what its file says)
        wanted = Amount(cpu=req.cpu, memory=req.memory or 0, gpu=req.gpu, pids=req.pids or 0)
        if clamp is not None:
            wanted = Amount(
                cpu=min(wanted.cpu, clamp.cpu),
                memory=min(wanted.memory, clamp.memory),
                gpu=min(wanted.gpu, clamp.gpu),
                pids=wanted.pids,
            )
        tasks.append(
            PipelineTask(
                scenario=item.name,
                after=list(item.upstream),
                resources=wanted,
                timeout=req.timeout,
                retries=scenario.retries,
                backoff=scenario.backoff,
                node_labels=dict(scenario.node_labels),
                colocate_with=scenario.colocate_with,
                local_input=_local_input(item.upstream, item.source.path, item.source.remote, shared),
                secrets=list(scenario.secrets),
                secrets_env=scenario.secrets_env,
            )
        )
    return tasks


def _real_folders(folders: Sequence[Path | str]) -> list[str]:
    """Each folder as given and with its links resolved (a path may be written either way)."""
    return sorted({os.path.normpath(f) for f in folders} | {os.path.realpath(f) for f in folders})


def _local_input(upstream: Sequence[str], path: Path, remote: bool, shared: Sequence[str]) -> LocalInput | None:
    if not upstream or remote:
        return None
    for candidate in {os.path.normpath(path), os.path.realpath(path)}:
        if any(candidate == folder or candidate.startswith(folder.rstrip(os.sep) + os.sep) for folder in shared):
            return None
    return LocalInput(scenario=upstream[0], path=str(path))


def _with_near(
    pipeline: str, tasks: list[PipelineTask], ids: dict[str, str], records: list[TaskRecord]
) -> list[TaskRecord]:
    """The records with their ``near`` constraints: the node of the scenario each is colocated
    with, and of the upstream scenario that wrote its local input. Refused (one line) for a
    ``colocate_with`` naming no other scenario of the submission, a local input from a scenario
    it does not come after, and scenarios that would wait on each other for ever (colocated
    with one that comes after it: one waits to be placed, the other to succeed)."""
    waits: dict[str, list[str]] = {}  # scenario -> the scenarios it waits for (to succeed or be placed)
    near: dict[str, list[Near]] = {}
    for given in tasks:
        name = printable(given.scenario, 200)
        waits[given.scenario] = list(given.after)
        other = given.colocate_with
        if other is not None:
            if other == given.scenario or other not in ids:
                why = "itself" if other == given.scenario else "no scenario of this submission"
                raise Refused(
                    f"pipeline {pipeline}: scenario {name!r}: colocate_with {printable(other, 200)!r} is {why}"
                )
            near.setdefault(given.scenario, []).append(Near(task=ids[other], scenario=other))
            waits[given.scenario].append(other)
        local = given.local_input
        if local is not None:
            if local.scenario not in given.after:
                why = f"local_input from {printable(local.scenario, 200)!r}, not a scenario it comes after"
                raise Refused(f"pipeline {pipeline}: scenario {name!r}: {why}")
            near.setdefault(given.scenario, []).append(
                Near(task=ids[local.scenario], scenario=local.scenario, path=local.path)
            )
    cycle = _cycle(waits)
    if cycle:
        shown = " -> ".join(printable(n, 200) for n in [*cycle, cycle[0]])
        raise Refused(f"pipeline {pipeline}: scenarios wait on each other for ever (after, colocate_with): {shown}")
    return [
        r.model_copy(update={"near": near[r.scenario.scenario]}) if r.scenario and r.scenario.scenario in near else r
        for r in records
    ]


def _cycle(waits: dict[str, list[str]]) -> list[str]:
    """A cycle in ``waits`` (each name -> the names it waits for), or []."""
    done: set[str] = set()
    for start in waits:
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [(start, iter(waits.get(start, [])))]
        while stack:
            node, rest = stack[-1]
            step = next(rest, None)
            if step is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif step in on_path:
                return path[path.index(step) :]
            elif step not in done:
                stack.append((step, iter(waits.get(step, []))))
                path.append(step)
                on_path.add(step)
    return []


MAX_COMMANDS = 100  # commands one job runs in turn in its slice


def in_one_slice(commands: list[list[str]]) -> list[str]:
    """The argv that runs ``commands`` in turn in one slice, sharing its work dir, and stops at
    the first that fails (its exit status is the task's): ``/bin/sh -c`` sequences them, every
    argument quoted, so no shell syntax in them is interpreted (a ``;`` or ``$(...)`` is text),
    and each program is ``exec``'d in a subshell of its own, so it is a program, never one of
    the shell's builtins (``eval`` ran its text, ``exit 0`` ended the sequence a success) nor
    an assignment (``FOO=bar``)."""
    if not 0 < len(commands) <= MAX_COMMANDS or not all(commands):
        raise ValueError(f"commands: give 1 to {MAX_COMMANDS} commands, each a program and its arguments")
    for command in commands:
        if command[0].startswith("-"):  # (exec would take it for an option)
            raise ValueError(f"commands: a program's name may not start with '-': {command[0][:100]!r}")
    return ["/bin/sh", "-c", " && ".join(f"( exec {shlex.join(command)} )" for command in commands)]


def unbooked(quota: Quota, request: Amount) -> list[str]:
    """The resources (cpu, memory) ``quota`` limits and ``request`` asks none of. A slice asking
    none has no limit of its own, only its herd's parent on its node, capped at the whole
    quota: its use counted nowhere, a herd on two nodes used 1.33 cores of a 1-core quota (a
    review's run)."""
    return [name for name in ("cpu", "memory") if getattr(quota, name) and not getattr(request, name)]


#: tasks cancelled per commit (a job of more: several commits, the job with its last ones)
CANCEL_BATCH = 100
#: seconds a cancel tries while the job's tasks keep changing under it (within a client's read timeout)
CANCEL_WITHIN = 5.0


def never_fits(request: Amount, capacity: Amount) -> str | None:
    """Why a node of ``capacity`` could never hold ``request`` (even empty), or None."""
    for name, wanted, has in (
        ("cpu", request.cpu, capacity.cpu),
        ("memory", request.memory, capacity.memory),
        ("gpu", request.gpu, capacity.gpu),
    ):
        if wanted > has:
            return f"{name} {amount_text(name, wanted)} > capacity {amount_text(name, has)}"
    return None


class Lifecycle:
    """Jobs, tasks and nodes through their lifecycle, on a ClusterStore.

    ``clock`` dates retries' backoff (``not_before``, read by the scheduler with the same
    leader's clock); ``jitter`` returns a factor in [0.5, 1.0] (tests fix it).
    """

    def __init__(
        self,
        store: ClusterStore,
        *,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = lambda: random.uniform(0.5, 1.0),
        secrets: SecretBackend | None = None,
        rates: CostConfig | None = None,
        default_request: tuple[float, int] = (1.0, 256 * 1024**2),
        scenario_memory: int = 2 * 1024**3,
    ) -> None:
        self.store = store
        # (cores, bytes) a task asking none of a resource its herd's quota limits is given
        # ([admission] default_cpu, default_memory): see ``unbooked``
        self.default_request = default_request
        # a pipeline scenario's when it asks none: what its node would give its slice ([limits] memory)
        self.scenario_memory = scenario_memory
        self.cancel_within = CANCEL_WITHIN
        self.clock = clock
        self.jitter = jitter
        self.secrets = secrets  # where herds' secrets are kept (None: no task may ask for one)
        self.rates = rates or CostConfig()  # what ended attempts' accounting is priced at
        # The leader's scheduler on this server (core/server/loop.py ``ControlLoop.place_with``):
        # a submission's tasks placed in the commit that stores them, when nothing waits and
        # they fit; it returns None otherwise (then they are stored PENDING). None: never.
        self.placer: Placer | None = None

    # --- secrets -----------------------------------------------------------------------

    def _check_secrets(self, herd: str, tasks: list[TaskRecord]) -> None:
        wanted = {name for task in tasks for name in task.secrets}
        if not wanted:
            return
        if self.secrets is None:
            raise Refused(f"herd {herd!r}: this cluster keeps no secrets (no secret backend configured)")
        for task in tasks:
            for name in task.secrets:
                try:
                    self.secrets.version(herd, name)
                except KeyError:
                    where = f"scenario {task.scenario.scenario!r}" if task.scenario else "the command"
                    raise Refused(f"herd {herd!r} has no secret {name!r} ({where} asks for it)") from None

    def task_secrets(self, herd: str, task_id: str, attempt: int, token: int, node: str | None) -> dict[str, bytes]:
        """The values of the secrets a task's attempt receives, for the node that runs it: only
        the names the task record lists, only while that attempt is the task's current one and
        placed on ``node`` (None: not checked). Raises Refused for
        any other asker, NotFound for a task or secret that is gone; never logs a value."""
        where = printable(f"secrets for task {task_id} attempt {attempt}", 300)
        task = self.store.task(herd, task_id).record
        if task.attempt != attempt or task.token != token or task.state not in (RunState.SCHEDULED, RunState.RUNNING):
            raise Refused(f"{where}: not the task's current attempt, or it is not starting")
        if node is not None and placed_on(task, attempt) != node:
            raise Refused(f"{where}: the attempt is not placed on node {printable(node, 100)!r}")
        if not task.secrets:
            return {}
        if self.secrets is None:
            raise Refused(f"{where}: this cluster keeps no secrets (no secret backend configured)")
        try:
            return {name: self.secrets.get(herd, name) for name in task.secrets}
        except KeyError as exc:  # deleted since the job was accepted
            raise NotFound(f"{where}: {exc}") from None
        except SecretError as exc:  # (one that cannot be opened: no retry makes it openable)
            raise Refused(f"{where}: {exc}") from None

    # --- submissions -------------------------------------------------------------------

    def submit_command(
        self,
        herd: str,
        command: list[str],
        resources: Amount | None = None,
        *,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        priority: int = 0,
        node_labels: dict[str, str] | None = None,
        secrets: Sequence[str] = (),
        secrets_env: bool = False,
        also: Sequence[TxnOp] = (),
        admit: Gate | None = None,
        on_stored: Callable[[int], object] | None = None,
    ) -> JobRecord:
        """Store a job of one task running ``command``. Raises NotFound for an unknown herd,
        Refused (saying why) for a request that is malformed, exceeds the herd's quota on its
        own, or could never fit any registered node; nothing is stored then. ``secrets``: names
        of the herd's secrets the task receives (files, and env vars with ``secrets_env``).
        ``also``: writes committed with the job (the API's audit record of the submission).
        ``admit``: the server's admission (core/control/admission.py), asked once the herd is
        read; it raises to refuse, and its writes are committed with the job. ``on_stored``:
        called with the revision the job was stored at (a waiter's first ``after``)."""
        # from this server's view of the Barn if it has one (no round trip: the commit compares
        # the herd's revision), else read from the Barn, the two at once
        recent = self.store.view is not None
        nodes = functools.partial(self.store.nodes, recent=True) if recent else self.store.later(self.store.nodes)
        try:
            found = self.store.herd(herd, recent=recent)
        except ValueError as exc:  # a malformed herd name
            raise Refused(str(exc)) from None
        job_id = new_id("job")
        try:
            task = TaskRecord.model_validate(  # (every value the caller gave checked)
                {
                    "id": job_task_id(job_id, 1),
                    "job_id": job_id,
                    "herd": herd,
                    "command": command,
                    "resources": (resources or Amount()).model_dump(),
                    "timeout": timeout,
                    "retries": retries,
                    "backoff": backoff,
                    "priority": priority,
                    "queued": time.time_ns(),
                    "node_labels": node_labels or {},
                    "secrets": list(secrets),
                    "secrets_env": secrets_env,
                }
            )
            job = JobRecord(id=job_id, herd=herd, tasks=[task.id])
        except RecordError as exc:
            raise _refusal(exc, "submission") from None
        known = [v.record for v in nodes()]
        task = self._booked(found.record, task)
        self._admit(found.record, [task], known)
        return self._store(job, [task], found, also, admit, on_stored, known)

    def _store(  # noqa: PLR0917 (the submissions' parts, passed on)
        self,
        job: JobRecord,
        tasks: list[TaskRecord],
        herd: Versioned[Herd],
        also: Sequence[TxnOp],
        admit: Gate | None,
        on_stored: Callable[[int], object] | None,
        nodes: list[NodeRecord] | None = None,
    ) -> JobRecord:
        """Admit the job (``admit``) and store it, with its estimate and what admission writes;
        admitted again on the herd as it is now when another server changed what it was
        admitted on. Returns the job as stored (``on_stored`` is given the revision). A herd
        read again (it changed since ``herd``) is checked again as ``_admit`` does (``nodes``)."""
        recheck = functools.partial(self._admit, tasks=tasks, nodes=nodes)
        if admit is None:
            revision = self._submit(job, tasks, herd, also, (), recheck)
            if on_stored is not None:
                on_stored(revision)
            return job
        for _ in range(MAX_CONFLICT_RETRIES):
            admitted = admit(herd.record, job.kind, tasks)
            priced = job.model_copy(update={"estimate": admitted.estimate, "owner": admitted.owner})
            try:
                revision = self._submit(priced, tasks, herd, [*also, *admitted.ops], admitted.compare, recheck)
            except StaleRead:
                admitted.on_stale()
                herd = self.store.herd(job.herd)
                continue
            finally:  # (stored: this server's view counts its tasks from its commit on)
                admitted.release()
            admitted.on_commit(revision)
            if on_stored is not None:
                on_stored(revision)
            return priced
        raise Conflict(f"herd {job.herd}: its admission state changed {MAX_CONFLICT_RETRIES} times in a row")

    def _submit(  # noqa: PLR0917 (store.submit's, passed on)
        self,
        job: JobRecord,
        tasks: list[TaskRecord],
        herd: Versioned[Herd],
        ops: Sequence[TxnOp],
        compare: Sequence[tuple[str, int]],
        recheck: Callable[[Herd], None],
    ) -> int:
        """``store.submit``, the tasks placed in the same commit when this server's scheduler
        can place them now (``placer``); else (or when its epoch changed meanwhile) PENDING."""
        if self.placer is not None:

            def placed(records: list[TaskRecord], fence: tuple[str, int]) -> int:
                return self.store.submit(job, records, herd, ops, [*compare, fence], recheck=recheck)

            try:
                revision = self.placer(tasks, placed)
            except StaleRead:  # (another leader's epoch, or what admission read: stored PENDING, or raised again)
                revision = None
            if revision is not None:
                return revision
        return self.store.submit(job, tasks, herd, ops, compare, recheck=recheck)

    def submit_pipeline(
        self,
        herd: str,
        pipeline: str,
        tasks: list[PipelineTask],
        *,
        run: str | None = None,
        priority: int = 0,
        also: Sequence[TxnOp] = (),
        admit: Gate | None = None,
        on_stored: Callable[[int], object] | None = None,
    ) -> JobRecord:
        """Store a pipeline run as a job of one task per scenario (``pipeline_tasks`` builds
        them from a compiled pipeline), each placed only once the tasks of the scenarios it
        comes ``after`` succeeded: scenarios run in dependency order, across nodes too. Each
        task names ``pipeline`` (its .dsl, compiled again where it runs) and ``run`` (the run's
        id, naming its work folder there; default: the job's id). Refused, storing nothing, as
        ``submit_command`` is, and for a scenario named twice or after one not before it, or
        placed near one that cannot be (``_with_near``: ``colocate_with``, ``local_input``).
        ``also``, ``admit`` and ``on_stored``: as ``submit_command``'s."""
        try:
            found = self.store.herd(herd, recent=True)  # (as submit_command's)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        if not 0 < len(tasks) <= MAX_PIPELINE_TASKS:
            raise Refused(f"pipeline {pipeline}: {len(tasks)} scenarios (expected 1 to {MAX_PIPELINE_TASKS})")
        job_id = new_id("job")
        ids: dict[str, str] = {}
        records = []
        queued = time.time_ns()  # (the job's tasks at once: in their own order, by id, among themselves)
        for given in tasks:
            name = given.scenario
            if name in ids:
                raise Refused(f"pipeline {pipeline}: scenario {printable(name, 200)!r} given twice")
            unknown = [u for u in given.after if u not in ids]
            if unknown:
                why = f"comes after {printable(unknown[0], 200)!r}, not a scenario before it"
                raise Refused(f"pipeline {pipeline}: scenario {printable(name, 200)!r} {why}")
            ids[name] = job_task_id(job_id, len(ids) + 1)
            try:
                records.append(
                    TaskRecord.model_validate(  # (every value the caller gave checked)
                        {
                            "id": ids[name],
                            "job_id": job_id,
                            "herd": herd,
                            "scenario": {
                                "pipeline": pipeline,
                                "scenario": name,
                                "run": run or job_id,
                                "roots": found.record.roots,  # (the node compiles only in them)
                            },
                            "resources": given.resources.model_dump(),
                            "timeout": given.timeout,
                            "retries": given.retries,
                            "backoff": given.backoff,
                            "priority": priority,
                            "queued": queued,
                            "node_labels": given.node_labels,
                            "after": [ids[u] for u in given.after],
                            "secrets": given.secrets,
                            "secrets_env": given.secrets_env,
                        }
                    )
                )
            except RecordError as exc:
                raise _refusal(exc, f"scenario {printable(name, 200)!r}") from None
        records = [self._booked(found.record, t) for t in _with_near(pipeline, tasks, ids, records)]
        job = JobRecord(id=job_id, herd=herd, kind="pipeline", tasks=[t.id for t in records])
        nodes = [v.record for v in self.store.nodes(recent=True)]
        self._admit(found.record, records, nodes)
        return self._store(job, records, found, also, admit, on_stored, nodes)

    def _booked(self, herd: Herd, task: TaskRecord) -> TaskRecord:
        """``task`` given the default cpu and memory (``default_request``; a scenario's memory:
        ``scenario_memory``) where it asks none and its herd's quota limits them: its slice is
        limited to them and they count."""
        cpu, memory = self.default_request
        default = {"cpu": cpu, "memory": self.scenario_memory if task.scenario is not None else memory}
        given = {name: min(default[name], getattr(herd.quota, name)) for name in unbooked(herd.quota, task.resources)}
        if not given:
            return task
        return task.model_copy(update={"resources": task.resources.model_copy(update=given)})

    def _admit(self, herd: Herd, tasks: list[TaskRecord], nodes: list[NodeRecord] | None = None) -> None:
        """Refuse (Refused, saying why) tasks that could never run: one past its herd's quota on
        its own, one asking for a secret its herd does not have, or one no registered node could
        hold even empty (``nodes``: the nodes, read here if not given). With no node registered
        yet they wait PENDING: nodes may join later."""
        self._check_secrets(herd.name, tasks)
        if nodes is None:
            nodes = [v.record for v in self.store.nodes(recent=True)]
        for task in tasks:
            over = herd.quota.exceeded_by(task.resources, 1)
            if over:
                raise Refused(f"herd {herd.name!r}: the task alone exceeds the herd's quota: {over}")
            if unasked := unbooked(herd.quota, task.resources):  # (its quota set since it was given defaults)
                raise Refused(f"herd {herd.name!r} now has a {unasked[0]} quota: submit the job again")
            if nodes and all(never_fits(task.resources, n.capacity) for n in nodes):
                nodes = [v.record for v in self.store.nodes()]  # (one that just joined: not in a view yet)
            if nodes and all(never_fits(task.resources, n.capacity) for n in nodes):
                reasons = "; ".join(f"{n.id}: {never_fits(task.resources, n.capacity)}" for n in nodes)
                raise Refused(f"the task can never fit any node ({reasons})")

    # --- nodes -------------------------------------------------------------------------

    def register_node(self, node: NodeRecord) -> NodeRecord:
        """Register (or register again) a node's agent under a new incarnation. A node known
        already keeps its cordoned and draining flags (an admin's: only `runink nodes uncordon`
        clears them; a node registering again once undid a drain) and its heartbeat count, and
        comes back ready."""
        key = keys.node(node.id)
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                current = self.store.node(node.id)
            except NotFound:
                current = None
            claimed = [k for k in node.labels if k.startswith(RESTRICTED_LABELS)]
            if claimed:
                why = "set by cluster admins (runink nodes label), not by a node"
                raise Refused(f"node {node.id}: label {claimed[0]!r}: {why}")
            changes: dict[str, object] = {"incarnation": secrets.token_hex(8), "ready": True, "draining": False}
            if current is not None:
                changes["cordoned"] = current.record.cordoned
                changes["draining"] = current.record.draining
                changes["heartbeat"] = current.record.heartbeat + 1
                kept = {k: v for k, v in current.record.labels.items() if k.startswith(RESTRICTED_LABELS)}
                changes["labels"] = {**node.labels, **kept}  # (an admin's stay as they were)
                changes.update(_pinned(node, current.record.pinned))  # (and its capacity's cap)
            registered = NodeRecord.model_validate({**node.model_dump(), **changes})
            try:
                self.store.commit([(key, current.revision if current else 0)], [(key, registered)])
            except Conflict:
                continue
            log.info("node %s registered (incarnation %s)", registered.id, registered.incarnation)
            return registered
        raise Conflict(f"node {node.id}: changed by others {MAX_CONFLICT_RETRIES} times in a row")

    def heartbeat(self, node_id: str, incarnation: str, usage: object = None, unfit: str = "") -> bool:
        """Count a heartbeat. False when ``incarnation`` is not the node's current one or the
        node was found dead: its agent must register again. ``usage`` (what the node's running
        tasks use, a NodeUsage or its dict) goes into the node's record in the same write; one
        that is malformed (it comes from the node) is dropped, said in one line, and the
        heartbeat still counts. ``unfit``: why the node takes no new task now ("" when it does),
        kept in its record (one printable line of at most MAX_UNFIT bytes: the node's words)."""
        sample: NodeUsage | None = None
        if usage is not None:
            try:
                sample = parse_usage(usage)
            except ValueError as exc:
                log.warning("node %s: usage sample dropped: %s", node_id, printable(str(exc), 300))
        changes: dict[str, object] = {"unfit": one_line(unfit, MAX_UNFIT)}
        if sample is not None:
            changes["usage"] = sample
        refused: list[str] = []

        def beat(node: NodeRecord) -> NodeRecord | None:
            refused.clear()
            if node.incarnation != incarnation:
                refused.append("an old incarnation")
                return None
            if not node.ready:
                refused.append("the node was found dead")
                return None
            return node.model_copy(update={"heartbeat": node.heartbeat + 1, **changes})

        try:
            self.store.update(keys.node(node_id), NodeRecord, beat)
        except (NotFound, ValueError):
            refused[:] = ["an unknown node"]
        if refused:
            log.warning("heartbeat of node %s refused: %s; it must register again", node_id, refused[0])
            return False
        return True

    def _set_node(self, node_id: str, **flags: bool) -> NodeRecord:
        self.store.node(node_id)  # NotFound with the node's name
        return self.store.update(keys.node(node_id), NodeRecord, lambda n: n.model_copy(update=flags))

    def label(self, node_id: str, labels: Mapping[str, str]) -> NodeRecord:
        """Set the node's restricted labels (``RESTRICTED_LABELS``: a cluster admin's, which no
        Register changes) to ``labels``, replacing those it had; its own stay."""
        wrong = [k for k in labels if not k.startswith(RESTRICTED_LABELS)]
        if wrong:
            raise Refused(f"label {wrong[0]!r}: an admin sets labels under {RESTRICTED_LABELS} only")
        self.store.node(node_id)  # NotFound with the node's name

        def relabel(node: NodeRecord) -> NodeRecord:
            own = {k: v for k, v in node.labels.items() if not k.startswith(RESTRICTED_LABELS)}
            return NodeRecord.model_validate({**node.model_dump(), "labels": {**own, **labels}})

        return self.store.update(keys.node(node_id), NodeRecord, relabel)

    def pin(self, node_id: str, pinned: Amount | None) -> NodeRecord:
        """Cap the node's capacity at ``pinned`` (a cluster admin's; None: what its agent says),
        each resource on its own; its agent registering again cannot raise it."""
        self.store.node(node_id)  # NotFound with the node's name

        def cap(node: NodeRecord) -> NodeRecord:
            fields = _pinned(node, pinned, node.claimed or node.capacity)
            return NodeRecord.model_validate({**node.model_dump(), **fields})

        return self.store.update(keys.node(node_id), NodeRecord, cap)

    def cordon(self, node_id: str) -> NodeRecord:
        return self._set_node(node_id, cordoned=True)

    def uncordon(self, node_id: str) -> NodeRecord:
        return self._set_node(node_id, cordoned=False, draining=False)

    def drain(self, node_id: str) -> NodeRecord:
        return self._set_node(node_id, draining=True)

    def assignments(self, node_id: str, *, recent: bool = False) -> list[TaskRecord]:
        """What the node's agent must run (tasks SCHEDULED or RUNNING on it) and the tasks it
        ran that were cancelled, until it reports that attempt ended (so it stops them): the
        node's entries in the store's index of assigned tasks, one scan. ``recent``: from this
        server's view of them (``ClusterStore.view``), for a long-poll woken by their change."""
        return [v.record for v in self.store.assigned(node_id, recent=recent) if assigned_to(v.record) == node_id]

    # --- reports and cancellation -------------------------------------------------------

    def report_many(self, reports: Sequence[TaskReport], *, node: str | None = None) -> list[bool]:
        """``report`` each (its answer at its place): those of one job in order, those of
        different jobs at once on a remote Barn, so an agent's round of reports costs about
        one report's round trips, not one per report. Raises what ``report`` raises
        (PlacedElsewhere) once all were tried."""
        results = [False] * len(reports)
        by_job: dict[tuple[str, str], list[int]] = {}  # (by job: a job's tasks' commits compare each other)
        for index, report in enumerate(reports):
            by_job.setdefault((report.herd, job_of(report.task_id) or report.task_id), []).append(index)

        def apply(indexes: list[int]) -> None:
            for index in indexes:
                r = reports[index]
                results[index] = self.report(
                    r.herd, r.task_id, r.attempt, r.token, r.state,
                    exit_code=r.exit_code, message=r.message, started=r.started, node=node, accounting=r.accounting,
                )  # fmt: skip

        groups = list(by_job.values())
        if not self.store.barn.remote or len(groups) == 1:
            for indexes in groups:
                apply(indexes)
            return results
        for future in [_appliers().submit(apply, indexes) for indexes in groups]:
            future.result()
        return results

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
        started: float | None = None,
        node: str | None = None,
        accounting: Accounting | None = None,
    ) -> bool:
        """An agent's report of the attempt it runs. False (nothing changed, one line logged)
        when the attempt or token is not the task's current one, or the task may not go to
        ``state``. A report of the state the task is in already is accepted and changes nothing
        (an agent may repeat one). A failure with retries left puts the task back PENDING, not
        placed before its backoff (``backoff * 2**(attempt-1)``, times a jitter in [0.5, 1]).

        ``started``: when the attempt started on its node (the node's clock, for people). A
        task still SCHEDULED then records its RUNNING transition at that time before ``state``,
        in the same commit: a short task's start and end are one report, not two.

        ``node``: the node the report comes from (the agent service's stream); a report on an
        attempt placed on another node raises PlacedElsewhere (checked on the record read
        here: no read of its own).

        ``accounting``: what the ended attempt used (its node's executor's): added to the
        task's, and priced at ``[cost]`` into its cost, with the state it ended in."""
        # every field comes from an agent: logged and stored only bounded and printable
        where = printable(f"report for task {task_id} attempt {attempt} (token {token}): {state}", 400)
        message = printable(message, MAX_MESSAGE)
        try:
            state = RunState(state)
        except ValueError:
            log.warning("%s refused: not a task state", where)
            return False
        if state not in REPORTABLE:
            log.warning("%s refused: not a state an agent reports", where)
            return False
        if started is not None and not math.isfinite(started):
            log.warning("%s refused: its start time is not a finite number", where)
            return False
        report = TaskReport(herd, task_id, attempt, token, state, exit_code, message, started, accounting)
        # The first try starts from the records this server's watch saw last (``recent``: no
        # round trip). Only its commit, comparing their revisions, proves them current: any
        # other outcome (a refusal, nothing to change, a conflict) is decided on records read now.
        recent = self.store.recent is not None
        for _ in range(MAX_CONFLICT_RETRIES + 1):
            if recent:
                recent = False
                try:
                    current = self.store.task(herd, task_id, recent=True)
                    job = self.store.job_in(herd, current.record.job_id, recent=True)
                    if job.record.tasks != [task_id]:
                        continue  # (a pipeline's: its siblings are read anyway)
                    outcome = self._apply_report(current, job, [current], report, node)
                except (NotFound, ValueError, PlacedElsewhere):
                    continue
                if outcome == "committed":
                    return True
                continue
            named = job_of(task_id)  # (its job read beside the task: one round trip, not two)
            job_read = self.store.later(functools.partial(self.store.job, named)) if named else None
            try:
                current = self.store.task(herd, task_id)
                if job_read is not None and current.record.job_id == named:
                    job = job_read()
                else:
                    job = self.store.job(current.record.job_id)
                # the task itself as read above (one read less, and what is compared is what
                # the change was made from); a one-task job reads nothing more
                siblings = (
                    [current]
                    if job.record.tasks == [current.record.id]
                    else [current if v.record.id == task_id else v for v in self.store.job_tasks(job.record)]
                )
            except (NotFound, ValueError) as exc:
                log.warning("%s refused: %s", where, exc)
                return False
            outcome = self._apply_report(current, job, siblings, report, node)
            if outcome == "conflict":
                continue
            if outcome.startswith("refused"):
                log.warning("%s refused: %s", where, outcome.removeprefix("refused: "))
                return False
            return True
        raise Conflict(f"task {task_id}: changed by others {MAX_CONFLICT_RETRIES} times in a row")

    def _apply_report(
        self,
        current: Versioned[TaskRecord],
        job: Versioned[JobRecord],
        siblings: list[Versioned[TaskRecord]],
        report: TaskReport,
        node: str | None,
    ) -> str:
        """``report``'s change of ``current`` (of ``job``, with its ``siblings``: the versions
        read), committed comparing them. Returns "committed", "unchanged" (accepted: nothing to
        change), "conflict" (one changed since it was read) or "refused: WHY"; raises
        PlacedElsewhere for an attempt placed on another node than ``node``."""
        task, herd, attempt, state = current.record, current.record.herd, report.attempt, report.state
        placed = None if node is None else placed_on(task, attempt)
        if node is not None and placed != node:  # (None: this attempt was placed on no node)
            raise PlacedElsewhere(
                f"report for task {task.id} attempt {attempt}: placed on node {placed!r}, not {node!r}"
            )
        if task.attempt != attempt or task.token != report.token:
            return f"refused: fenced (the task is at attempt {task.attempt}, token {task.token})"
        if task.state is RunState.PENDING:
            # its attempt was taken back (its node was declared dead) or never placed: a late
            # report of the old node must not end a task that waits to run again
            return "refused: the task waits to be placed (its attempt was taken back)"
        if task.state is RunState.CANCELLED and state.final:
            # The agent says the cancelled attempt ended: it holds nothing on the node now,
            # so the task leaves the node's assignments (else they grow for ever). One that
            # ended SUCCEEDED had done its work before the cancel reached it (a scenario's
            # outputs are published): it stays CANCELLED (one final state), its message says so.
            if task.node is None:
                return "unchanged"
            update: dict[str, object] = {"node": None}
            if state is RunState.SUCCEEDED:
                update |= {"message": DONE_BEFORE_CANCEL.format(attempt=attempt), "done_before_cancel": attempt}
            try:
                self.store.commit(
                    [(keys.task(herd, task.id), current.revision)],
                    [(keys.task(herd, task.id), task.model_copy(update=update))],
                )
            except Conflict:
                return "conflict"
            return "committed"
        if report.started is not None and task.state is RunState.SCHEDULED:
            running = task.moved_to(RunState.RUNNING, "started on its node")
            at_start = running.transitions[-1].model_copy(update={"at": report.started})
            task = running.model_copy(update={"transitions": [*running.transitions[:-1], at_start]})
        if task.state is state and task is current.record:
            return "unchanged"
        try:
            changed = task if task.state is state else self._reported(task, state, report.exit_code, report.message)
        except ValueError as exc:
            return f"refused: {exc}"
        if report.accounting is not None and changed is not task and state is not RunState.RUNNING:
            changed = self._priced(changed, report.accounting)
        tasks = [changed if v.record.id == task.id else v.record for v in siblings]
        writes = self._with_job(job.record, tasks)
        writes.insert(0, (keys.task(herd, task.id), changed))
        read = [(keys.task(v.record.herd, v.record.id), v.revision) for v in siblings]
        try:
            self.store.commit([*read, (keys.job(job.record.herd, job.record.id), job.revision)], writes)
        except Conflict:
            return "conflict"
        return "committed"

    def _reported(self, task: TaskRecord, state: RunState, exit_code: int | None, message: str) -> TaskRecord:
        ended = f"{state}" + (f" (exit {exit_code})" if exit_code is not None else "")
        if state is RunState.PENDING:  # given back (its node drains): placed again
            return task.moved_to(state, message or "given back by its node", node=None, message=message)
        if state in RETRIED and task.attempt <= task.retries:
            if task.state is RunState.SCHEDULED and state is not RunState.FAILED:
                raise ValueError(f"task {task.id}: {task.state} -> {state} is not a valid transition")
            delay = task.backoff * 2 ** (task.attempt - 1) * self.jitter()
            return task.moved_to(
                RunState.PENDING,
                f"{ended}: retry {task.attempt} of {task.retries} in {delay:.3g}s",
                node=None,
                exit_code=exit_code,
                message=message,
                not_before=self.clock() + delay,
            )
        return task.moved_to(state, message or ended, exit_code=exit_code, message=message)

    def _priced(self, task: TaskRecord, used: Accounting) -> TaskRecord:
        """The task with an ended attempt's accounting added (counted once: only a report that
        changes the task's state brings it)."""
        cost = attempt_cost(used.cpu_seconds, used.peak_memory, used.seconds, task.resources.gpu, self.rates)
        return task.model_copy(
            update={
                "cpu_seconds": task.cpu_seconds + used.cpu_seconds,
                "peak_memory": max(task.peak_memory, used.peak_memory),
                "run_seconds": task.run_seconds + used.seconds,
                "cost": task.cost + cost,
            }
        )

    def _with_job(self, job: JobRecord, tasks: list[TaskRecord]) -> list[tuple[str, Record | None]]:
        """The job's write (none when its state does not change) for its tasks as given."""
        state = job_state(tasks)
        if state is job.state:
            return []
        finished = (job.finished or self.clock()) if state.final else None
        return [(keys.job(job.herd, job.id), job.model_copy(update={"state": state, "finished": finished}))]

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel every task of the job not ended yet (an agent running one stops it on its
        next sync); the job is CANCELLED. A job that ended already is left as it is. A job of
        few tasks is cancelled in one commit; a larger one CANCEL_BATCH tasks a commit, the
        job with its last ones: one commit comparing a thousand tasks' revisions while agents
        and the scheduler kept writing some failed 20 times in a row (a review's run)."""
        deadline = time.monotonic() + self.cancel_within
        cancelled_some = False
        while True:
            job = self.store.job(job_id)
            live = [v for v in self.store.job_tasks(job.record) if not v.record.state.final]
            if not live and (job.record.state.final or not cancelled_some):
                return job.record
            if len(live) > CANCEL_BATCH:
                for at in range(0, len(live), CANCEL_BATCH):
                    read, writes = _cancels(live[at : at + CANCEL_BATCH])
                    with contextlib.suppress(Conflict):  # (read again, and tried again, next round)
                        self.store.commit(read, writes)
                        cancelled_some = True
            else:
                ended = job.record.model_copy(update={"state": RunState.CANCELLED, "finished": self.clock()})
                read, writes = _cancels(live)
                job_key = keys.job(job.record.herd, job.record.id)
                try:
                    self.store.commit([*read, (job_key, job.revision)], [*writes, (job_key, ended)])
                    return ended
                except Conflict:
                    pass
            if time.monotonic() > deadline:
                raise Conflict(f"job {job_id}: its tasks kept changing for {self.cancel_within:g} s; cancel it again")
            time.sleep(0.01)


def _pinned(node: NodeRecord, pinned: Amount | None, claimed: Amount | None = None) -> dict[str, object]:
    """The fields of ``node`` (its agent's claim: ``claimed``, else its capacity) capped at
    ``pinned``: a node with stolen credentials claimed a machine's worth of cores and drew most
    new tasks. Its GPU ids are cut to as many as it keeps."""
    claim = claimed or node.capacity
    capacity = capped(claim, pinned)
    if node.gpus and len(node.gpus) < capacity.gpu:  # (ids a cap cut: back when its agent registers)
        capacity = capacity.model_copy(update={"gpu": len(node.gpus)})
    fields: dict[str, object] = {"pinned": pinned, "claimed": claim if pinned is not None else None}
    fields["capacity"] = capacity
    if node.gpus:
        fields["gpus"] = node.gpus[: capacity.gpu]
    return fields


def _cancels(tasks: list[Versioned[TaskRecord]]) -> tuple[list[tuple[str, int]], list[tuple[str, Record | None]]]:
    """What a commit cancelling ``tasks`` reads (each at the revision it was read) and writes."""
    read = [(keys.task(v.record.herd, v.record.id), v.revision) for v in tasks]
    return read, [(key, _cancelled(v.record)) for (key, _), v in zip(read, tasks, strict=True)]


def done_before_cancel(task: TaskRecord) -> bool:
    """Whether the cancelled ``task``'s attempt had ended SUCCEEDED (its work done, a
    scenario's outputs published) before the cancel reached its node."""
    return task.state is RunState.CANCELLED and task.attempt > 0 and task.done_before_cancel == task.attempt


def _cancelled(task: TaskRecord) -> TaskRecord:
    """The task cancelled. A placed one keeps its node (``assigned_to``), and so its room there
    and its herd's quota, until its agent says that attempt ended: one only SCHEDULED may have
    started already (an agent holds a RUNNING report for a moment), and a slice stops within
    the stop's grace. An agent reports at once the end of one it never started."""
    return task.moved_to(RunState.CANCELLED, "cancelled")
