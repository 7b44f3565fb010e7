"""The Barn under a network partition: three members on three "hosts" (network namespaces on
one bridge), the leader cut off from the other two while clients keep working.

Checked: the majority elects a new leader and keeps acknowledging writes; the cut-off leader
steps down and acknowledges nothing while cut off; after healing every member converges to
the same state; and the whole recorded history (every put and get, with the time it was sent
and answered) is linearizable, including final reads of every key, so no acknowledged write
was lost. Needs root for the namespaces (CI runs as root).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import netns
import pytest
from barn_cluster import Cluster

from runink.core.errors import BarnError
from runink.testing.linearizability import Op, check

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

KEYS = [f"/partition/k{i}" for i in range(5)]
MAX_OPS = 3_000  # per worker: every loop is bounded in count as well as in time


class Recorder:
    """Every operation of every worker, as the checker wants it."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.lock = threading.Lock()

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)


def worker(cluster: Cluster, members: list[str], client_id: int, recorder: Recorder, stop: threading.Event) -> None:
    """Random puts (unique values) and gets on a few keys until ``stop``."""
    barn = cluster.client(*members, timeout=1.0)
    rng = random.Random(client_id)
    for seq in range(MAX_OPS):
        if stop.is_set():
            break
        key = rng.choice(KEYS)
        call = time.monotonic()
        if rng.random() < 0.6:
            value = f"{client_id}-{seq}".encode()
            try:
                barn.put(key, value)
            except BarnError:  # NoQuorumError and the like: the write may or may not have happened
                recorder.add(Op(client_id, "put", key, value, call=call, ret=None))
                continue
            recorder.add(Op(client_id, "put", key, value, call=call, ret=time.monotonic()))
        else:
            try:
                kv = barn.get(key)
            except BarnError:
                continue  # an unanswered read says nothing
            recorder.add(Op(client_id, "get", key, kv.value if kv else None, call=call, ret=time.monotonic()))
    barn.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def state_of(cluster: Cluster, name: str) -> tuple[int, dict[str, bytes]]:
    """A member's own copy (no barrier, no forwarding): its revision and every key."""
    barn = cluster.client(name, timeout=2.0)
    try:
        answer = barn.call("/v1/scan", {"prefix": "", "serializable": True})
    finally:
        barn.close()
    return int(answer["revision"]), {kv["key"]: kv["value"] for kv in answer["kvs"]}


@pytest.mark.slow  # (chaos: `tox -e slow`)
def test_a_cut_off_leader_stops_and_the_majority_serves_without_losing_writes(tmp_path: Path) -> None:
    with netns.NetLab(["a", "b", "c"]) as lab:
        cluster = Cluster(tmp_path, lab=lab)
        cluster.start()
        try:
            run_partition(cluster, lab)
        finally:
            cluster.stop()


def run_partition(cluster: Cluster, lab: netns.NetLab) -> None:
    old = cluster.leader()
    majority = [n for n in cluster.names if n != old]
    old_term = cluster.status(old)["term"]
    recorder, stop = Recorder(), threading.Event()
    ids = itertools.count()
    pinned = [next(ids) for _ in range(2)]  # these two only ever talk to the old leader
    threads = [threading.Thread(target=worker, args=(cluster, [old], i, recorder, stop)) for i in pinned]
    threads += [
        threading.Thread(target=worker, args=(cluster, cluster.names, next(ids), recorder, stop)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)  # healthy traffic first
        lab.cut([old], majority)
        cut_at = time.monotonic()  # once every route is in place: a write sent later cannot be replicated

        def new_leader() -> bool:
            for name in majority:
                status = cluster.status(name)
                if status["state"] == "leader" and status["term"] > old_term:
                    return True
            return False

        elected_after = wait_for(new_leader, 5.0, "the majority electing a new leader")
        wait_for(lambda: cluster.status(old)["state"] != "leader", 3.0, "the cut-off leader stepping down")
        time.sleep(2.0)  # the majority serves, the old leader is asked too
        healed_at = time.monotonic()  # before the first route goes
        lab.heal()
        time.sleep(1.0)  # traffic after healing
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not any(t.is_alive() for t in threads), "a worker did not stop"

    def converged() -> bool:
        states = [state_of(cluster, n) for n in cluster.names]
        return all(s == states[0] for s in states)

    wait_for(converged, 15.0, "the members converging after healing")

    # final linearizable reads of every key: an acknowledged write lost anywhere shows up here
    barn = cluster.client()
    for key in KEYS:
        call = time.monotonic()
        kv = barn.get(key)
        recorder.add(Op(99, "get", key, kv.value if kv else None, call=call, ret=time.monotonic()))
    barn.close()

    ops = recorder.ops
    pinned_acks = [
        op
        for op in ops
        if op.client in pinned and op.kind == "put" and op.ret is not None and cut_at < op.call and op.ret < healed_at
    ]
    assert not pinned_acks, f"the cut-off leader acknowledged writes: {pinned_acks[:3]}"
    majority_from = cut_at + elected_after
    served = [
        op
        for op in ops
        if op.client not in pinned and op.kind == "put" and op.ret is not None and majority_from < op.call < healed_at
    ]
    assert len(served) >= 10, f"the majority acknowledged only {len(served)} writes while the leader was cut off"
    puts = [op for op in ops if op.kind == "put"]
    assert sum(op.ret is not None for op in puts) >= 50, "too little traffic to say anything"
    result = check(ops)
    assert result, result.explanation
