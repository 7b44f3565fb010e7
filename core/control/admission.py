"""Admission: what a job must pass before anything of it is stored.

A server asks the ``runink_admit`` hook about every submission (the built-in ``admission``
plugin checks per-job bounds and the herd's submission rate; a plugin adds rules of its own)
with what each task asks for, the herd's effective bounds (its own, else ``[admission]``), its
rate bucket refilled up to now, the job's worst-case cost and the herd's budget with what it
spent. Any refusal refuses: nothing is stored, and the API answers the decision's status (422
for a bound, 402 for a spent budget, 429 with Retry-After for the rate). An admitted job is
stored with its estimate and who submitted it.

The rate is a token bucket per herd kept in the Barn (``/herds/<herd>/admission``): a job
takes one token, and the bucket is written in the job's own transaction, compared against the
revision it was read at (a changed one raises ``StaleRead`` in the store: the lifecycle admits
again on the bucket as it is now). So the count is exact whatever server takes the
submission, and after a server restarts or another leads. A server keeps the
bucket it last wrote, so a herd's submissions through one server cost no extra read.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runink.core.config import AdmissionConfig, CostConfig, duration_or_none
from runink.core.control.cost import worst_case
from runink.core.control.records import Herd, Record, TaskRecord
from runink.core.control.store import ClusterStore
from runink.core.errors import PluginError, RuninkError
from runink.core.interfaces.barn import TxnOp
from runink.core.model import (
    AdmissionDecision,
    AdmissionRequest,
    Budget,
    Identity,
    JobBounds,
    QueueBound,
    RateBucket,
    TaskDemand,
)
from runink.core.plugins import PluginManager
from runink.core.units import parse_memory

#: seconds a server trusts the sum of what a herd spent (budgets)
SPENT_FOR = 10.0


def bucket_key(herd: str) -> str:
    return f"/herds/{herd}/admission"


class Bucket(Record, kw_only=True):
    """A herd's rate bucket as stored: ``tokens`` left at time ``at``."""

    tokens: float
    at: float


class AdmissionRefused(RuninkError):
    """A refused job: the API answers ``status`` (with ``Retry-After`` when set)."""

    def __init__(self, decision: AdmissionDecision) -> None:
        super().__init__(decision.reason)
        self.status = decision.status
        self.retry_after = decision.retry_after


@dataclass
class Admitted:
    """What an admitted job commits with itself: the bucket's new state, compared against the
    revision it was read at; ``on_commit(revision)`` once it is stored."""

    ops: list[TxnOp] = field(default_factory=list)
    compare: list[tuple[str, int]] = field(default_factory=list)
    on_commit: Callable[[int], None] = lambda _revision: None
    on_stale: Callable[[], None] = lambda: None  # the compare failed: read the state again
    # once the job is stored or not (either way: its tasks are in this server's count, or never will be)
    release: Callable[[], None] = lambda: None
    estimate: float | None = None  # the job's worst-case cost, stored with it
    owner: str = ""  # who submitted it, stored with it


#: a lifecycle's admission step: (the herd as read, the job's kind, its tasks) -> Admitted
Gate = Callable[[Herd, str, list[TaskRecord]], Admitted]


def cluster_bounds(config: AdmissionConfig) -> JobBounds:
    def bound(value: float) -> float | None:
        return value or None

    timeout = duration_or_none(config.max_timeout)
    return JobBounds(
        cpu=bound(config.max_cpu),
        memory=parse_memory(config.max_memory) or None,
        gpu=config.max_gpu or None,
        timeout=timeout,
        source=dict.fromkeys(("cpu", "memory", "gpu", "timeout"), "[admission]"),
    )


def herd_bounds(herd: Herd, defaults: JobBounds) -> JobBounds:
    """The herd's own bounds where it set them (0: none), else the cluster's."""
    own = herd.admission
    values, source = {}, dict(defaults.source)
    for name, mine in (
        ("cpu", own.max_cpu),
        ("memory", own.max_memory),
        ("gpu", own.max_gpu),
        ("timeout", own.max_timeout),
    ):
        if mine is None:
            values[name] = getattr(defaults, name)
        else:
            values[name] = mine or None
            source[name] = f"herd {herd.name}"
    return JobBounds(**values, source=source)


def demand(task: TaskRecord) -> TaskDemand:
    name = task.scenario.scenario if task.scenario is not None else "command"
    return TaskDemand(name, task.resources.cpu, task.resources.memory, task.resources.gpu, task.timeout)


