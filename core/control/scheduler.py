"""The scheduler: places PENDING tasks on nodes, one pass at a time, run by the Barn leader's server.

A pass reads nodes, herds and tasks, orders the waiting tasks (priority first, then fair share
between herds), places each through the filter and score hooks and the configured policy, and
writes every decision of the pass in one Barn transaction that compares each task's revision:
if another writer changed one of them meanwhile, the pass is read again and retried once, so a
task is never lost nor placed twice. Each placement gets the next attempt number and a fencing
token (a Barn revision read after the records, so it is greater than any token the task had).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from runink.core.control.records import Amount, Herd, NodeRecord, Record, RunState, TaskRecord, keys
from runink.core.control.store import ClusterStore, Conflict, Versioned
from runink.core.interfaces.scheduler_policy import SchedulerPolicy
from runink.core.model import Node, NodeRejection, Placement, PlacementRequest, Resources
from runink.core.plugins import PluginManager
from runink.core.scheduling import rank

ACTIVE = (RunState.SCHEDULED, RunState.RUNNING)  # states that hold a node's resources
REASONS_IN_PENDING = 5  # rejections quoted in pending_reason (explain has them all)
OTHERS_IN_EXPLAIN = 5  # lower-ranked feasible nodes named in explain


@dataclass
class PassResult:
    placed: dict[str, str] = field(default_factory=dict)  # task id -> node id
    pending: dict[str, str] = field(default_factory=dict)  # task id -> why it still waits
    token: int = 0  # the fencing token given to this pass's placements
    conflicts: int = 0  # commits refused because a task changed mid-pass
    committed: bool = True  # False: refused twice; nothing written, the next pass tries again


@dataclass
class _Usage:
    """What a herd holds now: its SCHEDULED and RUNNING tasks."""

    resources: Resources = field(default_factory=Resources)
    slices: int = 0


class Scheduler:
    def __init__(self, store: ClusterStore, manager: PluginManager, policy: SchedulerPolicy) -> None:
        self.store = store
        self.manager = manager
        self.policy = policy

    def run_pass(self, now: float) -> PassResult:
        """Place every PENDING task whose backoff is over (``now`` is this scheduler's clock)."""
        result = self._attempt(now)
        if result.committed:
            return result
        retry = self._attempt(now)
        retry.conflicts += result.conflicts
        return retry

    def _attempt(self, now: float) -> PassResult:
        nodes = self.store.nodes()
        herds = {h.name: h for h in self.store.herds()}
        tasks = self.store.tasks()
        # Read after the records: greater than every revision seen, so greater than any token
        # an earlier attempt of these tasks got (that token was read before its own commit).
        token = self.store.barn.revision()
        result = PassResult(token=token)

        allocated: dict[str, Resources] = {}
        usage: dict[str, _Usage] = {name: _Usage() for name in herds}
        queues: dict[str, list[Versioned[TaskRecord]]] = {}
        for versioned in tasks:
            task = versioned.record
            if task.state in ACTIVE and task.node is not None:
                want = task.resources.resources()
                allocated[task.node] = allocated.get(task.node, Resources()) + want
                held = usage.setdefault(task.herd, _Usage())
                held.resources += want
                held.slices += 1
            elif task.state is RunState.PENDING and task.not_before <= now and task.herd in herds:
                queues.setdefault(task.herd, []).append(versioned)

        candidates: list[Node] = []
        unschedulable: list[str] = []
        for versioned_node in nodes:
            record = versioned_node.record
            if record.schedulable:
                candidates.append(
                    Node(
                        record.id,
                        record.capacity.resources(),
                        allocated.get(record.id, Resources()),
                        dict(record.labels),
                    )
                )
            else:
                unschedulable.append(f"{record.id}: {_why_unschedulable(record)}")
        position = {node.id: i for i, node in enumerate(candidates)}
        total = sum((node.capacity for node in candidates), Resources())

        writes: list[tuple[str, Record | None]] = []
        read: list[tuple[str, int]] = []
        for versioned in _fair_order(queues, herds, usage, total):
            task = versioned.record
            herd = herds[task.herd]
            want = task.resources.resources()
            held = usage[task.herd]
            after = held.resources + want
            # model_construct: a herd's sum may pass one Amount's per-task bounds
            over = herd.quota.exceeded_by(
                Amount.model_construct(cpu=after.cpu, memory=after.memory, gpu=after.gpu, pids=after.pids),
                held.slices + 1,
            )
            if over is not None:
                reason = f"herd {herd.name} quota: {over}"
                changed = _waiting(task, reason, task.explain)
            else:
                request = PlacementRequest(task.id, task.herd, want, dict(task.node_labels))
                ranked, rejections = self._place(request, candidates)
                if not ranked:
                    rejected = [f"{r.node_id}: {r.reason} [{r.plugin}]" for r in rejections] + unschedulable
                    reason = _no_fit(rejected)
                    changed = _waiting(task, reason, rejected)
                else:
                    best = ranked[0]
                    node = candidates[position[best.node_id]]
                    candidates[position[node.id]] = replace(node, allocated=node.allocated + want)
                    held.resources = after
                    held.slices += 1
                    changed = task.moved_to(
                        RunState.SCHEDULED,
                        f"placed on {best.node_id}",
                        node=best.node_id,
                        attempt=task.attempt + 1,
                        token=token,
                        explain=_explain(best, ranked[1:], rejections, unschedulable),
                        pending_reason="",
                    )
                    result.placed[task.id] = best.node_id
            if changed is not None:
                key = keys.task(task.herd, task.id)
                read.append((key, versioned.revision))
                writes.append((key, changed))
            if task.id not in result.placed:
                result.pending[task.id] = (changed or task).pending_reason

        if writes:
            try:
                self.store.commit(read, writes)
            except Conflict:
                return PassResult(token=token, conflicts=1, committed=False)
        return result

    def _place(self, request: PlacementRequest, nodes: Sequence[Node]) -> tuple[list[Placement], list[NodeRejection]]:
        return rank(self.manager, self.policy, request, nodes) if nodes else ([], [])


def _fair_order(
    queues: dict[str, list[Versioned[TaskRecord]]],
    herds: dict[str, Herd],
    usage: dict[str, _Usage],
    total: Resources,
) -> Iterator[Versioned[TaskRecord]]:
    """The tasks in the order to place them: the highest priority first; at equal priority the
    herd using least of its quota (or, without one, of an equal share of the cluster) goes
    first, herds at equal share in turn. The caller updates ``usage`` as it places; each
    choice, made lazily, sees the placements before it."""
    order: dict[str, deque[Versioned[TaskRecord]]] = {
        herd: deque(sorted(items, key=lambda v: (-v.record.priority, v.record.id))) for herd, items in queues.items()
    }
    equal = 1 / max(1, len(herds))
    last_served: dict[str, int] = {}
    served = 0

    def share(name: str) -> float:
        quota, held = herds[name].quota, usage[name]
        parts = [
            used / ref
            for used, ref in (
                (held.resources.cpu, quota.cpu or total.cpu * equal),
                (held.resources.memory, quota.memory or total.memory * equal),
                (held.resources.gpu, quota.gpu or total.gpu * equal),
                (held.slices, quota.max_slices),
            )
            if ref > 0
        ]
        return max(parts, default=0.0)

    while order:
        herd = min(
            order,
            key=lambda h: (-order[h][0].record.priority, share(h), last_served.get(h, -1), h),
        )
        queue = order[herd]
        task = queue.popleft()
        if not queue:
            del order[herd]
        last_served[herd] = served
        served += 1
        yield task


def _why_unschedulable(node: NodeRecord) -> str:
    if not node.ready:
        return "not ready (its heartbeat stopped)"
    return "draining" if node.draining else "cordoned"


def _no_fit(rejected: list[str]) -> str:
    if not rejected:
        return "no nodes registered"
    shown = "; ".join(rejected[:REASONS_IN_PENDING])
    more = len(rejected) - REASONS_IN_PENDING
    return f"no node fits: {shown}" + (f"; and {more} more (see explain)" if more > 0 else "")


def _waiting(task: TaskRecord, reason: str, explain: list[str]) -> TaskRecord | None:
    """The task with its new pending reason, or None when the reason is the same (no write)."""
    if task.pending_reason == reason:
        return None
    return task.model_copy(update={"pending_reason": reason, "explain": explain})


def _explain(
    chosen: Placement, others: Sequence[Placement], rejections: Sequence[NodeRejection], unschedulable: list[str]
) -> list[str]:
    lines = [f"chosen {chosen.node_id}: score {chosen.score:.3f}"]
    if others:
        named = ", ".join(f"{p.node_id} {p.score:.3f}" for p in others[:OTHERS_IN_EXPLAIN])
        more = len(others) - OTHERS_IN_EXPLAIN
        lines.append(f"fit with lower scores: {named}" + (f" and {more} more" if more > 0 else ""))
    lines += [f"{r.node_id}: {r.reason} [{r.plugin}]" for r in rejections]
    return lines + unschedulable
