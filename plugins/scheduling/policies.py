"""Default scheduler policies: ``spread`` (least loaded node first) and ``binpack`` (fullest first).

Both look at the fraction of each node's cpu and memory that would be in use after placing
the task; spread prefers the emptiest node (even wear, room for bursts), binpack the fullest
one that still fits (keeps whole nodes free for big tasks, or to power them down).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runink.core.interfaces.scheduler_policy import SchedulerPolicy
from runink.core.model import Node, PlacementRequest


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


class SpreadPolicy(SchedulerPolicy):
    name = "spread"

    def score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float]:
        return {node.id: 1.0 - _utilisation_after(request, node) for node in nodes}


class BinpackPolicy(SchedulerPolicy):
    name = "binpack"

    def score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float]:
        return {node.id: _utilisation_after(request, node) for node in nodes}
