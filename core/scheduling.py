"""Placement: filter hooks, then score hooks, then the configured policy ranks what is left.

Each hook is called once per placement with the whole candidate list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from runink.core.errors import SchedulingError
from runink.core.interfaces.scheduler_policy import SchedulerPolicy
from runink.core.model import Node, NodeRejection, Placement, PlacementRequest
from runink.core.plugins import PluginManager


def filter_nodes(
    manager: PluginManager, request: PlacementRequest, nodes: Sequence[Node]
) -> tuple[list[Node], list[NodeRejection]]:
    """The nodes no filter rejected, and every rejection (with the plugin that made it)."""
    rejections: list[NodeRejection] = []
    for answer in manager.hooks.filter_nodes(request, list(nodes)):
        rejections.extend(replace(rejection, plugin=answer.plugin) for rejection in answer.value)
    rejected = {rejection.node_id for rejection in rejections}
    return [node for node in nodes if node.id not in rejected], rejections


def rank(
    manager: PluginManager,
    policy: SchedulerPolicy,
    request: PlacementRequest,
    nodes: Sequence[Node],
    weights: Mapping[str, float] | None = None,
) -> tuple[list[Placement], list[NodeRejection]]:
    """Feasible nodes for ``request``, best first (empty if none is left), and every filter's
    rejection: each hook called once, with the whole candidate list."""
    feasible, rejections = filter_nodes(manager, request, nodes)
    if not feasible:
        return [], rejections
    plugin_scores: dict[str, Mapping[str, float]] = {}
    for answer in manager.hooks.score_nodes(request, feasible):
        plugin_scores[answer.plugin] = {node_id: min(1.0, max(0.0, float(v))) for node_id, v in answer.value.items()}
    return policy.rank(request, feasible, plugin_scores, weights), rejections


def place(
    manager: PluginManager,
    policy: SchedulerPolicy,
    request: PlacementRequest,
    nodes: Sequence[Node],
    weights: Mapping[str, float] | None = None,
) -> list[Placement]:
    """Feasible nodes for ``request``, best first. Raises SchedulingError when none is left."""
    if not nodes:
        raise SchedulingError(f"task {request.task_id} (herd {request.herd}): no nodes registered")
    ranked, rejections = rank(manager, policy, request, nodes, weights)
    if not ranked:
        reasons = "; ".join(f"{r.node_id}: {r.reason} [{r.plugin}]" for r in rejections)
        raise SchedulingError(f"task {request.task_id} (herd {request.herd}): no node fits: {reasons}")
    return ranked
