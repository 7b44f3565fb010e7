"""An agent that restarts re-attaches to the slices it left running (the linux executor with
slices_outlive_executor), and an agent found dead is fenced: its task runs again elsewhere as
attempt 2 and the old attempt's late reports change nothing.

In process: a real Agent and linux executor against the Lifecycle on the memory Barn (the test
places tasks itself, as tests/test_agent.py does). As processes: `runink server` and two
`runink agent`s on loopback, one killed with SIGKILL mid-task and started again."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import agent_helpers
import pytest
from agent_helpers import ProxyControl, schedule, task_of
from barn_cluster import free_ports
from fixture_types import CliRunner
from runink_processes import cluster_auth, node_auth, ready, start_runink

from runink.core.agent import Agent
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, Herd, RunState
from runink.core.control.store import ClusterStore
from runink.plugins.barn.memory import MemoryBarn
from runink.plugins.executors.linux.executor import LinuxExecutor

PROBLEMS = LinuxExecutor._detect_problems()
pytestmark = pytest.mark.skipif(bool(PROBLEMS), reason=f"cannot isolate here: {PROBLEMS}")


# --- in process ------------------------------------------------------------------------------


sync_until = functools.partial(agent_helpers.sync_until, timeout=15.0, poll=0.05)  # this file's slices take longer


@pytest.fixture
def store() -> ClusterStore:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    return store


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    """A cgroup parent of this test's own, removed after (tox runs envs in parallel)."""
    name = f"runink-test-{uuid.uuid4().hex[:8]}"
    yield name
    executor = LinuxExecutor(cgroup_parent=name)
    if executor.cgroups is not None:
        for parent in set(executor.cgroups.parents().values()):
            with contextlib.suppress(OSError):
                parent.rmdir()


def new_agent(life: Lifecycle, executor: LinuxExecutor, work_dir: Path) -> Agent:
    return Agent(life, executor, "n1", Amount(cpu=2, memory=1 << 30), work_dir=work_dir, stop_grace=2.0)


def test_a_new_agent_re_attaches_to_the_slice_the_old_one_left_running(
    store: ClusterStore, cgroup_parent: str, tmp_path: Path
) -> None:
    life = Lifecycle(store)
    first_executor = LinuxExecutor(cgroup_parent=cgroup_parent, slices_outlive_executor=True)
    first = new_agent(life, first_executor, tmp_path)
    first.sync()
    job = life.submit_command("lab", ["/bin/sleep", "2"])
    schedule(store, job.id)
    first.sync()
    assert task_of(store, job.id).state is RunState.RUNNING
    (run,) = first.running.values()
    saved = tmp_path / "attempts" / f"{run.executor_id}.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert json.loads(saved.read_text())["attempt"] == 1
    # the agent goes away without stopping its slice
    first_executor.close()
    del first
    assert task_of(store, job.id).state is RunState.RUNNING

    second_executor = LinuxExecutor(cgroup_parent=cgroup_parent, slices_outlive_executor=True)
    try:
        second = new_agent(life, second_executor, tmp_path)
        second.sync()
        assert list(second.running) == [(job.herd, task_of(store, job.id).id, 1, task_of(store, job.id).token)]
        assert task_of(store, job.id).state is RunState.RUNNING  # told nothing new while it runs
        sync_until(second, lambda: task_of(store, job.id).state.final)
    finally:
        second_executor.close()
    task = task_of(store, job.id)
    assert (task.state, task.exit_code, task.attempt) == (RunState.SUCCEEDED, 0, 1)
    assert [t.state for t in task.transitions] == [RunState.SCHEDULED, RunState.RUNNING, RunState.SUCCEEDED]
    assert store.job(job.id).record.state is RunState.SUCCEEDED
    assert not second.running and second.refused_reports == 0
    assert not saved.exists()  # reported final: nothing left to re-attach to


def test_an_attempt_the_executor_cannot_re_attach_to_is_reported_failed(
    store: ClusterStore, cgroup_parent: str, tmp_path: Path
) -> None:
    life = Lifecycle(store)
    first_executor = LinuxExecutor(cgroup_parent=cgroup_parent)  # its slices end with it
    first = new_agent(life, first_executor, tmp_path)
    first.sync()
    job = life.submit_command("lab", ["/bin/sleep", "30"])
    schedule(store, job.id)
    first.sync()
    assert task_of(store, job.id).state is RunState.RUNNING
    first_executor.close()
    del first

    second_executor = LinuxExecutor(cgroup_parent=cgroup_parent)
    try:
        second = new_agent(life, second_executor, tmp_path)
        second.sync()
    finally:
        second_executor.close()
    task = task_of(store, job.id)
    assert task.state is RunState.FAILED and "cannot re-attach" in task.message
    assert not second.running and not list((tmp_path / "attempts").glob("*.json"))


