"""Default scheduler policies: ``spread`` (least loaded node first), ``binpack`` (fullest first),
``round-robin``, ``weighted``, ``least-connections`` and ``random``.

Spread and binpack look at the fraction of each node's cpu and memory that would be in use
after placing the task; spread prefers the emptiest node (even wear, room for bursts; between
nodes used alike, the one holding fewer tasks), binpack the fullest one that still fits (keeps
whole nodes free for big tasks, or to power them down).
The other four are the classic load-balancing strategies (each class says how it scores).

Every policy ranks only the nodes the filters kept (those the task fits on), and gives the
same ranking for the same task over the same nodes whatever their order, ties by node id, as
the SchedulerPolicy conformance suite checks (round-robin: given the choices it made before).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import secrets
from collections.abc import Mapping, Sequence
from typing import ClassVar

from runink.core.driverload import OptionsSchema
from runink.core.interfaces.scheduler_policy import SchedulerPolicy
from runink.core.model import Node, Placement, PlacementRequest

log = logging.getLogger(__name__)

#: the node label the weighted policy reads (``runink agent --labels runink.io/weight=2``)
WEIGHT_LABEL = "runink.io/weight"
MAX_WEIGHT = 1000.0  # a weight past it counts as it


def _utilisation_after(request: PlacementRequest, node: Node) -> float:
    """Mean of cpu and memory utilisation if the task were placed on ``node`` (0..1)."""
    shares = []
    if node.capacity.cpu > 0:
        shares.append((node.allocated.cpu + request.resources.cpu) / node.capacity.cpu)
    if node.capacity.memory > 0:
        shares.append((node.allocated.memory + request.resources.memory) / node.capacity.memory)
    if not shares:
        return 0.0
    return min(1.0, max(0.0, sum(shares) / len(shares)))


#: the share of spread's score given to how few tasks a node holds: it only orders nodes whose
#: utilisation is (nearly) the same
SPREAD_TASKS_SHARE = 1e-3


class SpreadPolicy(SchedulerPolicy):
    """The emptiest node by cpu and memory first; between nodes used alike, the one holding
    fewer tasks: tasks that ask for no cpu and no memory (a plain ``runink exec``) take none of
    either, so utilisation alone would tie every node for them and the first by id would take
    them all."""

    name = "spread"

    def score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float]:
        most = max((node.running for node in nodes), default=0)
        return {
            node.id: (1.0 - _utilisation_after(request, node)) * (1.0 - SPREAD_TASKS_SHARE)
            + SPREAD_TASKS_SHARE * (1.0 - node.running / (most + 1))
            for node in nodes
        }


class BinpackPolicy(SchedulerPolicy):
    name = "binpack"

    def score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float]:
        return {node.id: _utilisation_after(request, node) for node in nodes}


class RoundRobinPolicy(SchedulerPolicy):
    """Each task to the node that fits and was chosen least recently; nodes never chosen come
    first, by node id. Over a fixed set of nodes that all fit, that is plain rotation in node
    id order.

    It remembers when it last chose each node rather than keeping one cursor into a list,
    because the list changes from task to task: past 50 nodes the scheduler offers each task a
    moving window of them, full nodes are filtered out, nodes join and leave. A cursor would
    skip nodes (a window of 2 over 4 nodes: a cursor chooses n0, n2, n0, n2; this n0, n2, n1,
    n3). The memory is this server's: a restarted or newly leading server starts over.
    Ranking the same task again right after (same task id) undoes its first choice, so it gets
    the same answer and the rotation does not move twice.
    """

    name = "round-robin"
    options_schema: ClassVar[OptionsSchema] = {}

    def __init__(self) -> None:
        self._turn = 0  # placements chosen so far
        self._chosen_at: dict[str, int] = {}  # node id -> the turn it was last chosen
        # the latest choice, to undo if the same task is ranked again: (task id, node id,
        # that node's turn before it, None if never chosen)
        self._latest: tuple[str, str, int | None] | None = None

    def score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float]:
        order = sorted(nodes, key=lambda node: (self._chosen_at.get(node.id, -1), node.id))
        return {node.id: 1.0 - i / len(order) for i, node in enumerate(order)}

    def rank(
        self,
        request: PlacementRequest,
        nodes: Sequence[Node],
        plugin_scores: Mapping[str, Mapping[str, float]],
        weights: Mapping[str, float] | None = None,
    ) -> list[Placement]:
        if self._latest is not None and self._latest[0] == request.task_id:
            _, node_id, before = self._latest
            if before is None:
                del self._chosen_at[node_id]
            else:
                self._chosen_at[node_id] = before
            self._turn -= 1
            self._latest = None
        ranked = super().rank(request, nodes, plugin_scores, weights)
        if ranked:
            chosen = ranked[0].node_id
            self._latest = (request.task_id, chosen, self._chosen_at.get(chosen))
            self._chosen_at[chosen] = self._turn
            self._turn += 1
        return ranked


class WeightedPolicy(SchedulerPolicy):
    """Spread, with each node let fill to its weight's share: the node label
    ``runink.io/weight`` (option ``label`` names another), a number >= 0, 1 when absent. It
    ranks by the utilisation a node would have after placing the task divided by its weight,
    lowest first, so a node of weight 2 fills to twice the share of an otherwise equal node of
    weight 1 (it takes two tasks for the other's one); equal weights rank as spread does, and
    weight 0 makes a node the last resort. Score: 1 / (1 + utilisation after / weight), 0 for
    weight 0. A label that is not a number >= 0 counts as 1 and is logged as a warning naming
    the node (once per node and value): one bad label must not stop scheduling.
    """

    name = "weighted"
    options_schema: ClassVar[OptionsSchema] = {"label": str}

    def __init__(self, label: str = WEIGHT_LABEL) -> None:
        if not label.strip():
            raise ValueError("option label is empty (expected a node label name, e.g. runink.io/weight)")
        self.label = label

    def score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float]:
        scores = {}
        for node in nodes:
            weight = self.weight(node)
            scores[node.id] = 1.0 / (1.0 + _utilisation_after(request, node) / weight) if weight > 0 else 0.0
        return scores

    def weight(self, node: Node) -> float:
        text = node.labels.get(self.label)
        return 1.0 if text is None else _weight(node.id, self.label, text)


@functools.lru_cache(maxsize=4096)  # also: each bad label is logged once, not on every placement
def _weight(node_id: str, label: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        log.warning("node %s: label %s=%r is not a weight (a number >= 0); counted as 1", node_id, label, text)
        return 1.0
    # (a node sets its own labels: one claiming 1e300 drew every task; an admin who wants the
    # weight out of nodes' hands names a restricted label, option label = "restricted.runink.io/weight")
    return min(value, MAX_WEIGHT)


class LeastConnectionsPolicy(SchedulerPolicy):
    """The node that fits with the fewest tasks on it (SCHEDULED or RUNNING, including those
    placed earlier in the same pass), whatever their size; ties by node id. For tasks of
    varied length: a node that finishes its tasks sooner gets the next ones. Score:
    1 - running / (the most running on any node ranked + 1).
    """

    name = "least-connections"
    options_schema: ClassVar[OptionsSchema] = {}

    def score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float]:
        most = max((node.running for node in nodes), default=0)
        return {node.id: 1.0 - node.running / (most + 1) for node in nodes}


class RandomPolicy(SchedulerPolicy):
    """A random node among those that fit (the filters dropped the others). Each node's score
    is a hash of the seed, the task id and the node id, uniform in [0, 1): the node with the
    highest is a uniform choice, independent from task to task, and the same task over the
    same nodes gets the same answer (a retry too, if the same nodes fit). Option ``seed`` (an
    integer) makes the draws reproducible; without it a seed is drawn when the policy is built.
    """

    name = "random"
    options_schema: ClassVar[OptionsSchema] = {"seed": int}

    def __init__(self, seed: int | None = None) -> None:
        self.seed = secrets.randbits(64) if seed is None else seed

    def score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float]:
        return {node.id: _draw(self.seed, request.task_id, node.id) for node in nodes}


def _draw(seed: int, task_id: str, node_id: str) -> float:
    digest = hashlib.blake2b(f"{seed}\0{task_id}\0{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
