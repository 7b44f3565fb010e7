"""Changing a running Barn group with `runink barn member add/remove`: a new server joins,
catches up and serves; a removed server no longer counts towards the quorum."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from barn_cluster import Cluster
from fixture_types import CliRunner


def local_copy(cluster: Cluster, name: str) -> dict[str, bytes]:
    client = cluster.client(name)
    try:
        return {kv.key: kv.value for kv in client.scan("/m/", serializable=True)}
    finally:
        client.close()


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout}s")


def test_add_a_server_then_remove_one(tmp_path: Path, run_cli: CliRunner) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.start()
        cluster.leader()
        client = cluster.client("a", "b", "c")
        for i in range(50):
            client.put(f"/m/{i}", b"before")
        endpoints = ",".join(cluster.http[n] for n in ("a", "b", "c"))

        cluster.grow("d")
        cluster.start("d")
        out = run_cli("barn", "member", "add", "d", cluster.raft["d"], cluster.http["d"], "--endpoints", endpoints)
        assert out.returncode == 0, out.stderr
        assert "a, b, c, d" in out.stdout
        # repeating it is harmless (and how an operator completes an add whose leader died
        # between the membership change and the record of d's API address)
        again = run_cli("barn", "member", "add", "d", cluster.raft["d"], cluster.http["d"], "--endpoints", endpoints)
        assert again.returncode == 0, again.stderr
        assert "a, b, c, d" in again.stdout
        client.put("/m/after-add", b"x")
        expected = {**{f"/m/{i}": b"before" for i in range(50)}, "/m/after-add": b"x"}
        wait_until(lambda: local_copy(cluster, "d") == expected, 10, "d catching up")

        # d serves: a write sent to it (a follower) is forwarded, and every member knows d's API
        via_d = cluster.client("d")
        assert via_d.put("/m/via-d", b"y") > 0
        via_d.close()
        status = cluster.status(cluster.leader())
        assert "d" in status["peers"] or status["name"] == "d"
        for name in ("a", "b", "c"):
            peers = cluster.status(name)["peers"]
            if name != "d":
                assert peers["d"]["http"] == cluster.http["d"], f"{name} does not know d's API"

        # remove c by name: the group is a, b, d; with c and one more down it would have no quorum
        out = run_cli("barn", "member", "remove", "c", "--endpoints", endpoints, "--json")
        assert out.returncode == 0, out.stderr
        cluster.kill("c")
        leader = cluster.leader()
        other = next(n for n in ("a", "b", "d") if n != leader)
        assert "c" not in cluster.status(leader)["peers"]
        cluster.kill(other)  # 2 of the 3 members left: a quorum (2 of 4, had c stayed, is none)
        survivors = cluster.client(*cluster.alive(), timeout=10)
        assert survivors.put("/m/after-remove", b"z") > 0
        survivors.close()
        client.close()
    finally:
        cluster.stop()


def test_a_name_keeps_its_addresses_and_an_address_its_name(tmp_path: Path) -> None:
    """A member add that reused a name with another member's addresses was taken (200) and made
    members lose their leader for good; a remove with a wrong address answered 200 and removed
    nothing. Both are refused now, naming why, and the group keeps serving through every member."""
    cluster = Cluster(tmp_path)
    post = cluster.post
    try:
        cluster.start()
        leader = cluster.leader()
        first, second = (n for n in ("a", "b", "c") if n != leader)
        status, answer = post(
            leader, "/v1/members/add", {"name": leader, "raft": cluster.raft[second], "http": cluster.http[second]}
        )
        assert status >= 400 and f"that address is member {second}'s" in str(answer["message"]), answer
        status, answer = post(
            leader, "/v1/members/add", {"name": leader, "raft": "127.0.0.1:1", "http": cluster.http[leader]}
        )
        assert status >= 400 and f"a member of that name has Raft {cluster.raft[leader]}" in str(answer["message"])
        status, answer = post(leader, "/v1/members/remove", {"name": first, "raft": "127.0.0.1:1"})
        assert status >= 400 and f"its Raft address is {cluster.raft[first]}" in str(answer["message"]), answer

        # nothing changed: a follower restarted (a cold view of the members) still finds the
        # leader and forwards to it
        cluster.kill(first)
        cluster.start(first)
        via_first = cluster.client(first)
        try:
            wait_until(lambda: cluster.status(first).get("leader") == leader, 15, f"{first} finding the leader")
            assert via_first.put("/m/still", b"ok") > 0
        finally:
            via_first.close()
        assert sorted(cluster.status(leader)["peers"]) == sorted(n for n in ("a", "b", "c") if n != leader)
    finally:
        cluster.stop()


def test_a_members_folder_is_its_owners_only(tmp_path: Path) -> None:
    """Its journal holds every herd's records (jobs, their commands and output): the folder
    was 0755 and the journal 0644, readable by every user of the host."""
    import os

    (tmp_path / "a").mkdir(mode=0o755)  # (an operator's folder, as made)
    os.chmod(tmp_path / "a", 0o755)
    cluster = Cluster(tmp_path)
    try:
        cluster.start()
        cluster.leader()
        for name in ("a", "b", "c"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o700, name
            assert (tmp_path / name / "raft.journal").exists()
    finally:
        cluster.stop()
