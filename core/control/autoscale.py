"""The autoscaler: nodes added while tasks wait for room, idle ones drained and then removed.

Seed 002's AutoScaler policy, run by the leading server as a control-loop chore (a look at
most every second), over a ``Scaler`` driver that starts and stops the nodes
(``runink.core.interfaces.scaler``). Each look:

1. **Removals go on.** A node picked for removal was drained (no new work is placed there).
   Once it runs no task, or its ``drain_grace`` is over, the scaler stops it: its agent drains
   too and gives back what still runs, to be placed elsewhere, so no task is lost. Once the
   scaler no longer lists it and no task is assigned there, its node record is deleted.
2. **Up.** Below ``min_nodes``: up to it. Tasks that fit no node (the scheduler's "no node
   fits" or "no nodes registered"), beyond what nodes still starting will take
   (``pending_per_node`` each), add ceil(waiting / ``pending_per_node``) nodes, up to
   ``max_nodes``.
3. **Down.** With no task waiting and more than ``min_nodes``, the node idle longest, once
   idle ``scale_down_idle`` seconds (no task SCHEDULED or RUNNING there), is drained.

Adding nodes and draining one are actions: at most one per ``cooldown``. Every action, and
every change of why it holds back (a bound, the cooldown), is stored with its reason in the
Barn (``ScalingState``, the last 100), written through the loop's fenced store before the
scaler acts, so a deposed leader neither records nor acts. Idle time is counted on the
leader's own clock from when it first saw the node idle: a new leader counts again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from runink.core.config import ScalingConfig
from runink.core.control.records import NodeRecord, RunState, ScalingDecision, ScalingState, keys
from runink.core.control.store import ClusterStore, Conflict, NotFound
from runink.core.interfaces.scaler import Scaler, ScalerError
from runink.core.report import printable
from runink.core.units import parse_duration

log = logging.getLogger(__name__)

EVERY = 1.0  # seconds between looks
KEEP_DECISIONS = 100
#: the pending reasons of a task no node has room for (core/control/scheduler.py's _no_fit)
NO_ROOM = ("no node fits", "no nodes registered")
ACTIVE = (RunState.SCHEDULED, RunState.RUNNING)


@dataclass(frozen=True)
class ScalingPolicy:
    min_nodes: int = 0
    max_nodes: int = 10
    pending_per_node: int = 4
    idle_delay: float = 300.0  # seconds
    cooldown: float = 60.0
    drain_grace: float = 600.0

    @classmethod
    def from_config(cls, config: ScalingConfig) -> ScalingPolicy:
        return cls(
            config.min_nodes,
            config.max_nodes,
            config.pending_per_node,
            parse_duration(config.scale_down_idle),
            parse_duration(config.cooldown),
            parse_duration(config.drain_grace),
        )


@dataclass
class _Look:
    """What one look saw."""

    managed: list[str]  # the scaler's nodes
    records: dict[str, tuple[NodeRecord, int]]  # node id -> (record, revision)
    busy: dict[str, int]  # node id -> its SCHEDULED and RUNNING tasks
    waiting: int  # tasks no node has room for


class Autoscaler:
    """A control-loop chore: ``autoscaler(now_wall)`` looks at most every ``every`` seconds."""

    def __init__(
        self,
        store: ClusterStore,
        scaler: Scaler,
        policy: ScalingPolicy,
        *,
        every: float = EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.scaler = scaler
        self.policy = policy
        self.every = every
        self.clock = clock
        self._next = 0.0
        self._idle_since: dict[str, float] = {}  # node id -> (this leader's clock) idle since

    def __call__(self, now_wall: float) -> None:
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.every
        self.step(now_wall)

    def step(self, now_wall: float) -> list[ScalingDecision]:
        """One look; returns the decisions it stored."""
        now = self.clock()
        versioned = self.store.scaling()
        state, revision = versioned.record, versioned.revision
        look = self._look()
        decisions = self._removals(state, revision, look, now_wall)
        if decisions:  # (the state changed: the rest waits for the next look)
            return decisions
        for node in look.managed:
            record = look.records.get(node)
            if look.busy.get(node) or record is None or not record[0].schedulable:
                self._idle_since.pop(node, None)
            else:
                self._idle_since.setdefault(node, now)
        for node in list(self._idle_since):
            if node not in look.managed:
                del self._idle_since[node]
        decision = self._decide(state, look, now_wall, now)
        if decision is None:
            return []
        return self._apply(decision, state, revision, look)

    # --- looking and deciding ----------------------------------------------------------

    def _look(self) -> _Look:
        managed = sorted(set(self.scaler.nodes()))
        records = {v.record.id: (v.record, v.revision) for v in self.store.nodes()}
        busy: dict[str, int] = {}
        waiting = 0
        for versioned in self.store.live():
            task = versioned.record
            if task.state in ACTIVE and task.node is not None:
                busy[task.node] = busy.get(task.node, 0) + 1
            elif task.state is RunState.PENDING and _room_would_help(task.pending_reason):
                waiting += 1
        return _Look(managed, records, busy, waiting)

    def _decide(self, state: ScalingState, look: _Look, now_wall: float, now: float) -> ScalingDecision | None:
        policy = self.policy
        size = len([n for n in look.managed if n not in state.removing])
        starting = [n for n in look.managed if n not in look.records or not look.records[n][0].ready]
        cooling_until = state.last_action + policy.cooldown
        cooling = now_wall < cooling_until

        def decision(action: str, reason: str, desired: int, nodes: list[str] | None = None) -> ScalingDecision:
            return ScalingDecision(
                at=now_wall, action=action, nodes=nodes or [], reason=reason, size=size, desired=desired
            )

        if size < policy.min_nodes:
            if cooling:
                return decision("hold", f"below min_nodes {policy.min_nodes}; cooling down", policy.min_nodes)
            return decision("up", f"{size} node(s), below min_nodes {policy.min_nodes}", policy.min_nodes)
        coming = len(starting) * policy.pending_per_node
        if look.waiting > coming:
            want = math.ceil((look.waiting - coming) / policy.pending_per_node)
            room = policy.max_nodes - size
            why = f"{look.waiting} task(s) wait for room (pending_per_node {policy.pending_per_node}"
            why += f", {len(starting)} node(s) starting)" if starting else ")"
            if room <= 0:
                return decision("hold", f"{why}; at max_nodes {policy.max_nodes}", size)
            desired = size + min(want, room)
            if cooling:
                return decision("hold", f"{why}; cooling down for {cooling_until - now_wall:.0f}s", desired)
            return decision("up", why, desired)
        if look.waiting or size <= policy.min_nodes:
            return None
        idle = sorted(
            (since, node)
            for node, since in self._idle_since.items()
            if node not in state.removing and now - since >= policy.idle_delay
        )
        if not idle:
            return None
        since, node = idle[0]
        if cooling:
            return decision("hold", f"node {node} idle; cooling down for {cooling_until - now_wall:.0f}s", size)
        reason = f"idle for {now - since:.0f}s (scale_down_idle {policy.idle_delay:g}s), no task waits"
        return decision("drain", reason, size - 1, [node])

    # --- acting ------------------------------------------------------------------------

    def _apply(
        self, decision: ScalingDecision, state: ScalingState, revision: int, look: _Look
    ) -> list[ScalingDecision]:
        if decision.action == "hold":
            last = state.decisions[-1] if state.decisions else None
            if last is not None and last.action == "hold" and _kind(last.reason) == _kind(decision.reason):
                return []  # (the same reason again: not written every second)
            return self._record(state, revision, [decision], desired=decision.desired)
        removing = dict(state.removing)
        if decision.action == "drain":
            removing[decision.nodes[0]] = decision.at
        # the intent first, fenced: a server that no longer leads gets Conflict and does nothing
        stored = self._record(
            state, revision, [decision], desired=decision.desired, last_action=decision.at, removing=removing
        )
        if stored and decision.action == "drain":
            self._drain(decision.nodes[0])
        if not stored or decision.action != "up":
            return stored
        try:
            started = self.scaler.scale_up(decision.desired - decision.size)
        except ScalerError as exc:
            log.error("autoscaler: scale up failed: %s", exc)
            return stored + self._append("error", f"scale up: {printable(str(exc), 300)}", decision)
        if not started:  # (none left to start, or another server, leading a moment ago, started them)
            return stored + self._append("hold", "the scaler started no node: it has none left to start", decision)
        log.info("autoscaler: started %s (%s)", ", ".join(started), decision.reason)
        return stored + self._append("up", f"started {len(started)}", decision, started)

    def _removals(self, state: ScalingState, revision: int, look: _Look, now_wall: float) -> list[ScalingDecision]:
        """Stop drained nodes whose tasks ended (or whose grace is over); forget stopped ones."""
        removing = dict(state.removing)
        decisions: list[ScalingDecision] = []
        deletes: list[tuple[str, int]] = []
        size = len([n for n in look.managed if n not in state.removing])
        for node, since in state.removing.items():
            tasks = look.busy.get(node, 0)
            found = look.records.get(node)
            if found is not None and not found[0].draining:  # (a leader that stopped between the two writes)
                self._drain(node)
            if node in look.managed:
                overdue = now_wall - since >= self.policy.drain_grace
                if tasks and not overdue:
                    continue
                try:
                    self.scaler.remove(node)
                except ScalerError as exc:
                    log.error("autoscaler: removing %s failed: %s", node, exc)
                    continue
                if not any(d.nodes == [node] for d in state.decisions[-3:] if d.action == "remove"):
                    why = "its tasks ended" if not tasks else f"drain grace over: {tasks} task(s) given back"
                    decisions.append(
                        ScalingDecision(
                            at=now_wall, action="remove", nodes=[node], reason=f"stopping it: {why}",
                            size=size, desired=state.desired,
                        )
                    )  # fmt: skip
            elif not tasks:  # stopped, nothing assigned there any more: forgotten
                del removing[node]
                if node in look.records:
                    deletes.append((keys.node(node), look.records[node][1]))
        if removing == state.removing and not decisions:
            return []
        return self._record(state, revision, decisions, desired=state.desired, removing=removing, deletes=deletes)

    def _append(
        self, action: str, reason: str, after: ScalingDecision, nodes: list[str] | None = None
    ) -> list[ScalingDecision]:
        versioned = self.store.scaling()
        follow = after.model_copy(update={"action": action, "reason": reason, "nodes": nodes or []})
        return self._record(versioned.record, versioned.revision, [follow], desired=versioned.record.desired)

    def _record(
        self,
        state: ScalingState,
        revision: int,
        decisions: list[ScalingDecision],
        *,
        desired: int,
        last_action: float | None = None,
        removing: dict[str, float] | None = None,
        deletes: list[tuple[str, int]] | None = None,
    ) -> list[ScalingDecision]:
        """Store the decisions (and delete the node records ``deletes`` names, at the revision
        read) in one fenced commit; [] on a conflict."""
        changed = state.model_copy(
            update={
                "desired": desired,
                "last_action": state.last_action if last_action is None else last_action,
                "removing": state.removing if removing is None else removing,
                "decisions": [*state.decisions, *decisions][-KEEP_DECISIONS:],
            }
        )
        compare = [(keys.SCALING, revision), *(deletes or [])]
        ops: list[tuple[str, ScalingState | None]] = [(keys.SCALING, changed)]
        ops += [(key, None) for key, _ in deletes or []]
        try:
            self.store.commit(compare, ops)
        except Conflict:  # another writer (a node's heartbeat, a new leader): the next look sees it
            return []
        for decision in decisions:
            log.info("autoscaler: %s %s: %s", decision.action, ",".join(decision.nodes), decision.reason)
        return decisions

    def _drain(self, node: str) -> None:
        """No new work on ``node`` (the flag `runink nodes drain` sets); a node gone already is left."""
        with contextlib.suppress(NotFound):
            self.store.update(
                keys.node(node), NodeRecord, lambda n: None if n.draining else n.model_copy(update={"draining": True})
            )


_REJECTED = re.compile(r"(?P<node>[^:]+): .*?(?: \[(?P<tag>[A-Za-z0-9_.-]+)\])?(?:, e\.g\. .*)?")


def _room_would_help(reason: str) -> bool:
    """Whether a task waiting for ``reason`` (its pending reason) could take a new node like the
    others: no node is registered, or some node refused it for room alone ([resource-fit]) or
    is unschedulable (a line without a filter's tag). Not one every node refused for something
    else too (its labels): a herd's tasks asking for a label no node has once held the cluster
    at max_nodes for good. Past the nodes listed one by one (lines grouped by kind), a
    [resource-fit] line is enough."""
    if reason.startswith("no nodes registered"):
        return True
    if not reason.startswith("no node fits: "):
        return False
    tags: dict[str, set[str]] = {}
    for line in reason.removeprefix("no node fits: ").split("; "):
        found = _REJECTED.fullmatch(line)
        if found is None or line.startswith("and "):
            continue
        node, tag = found["node"], found["tag"] or ""
        if re.fullmatch(r"\d+ nodes", node):  # (a group of nodes: which else refused them is not said)
            if tag in ("", "resource-fit"):
                return True
            continue
        tags.setdefault(node, set()).add(tag)
    return any(found <= {"", "resource-fit"} for found in tags.values())


def _kind(reason: str) -> str:
    """A reason with its numbers blanked: what makes two holds the same."""
    return re.sub(r"\d+(\.\d+)?", "#", reason)
