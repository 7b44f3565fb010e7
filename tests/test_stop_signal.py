"""A long-running process stops on SIGTERM whichever of its threads the kernel hands the
signal to (``runink.core.signals.wait_for_stop``): real Barn members, stopped with SIGSTOP
for a while, then resumed and terminated at once (an untimed wait in the main thread never
ran the handler: the members stayed up)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from barn_cluster import Cluster


def test_members_resumed_and_terminated_at_once_exit(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, fsync=False)
    cluster.start()
    try:
        leader = cluster.leader()
        barn = cluster.client(leader, timeout=2)
        barn.put("/k", b"1")
        barn.close()
        followers = [n for n in cluster.names if n != leader]
        for name in followers:
            os.kill(cluster.processes[name].pid, signal.SIGSTOP)
        time.sleep(2.2)  # (past the election timeout: every thread has work when they resume)
        for name in followers:
            os.kill(cluster.processes[name].pid, signal.SIGCONT)
        for name in cluster.names:
            cluster.processes[name].terminate()
        deadline = time.monotonic() + 5
        for name in cluster.names:
            process = cluster.processes[name]
            while process.poll() is None:
                assert time.monotonic() < deadline, f"member {name} did not exit within 5 s of SIGTERM"
                time.sleep(0.05)
            assert process.returncode == 0, (name, process.returncode)
    finally:
        for process in cluster.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
