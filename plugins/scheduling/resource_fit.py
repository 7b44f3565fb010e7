"""Filter hook: drop nodes that are unhealthy, lack the free cpu, memory or gpus the task asks
for, or run as many tasks as their agent runs at once (its slots)."""

from __future__ import annotations

from collections.abc import Sequence

from runink.core.hookspecs import hookimpl
from runink.core.model import Node, NodeRejection, PlacementRequest


def _shortfall(request: PlacementRequest, node: Node) -> str | None:
    want, free = request.resources, node.free
    missing = []
    if want.cpu > free.cpu:
        missing.append(f"cpu {want.cpu:g} > free {free.cpu:g}")
    if want.memory > free.memory:
        missing.append(f"memory {want.memory} > free {free.memory} bytes")
    if want.gpu > free.gpu:
        missing.append(f"gpu {want.gpu} > free {free.gpu}")
    if node.slots and node.running >= node.slots:
        missing.append(f"slots: {node.running} tasks hold it, its agent runs {node.slots} at once")
    return "; ".join(missing) or None


@hookimpl
def runink_filter_nodes(request: PlacementRequest, nodes: Sequence[Node]) -> list[NodeRejection]:
    rejections = []
    for node in nodes:
        if not node.healthy:
            rejections.append(NodeRejection(node.id, "node is unhealthy"))
        elif reason := _shortfall(request, node):
            rejections.append(NodeRejection(node.id, reason))
    return rejections
