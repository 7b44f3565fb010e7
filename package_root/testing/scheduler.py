"""The SchedulerPolicy conformance suite.

from runink.testing import SchedulerPolicyConformance

class TestMyPolicy(SchedulerPolicyConformance):
    driver_name = "my-policy"
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from runink.core.drivers import load_driver
from runink.core.interfaces.scheduler_policy import SchedulerPolicy
from runink.core.model import Node, PlacementRequest, Resources

GiB = 1024**3


def make_node(
    node_id: str, cpu: float = 8, memory_gib: float = 32, used_cpu: float = 0, used_gib: float = 0, **labels: str
) -> Node:
    return Node(
        node_id,
        capacity=Resources(cpu=cpu, memory=int(memory_gib * GiB)),
        allocated=Resources(cpu=used_cpu, memory=int(used_gib * GiB)),
        labels=labels,
    )


class SchedulerPolicyConformance:
    driver_name: ClassVar[str] = ""
    driver_options: ClassVar[Mapping[str, Any]] = {}

    @pytest.fixture
    def policy(self) -> SchedulerPolicy:
        policy: SchedulerPolicy = load_driver(SchedulerPolicy, self.driver_name, self.driver_options)
        return policy

    @pytest.fixture
    def nodes(self) -> list[Node]:
        rng = random.Random(7)
        return [make_node(f"n{i:02d}", used_cpu=rng.uniform(0, 6), used_gib=rng.uniform(0, 24)) for i in range(20)]

    request = PlacementRequest("task-1", "default", Resources(cpu=1, memory=2 * GiB))

    def test_ranks_every_node_once(self, policy: SchedulerPolicy, nodes: list[Node]) -> None:
        ranking = policy.rank(self.request, nodes, {})
        assert sorted(p.node_id for p in ranking) == sorted(n.id for n in nodes)
        assert all(math.isfinite(p.score) for p in ranking)
        assert [p.score for p in ranking] == sorted((p.score for p in ranking), reverse=True)

    def test_is_deterministic_whatever_the_input_order(self, policy: SchedulerPolicy, nodes: list[Node]) -> None:
        shuffled = list(nodes)
        random.Random(1).shuffle(shuffled)
        first = [p.node_id for p in policy.rank(self.request, nodes, {})]
        assert first == [p.node_id for p in policy.rank(self.request, shuffled, {})]

    def test_ties_break_by_node_id(self, policy: SchedulerPolicy) -> None:
        same = [make_node(name) for name in ("c", "a", "b")]
        assert [p.node_id for p in policy.rank(self.request, same, {})] == ["a", "b", "c"]

    def test_plugin_scores_count(self, policy: SchedulerPolicy, nodes: list[Node]) -> None:
        last = policy.rank(self.request, nodes, {})[-1].node_id
        boosted = policy.rank(self.request, nodes, {"affinity-plugin": {last: 1.0}}, {"affinity-plugin": 100.0})
        assert boosted[0].node_id == last
        assert boosted[0].breakdown["affinity-plugin"] == pytest.approx(100.0)

    def test_scores_are_in_range(self, policy: SchedulerPolicy, nodes: list[Node]) -> None:
        for score in policy.score_nodes(self.request, nodes).values():
            assert 0.0 <= score <= 1.0
