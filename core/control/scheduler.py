"""The scheduler: places PENDING tasks on nodes, one pass at a time, run by the Barn leader's server.

A pass reads nodes, herds and tasks, orders the waiting tasks (priority first, then fair share
between herds), places each through the filter and score hooks and the configured policy, and
writes the decisions of the pass in Barn transactions of at most ``batch`` tasks, each comparing
its tasks' revisions: if another writer changed one of them meanwhile, that batch is refused
(the others stand: the placements after it only assumed more was in use, never less) and the
pass is read again and retried once, so a task is never lost nor placed twice. Each placement
gets the next attempt number and a fencing token (the greatest Barn revision of the tasks read,
so it is greater than any token the task had).

Over many nodes a task is filtered and scored over a window of them (``window``, by default
the larger of 50 and 5% of the schedulable nodes), the window moving on with every task so
each node gets its turn, as kube-scheduler's percentageOfNodesToScore and Nomad's limited
candidate sets do: filtering and scoring every node for every task costs as much as the nodes
are many. Only when no node of the window fits is every node looked at, so a task that fits
somewhere is placed, and one that fits nowhere waits with every node's reason (grouped by
reason, with counts, past ``REJECTIONS_LISTED`` nodes).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from runink.core import metrics
from runink.core.control.records import (
    Amount,
    Herd,
    NodeRecord,
    Quota,
    Record,
    RunState,
    TaskRecord,
    job_state,
    keys,
)
from runink.core.control.store import ClusterStore, Conflict, NotFound, TooLarge, Versioned, assigned_to
from runink.core.interfaces.scheduler_policy import SchedulerPolicy
from runink.core.model import Node, NodeRejection, Placement, PlacementRequest, Resources
from runink.core.plugins import PluginManager
from runink.core.scheduling import rank

REASONS_IN_PENDING = 5  # rejections quoted in pending_reason (explain has them all)
OTHERS_IN_EXPLAIN = 5  # lower-ranked feasible nodes named in explain
REJECTIONS_LISTED = 20  # up to this many rejected nodes are named one by one; past it, grouped by reason
GROUPS_IN_EXPLAIN = 20  # kinds of rejection shown, the most frequent first
WINDOW_MIN = 50  # nodes filtered and scored per task, at least (every node when there are fewer)
WINDOW_SHARE = 0.05  # ... or this share of the schedulable nodes, when that is more
BATCH = 500  # tasks written per Barn transaction
#: what a transaction compares (key, revision read) and writes
log = logging.getLogger(__name__)
MAX_ENDED_KEPT = 100_000  # ended tasks a scheduler keeps (Scheduler._ended): past it, read again

_Writes = tuple[list[tuple[str, int]], list[tuple[str, Record | None]]]


@dataclass
class PassResult:
    placed: dict[str, str] = field(default_factory=dict)  # task id -> node id
    pending: dict[str, str] = field(default_factory=dict)  # task id -> why it still waits
    token: int = 0  # the fencing token given to this pass's (last attempt's) placements
    conflicts: int = 0  # batches refused because a task changed mid-pass
    committed: bool = True  # False: a batch was refused twice; its tasks wait for the next pass
    waiting: dict[str, int] = field(default_factory=dict)  # herd -> its PENDING tasks after the pass
    waited: dict[str, tuple[str, float]] = field(default_factory=dict)  # placed task id -> (herd, seconds PENDING)
    records: dict[str, TaskRecord] = field(default_factory=dict)  # (``place_new``) task id -> its record placed


@dataclass
class _Usage:
    """What a herd holds now: its SCHEDULED and RUNNING tasks."""

    resources: Resources = field(default_factory=Resources)
    slices: int = 0


class Scheduler:
    """``window``: nodes filtered and scored per task (None: ``window_for`` the schedulable
    nodes; 0: every node, every time). ``batch``: tasks written per Barn transaction."""

    def __init__(
        self,
        store: ClusterStore,
        manager: PluginManager,
        policy: SchedulerPolicy,
        *,
        window: int | None = None,
        batch: int = BATCH,
    ) -> None:
        if window is not None and window < 0:
            raise ValueError(f"scheduler window: {window!r} (expected a number of nodes >= 0)")
        if batch < 1:
            raise ValueError(f"scheduler batch: {batch!r} (expected a number of tasks >= 1)")
        self.store = store
        self.manager = manager
        self.policy = policy
        self.window = window
        self.batch = batch
        self._start = 0  # where the next task's window begins among the candidates
        # ended tasks that live ones name (after, near), read from the Barn once: an ended task
        # off its node never changes again. (300 pipeline jobs waiting on an ended task each
        # made every pass read two Barn keys per job: 756 ms a pass, every pass.)
        self._ended: dict[str, TaskRecord] = {}

    @staticmethod
    def window_for(nodes: int) -> int:
        """The default window over ``nodes`` schedulable nodes."""
        return min(nodes, max(WINDOW_MIN, int(nodes * WINDOW_SHARE)))

    def run_pass(self, now: float) -> PassResult:
        """Place every PENDING task whose backoff is over (``now`` is this scheduler's clock)."""
        began = time.perf_counter()
        result = self._attempt(now, recent=True)
        if not result.committed:  # (read again from the Barn: the view may be what was behind)
            retry = self._attempt(now, recent=False)
            retry.conflicts += result.conflicts
            retry.placed = {**result.placed, **retry.placed}
            retry.waited = {**result.waited, **retry.waited}
            result = retry
        self.report(result, time.perf_counter() - began)
        return result

    def place_new(self, tasks: Sequence[TaskRecord], now: float) -> PassResult | None:
        """Place tasks not stored yet (a submission's), as a pass would, without committing:
        the result's ``records`` are the tasks placed, for the caller to store so. None unless
        every one of them is placed and no stored task waits to be placed before them (they
        would jump its queue), or with no view of the Barn to read (``ClusterStore.view``):
        then they are stored PENDING and a pass places them. The caller holds what serializes
        passes until its commit is in the view, and reports the result (``report``) once it
        committed."""
        if self.store.view is None or any(t.after or t.near or t.state is not RunState.PENDING for t in tasks):
            return None
        if self.store.view.any_under(ClusterStore.PENDING) is not False:  # (a task waits: no pass read for that)
            return None
        result = self._attempt(now, recent=True, new=tasks)
        if len(result.records) != len(tasks):
            return None
        return result

    def report(self, result: PassResult, took: float) -> None:
        """Report a pass's (or ``place_new``'s) metrics."""
        found = [metrics.sample("runink_scheduler_pass_seconds", took)]
        found += [metrics.sample("runink_scheduler_pending_tasks", n, herd=h) for h, n in result.waiting.items()]
        for herd, seconds in result.waited.values():
            found.append(metrics.sample("runink_scheduler_placements_total", 1, herd=herd))
            found.append(metrics.sample("runink_scheduler_placement_seconds", seconds, herd=herd))
        metrics.report(self.manager, found)

    def _attempt(self, now: float, *, recent: bool, new: Sequence[TaskRecord] = ()) -> PassResult:
        """One pass. ``recent``: read from the server's view of the Barn (``ClusterStore.view``:
        no round trip) where it has one; else from the Barn, the three scans at once. ``new``:
        tasks not stored yet (``place_new``), placed only if no other task waits to be, and
        nothing committed: their records placed are in the result's ``records``."""
        if recent and self.store.view is not None:
            live, nodes = self.store.live(recent=True), self.store.nodes(recent=True)
            herds = {h.name: h for h in self.store.herds(recent=True)}
        else:
            nodes_read, herds_read = self.store.later(self.store.nodes), self.store.later(self.store.herds)
            # the live tasks only (pending, or holding room on a node): one scan however many ended
            live = self.store.live()
            nodes = nodes_read()
            herds = {h.name: h for h in herds_read()}
        tasks = [v for v in live if v.record.herd in herds]
        tasks += [Versioned(t, 0) for t in new if t.herd in herds]
        # Greater than any token an earlier attempt of these tasks got: that token was a revision
        # read before the commit that placed it, so each such task's revision is past it (no
        # read of the Barn's revision of its own: a pass is on every job's way to its node)
        token = max((v.revision for v in tasks), default=0)
        if new and self.store.view is not None:  # (new tasks have no revision: past what the view saw)
            token = max(token, self.store.view.revision)
        result = PassResult(token=token, waiting=dict.fromkeys(herds, 0))

        allocated: dict[str, Resources] = {}
        running: dict[str, int] = {}  # node id -> its SCHEDULED and RUNNING tasks
        gpus_held: dict[str, set[str]] = {}  # node id -> the ids of its GPUs those tasks hold
        usage: dict[str, _Usage] = {name: _Usage() for name in herds}
        queues: dict[str, list[Versioned[TaskRecord]]] = {}
        writes: list[tuple[str, Record | None]] = []
        read: list[tuple[str, int]] = []
        written: list[str] = []  # the task id of each write
        tasks, skips, records = self._upstream_settled(tasks)
        for versioned in tasks:
            task = versioned.record
            if (on := assigned_to(task)) is not None:
                # SCHEDULED or RUNNING on its node, or cancelled there and not yet stopped: its
                # slice holds the node and the herd's quota until its agent says it ended (a
                # cancel and a new submission once overran both for up to the stop's grace)
                want = task.resources.resources()
                allocated[on] = allocated.get(on, Resources()) + want
                running[on] = running.get(on, 0) + 1
                if task.gpus:
                    gpus_held.setdefault(on, set()).update(task.gpus)
                held = usage.setdefault(task.herd, _Usage())
                held.resources += want
                held.slices += 1
            elif task.state is RunState.PENDING:
                result.waiting[task.herd] = result.waiting.get(task.herd, 0) + 1
                if task.not_before <= now:
                    queues.setdefault(task.herd, []).append(versioned)
        if not queues and not skips:
            return result
        if new and (skips or any(v.revision for queue in queues.values() for v in queue)):
            return result  # (a stored task waits: the new ones do not go before it)

        candidates: list[Node] = []
        unschedulable: list[tuple[str, str]] = []
        node_gpus: dict[str, list[str]] = {}
        for versioned_node in nodes:
            record = versioned_node.record
            node_gpus[record.id] = record.gpus
            if record.schedulable:
                candidates.append(
                    Node(
                        record.id,
                        record.capacity.resources(),
                        allocated.get(record.id, Resources()),
                        dict(record.labels),
                        running=running.get(record.id, 0),
                        slots=record.slots,
                    )
                )
            else:
                unschedulable.append((record.id, _why_unschedulable(record)))
        position = {node.id: i for i, node in enumerate(candidates)}
        total = sum((node.capacity for node in candidates), Resources())
        window = (
            len(candidates)
            if self.window == 0
            else min(len(candidates), self.window or self.window_for(len(candidates)))
        )
        # Within a pass nodes only fill up: a request that fit nowhere fits nowhere later in
        # the pass, so its reason is reused for the same request (not every node again).
        # Keyed on the herd too: filter hooks are given it, and may answer per herd.
        fit_nowhere: dict[tuple[str, Resources, tuple[tuple[str, str], ...]], tuple[str, list[str]]] = {}

        # herd -> what of its quota is used up: none of its tasks fits now (its queue passed over)
        full = {h: used for h in queues if (used := _used_up(herds[h].quota, usage[h])) is not None}
        passed_over: list[Versioned[TaskRecord]] = []  # the rest of a full herd's queue: not looked at
        for versioned in _fair_order(queues, herds, usage, total, full=full, passed_over=passed_over):
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
            changed: TaskRecord | None = None
            ranked: list[Placement] = []
            rejections: list[NodeRejection] = []
            scored = 0
            near_explain: list[str] = []  # a task placed near another: its own explain
            labels = herd.placement_labels(task.node_labels)  # (a herd kept to some nodes: theirs)
            if over is not None:
                reason = f"herd {herd.name} quota: {over}"
                changed = _waiting(task, reason, task.explain)
                if used_up := _used_up(herd.quota, held):
                    full[herd.name] = used_up  # (9,000 tasks of a full herd made every pass ~0.2 s)
            elif task.near:
                ranked, reason, near_explain = self._place_near(
                    task,
                    want,
                    labels,
                    records=records,
                    candidates=candidates,
                    position=position,
                    unschedulable=unschedulable,
                )
                if not ranked:
                    changed = _waiting(task, reason, near_explain)
            else:
                shape = (task.herd, want, tuple(sorted(labels.items())))
                if shape not in fit_nowhere:
                    request = PlacementRequest(task.id, task.herd, want, labels)
                    if window < len(candidates):
                        ranked, rejections = self._place(request, self._next_window(candidates, window))
                        scored = window
                    if not ranked:
                        ranked, rejections = self._place(request, candidates)
                        scored = len(candidates)
                if not ranked:
                    if shape not in fit_nowhere:
                        rejected = _rejected(rejections, unschedulable)
                        fit_nowhere[shape] = (_no_fit(rejected), rejected)
                    reason, rejected = fit_nowhere[shape]
                    changed = _waiting(task, reason, rejected)
            if ranked:
                best = ranked[0]
                node = candidates[position[best.node_id]]
                candidates[position[node.id]] = replace(node, allocated=node.allocated + want, running=node.running + 1)
                held.resources = after
                held.slices += 1
                explain = near_explain or _explain(
                    best, ranked[1:], rejections, unschedulable, scored=scored, schedulable=len(candidates)
                )
                gpus = _free_gpus(node_gpus.get(best.node_id, []), gpus_held.setdefault(best.node_id, set()), want.gpu)
                changed = _scheduled(task, best.node_id, token, explain, herd.quota, gpus=gpus)
                result.placed[task.id] = best.node_id
                since = task.transitions[-1].at if task.transitions else time.time()
                result.waited[task.id] = (task.herd, max(0.0, time.time() - since))
                result.waiting[task.herd] -= 1
            if changed is not None:
                key = keys.task(task.herd, task.id)
                read.append((key, versioned.revision))
                writes.append((key, changed))
                written.append(task.id)
            if task.id not in result.placed:
                result.pending[task.id] = (changed or task).pending_reason
        for versioned in passed_over:  # (waiting: a reason written once, when it has none of its quota)
            task = versioned.record
            changed = None
            if not task.pending_reason.startswith(f"herd {task.herd} quota: "):
                changed = _waiting(task, f"herd {task.herd} quota: {full[task.herd]}", task.explain)
            if changed is not None:
                key = keys.task(task.herd, task.id)
                read.append((key, versioned.revision))
                writes.append((key, changed))
                written.append(task.id)
            result.pending[task.id] = (changed or task).pending_reason

        if new:
            for task_id, (_, placed) in zip(written, writes, strict=True):
                if task_id in result.placed and isinstance(placed, TaskRecord):
                    result.records[task_id] = placed
            return result
        for group in _packed(skips, self.batch):
            self._commit(result, [group])
        for start in range(0, len(writes), self.batch):
            end = start + self.batch
            # one group per task: a batch too large to send is split between them
            groups = [
                ([one_read], [one_write])
                for one_read, one_write in zip(read[start:end], writes[start:end], strict=True)
            ]
            self._commit(result, groups, written[start:end])
        return result

    def _commit(self, result: PassResult, groups: list[_Writes], task_ids: Sequence[str] = ()) -> None:
        """Commit ``groups`` (compares and writes that go together) in one transaction, or, when
        that is too large to send (TooLarge), halves of them in turn, down to one group: one
        that is too large alone is left as it was and logged, and the rest of the pass stands.
        ``task_ids``: the tasks the groups place, one per group (none for skips)."""
        try:
            self.store.commit([c for compare, _ in groups for c in compare], [w for _, ws in groups for w in ws])
        except TooLarge as exc:
            if len(groups) > 1:
                half = len(groups) // 2
                self._commit(result, groups[:half], task_ids[:half])
                self._commit(result, groups[half:], task_ids[half:])
                return
            keys = ", ".join(key for key, _ in groups[0][1][:3])
            log.error("scheduler: a write of %s is too large to store, left as it was: %s", keys, exc)
            self._unplace(result, task_ids)
        except Conflict:
            # Its tasks stay as they were (a skip's jobs' tasks PENDING); later batches stand
            # (they assumed these held their nodes: more in use than is, never less). The pass
            # is read again.
            result.conflicts += 1
            result.committed = False
            self._unplace(result, task_ids)

    @staticmethod
    def _unplace(result: PassResult, task_ids: Sequence[str]) -> None:
        for task_id in task_ids:
            if result.placed.pop(task_id, None) is not None:
                refused, _ = result.waited.pop(task_id)
                result.waiting[refused] += 1

    def _upstream_settled(
        self, tasks: list[Versioned[TaskRecord]]
    ) -> tuple[list[Versioned[TaskRecord]], list[_Writes], dict[str, TaskRecord]]:
        """The tasks this pass may consider, the writes of the tasks it skips, one entry per
        job (its tasks' and its own: never committed apart, so a job is never left behind its
        tasks), and the records of the tasks theirs name (``after``, ``near``) by id. A PENDING
        task waits while a task it comes ``after`` has not ended, and is SKIPPED once one ended
        without succeeding, or one it must be placed ``near`` ended without a node (never
        placed: there is no node to place it on). ``tasks``: the live ones; the tasks of a job
        one of them waits on are read when a task it names is not live (it ended)."""
        records = {v.record.id: v.record for v in tasks}
        siblings: dict[str, list[TaskRecord]] = {}  # job id -> all its tasks, for the jobs read

        def job_tasks(job_id: str) -> list[TaskRecord]:
            if job_id not in siblings:
                job = self.store.job(job_id).record
                siblings[job_id] = [v.record for v in self.store.job_tasks(job)]
                if len(self._ended) > MAX_ENDED_KEPT:
                    self._ended.clear()
                for sibling in siblings[job_id]:
                    records.setdefault(sibling.id, sibling)
                    if sibling.state.final and assigned_to(sibling) is None:
                        self._ended[sibling.id] = sibling
            return siblings[job_id]

        for versioned in tasks:
            task = versioned.record
            if task.state is not RunState.PENDING:
                continue
            named = [*task.after, *(n.task for n in task.near)]
            for name in named:
                if name not in records and (upstream := self._ended.get(name)) is not None:
                    records[name] = upstream
            if any(other not in records for other in named):
                try:
                    job_tasks(task.job_id)
                except NotFound:  # (its job deleted meanwhile: a name not found counts as failed)
                    siblings[task.job_id] = []
        kept: list[Versioned[TaskRecord]] = []
        skipped: dict[str, list[TaskRecord]] = {}  # job id -> its tasks skipped now
        groups: dict[str, _Writes] = {}  # job id -> what its skips read and write
        for versioned in tasks:
            task = versioned.record
            if task.state is not RunState.PENDING or not (task.after or task.near):
                kept.append(versioned)
                continue
            state = {u: r.state if (r := records.get(u)) is not None else None for u in task.after}
            failed = [u for u, s in state.items() if s is None or (s.final and s is not RunState.SUCCEEDED)]
            # (an upstream id that is not there counts as failed: never wait for it forever)
            unplaced = [n for n in task.near if _never_placed(records.get(n.task))]
            if failed or unplaced:
                if failed:
                    reason = f"upstream task {failed[0]} did not succeed ({state[failed[0]] or 'missing'})"
                else:
                    other = unplaced[0]
                    partner = records.get(other.task)
                    how = "missing" if partner is None else partner.state
                    reason = f"colocated with {other.scenario}, whose task {other.task} ended ({how}) on no node"
                changed = task.moved_to(RunState.SKIPPED, reason, pending_reason="")
                compare, writes = groups.setdefault(task.job_id, ([], []))
                compare.append((keys.task(task.herd, task.id), versioned.revision))
                writes.append((keys.task(task.herd, task.id), changed))
                skipped.setdefault(task.job_id, []).append(changed)
            elif all(s is RunState.SUCCEEDED for s in state.values()):
                kept.append(versioned)
        for job_id, changed_tasks in skipped.items():
            job = self.store.job(job_id)
            now = {t.id: t for t in changed_tasks}
            new_state = job_state([now.get(t.id, t) for t in job_tasks(job_id)])
            if new_state is not job.record.state:
                finished = time.time() if new_state.final else None
                compare, writes = groups[job_id]
                compare.append((keys.job(job.record.herd, job_id), job.revision))
                ended = job.record.model_copy(update={"state": new_state, "finished": finished})
                writes.append((keys.job(job.record.herd, job_id), ended))
        return kept, list(groups.values()), records

    def _place_near(
        self,
        task: TaskRecord,
        want: Resources,
        labels: dict[str, str],
        *,
        records: dict[str, TaskRecord],
        candidates: list[Node],
        position: dict[str, int],
        unschedulable: list[tuple[str, str]],
    ) -> tuple[list[Placement], str, list[str]]:
        """Place a task that must go where other tasks of its job are (``task.near``), on a node
        with ``labels`` (its own and its herd's): the ranking (empty: it waits), why it waits,
        and its explain. Only their node is looked at; every other node is named as rejected,
        saying why."""
        target: str | None = None
        whys: list[str] = []
        for near in task.near:
            other = records.get(near.task)
            if other is None or other.node is None:  # (one ended on no node is SKIPPED before)
                what = f"input {near.path}" if near.path else f"colocated with {near.scenario}"
                return [], f"{what}: waits until its task {near.task} ({near.scenario}) is placed", []
            why = near.why(other.node)
            if other.state.final and not near.path:
                why += f" (where it ended {other.state})"
            if target is not None and other.node != target:
                return [], f"{whys[0]}, but {why}: no node can be both", []
            target = other.node
            whys.append(why)
        assert target is not None  # (task.near is not empty)
        why = "; ".join(whys)
        if target not in position:
            gone = dict(unschedulable).get(target, "no longer registered")
            return [], f"{why}: {target} is {gone}", [f"{target}: {gone}"]
        request = PlacementRequest(task.id, task.herd, want, labels)
        ranked, rejections = self._place(request, [candidates[position[target]]])
        others = [(node.id, why) for node in candidates if node.id != target] + unschedulable
        if not ranked:
            refused = "; ".join(f"{r.reason} [{r.plugin}]" for r in rejections) or "no fit"
            return [], f"{why}: {target}: {refused}", _rejected(rejections, others)
        explain = [f"chosen {target}: score {ranked[0].score:.3f}", f"{why}: placed there", *_rejected([], others)]
        return ranked, "", explain

    def _next_window(self, candidates: list[Node], window: int) -> list[Node]:
        start = self._start % len(candidates)
        self._start = start + window
        offered = candidates[start : start + window]
        if len(offered) < window:
            offered += candidates[: window - len(offered)]
        return offered

    def _place(self, request: PlacementRequest, nodes: Sequence[Node]) -> tuple[list[Placement], list[NodeRejection]]:
        return rank(self.manager, self.policy, request, nodes) if nodes else ([], [])


def _packed(groups: list[_Writes], batch: int) -> Iterator[_Writes]:
    """The groups joined into transactions of at most ``batch`` writes, never splitting one
    (a group larger than ``batch`` is a transaction of its own)."""
    compare: list[tuple[str, int]] = []
    writes: list[tuple[str, Record | None]] = []
    for group_compare, group_writes in groups:
        if writes and len(writes) + len(group_writes) > batch:
            yield compare, writes
            compare, writes = [], []
        compare += group_compare
        writes += group_writes
    if writes:
        yield compare, writes


def _fair_order(
    queues: dict[str, list[Versioned[TaskRecord]]],
    herds: dict[str, Herd],
    usage: dict[str, _Usage],
    total: Resources,
    *,
    full: Mapping[str, str] | None = None,
    passed_over: list[Versioned[TaskRecord]] | None = None,
) -> Iterator[Versioned[TaskRecord]]:
    """The tasks in the order to place them: between herds, the herd using least of its quota
    (or, without one, of an equal share of the cluster) first, herds at equal share in turn;
    within a herd, the highest priority first, then in the order they were submitted
    (``queued``, then the id). A priority orders its own herd's tasks only: anyone who may
    submit sets it, so across herds it would let one herd's queue starve the others. The caller
    updates ``usage`` as it places; each choice, made lazily, sees the placements before it.
    A herd the caller puts in ``full`` is served no more: the rest of its queue goes to
    ``passed_over``."""
    if passed_over is not None:  # (full already: not even sorted)
        passed_over.extend(v for herd, items in queues.items() if herd in (full or {}) for v in items)
    order: dict[str, deque[Versioned[TaskRecord]]] = {
        herd: deque(sorted(items, key=lambda v: (-v.record.priority, v.record.queued, v.record.id)))
        for herd, items in queues.items()
        if herd not in (full or {})
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
        for name in [h for h in order if h in (full or {})]:
            if passed_over is not None:
                passed_over.extend(order[name])
            del order[name]
        if not order:
            return
        herd = min(
            order,
            key=lambda h: (share(h), last_served.get(h, -1), h),
        )
        queue = order[herd]
        task = queue.popleft()
        if not queue:
            del order[herd]
        last_served[herd] = served
        served += 1
        yield task


def _used_up(quota: Quota, held: _Usage) -> str | None:
    """What of ``quota`` ``held`` uses up, so that no task of the herd fits until some end (a
    task asks some of each resource its herd's quota limits: Lifecycle gives it a default);
    None while some is left."""
    if quota.max_slices and held.slices >= quota.max_slices:
        return f"max_slices used up ({held.slices} of {quota.max_slices})"
    for name, limit, used in (("cpu", quota.cpu, held.resources.cpu), ("memory", quota.memory, held.resources.memory)):
        if limit and used >= limit:
            return f"{name} used up ({used:g} of {limit:g})"
    return None


def _never_placed(task: TaskRecord | None) -> bool:
    """A task that ended on no node (SKIPPED, cancelled before it was placed) or is gone."""
    return task is None or (task.state.final and task.node is None)


def _why_unschedulable(node: NodeRecord) -> str:
    if not node.ready:
        return "not ready (its heartbeat stopped)"
    if node.draining or node.cordoned:
        return "draining" if node.draining else "cordoned"
    return f"unfit: {node.unfit}"


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


def _free_gpus(ids: list[str], held: set[str], count: int) -> list[str]:
    """``count`` of a node's GPU ``ids`` no task holds, now held (the first free ones). The
    node's free gpu count was checked by the filters; a node that lists no ids (GPUs offered
    without devices) gives none, and its executor decides whether the task may run."""
    if count <= 0 or not ids:
        return []
    chosen = [g for g in ids if g not in held][:count]
    held.update(chosen)
    return chosen


def _scheduled(
    task: TaskRecord, node_id: str, token: int, explain: list[str], quota: Quota, *, gpus: list[str]
) -> TaskRecord:
    """The task placed on ``node_id``: its next attempt, with that attempt's fencing token
    and the node's GPUs it is given."""
    return task.moved_to(
        RunState.SCHEDULED,
        f"placed on {node_id}",
        checked=False,  # every value is built valid here
        node=node_id,
        attempt=task.attempt + 1,
        token=token,
        explain=explain,
        pending_reason="",
        herd_quota=quota,  # the node caps the herd's cgroup parent at it
        gpus=gpus,
    )


_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?")


@functools.lru_cache(maxsize=4096)
def _kind(reason: str) -> str:
    """A rejection's reason with its numbers blanked: what groups nodes rejected alike."""
    return _NUMBER.sub("#", reason)


def _rejected(rejections: Sequence[NodeRejection], unschedulable: Sequence[tuple[str, str]]) -> list[str]:
    """Why nodes were not chosen: one line per node up to REJECTIONS_LISTED nodes; past that,
    one line per kind of reason, with its count and one node's own words, most frequent first."""
    lines = [(r.node_id, r.reason, f" [{r.plugin}]") for r in rejections]
    lines += [(node_id, why, "") for node_id, why in unschedulable]
    if len(lines) <= REJECTIONS_LISTED:
        return [f"{node_id}: {reason}{tag}" for node_id, reason, tag in lines]
    groups: dict[tuple[str, str], list[str]] = {}
    for node_id, reason, tag in lines:
        groups.setdefault((_kind(reason), tag), []).append(f"{node_id}: {reason}")
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    shown = [
        f"{len(named)} nodes: {kind}{tag}, e.g. {named[0]}" if len(named) > 1 else f"{named[0]}{tag}"
        for (kind, tag), named in ordered[:GROUPS_IN_EXPLAIN]
    ]
    rest = ordered[GROUPS_IN_EXPLAIN:]
    if rest:
        shown.append(f"and {sum(len(named) for _, named in rest)} nodes rejected for {len(rest)} other reasons")
    return shown


def _explain(
    chosen: Placement,
    others: Sequence[Placement],
    rejections: Sequence[NodeRejection],
    unschedulable: Sequence[tuple[str, str]],
    *,
    scored: int,
    schedulable: int,
) -> list[str]:
    lines = [f"chosen {chosen.node_id}: score {chosen.score:.3f}"]
    if others:
        named = ", ".join(f"{p.node_id} {p.score:.3f}" for p in others[:OTHERS_IN_EXPLAIN])
        more = len(others) - OTHERS_IN_EXPLAIN
        lines.append(f"fit with lower scores: {named}" + (f" and {more} more" if more > 0 else ""))
    if scored < schedulable:
        lines.append(f"filtered and scored {scored} of {schedulable} schedulable nodes (a window moving on each task)")
    return lines + _rejected(rejections, unschedulable)
