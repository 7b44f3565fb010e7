"""Node liveness, decided by the Barn leader's server with its own clock only.

Agents bump their node record's ``heartbeat`` counter; the leader remembers, per node, the
counter it last saw and when (its monotonic clock) it last changed. A node whose counter has
not moved for ``timeout`` seconds of that clock is declared dead: ready=False and its
SCHEDULED/RUNNING tasks back to PENDING, in one transaction that compares the node's revision
(a heartbeat landing meanwhile refuses it); its cancelled tasks still waiting for their
agent's word that they stopped leave it too. Times written by other machines are never
compared. A new leader starts with an empty memory, so every node gets a full timeout.
A task keeps its old fencing token while PENDING; rescheduling gives it a greater one, so a
late report from the dead node names a stale token.
"""

from __future__ import annotations

from dataclasses import dataclass

from runink.core.control.records import NodeRecord, Record, RunState, TaskRecord, keys
from runink.core.control.store import ClusterStore, Conflict, Versioned, assigned_to

ACTIVE = (RunState.SCHEDULED, RunState.RUNNING)
#: tasks sent back in the transaction that marks their node dead: each is two operations (its
#: record and its assigned-index entry), and a Barn transaction holds at most 1,024
LOST_WITH_NODE = 400


@dataclass
class _Seen:
    heartbeat: int
    incarnation: str
    since: float  # the leader's monotonic time when the counter last changed


class Liveness:
    def __init__(self, store: ClusterStore, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"liveness timeout: {timeout!r} (expected seconds > 0)")
        self.store = store
        self.timeout = timeout
        self._seen: dict[str, _Seen] = {}

    def observe(self, now_monotonic: float) -> list[str]:
        """Look at every node once; returns the ids of the nodes declared dead by this call."""
        nodes = self.store.nodes()
        current = {v.record.id for v in nodes}
        for gone in self._seen.keys() - current:
            del self._seen[gone]

        expired: list[Versioned[NodeRecord]] = []
        stranded = False  # a not-ready node may still hold tasks (placed there as it died)
        for versioned in nodes:
            node = versioned.record
            seen = self._seen.get(node.id)
            if seen is None or seen.heartbeat != node.heartbeat or seen.incarnation != node.incarnation:
                self._seen[node.id] = _Seen(node.heartbeat, node.incarnation, now_monotonic)
            elif node.ready and now_monotonic - seen.since >= self.timeout:
                expired.append(versioned)
            if not node.ready:
                stranded = True
        if not expired and not stranded:
            return []

        dead: list[str] = []
        for versioned in expired:
            node = versioned.record
            # (the rest, past LOST_WITH_NODE, go back in the next round: the node is not ready then)
            on_node = [t for t in self.store.assigned(node.id) if _held(t.record)][:LOST_WITH_NODE]
            read = [(keys.node(node.id), versioned.revision)]
            writes: list[tuple[str, Record | None]] = [(keys.node(node.id), node.model_copy(update={"ready": False}))]
            for task in on_node:
                key = keys.task(task.record.herd, task.record.id)
                read.append((key, task.revision))
                writes.append((key, _released(task.record, node.id)))
            try:
                self.store.commit(read, writes)
            except Conflict:
                continue  # a heartbeat (or a task report) landed: look again next time
            dead.append(node.id)

        # Tasks the scheduler placed on a node just before it was declared dead (its pass read
        # the node as ready) would wait there forever: send them back too.
        not_ready = {v.record.id for v in nodes if not v.record.ready}
        for task in self.store.assigned() if not_ready else []:  # (one scan, however many nodes died)
            record = task.record
            if record.node in not_ready and _held(record):
                key = keys.task(record.herd, record.id)
                try:
                    self.store.commit([(key, task.revision)], [(key, _released(record, record.node))])
                except Conflict:
                    continue
        return dead


def _held(task: TaskRecord) -> bool:
    """Whether ``task`` holds room on its node: placed or running there, or cancelled there and
    not yet said stopped by its agent (which a dead node's never will)."""
    return task.state in ACTIVE or (task.state is RunState.CANCELLED and assigned_to(task) is not None)


def _released(task: TaskRecord, node_id: str) -> TaskRecord:
    """``task`` off its dead node: placed again if it was to run, else (cancelled) only off it."""
    if task.state is RunState.CANCELLED:
        return task.model_copy(update={"node": None})
    return _lost(task, node_id)


def _lost(task: TaskRecord, node_id: str) -> TaskRecord:
    reason = f"node {node_id} lost"
    return task.moved_to(RunState.PENDING, reason, node=None, pending_reason=reason)