class Admission:
    def __init__(
        self,
        store: ClusterStore,
        manager: PluginManager,
        config: AdmissionConfig,
        *,
        rates: CostConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.manager = manager
        self.config = config
        self.rates = rates or CostConfig()
        self.defaults = cluster_bounds(config)
        self.clock = clock
        self._buckets: dict[str, tuple[Bucket | None, int]] = {}  # herd -> (bucket, its mod_revision)
        self._spent: dict[str, tuple[float, float]] = {}  # herd -> (when summed, monotonic; spent)
        # herd -> tasks of submissions admitted here and not yet stored: counted against its
        # queue bound with those the view counts (concurrent submissions each read the count
        # before any stored: 18 jobs passed a bound of 5, through one server)
        self._reserved: collections.Counter[str] = collections.Counter()
        self._reserved_bytes: collections.Counter[str] = collections.Counter()
        self.max_queued_bytes = parse_memory(config.max_queued_bytes)
        self._lock = threading.Lock()

    def gate(self, identity: Identity | None) -> Gate:
        """The step a submission's lifecycle runs once it read the herd (``Lifecycle.submit_*``)."""
        return lambda herd, kind, tasks: self.admit(herd, kind, tasks, identity)

    def _rate(self, herd: Herd) -> tuple[float, int]:
        own = herd.admission
        rate = self.config.rate if own.rate is None else own.rate
        return rate, self.config.burst if own.burst is None else own.burst

    def _bucket(self, herd: str) -> tuple[Bucket | None, int]:
        with self._lock:
            known = self._buckets.get(herd)
        if known is not None:
            return known
        found = self.store.barn.get(bucket_key(herd))
        read = (None, 0) if found is None else (Bucket.model_validate_json(found.value), found.mod_revision)
        with self._lock:
            self._buckets[herd] = read
        return read

    def _budget(self, herd: Herd, now: float) -> Budget | None:
        """The herd's budget with what it spent over its period: its tasks' costs, summed at
        most every SPENT_FOR seconds (a budget is crossed by at most what is admitted then)."""
        limit = herd.admission.budget
        if not limit:
            return None
        period = herd.admission.budget_period
        with self._lock:
            known = self._spent.get(herd.name)
        if known is None or time.monotonic() - known[0] >= SPENT_FOR:
            since = now - period
            jobs = {j.id for j in self.store.jobs(herd.name) if j.submitted >= since}
            spent = sum(v.record.cost for v in self.store.tasks(herd.name) if v.record.job_id in jobs)
            known = (time.monotonic(), spent)
            with self._lock:
                self._spent[herd.name] = known
        return Budget(limit, period, known[1], self.rates.currency)

    def queue_limit(self, herd: Herd) -> tuple[int, str]:
        """The herd's bound on its tasks not ended (0: none) and where it is set."""
        own = herd.admission.max_queued
        if own is None:
            return self.config.max_queued, "[admission] max_queued"
        return own, f"herd {herd.name}"

    def _queue(self, herd: Herd, tasks: list[TaskRecord]) -> tuple[QueueBound | None, Callable[[], None]]:
        """The herd's bound on its tasks not ended, with how many it has now and their stored
        bytes, ``tasks`` taken at once for this submission (None: no bound); and what gives
        them back."""
        limit, source = self.queue_limit(herd)
        bytes_limit = self.max_queued_bytes
        if not limit and not bytes_limit:
            return None, lambda: None
        adding = len(tasks)
        # (what their live entries will hold: a copy of each record as stored)
        adding_bytes = sum(len(task.model_dump_json()) for task in tasks) if bytes_limit else 0
        with self._lock:
            not_ended = self.store.not_ended(herd.name) + self._reserved[herd.name]
            stored = (self.store.not_ended_bytes(herd.name) if bytes_limit else 0) + self._reserved_bytes[herd.name]
            self._reserved[herd.name] += adding
            self._reserved_bytes[herd.name] += adding_bytes
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self._reserved[herd.name] -= adding
                    self._reserved_bytes[herd.name] -= adding_bytes
                    if self._reserved[herd.name] <= 0:
                        del self._reserved[herd.name]
                    if self._reserved_bytes[herd.name] <= 0:
                        del self._reserved_bytes[herd.name]

        bound = QueueBound(not_ended, limit, source, stored, bytes_limit, adding_bytes)
        return bound, release

    def forget(self, herd: str) -> None:
        """Read the herd's bucket again next time (another server changed it)."""
        with self._lock:
            self._buckets.pop(herd, None)

    def admit(self, herd: Herd, kind: str, tasks: list[TaskRecord], identity: Identity | None) -> Admitted:
        """Ask the plugins; AdmissionRefused when one refuses, else what to commit with the job."""
        now = self.clock()
        rate, burst = self._rate(herd)
        bucket: RateBucket | None = None
        stored: Bucket | None = None
        revision = 0
        if rate > 0:
            stored, revision = self._bucket(herd.name)
            tokens = (
                float(burst) if stored is None else min(float(burst), stored.tokens + max(0.0, now - stored.at) * rate)
            )
            bucket = RateBucket(tokens, rate, burst)
        estimate = worst_case(tasks, self.rates)
        budget = self._budget(herd, now)
        queue, release = self._queue(herd, tasks)
        request = AdmissionRequest(
            herd.name,
            kind,
            tuple(demand(t) for t in tasks),
            herd_bounds(herd, self.defaults),
            bucket,
            now,
            estimate,
            budget,
            queue,
        )
        try:
            answers = self.manager.hooks.admit(request, identity)
            for answer in answers:
                if not answer.value.allowed:
                    raise AdmissionRefused(answer.value)
        except PluginError as exc:  # a plugin that cannot decide admits nothing
            release()
            raise AdmissionRefused(AdmissionDecision(False, f"admission: {exc}", 503, 1.0)) from None
        except BaseException:  # (refused, or a plugin's answer that is no decision: nothing held)
            release()
            raise
        owner = identity.subject if identity is not None else ""
        if bucket is None:
            return Admitted(estimate=estimate, owner=owner, release=release)
        taken = Bucket(tokens=max(0.0, bucket.tokens - 1), at=now)  # (never below: a plugin may admit past it)
        key = bucket_key(herd.name)

        def committed(at: int) -> None:
            with self._lock:
                self._buckets[herd.name] = (taken, at)

        ops = [TxnOp(key, taken.model_dump_json().encode())]
        return Admitted(ops, [(key, revision)], committed, lambda: self.forget(herd.name), release, estimate, owner)
