"""The cluster's state, as records in the Barn: herds, nodes, jobs and their tasks.

Every record is a msgspec Struct stored as JSON under one key (``keys``); every write goes
through ``ClusterStore`` (store.py), which checks the key's revision, so two servers never
overwrite each other's change unseen. A record is checked (types, bounds, its own checks)
when it is read (``model_validate``, ``model_validate_json``), the way every record from a
request, a message or the Barn is made; constructing one directly runs only its own checks
(``__post_init__``): for values the code made itself. Nothing here reads a clock to decide
anything: times in records are for people (when a transition happened), never compared
across machines.

A task is one slice's unit of scheduling. Each attempt of it carries an attempt number and
a fencing token (a Barn revision past any the task's earlier attempts had): a report from an
older attempt (a late agent, one cut off by a partition) names an older token and is refused.
"""

from __future__ import annotations

import enum
import functools
import math
import posixpath
import secrets
import time
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

import msgspec
from msgspec import Meta, field

from runink.core import structs
from runink.core.interfaces.secrets import MAX_TASK_SECRETS, SECRET_NAME
from runink.core.model import Resources
from runink.core.units import MAX_MEMORY, MAX_PIDS, amount_text, check_name

MAX_COMMAND_ARGS = 4096
MAX_ARG_BYTES = 128 * 1024
# a job's command lines, all their arguments (what a submission may ask; stored records are
# read as they are): each of its task's writes carries them, and a pass writes many tasks
MAX_COMMAND_BYTES = 256 * 1024
#: what an ended task keeps of its command (it is shown, never run again): ended jobs are kept
#: for days, 10,000 a herd, in every member's and server's memory
ENDED_COMMAND_BYTES = 4096
MAX_PIPELINE_TASKS = 1000  # scenarios in one pipeline job
MAX_TRANSITIONS = 200  # per task: older ones are dropped (the first is kept)


class RunState(enum.StrEnum):
    """Where a job or task is: the executor's TaskState plus SCHEDULED (placed on a node, not
    yet started there)."""

    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    OOMKILLED = "OOMKILLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"  # a task whose upstream (``after``) did not succeed: never run

    @property
    def final(self) -> bool:
        return self not in (RunState.PENDING, RunState.SCHEDULED, RunState.RUNNING)


#: the transitions a task may make (a retry goes back to PENDING with the next attempt)
ALLOWED: dict[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset({RunState.SCHEDULED, RunState.CANCELLED, RunState.SKIPPED}),
    RunState.SCHEDULED: frozenset({RunState.RUNNING, RunState.PENDING, RunState.FAILED, RunState.CANCELLED}),
    RunState.RUNNING: frozenset(
        {
            RunState.PENDING,
            RunState.SUCCEEDED,
            RunState.FAILED,
            RunState.OOMKILLED,
            RunState.DEADLINE_EXCEEDED,
            RunState.CANCELLED,
        }
    ),
}


def new_id(prefix: str) -> str:
    """A job id: sortable by submission time, unique across servers."""
    return f"{prefix}-{time.time_ns() // 1_000_000:x}-{secrets.token_hex(4)}"


def job_task_id(job_id: str, number: int) -> str:
    """The id of a job's ``number``-th task (from 1), named after the job: a job's tasks are
    one scan (ClusterStore.job_tasks), and a task's job is known without reading the task."""
    return f"{job_id}.{number:04d}"


def job_of(task: str) -> str | None:
    """The job a task id names (``job_task_id``'s), or None for an id of another shape (tasks
    stored before command tasks were named after their job)."""
    job, dot, number = task.rpartition(".")
    return job if dot and job.startswith("job-") and number.isdigit() else None


class RecordError(ValueError):
    """A record's data that fails its checks: ``loc``, the path to the value (field names and
    list positions), and ``msg``, what is wrong. ``errors()`` gives them as pydantic's
    ValidationError does, for the callers that report the first problem."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        # (a record's own checks name their field in msg: "command: empty ...")
        super().__init__(f"{'.'.join(str(p) for p in loc)}: {msg}" if loc else msg)
        self.loc = loc
        self.msg = msg

    def errors(self, include_url: bool = False) -> list[dict[str, Any]]:
        return [{"type": "value_error", "loc": self.loc, "msg": self.msg, "input": None}]


def _record_error(exc: msgspec.ValidationError) -> RecordError:
    """msgspec's one-line error (``Expected `int` >= 1 - at `$.resources.cpu```) as a RecordError."""
    msg, where = structs.split(exc)
    loc: list[str | int] = ["..." if part is None else part for part in where]
    if (named := structs.field_named(msg)) is not None:  # the field is part of where, as for any other problem
        loc.append(named[0])
        msg = "not a known field" if named[1] else "required"
    return RecordError(tuple(loc), msg)


