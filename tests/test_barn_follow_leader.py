"""A control-plane server's client of its own Barn member (``follow_leader``): its calls go to
the leader the member names, not through the member (no forwarding hop), while ``leads`` still
asks the member itself. Real member processes on loopback."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from barn_cluster import Cluster

from runink.core.drivers import load_driver
from runink.core.errors import NoQuorumError
from runink.core.interfaces import BarnBackend


def _client(cluster: Cluster, name: str, *, follow: bool, timeout: float = 10.0) -> BarnBackend:
    options = {"endpoints": [cluster.http[name]], "timeout": timeout, "follow_leader": follow}
    return load_driver(BarnBackend, "raft", options)


def test_a_follow_leader_client_reaches_the_leader_past_its_member_and_asks_its_member_who_leads(
    tmp_path: Path,
) -> None:
    # (elections wait 1.5 s, not 0.3: the test needs one leader from its first write to the
    # pause, and a loaded machine's stalls of a few tenths of a second must not move it)
    cluster = Cluster(tmp_path, fsync=False, options=("--election-timeout", "1.5"))
    cluster.start(*cluster.names)
    try:
        leader = cluster.leader()
        member = next(n for n in cluster.names if n != leader)
        # (a loaded machine may take seconds for one write: the timeouts that must pass are
        # short only where a stopped member has to make a call fail)
        follows = _client(cluster, member, follow=True)
        asks_member = _client(cluster, member, follow=True, timeout=1.5)
        plain = _client(cluster, member, follow=False, timeout=1.5)
        assert follows.put("/k", b"1") > 0 and plain.put("/k", b"2") > 0  # (both through the member)
        # (a member that has not yet heard from the leader answers without naming it)
        for _ in range(50):
            if cluster.http[leader] in follows.endpoints:  # type: ignore[attr-defined]
                break
            follows.put("/k", b"1")
        assert follows.endpoints[-1] == cluster.http[leader]  # type: ignore[attr-defined]
        assert follows.leads() is False  # its member is a follower
        assert asks_member.put("/k", b"2") > 0
        # the member stopped: the plain client has no way to the leader; the other goes direct
        cluster.pause(member)
        try:
            assert follows.put("/k", b"3") > 0
            assert follows.get("/k").value == b"3"  # type: ignore[union-attr]
            with pytest.raises(NoQuorumError):
                plain.put("/k", b"4")
            with pytest.raises(NoQuorumError):
                asks_member.leads()  # asked of its member only, never of the leader
        finally:
            os.kill(cluster.processes[member].pid, signal.SIGCONT)
        # the leader dies: through its member again until one leads, then to that one
        cluster.kill(leader)
        patient = _client(cluster, member, follow=True)
        assert patient.put("/k", b"5") > 0
        now_leads = cluster.leader()
        assert patient.leads() is (now_leads == member)
        assert patient.get("/k").value == b"5"  # type: ignore[union-attr]
        if now_leads != member:  # (two members left: stopping one would leave no quorum to show it)
            assert cluster.http[now_leads] in patient.endpoints  # type: ignore[attr-defined]
        for client in (follows, asks_member, plain, patient):
            client.close()
    finally:
        cluster.stop()
