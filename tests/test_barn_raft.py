"""The raft Barn: three real server processes on loopback pass the Barn conformance suite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from barn_cluster import Cluster
from fixture_types import CliRunner

from runink.core.errors import BarnError
from runink.core.interfaces.barn import BarnBackend
from runink.plugins.barn.state import BarnState
from runink.testing import BarnConformance
from runink.testing.barn import COMPACTION_HISTORY


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    group = Cluster(Path(tmp_path_factory.mktemp("barn")), history=COMPACTION_HISTORY)
    try:
        group.start()
        group.leader()
        yield group
    finally:  # a group that failed to elect is stopped too
        group.stop()


class TestRaftBarn(BarnConformance):
    driver_name = "raft"

    @pytest.fixture
    def barn(self, cluster: Cluster) -> Iterator[BarnBackend]:
        client = cluster.client()
        yield client
        client.close()


def test_barn_status_cli(cluster: Cluster, run_cli: CliRunner) -> None:
    endpoints = ",".join(cluster.http[n] for n in cluster.names)
    out = run_cli("barn", "status", "--endpoints", endpoints, "--json")
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert {s["name"] for s in seen} == set(cluster.names)
    leaders = {s["leader"] for s in seen}
    assert len(leaders) == 1 and leaders <= set(cluster.names)  # every server agrees on one leader
    assert all(p["connected"] for s in seen for p in s["peers"].values())
    table = run_cli("barn", "status", "--endpoints", endpoints + ",127.0.0.1:1")
    assert table.returncode == 1 and "UNREACHABLE" in table.stdout  # a server down: said, and a non-zero exit


def test_bad_requests_say_what_is_wrong(cluster: Cluster) -> None:
    """A missing field is the client's error (400), an unknown path is 404: never "lease not found"."""
    client = cluster.client(cluster.leader())
    try:
        with pytest.raises(BarnError, match=r"400: /v1/put: missing field 'value'"):
            client.call("/v1/put", {"key": "/k"})
        with pytest.raises(BarnError, match=r"404: no /v1/nothing"):
            client.call("/v1/nothing", {})
        with pytest.raises(BarnError, match=r"400: /v1/lease/grant: ttl: Input should be greater than 0"):
            client.call("/v1/lease/grant", {"ttl": -1})
        assert client.put("/after-bad-requests", b"ok") > 0  # and the group still serves
    finally:
        client.close()


def test_a_command_the_state_refuses_is_an_error_result_on_every_replica() -> None:
    """A refused command must not raise inside apply: that stops the Raft thread of every
    replica, and again at every restart (the entry stays in the log)."""
    state = BarnState()
    assert state.apply({"op": "grant", "ttl": -1, "now": 0.0})["error"] == "bad_request"
    assert state.apply({"op": "no-such-op"})["error"] == "bad_request"
    assert state.apply({"op": "put", "key": "/k", "value": b"v", "lease": None}) == 1  # and it goes on


def test_a_client_of_one_member_says_whether_it_leads(cluster: Cluster) -> None:
    """BarnBackend.leads(): what a cluster server asks its own member, to schedule only next
    to the leader; exactly one member of the group says yes."""
    leader = cluster.leader()
    answers = {}
    for name in cluster.names:
        client = cluster.client(name)
        try:
            answers[name] = client.leads()
        finally:
            client.close()
    assert answers == {name: name == leader for name in cluster.names}


def test_a_member_that_never_answers_holds_a_call_a_share_of_its_timeout_and_then_no_call(
    cluster: Cluster,
) -> None:
    """A paused leader (connections accepted, nothing answered) took each call's whole timeout
    and stayed preferred: the healthy members' new leader was never asked (a faults review's
    run: every submission failed after 10 s while the leader was paused)."""
    import socket
    import time

    from runink.core.drivers import load_driver

    silent = socket.create_server(("127.0.0.1", 0))  # (listening, never accepting: the kernel completes connects)
    endpoints = [f"127.0.0.1:{silent.getsockname()[1]}", *(cluster.http[n] for n in cluster.names)]
    client = load_driver(BarnBackend, "raft", {"endpoints": endpoints, "timeout": 6.0})
    try:
        began = time.monotonic()
        client.put("/paused/a", b"1")
        first = time.monotonic() - began
        began = time.monotonic()
        client.put("/paused/b", b"2")
        second = time.monotonic() - began
        assert first < 4.5 and second < 1.0, (first, second)  # (a third of 6 s at most for the silent one)
        assert client.get("/paused/b") is not None
    finally:
        client.close()
        silent.close()