def test_a_running_attempt_the_restarted_agent_has_no_handle_for_is_reported_failed(
    store: ClusterStore, cgroup_parent: str, tmp_path: Path
) -> None:
    life = Lifecycle(store)
    first_executor = LinuxExecutor(cgroup_parent=cgroup_parent)
    first = new_agent(life, first_executor, tmp_path)
    first.sync()
    job = life.submit_command("lab", ["/bin/sleep", "30"])
    schedule(store, job.id)
    first.sync()
    first_executor.close()  # (its slice ends with it)
    del first
    for saved in (tmp_path / "attempts").glob("*.json"):  # as if it died before saving it
        saved.unlink()

    second_executor = LinuxExecutor(cgroup_parent=cgroup_parent)
    try:
        second = new_agent(life, second_executor, tmp_path)
        second.sync()
        second.sync()  # reported once, not again
    finally:
        second_executor.close()
    task = task_of(store, job.id)
    assert task.state is RunState.FAILED and "no handle" in task.message
    assert [t.state for t in task.transitions] == [RunState.SCHEDULED, RunState.RUNNING, RunState.FAILED]
    assert not second.running and second.refused_reports == 0


class AwayForFinalReports(ProxyControl):
    """The Lifecycle, unreachable for final reports (the server went away as the task ended)."""

    def unreachable(self, state: RunState) -> bool:
        return state.final


def test_a_result_not_yet_reported_when_the_agent_restarts_is_reported_after(
    store: ClusterStore, cgroup_parent: str, tmp_path: Path
) -> None:
    """Its slices end with it (no re-attaching), yet the attempt had ended: reported as it
    ended, not as lost (FAILED, and with retries run again)."""
    life = Lifecycle(store)
    first_executor = LinuxExecutor(cgroup_parent=cgroup_parent)
    first = Agent(AwayForFinalReports(life), first_executor, "n1", Amount(cpu=2, memory=1 << 30), work_dir=tmp_path)
    first.sync()
    job = life.submit_command("lab", ["/bin/sh", "-c", "exit 0"], retries=2)
    schedule(store, job.id)
    running = first.running
    sync_until(first, lambda: not running)  # it ended; its SUCCEEDED report is not sent
    assert task_of(store, job.id).state is RunState.RUNNING
    (saved,) = (tmp_path / "attempts").glob("*.json")
    assert saved.stat().st_mode & 0o777 == 0o600
    kept = json.loads(saved.read_text())
    first_executor.close()
    del first

    second_executor = LinuxExecutor(cgroup_parent=cgroup_parent)
    try:
        second = new_agent(life, second_executor, tmp_path)
        sync_until(second, lambda: task_of(store, job.id).state is not RunState.RUNNING)
    finally:
        second_executor.close()
    task = task_of(store, job.id)
    assert (task.state, task.exit_code, task.attempt) == (RunState.SUCCEEDED, 0, 1)  # not run again
    assert [t.state for t in task.transitions] == [RunState.SCHEDULED, RunState.RUNNING, RunState.SUCCEEDED]
    assert not second.running and second.refused_reports == 0 and not saved.exists()
    assert kept.get("result") == {"state": "SUCCEEDED", "exit_code": 0, "message": ""}


# --- processes -------------------------------------------------------------------------------


