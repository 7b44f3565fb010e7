"""The raft Barn under faults, with real server processes on loopback: kill -9 of the leader
during concurrent writes, then a restart of the whole group."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from barn_cluster import Cluster

from runink.core.errors import NoQuorumError

WRITERS = 8
WRITES = 2000


def settle(cluster: Cluster, names: list[str], timeout: float = 10.0) -> None:
    """Wait until these members have applied the same log prefix (the leader's commit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [cluster.status(n) for n in names]
        if len({s["last_applied"] for s in statuses}) == 1 and len({s["revision"] for s in statuses}) == 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"members {names} did not converge: {statuses}")


def copy_of(cluster: Cluster, name: str, prefix: str) -> dict[str, bytes]:
    client = cluster.client(name)
    try:
        return {kv.key: kv.value for kv in client.scan(prefix, serializable=True)}
    finally:
        client.close()


def test_kill_the_leader_during_writes_then_restart_everything(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.start()
    try:
        leader = cluster.leader()
        acknowledged: dict[str, bytes] = {}
        unknown: list[str] = []
        lock = threading.Lock()
        half = threading.Event()

        def writer(n: int) -> None:
            client = cluster.client(timeout=15)
            try:
                for i in range(WRITES // WRITERS):
                    key, value = f"/fault/{n}/{i}", f"{n}:{i}".encode()
                    try:
                        client.put(key, value)
                    except NoQuorumError:
                        with lock:
                            unknown.append(key)  # outcome unknown: may or may not be there
                        continue
                    with lock:
                        acknowledged[key] = value
                        if len(acknowledged) >= WRITES // 4:
                            half.set()
            finally:
                client.close()

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        for thread in threads:
            thread.start()
        assert half.wait(60), "the writes did not start"
        killed_at = time.monotonic()
        cluster.kill(leader, signal.SIGKILL)
        survivors = [n for n in cluster.names if n != leader]
        new_leader = cluster.leader(timeout=10)
        elected_after = time.monotonic() - killed_at
        assert new_leader in survivors
        assert elected_after < 3.0, f"a new leader took {elected_after:.2f}s"
        for thread in threads:
            thread.join(120)
        assert len(acknowledged) + len(unknown) == WRITES
        assert len(acknowledged) > WRITES * 0.9, f"only {len(acknowledged)} acknowledged, {len(unknown)} unknown"

        settle(cluster, survivors)
        for name in survivors:  # every acknowledged write, on every surviving member
            copy = copy_of(cluster, name, "/fault/")
            missing = {k for k in acknowledged if copy.get(k) != acknowledged[k]}
            assert not missing, f"{name} lacks {len(missing)} acknowledged writes, e.g. {sorted(missing)[:3]}"
            assert set(copy) <= set(acknowledged) | set(unknown)  # nothing nobody wrote
        before = copy_of(cluster, new_leader, "")

        for name in survivors:  # the whole group goes down and comes back from its disks
            cluster.kill(name, signal.SIGTERM)
        cluster.start()
        cluster.leader(timeout=15)
        settle(cluster, cluster.names, timeout=20)
        for name in cluster.names:  # the killed member caught up too
            assert copy_of(cluster, name, "") == before, f"{name} differs after the restart"
        client = cluster.client()
        try:
            assert client.put("/fault/after", b"restart") > 0  # and the group takes writes again
        finally:
            client.close()
    finally:
        cluster.stop()


def test_state_survives_log_compaction_a_restart_and_a_snapshot_install(tmp_path: Path) -> None:
    """With the log compacted every 50 entries, a full restart rebuilds the state from the
    snapshot plus the journal's tail, and a member that was down through several compactions
    catches up from the leader's snapshot (install_snapshot), not from entries long gone."""
    cluster = Cluster(tmp_path, options=("--compaction-entries", "50", "--compaction-seconds", "0.1"))
    cluster.start()
    try:
        leader = cluster.leader()
        laggard = next(n for n in cluster.names if n != leader)
        client = cluster.client()
        try:
            for i in range(100):
                client.put(f"/compact/{i:03}", f"v{i}".encode())
            cluster.kill(laggard)  # down while the others compact again and again
            for i in range(100, 400):
                client.put(f"/compact/{i:03}", f"v{i}".encode())
            client.delete("/compact/007")
        finally:
            client.close()
        expected = {f"/compact/{i:03}": f"v{i}".encode() for i in range(400) if i != 7}
        time.sleep(1.0)  # more than one compaction period with the entries above
        cluster.start(laggard)
        settle(cluster, cluster.names, timeout=20)
        for name in cluster.names:
            assert copy_of(cluster, name, "/compact/") == expected, f"{name} after catching up"
        for name in cluster.names:
            cluster.kill(name, signal.SIGTERM)
        cluster.start()
        cluster.leader(timeout=15)
        settle(cluster, cluster.names, timeout=20)
        for name in cluster.names:
            assert copy_of(cluster, name, "/compact/") == expected, f"{name} after a full restart"
            assert cluster.status(name)["log_len"] < 200, "the log was never compacted"
    finally:
        cluster.stop()


def test_the_log_is_compacted_by_its_bytes_too(tmp_path: Path) -> None:
    """Every entry stays in memory until a snapshot replaces it: with a count and a time far
    off, 1 MiB values written one after another are compacted once --compaction-mib of them
    came (300 such overwrites within the minute once held ~1 GiB in a member), on every
    member, and the value survives it."""
    options = ("--compaction-entries", "100000", "--compaction-seconds", "3600", "--compaction-mib", "4")
    cluster = Cluster(tmp_path, fsync=False, options=options)
    cluster.start()
    try:
        client = cluster.client()
        try:
            value = b"v" * (1 << 20)
            for i in range(24):
                client.put("/big", value[:-2] + f"{i:02d}".encode())
        finally:
            client.close()
        settle(cluster, cluster.names, timeout=20)
        for name in cluster.names:
            assert cluster.status(name)["log_len"] < 12, f"{name}: the log was not compacted by its bytes"
            assert copy_of(cluster, name, "/big") == {"/big": value[:-2] + b"23"}
    finally:
        cluster.stop()
