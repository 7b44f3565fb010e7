"""Plain data passed between the core, hooks and drivers.

Frozen dataclasses, so a hook implementation cannot change what the next one sees.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal


@dataclass(frozen=True)
class Resources:
    """An amount of node resources: cpu in cores, memory in bytes, whole gpus, max process count."""

    cpu: float = 0.0
    memory: int = 0
    gpu: int = 0
    pids: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory + other.memory, self.gpu + other.gpu, self.pids + other.pids)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.memory - other.memory, self.gpu - other.gpu, self.pids - other.pids)


@dataclass(frozen=True)
class Node:
    """A worker node as the scheduler sees it."""

    id: str
    capacity: Resources
    allocated: Resources = Resources()
    labels: Mapping[str, str] = field(default_factory=dict)
    healthy: bool = True
    running: int = 0  # tasks holding this node (SCHEDULED or RUNNING), for least-connections
    slots: int = 0  # tasks it runs at once (its agent's; 0: no bound said)

    @property
    def free(self) -> Resources:
        return self.capacity - self.allocated


@dataclass(frozen=True)
class PlacementRequest:
    """One task to place: who asks (herd), how much it needs, which node labels it requires."""

    task_id: str
    herd: str
    resources: Resources = Resources()
    node_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeRejection:
    """A filter's reason for dropping a node; ``plugin`` is filled in by the core."""

    node_id: str
    reason: str
    plugin: str = ""


@dataclass(frozen=True)
class Placement:
    """A feasible node with its total score and the per-source breakdown (policy and each plugin)."""

    node_id: str
    score: float
    breakdown: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthRequest:
    """What an authentication plugin may look at: request headers, the peer address, a client cert."""

    headers: Mapping[str, str] = field(default_factory=dict)
    peer: str | None = None
    client_cert_pem: str | None = None


@dataclass(frozen=True)
class Identity:
    """An authenticated principal: a user or a service account."""

    subject: str
    groups: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)
    authenticated_by: str = ""


@dataclass(frozen=True)
class Grant:
    """A role an identity holds: in ``herd``, or in every herd (``herd == "*"``, the cluster
    roles). ``source`` says where it comes from (a binding in the Barn, the token itself)."""

    role: str
    herd: str
    source: str = ""


@dataclass(frozen=True)
class AuthzDecision:
    """An authorization plugin's vote: allow or deny, with the reason shown to the user on deny."""

    allowed: bool
    reason: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class TaskDemand:
    """What one task of a job asks for, as admission sees it (0 / None: nothing asked)."""

    name: str  # the task's scenario, or "command"
    cpu: float = 0.0
    memory: int = 0
    gpu: int = 0
    timeout: float | None = None


@dataclass(frozen=True)
class JobBounds:
    """What any one task of a job may ask for at most (None: no bound), and where each bound
    was set (``source``: "[admission] max_cpu" or "herd team"), for the refusal to say."""

    cpu: float | None = None
    memory: int | None = None
    gpu: int | None = None
    timeout: float | None = None
    source: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RateBucket:
    """A herd's submission token bucket, refilled up to now: ``tokens`` left (a job takes one),
    refilled at ``rate`` per second up to ``burst``."""

    tokens: float
    rate: float
    burst: int


@dataclass(frozen=True)
class Budget:
    """A herd's spending bound: ``limit`` over the last ``period`` seconds, of which ``spent``
    (what its tasks' ended attempts cost, as priced when they ended)."""

    limit: float
    period: float
    spent: float
    currency: str = "USD"


@dataclass(frozen=True)
class QueueBound:
    """A herd's bound on its tasks not ended (waiting, placed or running): ``not_ended`` now,
    at most ``limit``, set by ``source`` ("[admission] max_queued" or "herd team"). The count
    is the answering server's (its view of the Barn, plus what it admitted and is storing):
    concurrent submissions through several servers may pass the bound by what they submit at once."""

    not_ended: int
    limit: int
    source: str = ""
    #: the stored bytes of those tasks' records, at most ``bytes_limit`` (0: no bound, set by
    #: "[admission] max_queued_bytes"); the job adds ``adding_bytes``
    stored_bytes: int = 0
    bytes_limit: int = 0
    adding_bytes: int = 0


@dataclass(frozen=True)
class AdmissionRequest:
    """A job about to be created, before anything of it is stored (``runink_admit``)."""

    herd: str
    kind: str  # "command" or "pipeline"
    tasks: tuple[TaskDemand, ...]
    bounds: JobBounds  # the herd's effective per-job bounds
    bucket: RateBucket | None  # the herd's rate limit now; None: none
    now: float
    estimate: float | None = None  # its worst-case cost ([cost] rates); None: a task has no timeout
    budget: Budget | None = None  # the herd's, when it has one
    queue: QueueBound | None = None  # the herd's bound on tasks not ended, when it has one


@dataclass(frozen=True)
class AdmissionDecision:
    """An admission plugin's answer: refuse (``allowed`` False, with the HTTP ``status`` the
    API answers, a reason naming the bound, the requested value and the limit, and
    ``retry_after`` seconds for a limit that passes) or allow."""

    allowed: bool
    reason: str = ""
    status: int = 403
    retry_after: float | None = None
    plugin: str = ""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LineageEvent:
    """One lineage event: a run of a job (pipeline scenario or step) started, completed or failed.

    Inputs and outputs are dataset URIs. ``facets`` carries extra structured data (row counts,
    contract hashes, schema) in the spirit of OpenLineage facets. An ``OTHER`` event carries
    what a running job made between its START and its end: record annotations of its
    ``@annotate`` steps (``facets["record_annotations"]``), for the catalog.
    """

    event_type: Literal["START", "COMPLETE", "FAIL", "ABORT", "OTHER"]
    run_id: str
    job: str
    herd: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    event_time: datetime = field(default_factory=_now)
    facets: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSample:
    """One metric value. ``kind`` tells exporters how to aggregate it."""

    name: str
    value: float
    kind: Literal["counter", "gauge", "histogram"] = "gauge"
    labels: Mapping[str, str] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class LogEntry:
    """One structured log record from the platform or a slice (``fields`` holds slice_id, step, herd...)."""

    message: str
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    source: str = "runink"
    fields: Mapping[str, Any] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class DriverSpec:
    """A driver registered by a hook plugin (``runink_register_drivers``) rather than an entry point."""

    group: str
    name: str
    factory: Callable[..., Any]
    description: str = ""


class ScenarioState(enum.StrEnum):
    """Where a scenario of a run is. An attempt's slice ends in its executor task's final state
    (``TaskState``, the same names); SKIPPED is a scenario's own: an upstream did not succeed.
    The values are what ``runink run --json`` prints."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    OOMKILLED = "OOMKILLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @property
    def final(self) -> bool:
        return self not in (ScenarioState.PENDING, ScenarioState.RUNNING)
