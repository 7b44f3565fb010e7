"""The process executor passes the Executor conformance suite, and recovers only its own."""

import os
import signal
import subprocess
import time
from pathlib import Path

from runink.core.drivers import load_driver
from runink.core.interfaces import Executor
from runink.core.interfaces.executor import TaskHandle
from runink.testing import ExecutorConformance


class TestProcessExecutor(ExecutorConformance):
    driver_name = "process"


def test_a_recovered_handle_without_a_start_time_never_signals_its_pid(tmp_path: Path) -> None:
    # A forged attempt handle named another user's process: the agent took any live pid as the
    # task, and killed its process group when it ended or was stopped.
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        state = {"pid": bystander.pid, "status_file": str(tmp_path / "nowhere" / "exit_status")}
        task_dir = str(tmp_path / "t")
        handle = TaskHandle(task_id="t-x", driver="process", task_dir=task_dir, started_at=0, driver_state=state)
        executor = load_driver(Executor, "process")
        executor.recover(handle)
        executor.stop("t-x", grace=1)
        assert executor.wait("t-x", 5) is not None
        time.sleep(0.2)
        assert bystander.poll() is None, "the bystander was killed"
    finally:
        os.killpg(bystander.pid, signal.SIGKILL)
        bystander.wait(5)
