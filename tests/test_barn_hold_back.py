"""A Barn member whose `runink server` is silent (paused, frozen) is held back
(BarnNode.hold_back): it hands its lead to a follower and stands for no election, and still
votes, so the group keeps its majority. Real members (`barn serve` processes) hearing pipes
the test writes to, as a server's own member hears its server."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from barn_cluster import Cluster

SILENCE = 1.0  # seconds without a beat before a member is held back (a server's: 5)


@pytest.fixture
def group(tmp_path: Path) -> Iterator[tuple[Cluster, set[str]]]:
    """Three members; the test silences a member by adding its name to the set."""
    cluster = Cluster(tmp_path)
    cluster.beats(SILENCE)
    silenced: set[str] = set()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(0.1):
            for name, fd in list(cluster.beat_pipes.items()):
                if name not in silenced:
                    with contextlib.suppress(OSError):
                        os.write(fd, b".")

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    cluster.start()
    try:
        yield cluster, silenced
    finally:
        done.set()
        beater.join(5)
        cluster.stop()


def _settled(cluster: Cluster, not_leader: set[str], within: float = 10.0) -> tuple[str, int]:
    """The leader once it is none of ``not_leader``, and its term, unchanged over 2 s after."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(AssertionError):
            leader = cluster.leader(timeout=1.0)
            if leader not in not_leader:
                break
        assert time.monotonic() < deadline, f"the lead stayed with {not_leader}"
        time.sleep(0.1)
    term = cluster.status(leader)["term"]
    for _ in range(10):  # no flapping: the same leader in the same term
        time.sleep(0.2)
        status = cluster.status(leader)
        assert (status["state"], status["term"]) == ("leader", term), status
    return leader, term


def test_a_silent_members_lead_goes_to_one_whose_server_runs_and_two_silent_keep_the_majority(
    group: tuple[Cluster, set[str]],
) -> None:
    cluster, silenced = group
    first = cluster.leader()
    silenced.add(first)
    second, _ = _settled(cluster, {first})
    assert cluster.status(first)["state"] == "follower"  # held back: it votes, stands for nothing
    client = cluster.client()
    try:
        client.put("/k", b"1")
        silenced.add(second)  # two of three silent: the third leads, writes go on
        third, term = _settled(cluster, {first, second})
        client.put("/k", b"2")
        assert client.get("/k").value == b"2"
        silenced.clear()  # their servers run again: no election for that
        time.sleep(3 * SILENCE)
        status = cluster.status(third)
        assert (status["state"], status["term"]) == ("leader", term), status
        # all three silent: a leader stays (one held back never steps down without a taker,
        # and none stands: the lead may move once, to one not yet held) and writes go on
        silenced.update(cluster.names)
        time.sleep(3 * SILENCE)
        _settled(cluster, set())
        client.put("/k", b"3")
        assert client.get("/k").value == b"3"
    finally:
        client.close()
