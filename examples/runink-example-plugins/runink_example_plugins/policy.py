"""A scheduler policy: prefer the cheapest node (label ``cost-per-hour``), then the emptiest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runink.core.interfaces import SchedulerPolicy
from runink.core.model import Node, PlacementRequest


def node_cost(node: Node, default: float) -> float:
    try:
        return float(node.labels.get("cost-per-hour", default))
    except ValueError:
        return default


class CheapestFirstPolicy(SchedulerPolicy):
    name = "cheapest"

    def __init__(self, default_cost: float = 1.0) -> None:
        self.default_cost = default_cost

    def score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float]:
        costs = {node.id: node_cost(node, self.default_cost) for node in nodes}
        highest = max(costs.values(), default=0.0) or 1.0
        scores = {}
        for node in nodes:
            free_cpu = node.free.cpu / node.capacity.cpu if node.capacity.cpu else 0.0
            # Cost dominates; free cpu only separates nodes of equal cost.
            scores[node.id] = min(1.0, max(0.0, 0.9 * (1 - costs[node.id] / highest) + 0.1 * free_cpu))
        return scores
