"""The SchedulerPolicy driver interface: how feasible nodes are ranked for one task.

The core's placement (``runink.core.scheduling.place``) runs every filter hook, asks every
score hook, then hands the feasible nodes and the plugins' scores to the configured policy,
which returns the ranking. Policies do no I/O and rank the same task over the same nodes the
same way whatever their order (ties broken by node id), as the conformance suite checks; one
may remember its own earlier choices (round-robin rotates through the nodes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

from runink.core.model import Node, Placement, PlacementRequest


class SchedulerPolicy(ABC):
    GROUP: ClassVar[str] = "runink.scheduler_policies"
    name: ClassVar[str] = ""

    @abstractmethod
    def score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float]:
        """This policy's own score in [0, 1] for each feasible node (higher is better)."""

    def rank(
        self,
        request: PlacementRequest,
        nodes: Sequence[Node],
        plugin_scores: Mapping[str, Mapping[str, float]],
        weights: Mapping[str, float] | None = None,
    ) -> list[Placement]:
        """Rank ``nodes`` best first.

        ``plugin_scores`` maps a score plugin's name to its ``{node_id: score}``. The default
        adds the policy's score to each plugin's score times its weight (default 1). Override
        to combine them differently; the result must contain each node exactly once.
        """
        weights = weights or {}
        own = self.score_nodes(request, nodes)
        placements = []
        for node in nodes:
            breakdown = {f"policy:{self.name}": float(own.get(node.id, 0.0))}
            for plugin, scores in plugin_scores.items():
                breakdown[plugin] = float(scores.get(node.id, 0.0)) * weights.get(plugin, 1.0)
            placements.append(Placement(node.id, sum(breakdown.values()), breakdown))
        placements.sort(key=lambda p: (-p.score, p.node_id))
        return placements
