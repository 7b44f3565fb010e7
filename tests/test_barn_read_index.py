"""The Barn's linearizable reads by Raft's ReadIndex (vendored syncobj.py, fix 9).

On the message-level simulation (tests/raft_sim.py): a read adds no log entry; a leader cut
off from the majority never confirms a read and fails it when it learns of the new term; a new
leader refuses ReadIndex until it has committed an entry of its term. On a real 3-member group:
reads after a write see it from every member, and reads leave the log as it was.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import raft_sim
from barn_cluster import Cluster, free_ports
from pysyncobj import FAIL_REASON

import runink.plugins.barn.raft._vendor.pysyncobj.syncobj as patched
from runink.core.errors import NoQuorumError
from runink.plugins.barn.raft.client import RaftBarn
from runink.plugins.barn.raft.server import BarnServer, Member, ServerConfig


def settled(nodes: dict[str, Any], network: raft_sim.Network, leader: str) -> None:
    """Tick until the leader has committed and applied everything in its log."""
    deadline = time.monotonic() + 10
    node = nodes[leader]
    while time.monotonic() < deadline:
        raft_sim.tick(nodes, network, pause=0.01)
        if node.raftCommitIndex == node._SyncObj__getCurrentLogIndex() == node.raftLastApplied:
            return
    raise AssertionError("the leader did not commit its log")


def read_index(node: Any) -> list[tuple[Any, Any]]:
    answers: list[tuple[Any, Any]] = []
    node.readIndex(lambda index, error: answers.append((index, error)))
    return answers


def test_a_read_index_adds_no_log_entry() -> None:
    network, nodes = raft_sim.make_cluster(patched)
    leader = raft_sim.elect(nodes, network)
    nodes[leader].append(7)
    settled(nodes, network, leader)
    size, commit = nodes[leader]._getRaftLogSize(), nodes[leader].raftCommitIndex
    answers = read_index(nodes[leader])
    raft_sim.tick(nodes, network, 3)
    assert answers == [(commit, FAIL_REASON.SUCCESS)]
    assert nodes[leader]._getRaftLogSize() == size
    assert nodes[leader].raftCommitIndex == commit
    assert not any(m["type"] == "append_entries" and m.get("entries") for _, _, m in network.queue)


def test_a_read_arriving_while_a_round_is_in_flight_waits_for_the_next_round() -> None:
    """Acks to a round sent before a read arrived must not answer it (a leader deposed in
    between would serve a stale value); it shares the next round, sent once this one is done."""
    network, nodes = raft_sim.make_cluster(patched)
    leader = raft_sim.elect(nodes, network)
    settled(nodes, network, leader)
    node = nodes[leader]
    network.queue.clear()
    first = read_index(node)
    node.doTick(0)
    second = read_index(node)
    node.doTick(0)
    rounds = [m["round"] for _, _, m in network.queue if m["type"] == "runink_read_round"]
    assert len(rounds) == 2 and len(set(rounds)) == 1  # one round, to each follower
    network.deliver()  # the followers ack...
    network.deliver()  # ...and the leader gets the acks
    node.doTick(0)
    assert first == [(node.raftCommitIndex, FAIL_REASON.SUCCESS)]
    assert second == []
    assert {m["round"] for _, _, m in network.queue if m["type"] == "runink_read_round"} == {rounds[0] + 1}
    network.deliver()
    network.deliver()
    node.doTick(0)
    assert second == [(node.raftCommitIndex, FAIL_REASON.SUCCESS)]


def test_a_leader_cut_off_from_the_majority_answers_no_read() -> None:
    network, nodes = raft_sim.make_cluster(patched)
    old = raft_sim.elect(nodes, network)
    settled(nodes, network, old)
    majority = [n for n in nodes if n != old]
    network.down = set(majority)
    answers = read_index(nodes[old])
    for _ in range(20):  # 0.4 s: several resent rounds, none answered
        raft_sim.tick(nodes, network, pause=0.02)
    assert nodes[old]._isLeader()  # it still believes it leads (leaderFallbackTimeout is 30 s here)...
    assert answers == []  # ...yet serves nothing
    network.down = {old}
    new = raft_sim.elect(nodes, network)
    assert new != old
    network.down = set()
    raft_sim.tick(nodes, network, 3)  # the old leader hears of the new term
    assert not nodes[old]._isLeader()
    assert answers == [(None, FAIL_REASON.LEADER_CHANGED)]
    late = read_index(nodes[old])
    raft_sim.tick(nodes, network)
    assert late == [(None, FAIL_REASON.NOT_LEADER)]


def test_a_new_leader_serves_no_read_index_before_committing_an_entry_of_its_term() -> None:
    network, nodes = raft_sim.make_cluster(patched)
    leader = raft_sim.elect(nodes, network)
    network.down = {n for n in nodes if n != leader}  # its election no-op reaches nobody
    network.deliver()
    node = nodes[leader]
    assert node.raftCommitIndex < node._SyncObj__getCurrentLogIndex()
    early = read_index(node)
    raft_sim.tick(nodes, network)
    assert early == [(None, patched.READ_INDEX_NOT_READY)]
    network.down = set()
    settled(nodes, network, leader)
    later = read_index(node)
    raft_sim.tick(nodes, network, 3)
    assert later == [(node.raftCommitIndex, FAIL_REASON.SUCCESS)]


def test_reads_after_a_write_see_it_and_add_no_log_entry(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.start()
    try:
        leader = cluster.leader()
        barn = cluster.client(leader, *[n for n in cluster.names if n != leader])
        try:
            for i in range(20):
                barn.put(f"/ri/k{i}", b"v%d" % i)
                for name in cluster.names:  # a follower forwards the read to the leader
                    one = cluster.client(name)
                    try:
                        got = one.get(f"/ri/k{i}")
                        assert got is not None and got.value == b"v%d" % i
                    finally:
                        one.close()
            before = cluster.status(leader)
            for _ in range(50):
                got = barn.get("/ri/k19")
                assert got is not None and got.value == b"v19"
            after = cluster.status(leader)
        finally:
            barn.close()
        assert after["term"] == before["term"]
        assert (after["log_len"], after["commit_index"]) == (before["log_len"], before["commit_index"])
    finally:
        cluster.stop()


def test_a_leader_not_ready_for_read_index_reads_behind_a_barrier(tmp_path: Path) -> None:
    """The Barn's side of the rule above: until ReadIndex is available the read commits a no-op."""
    raft, http_port = free_ports(2)
    config = ServerConfig(Member("solo", f"127.0.0.1:{raft}", f"127.0.0.1:{http_port}"), [], tmp_path / "solo")
    server = BarnServer(config)
    server.start()
    try:
        barn = RaftBarn(endpoints=[f"127.0.0.1:{http_port}"], timeout=10)
        barn.put("/ri/solo", b"v")
        node = server.node
        size = node._getRaftLogSize()
        got = barn.get("/ri/solo")
        assert got is not None and got.value == b"v"
        assert node._getRaftLogSize() == size  # ReadIndex: no entry

        def not_ready(callback: Any) -> None:
            callback(None, patched.READ_INDEX_NOT_READY)

        node.readIndex = not_ready
        got = barn.get("/ri/solo")
        assert got is not None and got.value == b"v"
        assert node._getRaftLogSize() == size + 1  # the barrier's no-op
        barn.close()
    finally:
        server.close()


