"""A long-running process stops on SIGTERM whichever of its threads the kernel hands the
signal to (``runink.core.signals.stop_event``): real Barn members, stopped with SIGSTOP
for a while, then resumed and terminated at once (an untimed wait in the main thread never
ran the handler: the members stayed up)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
        # (a member stops in ~0.2 s here; the bound is wide for a loaded CI machine, and a
        # stop slower than signals.SLOW_STOP_REPORT leaves its threads' stacks in the log)
        deadline = time.monotonic() + 10
        for name in cluster.names:
            process = cluster.processes[name]
            while process.poll() is None:
                if time.monotonic() > deadline:
                    log = (cluster.root / f"{name}.log").read_text(errors="replace")[-6000:]
                    raise AssertionError(f"member {name} did not exit within 10 s of SIGTERM; its log ends:\n{log}")
                time.sleep(0.05)
            assert process.returncode == 0, (name, process.returncode)
    finally:
        for process in cluster.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


def test_a_stop_that_hangs_leaves_every_threads_stack_in_the_log(tmp_path: Path) -> None:
    # a process whose close hangs after SIGTERM (here: a sleep in the function that closes)
    script = tmp_path / "hangs.py"
    script.write_text(
        "import time\n"
        "from runink.core import signals\n"
        "signals.SLOW_STOP_REPORT = 0.3\n"
        "def close_that_hangs():\n"
        "    time.sleep(30)\n"
        "stop = signals.stop_event()\n"
        "print('waiting', flush=True)\n"
        "stop.wait()\n"
        "close_that_hangs()\n"
    )
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "waiting\n"
        process.terminate()
        time.sleep(2)
        assert process.poll() is None  # the report does not end the stop
    finally:
        process.kill()
        _, stderr = process.communicate(timeout=10)
    assert "in close_that_hangs" in stderr, stderr  # faulthandler's line for the hanging frame


def test_the_stop_still_comes_when_other_code_takes_the_wakeup_fd(tmp_path: Path) -> None:
    script = tmp_path / "taken.py"
    script.write_text(
        "import signal\n"
        "from runink.core import signals\n"
        "stop = signals.stop_event()\n"
        "signal.set_wakeup_fd(-1)  # (as other code taking it over would)\n"
        "print('waiting', flush=True)\n"
        "while not stop.wait(0.1):  # (a loop of rounds, as the agent's)\n"
        "    pass\n"
        "print(stop.came.name, flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "waiting\n"
        process.terminate()
        assert process.wait(10) == 0
        assert process.stdout.read() == "SIGTERM\n"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
