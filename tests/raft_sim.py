"""A deterministic in-memory network for pysyncobj nodes: the test decides which message is
delivered when, so it can delay, duplicate and reorder them (what pipelining and resends do on
a real network) and cut nodes off.

``stale_append_loses_acknowledged_writes(syncobj_module)`` plays the scenario of
``shared/notes/pysyncobj.md``: a follower acknowledges entries, then a duplicated older
``append_entries`` makes stock pysyncobj 0.3.17 drop them; the leader dies; the new leader
lacks writes a client was told were committed.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from pysyncobj import FAIL_REASON, SyncObjConf
from pysyncobj.node import Node
from pysyncobj.transport import Transport


class Network:
    def __init__(self) -> None:
        self.transports: dict[str, MemoryTransport] = {}
        self.queue: list[tuple[str, str, dict[str, Any]]] = []  # (from, to, message)
        self.down: set[str] = set()
        self.log: list[tuple[str, str, dict[str, Any]]] = []  # every message sent, for replays

    def deliver(self, keep: Callable[[str, str, dict[str, Any]], bool] = lambda s, d, m: True) -> int:
        """Deliver the queued messages (those ``keep`` accepts; the others are dropped)."""
        batch, self.queue = self.queue, []
        count = 0
        for sender, target, message in batch:
            if sender in self.down or target in self.down or not keep(sender, target, message):
                continue
            transport = self.transports[target]
            transport._onMessageReceived(transport.nodes[sender], copy.deepcopy(message))
            count += 1
        return count

    def inject(self, sender: str, target: str, message: dict[str, Any]) -> None:
        transport = self.transports[target]
        transport._onMessageReceived(transport.nodes[sender], copy.deepcopy(message))


class MemoryTransport(Transport):
    network: Network  # set on the class by make_cluster

    def __init__(self, syncObj: Any, selfNode: Node, otherNodes: Any) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self.me = selfNode.id
        self.nodes = {n.id: n for n in otherNodes}
        self.network.transports[self.me] = self

    def connect_all(self) -> None:
        for node in self.nodes.values():
            self._onNodeConnected(node)

    def send(self, node: Node, message: Any) -> bool:
        item = (self.me, node.id, copy.deepcopy(message))
        self.network.queue.append(item)
        self.network.log.append(item)
        return True


def make_cluster(syncobj: ModuleType, names: tuple[str, ...] = ("a", "b", "c")) -> tuple[Network, dict[str, Any]]:
    """Three nodes of ``syncobj`` (pysyncobj's module or Runink's patched copy) on one Network."""
    replicated: Callable[[Callable[[Any, int], int]], Callable[[Any, int], int]] = syncobj.replicated
    sync_obj: Any = syncobj.SyncObj  # a class picked at run time (which module's) from untyped pysyncobj

    class Cell(sync_obj):  # type: ignore[misc]  # subclasses Any: pysyncobj has no type hints
        def __init__(self, me: str, others: list[str]) -> None:
            conf = SyncObjConf(autoTick=False, raftMinTimeout=0.3, raftMaxTimeout=0.6, appendEntriesPeriod=0.05)
            super().__init__(Node(me), [Node(o) for o in others], conf, transportClass=MemoryTransport)
            self.values: list[int] = []

        @replicated
        def append(self, value: int) -> int:
            self.values.append(value)
            return value

    network = Network()
    MemoryTransport.network = network
    nodes = {name: Cell(name, [n for n in names if n != name]) for name in names}
    for node in nodes.values():
        node._SyncObj__transport.connect_all()
    return network, nodes


def tick(nodes: dict[str, Any], network: Network, rounds: int = 1, pause: float = 0.0) -> None:
    """Each live node ticks, then every queued message is delivered; ``rounds`` times."""
    for _ in range(rounds):
        for name, node in nodes.items():
            if name not in network.down:
                node.doTick(0)
        network.deliver()
        time.sleep(pause)


def elect(nodes: dict[str, Any], network: Network, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tick(nodes, network)
        leaders = [n for n, node in nodes.items() if n not in network.down and node._isLeader()]
        if leaders:
            return leaders[0]
        time.sleep(0.01)
    raise AssertionError("no leader elected")


def stale_append_loses_acknowledged_writes(syncobj: ModuleType) -> tuple[list[int], list[int]]:
    """(values acknowledged as committed, values the node that was cut off has once it caught
    up). A correct Raft acknowledges 1, 2, 3, then 4 (written after the failover), and the
    third node has all four."""
    network, nodes = make_cluster(syncobj)
    leader = elect(nodes, network)
    follower, third = (n for n in nodes if n != leader)
    network.down.add(third)  # the leader and one follower are a quorum
    acknowledged: list[int] = []

    def done(value: int) -> Callable[[Any, Any], None]:
        return lambda result, error: acknowledged.append(value) if error == FAIL_REASON.SUCCESS else None

    nodes[leader].append(1, callback=done(1))
    tick(nodes, network, 4, pause=0.06)
    first_append = next(  # the append_entries that carried value 1: a copy will come late
        m
        for s, d, m in reversed(network.log)
        if (s, d) == (leader, follower) and m["type"] == "append_entries" and m.get("entries")
    )
    for value in (2, 3):
        nodes[leader].append(value, callback=done(value))
    tick(nodes, network, 6, pause=0.06)
    assert acknowledged == [1, 2, 3], f"the writes were not committed: {acknowledged}"
    network.inject(leader, follower, first_append)  # a duplicate from the past arrives
    tick(nodes, network, 2)
    network.down = {leader}  # the leader dies; the third node is back
    new_leader = elect(nodes, network)
    nodes[new_leader].append(4, callback=done(4))
    deadline = time.monotonic() + 10
    while acknowledged[-1] != 4 and time.monotonic() < deadline:
        tick(nodes, network, pause=0.02)
    tick(nodes, network, 5, pause=0.06)  # the third node applies what is committed
    return acknowledged, list(nodes[third].values)  # what the node that was away replicated


def chaos(syncobj: ModuleType, seed: int, writes: int = 60) -> tuple[list[int], dict[str, list[int]]]:
    """Writes through a network that delays, duplicates and reorders messages at random; the
    leader is cut off at the end. Returns (acknowledged values, each live node's values)."""
    rng = random.Random(seed)
    network, nodes = make_cluster(syncobj)
    acknowledged: list[int] = []
    held: list[tuple[str, str, dict[str, Any]]] = []

    def done(value: int) -> Callable[[Any, Any], None]:
        return lambda result, error: acknowledged.append(value) if error == FAIL_REASON.SUCCESS else None

    def chaotic_round() -> None:
        for name, node in nodes.items():
            if name not in network.down:
                node.doTick(0)
        batch = network.queue + held
        network.queue, held[:] = [], []
        rng.shuffle(batch)
        for item in batch:
            roll = rng.random()
            if roll < 0.15:
                held.append(item)  # late: delivered in a later round
                continue
            network.queue.append(item)
            if roll > 0.9:
                network.queue.append(item)  # duplicated
        network.deliver()
        time.sleep(0.005)

    leader = elect(nodes, network)
    value = 0
    deadline = time.monotonic() + 60
    while value < writes and time.monotonic() < deadline:
        leaders = [n for n, node in nodes.items() if n not in network.down and node._isLeader()]
        if leaders and rng.random() < 0.5:
            value += 1
            nodes[leaders[0]].append(value, callback=done(value))
        chaotic_round()
    for _ in range(40):
        chaotic_round()
    leader = next((n for n, node in nodes.items() if node._isLeader()), leader)
    network.down = {leader}
    held.clear()
    new_leader = elect(nodes, network)
    nodes[new_leader].append(-1, callback=done(-1))
    deadline = time.monotonic() + 10
    while -1 not in acknowledged and time.monotonic() < deadline:
        tick(nodes, network, pause=0.02)
    tick(nodes, network, 10, pause=0.03)
    return acknowledged, {n: list(node.values) for n, node in nodes.items() if n not in network.down}
