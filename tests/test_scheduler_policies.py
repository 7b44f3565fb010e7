"""The default policies pass the SchedulerPolicy conformance suite and do what their names say."""

from runink.core.drivers import load_driver
from runink.core.interfaces import SchedulerPolicy
from runink.core.model import PlacementRequest, Resources
from runink.testing import SchedulerPolicyConformance, make_node


class TestSpread(SchedulerPolicyConformance):
    driver_name = "spread"


class TestBinpack(SchedulerPolicyConformance):
    driver_name = "binpack"


REQUEST = PlacementRequest("t", "default", Resources(cpu=1, memory=1024**3))
NODES = [make_node("busy", used_cpu=6, used_gib=20), make_node("idle"), make_node("half", used_cpu=4, used_gib=16)]


def test_spread_prefers_the_emptiest_node() -> None:
    ranking = load_driver(SchedulerPolicy, "spread").rank(REQUEST, NODES, {})
    assert [p.node_id for p in ranking] == ["idle", "half", "busy"]


def test_binpack_prefers_the_fullest_node() -> None:
    ranking = load_driver(SchedulerPolicy, "binpack").rank(REQUEST, NODES, {})
    assert [p.node_id for p in ranking] == ["busy", "half", "idle"]
