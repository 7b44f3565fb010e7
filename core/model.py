"""Plain data passed between the core, hooks and drivers.

Frozen dataclasses, so a hook implementation cannot change what the next one sees.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

_MEMORY_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


#: a herd, node or job name: what may appear as one part of a Barn key (and a cgroup's)
NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid herd, node or job name; else ValueError saying what is wrong."""
    if not isinstance(value, str) or not NAME.match(value):
        raise ValueError(
            f"{what} {value!r}: expected 1-63 lower-case letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return value


MAX_MEMORY = 2**60  # 1 EiB: the largest memory limit a scenario or the config may set
MAX_PIDS = 4 * 1024 * 1024  # the kernel's PID_MAX_LIMIT: the largest pids limit


def split_address(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port), the host ``""`` when not given; None
    when it is not one (no port, or one past 65535)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    return host.strip("[]"), int(port)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
#: a duration's upper bound: beyond it a value is a typo (or an attack) that would only
#: surface as a crash where it is used (a timer)
MAX_DURATION = 366 * 86400.0


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``"10m"``, ``"90s"``, ``"1.5h"``, ``"250ms"`` or a number of seconds.

    Positive, finite and at most 366 days; raises ValueError naming the value otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"invalid duration {value!r} (expected e.g. 30s, 10m, 2h)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"invalid duration {value!r} (expected e.g. 30s, 10m, 2h)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not seconds > 0:  # also NaN
        raise ValueError(f"invalid duration {value!r}: must be positive")
    if not seconds <= MAX_DURATION:  # also inf
        raise ValueError(f"invalid duration {value!r}: at most 366 days")
    return seconds


def parse_memory(value: str | int | float) -> int:
    """Bytes from ``"256Mi"``, ``"1G"``, ``"512k"`` or a plain number of bytes.

    Raises ValueError naming the value when it cannot be read.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid memory size {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid memory size {value!r}: negative")
        if not math.isfinite(value):  # NaN, inf: int() would raise something else
            raise ValueError(f"invalid memory size {value!r}")
        return int(value)
    match = _MEMORY_RE.match(value)
    if not match:
        raise ValueError(f"invalid memory size {value!r} (expected e.g. 512Mi, 2G or a byte count)")
    number, unit = match.groups()
    return int(float(number) * _MEMORY_UNITS[(unit or "").lower()])


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