def test_a_watchs_next_call_needs_no_read_round_its_first_does(tmp_path: Path) -> None:
    """A watch going on (``from_revision`` given) is answered from the leader's applied log
    without a read round: it answers while both followers are stopped, when no round can
    complete; a watch starting from now (no revision) still confirms the leader first."""
    cluster = Cluster(tmp_path, fsync=False)
    cluster.start()
    try:
        leader = cluster.leader()
        barn = cluster.client(leader, timeout=2)
        revision = barn.put("/w/k", b"1")
        followers = [n for n in cluster.names if n != leader]
        for name in followers:
            os.kill(cluster.processes[name].pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            answer = barn.call("/v1/watch", {"prefix": "/w/", "from_revision": revision, "wait": 0.2})
            assert [e["kv"]["key"] for e in answer["events"]] == ["/w/k"]  # (applied: committed)
            quiet = barn.call("/v1/watch", {"prefix": "/w/", "from_revision": answer["next"], "wait": 0.2})
            assert quiet["events"] == [] and time.monotonic() - began < 1.5
            with pytest.raises(NoQuorumError):  # a start from now: a read round, which cannot complete
                barn.call("/v1/watch", {"prefix": "/w/", "from_revision": 0, "wait": 0.2})
        finally:
            for name in followers:
                os.kill(cluster.processes[name].pid, signal.SIGCONT)
        # (the stopped members follow again before the group is stopped)
        deadline = time.monotonic() + 10
        while not all(cluster.status(n).get("state") == "follower" for n in followers):
            assert time.monotonic() < deadline, "the resumed members did not follow again"
            time.sleep(0.1)
        assert barn.put("/w/k", b"2") > revision
        barn.close()
    finally:
        cluster.stop()


def test_a_watch_from_far_back_comes_in_pages_and_misses_nothing(tmp_path: Path) -> None:
    """A watch of a long history is answered a page at a time (MAX_WATCH_BYTES: four watches of
    200 1 MiB changes once built ~1 GiB of answers on the leader's loop and stalled writes 7.8
    s); ``next`` goes on from the page's last revision, and the client's watch sees every change."""
    from runink.plugins.barn.raft.api import MAX_WATCH_BYTES

    cluster = Cluster(tmp_path, fsync=False)
    cluster.start()
    try:
        barn = cluster.client(cluster.leader(), timeout=10)
        value = b"v" * (1 << 20)
        revisions = [barn.put(f"/big/{n:02d}", value) for n in range(12)]
        answer = barn.call("/v1/watch", {"prefix": "/big/", "from_revision": revisions[0], "wait": 0})
        events = answer["events"]
        assert 0 < len(events) < 12 and len(events) <= MAX_WATCH_BYTES // len(value) + 1
        assert answer["next"] == events[-1]["revision"] + 1
        seen = []
        for event in barn.watch("/big/", revisions[0]):
            seen.append((event.kv.key, event.revision, len(event.kv.value)))
            if len(seen) == 12:
                break
        assert seen == [(f"/big/{n:02d}", revisions[n], len(value)) for n in range(12)]
        barn.close()
    finally:
        cluster.stop()


def test_watches_sent_to_a_follower_do_not_hold_up_its_writes(tmp_path: Path) -> None:
    """A follower forwards to the leader from a pool of threads; a watch's long poll holds its
    thread for its whole wait, so 32 watches once took every thread and a put through that
    follower waited for them (28 s). Watches are forwarded from threads of their own."""
    import threading

    from runink.plugins.barn.raft.api import FORWARD_THREADS

    cluster = Cluster(tmp_path, fsync=False)
    cluster.start()
    try:
        leader = cluster.leader()
        follower = next(n for n in cluster.names if n != leader)
        barn = cluster.client(follower, timeout=30)
        start = barn.put("/w/first", b"1") + 1
        watchers = [
            threading.Thread(
                target=lambda: cluster.client(follower, timeout=30).call(
                    "/v1/watch", {"prefix": "/never/", "from_revision": start, "wait": 6}
                ),
                daemon=True,
            )
            for _ in range(FORWARD_THREADS + 4)
        ]
        for watcher in watchers:
            watcher.start()
        time.sleep(1.0)  # the watches are waiting on the leader, through the follower
        assert barn.put("/w/second", b"2") == start
        assert all(watcher.is_alive() for watcher in watchers)  # the put did not wait for them
        for watcher in watchers:
            watcher.join(15)
        barn.close()
    finally:
        cluster.stop()


def test_a_scan_comes_in_pages_and_the_client_reads_them_all(tmp_path: Path) -> None:
    """A scan is answered a page at most (MAX_SCAN_BYTES, MAX_SCAN_KEYS: a scan of every key was
    one answer of the whole state), ``more`` saying some were left out; the client's ``scan``
    asks on from the last key and returns them all, a ``limit`` counting across pages."""
    from runink.plugins.barn.raft.api import MAX_SCAN_BYTES

    cluster = Cluster(tmp_path, fsync=False)
    cluster.start()
    try:
        barn = cluster.client(cluster.leader(), timeout=10)
        value = b"v" * (1 << 20)
        for n in range(12):
            barn.put(f"/big/{n:02d}", value)
        barn.put("/big0", b"not under the prefix")
        answer = barn.call("/v1/scan", {"prefix": "/big/"})
        assert answer["more"] is True and 0 < len(answer["kvs"]) <= MAX_SCAN_BYTES // len(value) + 1
        local = barn.call("/v1/scan", {"prefix": "/big/", "serializable": True})
        assert local["more"] is True and len(local["kvs"]) == len(answer["kvs"])
        assert [kv.key for kv in barn.scan("/big/")] == [f"/big/{n:02d}" for n in range(12)]
        assert [kv.key for kv in barn.scan("/big/", limit=7)] == [f"/big/{n:02d}" for n in range(7)]
        assert [kv.key for kv in barn.scan("/big/", after="/big/09")] == ["/big/10", "/big/11"]
        assert barn.call("/v1/scan", {"prefix": "/big/", "after": "/big/09"})["more"] is False
        barn.close()
    finally:
        cluster.stop()