def _slices(marker: str) -> list[int]:
    # the sleep itself, not the shell around it (whose command line holds the marker too)
    found = subprocess.run(["pgrep", "-f", f"^{marker}"], check=False, capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def _until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow  # (chaos: `tox -e slow`)
def test_an_agent_killed_mid_task_is_replaced_and_its_restart_is_fenced(run_cli: CliRunner, tmp_path: Path) -> None:
    api, grpc = free_ports(2)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "RUNINK_SERVER": f"127.0.0.1:{api}"}
    server_log = tmp_path / "server.log"
    server_args = ["server", "--api", f"127.0.0.1:{api}", "--agents", f"127.0.0.1:{grpc}", "--liveness-timeout", "2"]
    server_args += cluster_auth(tmp_path, env)
    processes: dict[str, subprocess.Popen[str]] = {"server": start_runink(server_args, server_log, env)}

    def agent(name: str) -> subprocess.Popen[str]:
        work, log = tmp_path / name, tmp_path / f"{name}.log"
        args = ["agent", "--servers", f"127.0.0.1:{grpc}", "--node-id", name, "--work-dir", str(work)]
        args += node_auth(tmp_path, name)
        process = processes[name] = start_runink(args, log, env)
        ready(process, log)
        return process

    def status(job_id: str) -> dict[str, Any]:
        out = run_cli("status", job_id, "--json", env=env)
        assert out.returncode == 0, out.stderr
        answer: dict[str, Any] = json.loads(out.stdout)
        return answer

    def task(job_id: str) -> dict[str, Any]:
        tasks: list[dict[str, Any]] = status(job_id)["tasks"]
        assert len(tasks) == 1
        return tasks[0]

    # a command line no other process has (not even this test run at the same time elsewhere)
    marker = f"/bin/sleep 30.{uuid.uuid4().int % 10**6:06d}"
    try:
        ready(processes["server"], server_log)
        agent("a1")
        agent("a2")
        assert run_cli("herd", "create", "default", env=env).returncode == 0
        # the shell ends with 0 once its sleep is stopped: attempt 2 ends when the test has seen
        # enough, not after 30 s
        submitted = run_cli("exec", "--detach", "--", "/bin/sh", "-c", f"{marker}; exit 0", env=env)
        job_id = submitted.stdout.strip()
        assert submitted.returncode == 0 and job_id.startswith("job-"), submitted.stderr
        _until("attempt 1 never ran", lambda: task(job_id)["state"] == "RUNNING", 20)
        first = task(job_id)
        assert first["attempt"] == 1
        dead, other = str(first["node"]), ({"a1", "a2"} - {str(first["node"])}).pop()
        assert len(_slices(marker)) == 1
        handles = list((tmp_path / dead / "attempts").glob("*-a1.json"))
        assert len(handles) == 1

        os.kill(processes[dead].pid, signal.SIGKILL)
        processes[dead].wait(10)
        # past --liveness-timeout the node is dead and the task runs again on the other one
        _until(
            "attempt 2 never ran on the other node",
            lambda: (t := task(job_id))["attempt"] == 2 and t["node"] == other and t["state"] == "RUNNING",
            30,
        )
        assert len(_slices(marker)) == 2  # the dead agent's slice outlived it
        second = task(job_id)

        # The dead agent comes back over the same work dir: it re-attaches to attempt 1, finds it
        # no longer assigned, stops it, and its report for attempt 1 is refused (fenced).
        agent(dead)
        _until("the old attempt's slice still runs", lambda: len(_slices(marker)) == 1, 20)
        _until("the old attempt's handle is still kept", lambda: not handles[0].exists(), 10)
        fenced = f"attempt 1 (token {first['token']}): CANCELLED refused: fenced"
        _until("the server never refused the old attempt's report", lambda: fenced in server_log.read_text(), 10)
        after = task(job_id)
        assert (after["attempt"], after["token"], after["node"], after["state"]) == (
            2,
            second["token"],
            other,
            "RUNNING",
        )
        assert after["transitions"] == second["transitions"]

        (attempt_2,) = _slices(marker)
        os.kill(attempt_2, signal.SIGTERM)
        _until("the job never ended", lambda: status(job_id)["job"]["state"] != "RUNNING", 45)
        ended = task(job_id)
        assert (ended["state"], ended["attempt"], ended["exit_code"]) == ("SUCCEEDED", 2, 0)
        states = [t["state"] for t in ended["transitions"]]
        assert [s for s in states if s in FINAL] == ["SUCCEEDED"]  # exactly one final state
        assert states == ["SCHEDULED", "RUNNING", "PENDING", "SCHEDULED", "RUNNING", "SUCCEEDED"]
        assert status(job_id)["job"]["state"] == "SUCCEEDED"
    finally:
        for process in reversed(processes.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
        for pid in _slices(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


FINAL = {"SUCCEEDED", "FAILED", "OOMKILLED", "DEADLINE_EXCEEDED", "CANCELLED"}