def _finite(record: msgspec.Struct, *names: str) -> None:
    """Refuse an infinite or NaN value of ``names`` (a bound on one side lets infinity pass)."""
    for name in names:
        value = getattr(record, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name}: must be a finite number")


@functools.cache
def _record_tables(model: type[Record]) -> list[tuple[str, type[Record]]]:
    """The fields of ``model`` that map names to records (``dict[str, RECORD]``), with that record."""
    tables = ((info.name, structs.table_of(info.type, Record)) for info in msgspec.structs.fields(model))
    return [(name, typing.cast(type[Record], value)) for name, value in tables if value is not None]


def _entry(model: type[Record], where: tuple[str, str], value: Any) -> Any:
    """``value`` as a ``model`` (a table's entry at ``where``), its errors' places below it."""
    try:
        return model.model_validate(value)
    except RecordError as exc:
        raise RecordError((*where, *exc.loc), exc.msg) from None


@functools.cache
def _decoder(model: type[Record]) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(model)


_ENCODER = msgspec.json.Encoder()


class Record(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A record of the cluster's state. The ``model_*`` methods are the ones the code (and
    plugins) used when records were pydantic models."""

    @classmethod
    def model_validate(cls, data: Any) -> Self:
        """A record from plain data (a dict, a request's body), checked; RecordError if invalid.
        Records nested in ``data`` as objects already are taken as they are.

        msgspec names a dict's key ``[...]`` in its errors: the records of a field that maps
        names to records (``NodeUsage.tasks``) are checked one by one first, so that an error
        names its key."""
        if isinstance(data, cls):
            return data
        if isinstance(data, dict):
            for name, model in _record_tables(cls):
                table = data.get(name)
                if isinstance(table, dict):
                    data = {**data, name: {key: _entry(model, (name, key), value) for key, value in table.items()}}
        try:
            return msgspec.convert(data, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise _record_error(exc) from None

    @classmethod
    def model_validate_json(cls, data: bytes | str) -> Self:
        """A record from its JSON, checked; RecordError if invalid or not JSON."""
        try:
            return typing.cast(Self, _decoder(cls).decode(data))
        except msgspec.ValidationError as exc:
            raise _record_error(exc) from None
        except msgspec.DecodeError as exc:
            raise RecordError((), f"not a JSON record: {exc}") from None

    @classmethod
    def model_construct(cls, **values: Any) -> Self:
        """A record from values the caller built valid (not checked)."""
        return cls(**values)

    def model_dump(
        self, *, mode: Literal["python", "json"] = "python", exclude: set[str] | None = None
    ) -> dict[str, Any]:
        """Plain data: dicts, lists, and states as their names (either ``mode``)."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        if exclude:
            for name in exclude:
                data.pop(name, None)
        return data

    def model_dump_json(self) -> str:
        return _ENCODER.encode(self).decode()

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Self:
        """A copy with ``update``'s fields replaced, not checked again (as pydantic's was not)."""
        return msgspec.structs.replace(self, **(update or {}))


Cores = Annotated[float, Meta(ge=0, le=4096)]
Memory = Annotated[int, Meta(ge=0, le=MAX_MEMORY)]
Gpus = Annotated[int, Meta(ge=0, le=1024)]
Pids = Annotated[int, Meta(ge=0, le=MAX_PIDS)]
NonNegative = Annotated[int, Meta(ge=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
ScenarioName = Annotated[str, Meta(min_length=1, max_length=200)]
PathText = Annotated[str, Meta(min_length=1, max_length=4096)]
# A label's key or value: shown as it is (`runink nodes list`, a task's pending reason and
# --explain), so printable text, no control character that could forge a line
LABEL_TEXT = r"^[^\x00-\x1f\x7f-\x9f]*\Z"
#: node labels only a cluster admin sets (`runink nodes label`), never a node's own agent: what
#: a task asks under it, a node with stolen credentials cannot claim (Kubernetes' NodeRestriction)
RESTRICTED_LABELS = "restricted.runink.io/"
MAX_LABELS = 64


def check_restricted(labels: Mapping[str, str], what: str) -> None:
    """ValueError unless every key of ``labels`` is a restricted one (only admins set those on nodes)."""
    wrong = [k for k in labels if not k.startswith(RESTRICTED_LABELS)]
    if wrong:
        why = f"only labels under {RESTRICTED_LABELS} (an admin's on nodes) keep a herd"
        raise ValueError(f"{what} {wrong[0]!r}: {why}")


LabelKey = Annotated[str, Meta(min_length=1, max_length=253, pattern=LABEL_TEXT)]
LabelValue = Annotated[str, Meta(max_length=253, pattern=LABEL_TEXT)]
Labels = Annotated[dict[LabelKey, LabelValue], Meta(max_length=MAX_LABELS)]


class Amount(Record, kw_only=True):
    """An amount of resources, as the API and the Barn write it (cpu in cores, memory in bytes)."""

    cpu: Cores = 0.0
    memory: Memory = 0
    gpu: Gpus = 0
    pids: Pids = 0

    def resources(self) -> Resources:
        return Resources(self.cpu, self.memory, self.gpu, self.pids)

    @classmethod
    def of(cls, resources: Resources) -> Amount:
        return cls(cpu=resources.cpu, memory=resources.memory, gpu=resources.gpu, pids=resources.pids)


class Quota(Record, kw_only=True):
    """A herd's quota: what all its running and scheduled slices may use together (0: no limit)."""

    cpu: Annotated[float, Meta(ge=0, le=1_000_000)] = 0.0
    memory: NonNegative = 0
    gpu: NonNegative = 0
    max_slices: NonNegative = 0

    def node_caps(self) -> Resources | None:
        """What a node caps the herd's cgroup parent at: cpu and memory; None when the quota
        limits neither (no parent then: nothing to cap). Not gpu (no gpu isolation), not
        max_slices: the scheduler counts slices, and each slice's own pids limit already
        bounds its processes (a process cap from the slice count would need one pids limit
        shared by all the herd's slices)."""
        if not (self.cpu or self.memory):
            return None
        return Resources(cpu=self.cpu, memory=self.memory)

    def exceeded_by(self, used: Amount, slices: int) -> str | None:
        """Why ``used`` (with ``slices`` slices) is past this quota, or None."""
        for name, limit, value in (
            ("cpu", self.cpu, used.cpu),
            ("memory", self.memory, used.memory),
            ("gpu", self.gpu, used.gpu),
            ("max_slices", self.max_slices, slices),
        ):
            if limit and value > limit:
                return f"{name} {amount_text(name, value)} > quota {amount_text(name, limit)}"
        return None


class HerdAdmission(Record, kw_only=True):
    """A herd's own admission limits (None: the cluster's, ``[admission]``; 0: no bound)."""

    max_cpu: Cores | None = None
    max_memory: Annotated[int, Meta(ge=0, le=2**62)] | None = None
    max_gpu: Gpus | None = None
    max_timeout: Annotated[float, Meta(ge=0, le=366 * 86400)] | None = None
    rate: Annotated[float, Meta(ge=0, le=1_000_000)] | None = None  # jobs per second
    burst: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    budget: NonNegativeFloat | None = None  # [cost] currency; 0/None: none
    max_queued: Annotated[int, Meta(ge=0, le=1_000_000_000)] | None = None  # tasks not ended
    budget_period: Annotated[float, Meta(gt=0, le=366 * 86400)] = 30 * 86400.0  # seconds

    def __post_init__(self) -> None:
        _finite(self, "budget")


MAX_ROOTS = 64  # folders a herd's pipelines may be in, at most


def check_root(path: str) -> str:
    """A herd root as stored: an absolute, normalised path of printable characters, not /."""
    if not path.startswith("/") or not path.isprintable() or len(path) > 4096:
        raise ValueError(f"root {path[:200]!r}: not an absolute path of printable characters")
    normal = posixpath.normpath(path)
    if normal == "/" or normal.startswith("//"):
        raise ValueError(f"root {path[:200]!r}: not / (a herd's pipelines get their whole folder)")
    return normal


def under_root(path: str, roots: Sequence[str]) -> bool:
    """Whether the absolute ``path`` (normalised here) lies in one of ``roots``."""
    normal = posixpath.normpath(path)
    return any(normal.startswith(root.rstrip("/") + "/") for root in roots)


class Herd(Record, kw_only=True):
    name: str
    quota: Quota = field(default_factory=Quota)
    admission: HerdAdmission = field(default_factory=HerdAdmission)
    # the folders (on the shared filesystem) its pipelines' .dsl files may be in: each
    # scenario's slice is granted the whole folder of its .dsl, so a cluster admin says which
    # are the herd's (none: it may submit commands, no pipeline)
    roots: Annotated[list[str], Meta(max_length=MAX_ROOTS)] = field(default_factory=list)
    # the restricted labels (a cluster admin's, RESTRICTED_LABELS) a node must have to run its
    # tasks: the herd is kept to those nodes, whatever its tasks ask (none: any node)
    node_labels: Labels = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    deleting: bool = False  # being deleted: takes no new jobs (ClusterStore.delete_herd)

    def __post_init__(self) -> None:
        check_name(self.name, "herd")
        self.roots = sorted({check_root(r) for r in self.roots})
        check_restricted(self.node_labels, f"herd {self.name}: node label")

    def placement_labels(self, asked: Mapping[str, str]) -> dict[str, str]:
        """The labels a node needs to run a task of this herd that asks for ``asked``: the
        herd's own win over the task's (a task cannot ask its way off the herd's nodes)."""
        return {**asked, **self.node_labels} if self.node_labels else dict(asked)


MAX_USAGE_TASKS = 1024  # tasks one usage sample may name (a node runs fewer at once)
MAX_CPU_SECONDS = 1e12  # far past any task's cpu time: a larger number is a broken sample


class TaskUsage(Record, kw_only=True):
    """One running attempt's use, as its node's agent measured it (the whole process tree)."""

    attempt: Annotated[int, Meta(ge=1, le=2**62)]
    cpu_seconds: Annotated[float, Meta(ge=0, le=MAX_CPU_SECONDS)]  # so far
    cpu: Cores = 0.0  # cores since the last sample
    memory: Memory  # bytes, now
    processes: Pids


class NodeUsage(Record, kw_only=True):
    """What a node's running tasks use, sampled by its agent with a heartbeat. It comes from
    the node, so every number is bounded; ``at`` is the agent's clock, for people only."""

    cpu: Cores = 0.0  # cores, since the last sample
    memory: Memory = 0  # bytes, now
    tasks: Annotated[dict[str, TaskUsage], Meta(max_length=MAX_USAGE_TASKS)] = {}  # by task id
    at: Annotated[float, Meta(ge=0, le=1e11)] = 0.0

    def __post_init__(self) -> None:
        for task_id in self.tasks:
            try:
                check_name(task_id, "task")
            except ValueError as exc:
                raise ValueError(f"tasks: {exc}") from None


def parse_usage(sample: object) -> NodeUsage:
    """``sample`` (a node's, sent with its heartbeat) as a NodeUsage; ValueError naming the
    first thing wrong in it, in one line."""
    if isinstance(sample, NodeUsage):
        return sample
    if not isinstance(sample, dict):
        raise ValueError(f"usage: expected an object, got {type(sample).__name__}")
    try:
        return NodeUsage.model_validate(sample)
    except RecordError as exc:
        raise ValueError(str(exc)) from None


#: a node's GPUs by id (their UUIDs: core/agent/gpus.py), none twice (checked by its record)
GpuIds = Annotated[list[Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,95}\Z")]], Meta(max_length=64)]

#: names of secrets a task receives: each a valid secret name, none twice (checked by its record)
SecretNames = Annotated[
    list[Annotated[str, Meta(pattern=rf"^{SECRET_NAME.pattern}\Z")]], Meta(max_length=MAX_TASK_SECRETS)
]


def no_repeats(names: list[str], what: str) -> list[str]:
    """``names``, or ValueError naming the first one given twice (secrets, GPU ids)."""
    if len(set(names)) != len(names):
        name = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{what} {name!r} named twice")
    return names


MAX_SLOTS = 1_000_000  # tasks one node may say it runs at once


MAX_UNFIT = 300  # bytes of a node's ``unfit`` as UTF-8, at most (its agent's reason)


class NodeRecord(Record, kw_only=True):
    """A worker node, as its agent registered it. ``heartbeat`` counts the agent's heartbeats:
    the leader sees liveness in it changing, with its own clock (liveness.py), never by
    comparing times written by other machines."""

    id: str
    capacity: Amount
    labels: Labels = {}
    address: str = ""
    ready: bool = True  # False: the leader found it dead (its tasks were placed again)
    cordoned: bool = False  # takes no new work
    draining: bool = False  # takes no new work; its agent stops when its tasks are done
    heartbeat: int = 0
    incarnation: str = ""  # a new value each time the agent process (re)starts
    registered: float = field(default_factory=time.time)
    usage: NodeUsage | None = None  # the last sample its agent sent (None: none since it registered)
    # its GPUs' ids, which the scheduler gives tasks: as many as capacity.gpu where listed
    # (none listed: GPUs offered without devices, which an isolating executor refuses to use)
    gpus: GpuIds = []
    # tasks its agent runs at once (0: not said): the scheduler places no more there (tasks
    # asking for almost no cpu once filled every agent's slots, and another herd's job, placed
    # there all the same, waited SCHEDULED holding its quota)
    slots: Annotated[int, Meta(ge=0, le=MAX_SLOTS)] = 0
    # what a cluster admin allows the node at most (runink nodes capacity; None: what it says):
    # its ``capacity`` is what it claimed (``claimed``) capped at this, each resource on its own
    pinned: Amount | None = None
    claimed: Amount | None = None
    # why its agent says it takes no new task now (its work dir's disk nearly full); "": it
    # takes work. Its agent's word, sent with every heartbeat: the scheduler places nothing there
    unfit: Annotated[str, Meta(max_length=MAX_UNFIT)] = ""

    def __post_init__(self) -> None:
        check_name(self.id, "node")
        no_repeats(self.gpus, "gpu")
        if self.gpus and len(self.gpus) != self.capacity.gpu:
            raise ValueError(f"gpus: {len(self.gpus)} listed but capacity.gpu is {self.capacity.gpu}")

    @property
    def schedulable(self) -> bool:
        return self.ready and not self.cordoned and not self.draining and not self.unfit


def capped(claimed: Amount, pinned: Amount | None) -> Amount:
    """``claimed`` capped at ``pinned`` (a resource pinned at 0: not pinned), each on its own."""
    if pinned is None:
        return claimed
    values = {
        name: min(have, cap) if cap else have
        for name, have, cap in (
            ("cpu", claimed.cpu, pinned.cpu),
            ("memory", claimed.memory, pinned.memory),
            ("gpu", claimed.gpu, pinned.gpu),
        )
    }
    return claimed.model_copy(update=values)


class SchedulerEpoch(Record, kw_only=True):
    """Bumped by each server that starts scheduling: its passes compare the key's revision."""

    epoch: int = 0
    holder: str = ""
    # the claiming server's API (as `runink up` and its --api name it; "" when it listens on
    # every address): clients send their submissions there, where they are placed at once
    api: Annotated[str, Meta(max_length=300)] = ""


@dataclass(frozen=True)
class TaskReport:
    """An agent's report of one attempt of a task: what ``Lifecycle.report`` takes, and what an
    agent sends a round of at once (``report_many``)."""

    herd: str
    task_id: str
    attempt: int
    token: int
    state: RunState
    exit_code: int | None = None
    message: str = ""
    started: float | None = None  # when the attempt started on its node (see Lifecycle.report)
    accounting: Accounting | None = None  # an ended attempt's, from its cgroup: priced into the task's cost


@dataclass(frozen=True)
class Accounting:
    """What an ended attempt used, as its node's executor accounted it (its cgroup)."""

    cpu_seconds: float  # cpu time of its whole process tree
    peak_memory: int  # bytes, at most at once
    seconds: float  # how long it ran


class Transition(Record, kw_only=True):
    state: RunState
    at: float = field(default_factory=time.time)
    attempt: int = 0
    node: str | None = None
    reason: str = ""


def _printable(value: str, name: str) -> None:
    if not value.isprintable():
        raise ValueError(f"{name}: contains a control character")


class ScenarioRef(Record, kw_only=True):
    """A pipeline scenario a task runs: the node compiles ``pipeline`` (or, in process, is
    handed it compiled) and runs the scenario's slice as the local runner always has."""

    pipeline: PathText  # the .dsl file, as the submitter resolved it
    scenario: ScenarioName
    # the herd's roots when it was submitted (the server's, from the herd): the node compiles
    # ``pipeline`` only in one of them
    roots: Annotated[list[PathText], Meta(max_length=MAX_ROOTS)] = []
    # the run's id: names its work folder on the node (one plain path component)
    run: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}\Z")]

    def __post_init__(self) -> None:
        _printable(self.pipeline, "pipeline")
        _printable(self.scenario, "scenario")
        for root in self.roots:
            check_root(root)


class LocalInput(Record, kw_only=True):
    """A scenario's source that is a local dataset (not under the submitter's ``[cluster]
    shared_paths``, not in an object store) written by ``scenario``: it exists only on the node
    that scenario ran on, so the reader must run there too."""

    scenario: ScenarioName
    path: PathText

    def __post_init__(self) -> None:
        _printable(self.path, "path")


class PipelineTask(Record, kw_only=True):
    """One scenario of a pipeline job as submitted: what its task asks for, the scenarios
    (earlier in the submission) whose outputs it reads, and where it must run: on the node of
    another scenario of the submission (``colocate_with``, the DSL's ``@affinity``), and where
    its ``local_input`` was written."""

    scenario: ScenarioName
    after: Annotated[list[str], Meta(max_length=MAX_PIPELINE_TASKS)] = []
    resources: Amount = field(default_factory=Amount)
    timeout: Annotated[float, Meta(gt=0, le=366 * 86400)] | None = None
    retries: Annotated[int, Meta(ge=0, le=100)] = 0
    backoff: Annotated[float, Meta(ge=0, le=3600)] = 1.0
    node_labels: Labels = {}
    colocate_with: ScenarioName | None = None
    local_input: LocalInput | None = None
    secrets: SecretNames = []  # the herd's secrets its slice receives (the DSL's @secrets)
    secrets_env: bool = False  # ...as environment variables too, not only files

    def __post_init__(self) -> None:
        no_repeats(self.secrets, "secret")
        no_repeats(self.after, "after")  # (1,000 of one name were stored as 1,000 task ids)


class Near(Record, kw_only=True):
    """Place a task on the node of another task of its job (``task``, running ``scenario``): it
    reads the local dataset at ``path`` that task wrote, or (no path) it is colocated with it."""

    task: str
    scenario: ScenarioName
    path: str = ""

    def why(self, node: str) -> str:
        """Why the task belongs on ``node`` (the other task's), in the scheduler's words."""
        if self.path:
            return f"input {self.path} was written on node {node} (not under [cluster] shared_paths)"
        return f"colocated with {self.scenario} on {node}"


class TaskRecord(Record, kw_only=True):
    """One slice to run, in a herd: a command (argv, no shell) or a pipeline's scenario."""

    id: str
    job_id: str
    herd: str
    command: list[str] = []
    scenario: ScenarioRef | None = None
    resources: Amount = field(default_factory=Amount)
    timeout: Annotated[float, Meta(gt=0)] | None = None
    retries: Annotated[int, Meta(ge=0, le=100)] = 0
    backoff: Annotated[float, Meta(ge=0, le=3600)] = 1.0
    priority: Annotated[int, Meta(ge=-1000, le=1000)] = 0
    # when it was submitted (time.time_ns()): the queue's order in its herd at equal priority,
    # before the id (whose time is in milliseconds); 0: a record from before this field
    queued: NonNegative = 0
    node_labels: Labels = {}
    after: list[str] = []  # tasks of the same job that must succeed before this one is placed
    # tasks of the same job whose node this one must be placed on (once they have one)
    near: Annotated[list[Near], Meta(max_length=2)] = []
    state: RunState = RunState.PENDING
    attempt: int = 0  # 1 for the first attempt once scheduled
    token: int = 0  # the fencing token of the current attempt (0: never scheduled)
    node: str | None = None
    exit_code: int | None = None
    message: str = ""
    # a cancelled task whose attempt (this number) had ended SUCCEEDED before the cancel reached
    # its node: its work was done (a scenario's outputs published). Set by the control plane
    # from the agent's report, never from a message (0: none)
    done_before_cancel: NonNegative = 0
    explain: list[str] = []  # the last scheduling decision: chosen node, why others were not
    pending_reason: str = ""  # why it is waiting, when it is
    not_before: float = 0.0  # a retry's backoff: not placed before this time (the scheduler's clock)
    # what its ended attempts used (their nodes' accounting), and that priced at [cost] rates
    cpu_seconds: NonNegativeFloat = 0.0
    peak_memory: NonNegative = 0  # the most any of its attempts held at once
    run_seconds: NonNegativeFloat = 0.0
    cost: NonNegativeFloat = 0.0
    transitions: list[Transition] = []
    # the herd's quota as the scheduler saw it when it placed this attempt: the node caps the
    # herd's cgroup parent at it (Quota.node_caps)
    herd_quota: Quota | None = None
    # names of the herd's secrets its slice receives (files in $RUNINK_FILES; with
    # ``secrets_env`` environment variables too): the only ones its node may read for it
    secrets: SecretNames = []
    secrets_env: bool = False
    # the GPUs (ids of its node's) the scheduler gave the current attempt: resources.gpu of them
    gpus: GpuIds = []

    def __post_init__(self) -> None:
        if len(self.command) > MAX_COMMAND_ARGS:
            raise ValueError(f"command: {len(self.command)} arguments (at most {MAX_COMMAND_ARGS})")
        for i, arg in enumerate(self.command):
            if "\0" in arg or len(arg.encode()) > MAX_ARG_BYTES:
                raise ValueError(f"command[{i}]: contains a NUL byte or is longer than {MAX_ARG_BYTES} bytes")
        if not self.command and self.scenario is None:
            raise ValueError("command: empty (give the program and its arguments)")
        if self.command and self.scenario is not None:
            raise ValueError("a task runs a command or a scenario, not both")
        _finite(self, "timeout", "cpu_seconds", "run_seconds", "cost")
        no_repeats(self.secrets, "secret")
        no_repeats(self.gpus, "gpu")

    def moved_to(self, state: RunState, reason: str = "", *, checked: bool = True, **changes: Any) -> TaskRecord:
        """A copy in ``state``, the transition recorded. Raises ValueError if the task may not
        go there from where it is (a final state is final). ``checked=False``: ``changes`` are
        not validated again, for a caller that built them valid (a scheduler pass writes
        thousands of placements)."""
        if state not in ALLOWED.get(self.state, frozenset()):
            raise ValueError(f"task {self.id}: {self.state} -> {state} is not a valid transition")
        attempt, node = changes.get("attempt", self.attempt), changes.get("node", self.node)
        if state.final and sum(len(arg.encode()) + 1 for arg in self.command) > ENDED_COMMAND_BYTES:
            changes["command"] = ended_command(self.command)
        now = Transition(state=state, at=time.time(), attempt=attempt, node=node, reason=reason)
        transitions = [*self.transitions, now]
        if len(transitions) > MAX_TRANSITIONS:
            transitions = [transitions[0], *transitions[-(MAX_TRANSITIONS - 1) :]]
        if not checked:
            return self.model_copy(update={**changes, "state": state, "transitions": transitions})
        data = self.model_dump()
        data.update(changes, state=state)
        data["transitions"] = [t.model_dump() for t in transitions]
        return TaskRecord.model_validate(data)


def ended_command(command: list[str]) -> list[str]:
    """What an ended task keeps of ``command``: its arguments while they fit ENDED_COMMAND_BYTES
    (the last one cut), then one saying how many bytes were not kept."""
    kept: list[str] = []
    room = ENDED_COMMAND_BYTES - 100
    for arg in command:
        data = arg.encode()
        if len(data) + 1 > room:
            if room > 1:
                kept.append(data[: room - 1].decode(errors="ignore") + "…")
            break
        kept.append(arg)
        room -= len(data) + 1
    dropped = sum(len(arg.encode()) + 1 for arg in command) - sum(len(arg.encode()) + 1 for arg in kept)
    return [*kept, f"…({dropped:,} more bytes not kept: the task ended)"]


class JobRecord(Record, kw_only=True):
    """A submitted command or pipeline run: its tasks and, derived from theirs, its state."""

    id: str
    herd: str
    kind: str = "command"
    tasks: list[str]
    submitted: float = field(default_factory=time.time)
    state: RunState = RunState.PENDING
    finished: float | None = None
    #: the worst case of what it may cost, at its admission ([cost] rates; None: a task has no timeout)
    estimate: NonNegativeFloat | None = None
    owner: str = ""  # who submitted it (the caller's subject; "" on a server that authenticates nobody)

    def __post_init__(self) -> None:
        _finite(self, "estimate")


def job_state(tasks: list[TaskRecord]) -> RunState:
    """A job's state from its tasks': once all ended, SUCCEEDED if all succeeded, else the
    first failure's state (a SKIPPED task only says an upstream failed: the failure is the
    cause); before, RUNNING once any started, SCHEDULED, or PENDING."""
    states = [t.state for t in tasks]
    if states and all(s.final for s in states):
        failures = [s for s in states if s is not RunState.SUCCEEDED]
        return next((s for s in failures if s is not RunState.SKIPPED), failures[0] if failures else RunState.SUCCEEDED)
    for state in (RunState.RUNNING, RunState.SCHEDULED):
        if state in states:
            return state
    return RunState.RUNNING if any(s.final for s in states) else RunState.PENDING


class ScalingDecision(Record, kw_only=True):
    """One decision of the autoscaler (core/control/autoscale.py), as `runink nodes scaling` shows it."""

    at: float  # when (the leading server's clock, seconds since the epoch)
    action: str  # "up", "drain", "remove", "hold" (it would act, a bound or the cooldown stops it), "error"
    nodes: list[str] = []  # the nodes it started, drained or removed
    reason: str
    size: int  # the scaler's nodes before it
    desired: int  # what it wants after it


class ScalingState(Record, kw_only=True):
    """The autoscaler's state, kept in the Barn so a new leader goes on where the last one was."""

    desired: int = 0
    last_action: float = 0.0  # when nodes were last added or one was drained (for the cooldown)
    removing: dict[str, float] = {}  # node -> when it was drained for removal
    decisions: list[ScalingDecision] = []  # the last ones, oldest first


class keys:
    """Where each record lives. Jobs and tasks are under their herd's prefix (RBAC and quotas
    scope by it); nodes are the cluster's."""

    NODES = "/cluster/nodes/"
    HERDS = "/herds/"
    SCHEDULER = "/cluster/scheduler"  # the scheduling epoch: claimed by each new leader
    SCALING = "/cluster/scaling"  # the autoscaler's ScalingState

    @staticmethod
    def herd(name: str) -> str:
        return f"/herds/{check_name(name, 'herd')}/herd"

    @staticmethod
    def node(node_id: str) -> str:
        return keys.NODES + check_name(node_id, "node")

    @staticmethod
    def jobs(herd: str) -> str:
        return f"/herds/{check_name(herd, 'herd')}/jobs/"

    @staticmethod
    def job(herd: str, job_id: str) -> str:
        return keys.jobs(herd) + check_name(job_id, "job")

    @staticmethod
    def tasks(herd: str) -> str:
        return f"/herds/{check_name(herd, 'herd')}/tasks/"

    @staticmethod
    def task(herd: str, task_id: str) -> str:
        return keys.tasks(herd) + check_name(task_id, "task")

    @staticmethod
    def named(key: str) -> str:
        """What a record's key names, in words: ``herd 'x'``, ``node 'n'``, ``job 'j' of herd 'x'``
        (the key itself for any other)."""
        parts = key.split("/")
        if len(parts) == 4 and parts[1] == "herds" and parts[3] == "herd":
            return f"herd {parts[2]!r}"
        if key.startswith(keys.NODES) and "/" not in key[len(keys.NODES) :]:
            return f"node {key[len(keys.NODES) :]!r}"
        if (found := keys.record_of(key)) is not None:
            return f"{found[0][:-1]} {found[2]!r} of herd {found[1]!r}"
        return key

    @staticmethod
    def record_of(key: str) -> tuple[str, str, str] | None:
        """(kind, herd, id) of a job's or a task's key (``/herds/H/jobs/J``: kind "jobs",
        ``/herds/H/tasks/T``: "tasks"); None for any other key."""
        parts = key.split("/")
        if len(parts) == 5 and parts[0] == "" and parts[1] == "herds" and parts[3] in ("jobs", "tasks") and parts[4]:
            return parts[3], parts[2], parts[4]
        return None
