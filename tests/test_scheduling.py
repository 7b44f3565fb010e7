"""Placement: filter hooks with reasons, score hooks with weights, the policy's ranking."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from runink.core import hookimpl
from runink.core.drivers import load_driver
from runink.core.errors import PluginError, SchedulingError
from runink.core.interfaces import SchedulerPolicy
from runink.core.model import Node, NodeRejection, PlacementRequest, Resources
from runink.core.scheduling import place
from runink.testing import make_node, plugin_manager

GiB = 1024**3
SPREAD = load_driver(SchedulerPolicy, "spread")


def request(cpu: float = 1, memory_gib: float = 1, **labels: str) -> PlacementRequest:
    return PlacementRequest("task-7", "finance", Resources(cpu=cpu, memory=int(memory_gib * GiB)), labels)


def test_hook_runink_filter_nodes() -> None:
    """Built-in filters drop full, unhealthy and mislabelled nodes, saying why; a custom one adds its own."""
    calls: list[int] = []

    class NoOddNodes:
        @hookimpl
        def runink_filter_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> list[NodeRejection]:
            calls.append(len(nodes))
            return [NodeRejection(n.id, "odd node") for n in nodes if n.id.endswith(("1", "3"))]

    nodes = [
        make_node("n0", cpu=2, used_cpu=1.5),  # too little free cpu
        make_node("n1"),  # odd
        make_node("n2", zone="b"),  # wrong zone
        make_node("n3"),  # odd
        make_node("n4", zone="a"),
        Node("n5", Resources(8, 32 * GiB), labels={"zone": "a"}, healthy=False),
    ]
    with plugin_manager(("no-odd", NoOddNodes())) as manager:
        placements = place(manager, SPREAD, request(zone="a"), nodes)
        assert [p.node_id for p in placements] == ["n4"]
        assert calls == [6], "a filter is called once per placement with every candidate"
        with pytest.raises(SchedulingError) as info:
            place(manager, SPREAD, request(cpu=64, zone="a"), nodes)
    message = str(info.value)
    assert "task-7 (herd finance): no node fits" in message
    assert "n0: cpu 64 > free 0.5 [resource-fit]" in message
    assert "n1: odd node [no-odd]" in message
    assert "n5: node is unhealthy [resource-fit]" in message
    assert "zone='a' (node has 'b') [node-labels]" in message


def test_hook_runink_score_nodes() -> None:
    """A score plugin moves a node up, by its configured weight; scores are clamped to [0, 1]."""

    class PreferGpuZone:
        @hookimpl
        def runink_score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float]:
            return {n.id: 5.0 for n in nodes if n.labels.get("zone") == "gpu"}

    nodes = [make_node("idle"), make_node("busy", used_cpu=6, used_gib=24, zone="gpu")]
    with plugin_manager(("prefer-gpu", PreferGpuZone())) as manager:
        assert place(manager, SPREAD, request(), nodes)[0].node_id == "busy"
        weighted = place(manager, SPREAD, request(), nodes, weights={"prefer-gpu": 0.1})
        assert weighted[0].node_id == "idle"
        top = place(manager, SPREAD, request(), nodes)[0]
        assert top.breakdown["prefer-gpu"] == 1.0  # clamped from 5.0


def test_a_raising_filter_is_an_error_naming_the_plugin() -> None:
    class Broken:
        @hookimpl
        def runink_filter_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> None:
            raise KeyError("zone")

    expected = "plugin broken-filter failed in runink_filter_nodes: KeyError"
    with plugin_manager(("broken-filter", Broken())) as manager, pytest.raises(PluginError, match=expected):
        place(manager, SPREAD, request(), [make_node("n0")])


def test_no_nodes() -> None:
    with plugin_manager() as manager, pytest.raises(SchedulingError, match="no nodes registered"):
        place(manager, SPREAD, request(), [])


@pytest.mark.parametrize(
    ("hook", "answer", "expected"),
    [
        ("runink_filter_nodes", "no", "it returned a str, not a list of NodeRejection"),
        ("runink_filter_nodes", [("n0", "x")], "it returned a list, not a list of NodeRejection"),
        ("runink_score_nodes", {"n0": "high"}, "it returned a dict, not a mapping of node id to a finite number"),
        ("runink_score_nodes", {"n0": float("nan")}, "it returned a dict, not a mapping of node id to a finite"),
    ],
)
def test_an_answer_of_another_type_is_an_error_naming_the_plugin(hook: str, answer: object, expected: str) -> None:
    """It crashed the command: "internal error: TypeError: replace() should be called on
    dataclass instances", naming no plugin (a review's run)."""

    class Odd:
        pass

    setattr(Odd, hook, hookimpl(lambda self, request, nodes: answer))
    with plugin_manager(("odd", Odd()), entrypoints=False) as manager, pytest.raises(PluginError) as info:
        place(manager, SPREAD, request(), [make_node("n0")])
    assert str(info.value).startswith(f"plugin odd failed in {hook}: {expected}")
