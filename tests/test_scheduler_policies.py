"""The default policies pass the SchedulerPolicy conformance suite and do what their names say:
spread and binpack on their own, round-robin, weighted, least-connections and random also
through the cluster's Scheduler (memory Barn, installed filters) or the core's rank, and every
policy installed loads by name the way the server loads its policy."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from runink.core.config import load_config
from runink.core.control.records import Amount, Herd, JobRecord, NodeRecord, Quota, TaskRecord, keys
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore
from runink.core.drivers import configured_driver, load_driver
from runink.core.errors import DriverLoadError
from runink.core.interfaces import SchedulerPolicy
from runink.core.model import Node, PlacementRequest, Resources
from runink.core.plugins import PluginManager
from runink.core.scheduling import rank
from runink.plugins.barn.memory import MemoryBarn
from runink.plugins.scheduling.policies import WEIGHT_LABEL
from runink.testing import SchedulerPolicyConformance, make_node, plugin_manager

GiB = 1024**3
BUILTIN = {"spread", "binpack", "round-robin", "weighted", "least-connections", "random"}


class TestSpread(SchedulerPolicyConformance):
    driver_name = "spread"


class TestBinpack(SchedulerPolicyConformance):
    driver_name = "binpack"


class TestRoundRobin(SchedulerPolicyConformance):
    driver_name = "round-robin"


class TestWeighted(SchedulerPolicyConformance):
    driver_name = "weighted"


class TestLeastConnections(SchedulerPolicyConformance):
    driver_name = "least-connections"


class TestRandom(SchedulerPolicyConformance):
    driver_name = "random"
    driver_options = {"seed": 7}

    def test_ties_break_by_node_id(self, policy: SchedulerPolicy) -> None:
        # Equal nodes are no tie for random: they are ordered by the draw, which is the seed's,
        # so another policy with the same seed orders them the same way.
        same = [make_node(name) for name in ("c", "a", "b")]
        again = load_driver(SchedulerPolicy, "random", {"seed": 7})
        assert [p.node_id for p in policy.rank(self.request, same, {})] == [
            p.node_id for p in again.rank(self.request, same[::-1], {})
        ]


REQUEST = PlacementRequest("t", "default", Resources(cpu=1, memory=1024**3))
NODES = [make_node("busy", used_cpu=6, used_gib=20), make_node("idle"), make_node("half", used_cpu=4, used_gib=16)]


def test_spread_prefers_the_emptiest_node() -> None:
    ranking = load_driver(SchedulerPolicy, "spread").rank(REQUEST, NODES, {})
    assert [p.node_id for p in ranking] == ["idle", "half", "busy"]


def test_spread_gives_tasks_asking_for_nothing_to_the_node_holding_fewer_tasks() -> None:
    """Utilisation ties every node for such a task; the node id alone would send them all to
    the first node."""
    nothing = PlacementRequest("t", "h", Resources())
    nodes = [replace(make_node("a"), running=3), replace(make_node("b"), running=1), make_node("c")]
    ranking = load_driver(SchedulerPolicy, "spread").rank(nothing, nodes, {})
    assert [p.node_id for p in ranking] == ["c", "b", "a"]
    # ... but utilisation comes first: a node holding fewer, larger tasks is the fuller one
    busy = replace(make_node("few", used_cpu=4), running=1)
    assert load_driver(SchedulerPolicy, "spread").rank(REQUEST, [busy, nodes[0]], {})[0].node_id == "a"


def test_binpack_prefers_the_fullest_node() -> None:
    ranking = load_driver(SchedulerPolicy, "binpack").rank(REQUEST, NODES, {})
    assert [p.node_id for p in ranking] == ["busy", "half", "idle"]


# --- through the cluster's Scheduler ---------------------------------------------------------


@pytest.fixture
def store() -> ClusterStore:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="h", quota=Quota()))
    return store


@pytest.fixture
def manager() -> Iterator[PluginManager]:
    with plugin_manager() as manager:
        yield manager


def add_node(store: ClusterStore, node_id: str, cpu: float = 8, **labels: str) -> None:
    record = NodeRecord(id=node_id, capacity=Amount(cpu=cpu, memory=32 * GiB), labels=labels)
    store.commit([(keys.node(node_id), 0)], [(keys.node(node_id), record)])


def submit(store: ClusterStore, prefix: str, count: int, cpu: float = 1, **fields: object) -> list[str]:
    """``count`` one-task jobs in herd h; their ids sort in submission order (the order a pass places them)."""
    ids = []
    for i in range(count):
        task_id = f"{prefix}{i:03d}"
        task = TaskRecord.model_validate(
            {"id": task_id, "job_id": task_id, "herd": "h", "command": ["/bin/true"], "resources": {"cpu": cpu}}
            | fields
        )
        store.submit(JobRecord(id=task_id, herd="h", tasks=[task_id]), [task])
        ids.append(task_id)
    return ids


def placed(scheduler: Scheduler, ids: list[str]) -> list[str]:
    """The node each of ``ids`` went to in one pass, in the order they were placed."""
    result = scheduler.run_pass(now=0.0)
    assert set(ids) <= set(result.placed), result.pending
    return [result.placed[task_id] for task_id in ids]


def test_round_robin_visits_every_node_in_turn_whatever_their_size(store: ClusterStore, manager: PluginManager) -> None:
    for node_id, cpu in (("a", 16), ("b", 4), ("c", 8)):  # spread would fill a first
        add_node(store, node_id, cpu)
    scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "round-robin"))
    assert placed(scheduler, submit(store, "first", 6)) == ["a", "b", "c", "a", "b", "c"]
    # the rotation goes on in the next pass, and passes over a node the task does not fit
    add_node(store, "d", cpu=0.5)
    assert placed(scheduler, submit(store, "second", 4)) == ["a", "b", "c", "a"]


def test_round_robin_reaches_every_node_through_the_scheduler_window(
    store: ClusterStore, manager: PluginManager
) -> None:
    # A window of 2 over 4 nodes offers [n0, n1], [n2, n3], [n0, n1], ...: a single cursor
    # would choose n0, n2, n0, n2; least recently chosen reaches n1 and n3 too.
    for i in range(4):
        add_node(store, f"n{i}")
    scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "round-robin"), window=2)
    assert placed(scheduler, submit(store, "t", 4)) == ["n0", "n2", "n1", "n3"]


def test_round_robin_gives_the_same_answer_to_the_same_task_and_moves_on_for_the_next() -> None:
    policy = load_driver(SchedulerPolicy, "round-robin")
    nodes = [make_node(name) for name in ("a", "b", "c")]
    first = PlacementRequest("t1", "h", Resources(cpu=1))
    assert policy.rank(first, nodes, {})[0].node_id == "a"
    assert policy.rank(first, nodes[::-1], {})[0].node_id == "a"
    assert policy.rank(PlacementRequest("t2", "h", Resources(cpu=1)), nodes, {})[0].node_id == "b"


def test_least_connections_picks_the_node_with_fewest_tasks_whatever_their_size(
    store: ClusterStore, manager: PluginManager
) -> None:
    add_node(store, "a", pin="a")
    add_node(store, "b", pin="b")
    scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "least-connections"))
    small = submit(store, "small", 3, cpu=0.1, node_labels={"pin": "a"})
    big = submit(store, "big", 1, cpu=6, node_labels={"pin": "b"})
    placed(scheduler, small + big)
    # a: 3 tasks using 0.3 cpu, b: 1 task using 6 (spread would choose a); a new node c: none
    assert placed(scheduler, submit(store, "next", 1)) == ["b"]
    add_node(store, "c")
    # c (0 running), then b and c have 2 and 1... each placement of the pass counts
    assert placed(scheduler, submit(store, "more", 4)) == ["c", "c", "b", "c"]


def test_least_connections_ranks_by_running_then_node_id(manager: PluginManager) -> None:
    nodes = [Node(name, Resources(8, 32 * GiB), running=running) for name, running in (("x", 5), ("y", 0), ("w", 2))]
    nodes.append(Node("z", Resources(8, 32 * GiB), running=0))
    ranked, _ = rank(manager, load_driver(SchedulerPolicy, "least-connections"), REQUEST, nodes)
    assert [p.node_id for p in ranked] == ["y", "z", "w", "x"]


def test_weighted_lets_a_heavier_node_fill_to_its_weights_share() -> None:
    policy = load_driver(SchedulerPolicy, "weighted")
    heavy = replace(make_node("heavy", used_cpu=4, used_gib=16), labels={WEIGHT_LABEL: "3"})  # half full
    light = make_node("light", used_cpu=2, used_gib=8)  # a quarter full, no label: weight 1
    # spread would choose light; heavy may fill to three times light's share
    assert [p.node_id for p in policy.rank(REQUEST, [light, heavy], {})] == ["heavy", "light"]
    assert [p.node_id for p in policy.rank(REQUEST, [make_node("light"), heavy], {})] == ["light", "heavy"]
    # with equal weights it is spread
    spread = load_driver(SchedulerPolicy, "spread")
    assert [p.node_id for p in policy.rank(REQUEST, NODES, {})] == [p.node_id for p in spread.rank(REQUEST, NODES, {})]


def test_a_weight_past_its_bound_counts_as_the_bound() -> None:
    """A node sets its own labels: one claiming a weight of 1e300 drew every task."""
    from runink.plugins.scheduling.policies import MAX_WEIGHT, _weight

    assert _weight("evil", WEIGHT_LABEL, "1e300") == MAX_WEIGHT == 1000
    assert _weight("n", WEIGHT_LABEL, "2.5") == 2.5


def test_weighted_share_of_tasks_follows_the_weights(store: ClusterStore, manager: PluginManager) -> None:
    add_node(store, "a", cpu=16, **{WEIGHT_LABEL: "2"})
    add_node(store, "b", cpu=16)
    add_node(store, "c", cpu=16, **{WEIGHT_LABEL: "0"})  # the last resort
    scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "weighted"))
    assert Counter(placed(scheduler, submit(store, "t", 12))) == {"a": 8, "b": 4}
    # the rest of a and b (8 + 12 cpu) is used before c gets anything
    assert Counter(placed(scheduler, submit(store, "fill", 24))) == {"a": 8, "b": 12, "c": 4}


def test_weighted_reads_the_label_its_option_names_and_counts_a_bad_one_as_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = load_driver(SchedulerPolicy, "weighted", {"label": "speed"})
    fast, slow = make_node("fast", speed="4"), replace(make_node("slow"), labels={WEIGHT_LABEL: "9"})
    assert [p.node_id for p in policy.rank(REQUEST, [slow, fast], {})] == ["fast", "slow"]
    bad = [make_node("odd", used_cpu=4, speed="heavy"), make_node("neg", speed="-2")]
    unlabelled = [make_node("odd", used_cpu=4), make_node("neg")]
    with caplog.at_level(logging.WARNING, logger="runink"):
        for _ in range(3):  # logged once per node and value, not on every placement
            assert policy.score_nodes(REQUEST, bad) == policy.score_nodes(REQUEST, unlabelled)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "node odd: label speed='heavy' is not a weight (a number >= 0); counted as 1",
        "node neg: label speed='-2' is not a weight (a number >= 0); counted as 1",
    ]
    with pytest.raises(DriverLoadError, match="option label is empty"):
        load_driver(SchedulerPolicy, "weighted", {"label": " "})


def test_random_spreads_over_the_nodes_that_fit_and_never_one_that_does_not(manager: PluginManager) -> None:
    nodes = [make_node("a"), make_node("b"), make_node("c"), make_node("tiny", cpu=0.5)]
    policy = load_driver(SchedulerPolicy, "random", {"seed": 42})
    chosen: Counter[str] = Counter()
    for i in range(300):
        ranked, rejections = rank(manager, policy, PlacementRequest(f"t{i}", "h", Resources(cpu=1)), nodes)
        chosen[ranked[0].node_id] += 1
        assert "tiny" not in {p.node_id for p in ranked}
        assert [r.node_id for r in rejections] == ["tiny"]
    assert set(chosen) == {"a", "b", "c"}
    assert min(chosen.values()) >= 60  # about 100 each


def test_random_is_reproducible_with_a_seed() -> None:
    nodes = [make_node(name) for name in "abcdef"]
    requests = [PlacementRequest(f"t{i}", "h", Resources(cpu=1)) for i in range(20)]

    def choices(seed: int) -> list[str]:
        policy = load_driver(SchedulerPolicy, "random", {"seed": seed})
        return [policy.rank(request, nodes, {})[0].node_id for request in requests]

    assert choices(1) == choices(1)
    assert choices(1) != choices(2)


# --- loading by name, as the server does -------------------------------------------------------


def test_every_installed_policy_loads_by_name_as_the_server_loads_it(tmp_path: Path, manager: PluginManager) -> None:
    names = set(entry_points(group=SchedulerPolicy.GROUP).names)
    assert names >= BUILTIN
    for name in sorted(names):
        file = tmp_path / "runink.toml"
        file.write_text(f'[scheduler]\ndriver = "{name}"\n')
        policy = configured_driver(load_config(file, environ={}), "scheduler", manager)  # as core/server/process.py
        assert isinstance(policy, SchedulerPolicy)
        assert policy.name == name


def test_policy_options_come_from_the_config_and_a_bad_one_is_one_line(manager: PluginManager) -> None:
    config = load_config(environ={"RUNINK_SCHEDULER__DRIVER": "random", "RUNINK_SCHEDULER__OPTIONS": '{"seed": "7"}'})
    policy = configured_driver(config, "scheduler", manager)
    assert policy.seed == 7
    config = load_config(environ={"RUNINK_SCHEDULER__DRIVER": "random", "RUNINK_SCHEDULER__OPTIONS": '{"seed": "x"}'})
    with pytest.raises(DriverLoadError) as raised:
        configured_driver(config, "scheduler", manager)
    assert "\n" not in str(raised.value)
    assert "driver 'random': option seed must be int, got str 'x'" in str(raised.value)
    config = load_config(environ={"RUNINK_SCHEDULER__DRIVER": "round-robin", "RUNINK_SCHEDULER__OPTIONS": '{"x": 1}'})
    with pytest.raises(DriverLoadError, match=r"driver 'round-robin': bad options \['x'\]: .*\(it takes: none\)"):
        configured_driver(config, "scheduler", manager)
