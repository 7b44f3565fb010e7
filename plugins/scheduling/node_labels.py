"""Filter hook: keep only nodes whose labels match every label the task requires (``@affinity``)."""

from __future__ import annotations

from collections.abc import Sequence

from runink.core.hookspecs import hookimpl
from runink.core.model import Node, NodeRejection, PlacementRequest


@hookimpl
def runink_filter_nodes(request: PlacementRequest, nodes: Sequence[Node]) -> list[NodeRejection]:
    if not request.node_labels:
        return []
    rejections = []
    for node in nodes:
        mismatched = [
            f"{key}={want!r} (node has {node.labels.get(key)!r})"
            for key, want in sorted(request.node_labels.items())
            if node.labels.get(key) != want
        ]
        if mismatched:
            rejections.append(NodeRejection(node.id, "label mismatch: " + ", ".join(mismatched)))
    return rejections
