"""A node whose work dir's disk is short of room takes no new task (core/agent/disk_room.py):
its agent says why it is unfit with every heartbeat, the scheduler places nothing there and
says why, and a task that could not start there for want of room is given back, placed
elsewhere. A node whose work dir was full stayed ready, and every task placed there failed (a
faults review's run). On real small file systems (tmpfs mounts: root only)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import ProxyControl, schedule, task_of
from fixture_types import CliRunner

from runink.core.agent import Agent
from runink.core.agent.agent import MAX_GIVE_BACKS
from runink.core.agent.delegating import DelegatingExecutor
from runink.core.agent.disk_room import HOLD_AFTER_FAILURE, MIN_FREE_INODES, DiskRoom, no_room
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, RunState
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.errors import RuninkError
from runink.core.interfaces import SchedulerPolicy
from runink.core.interfaces.executor import Executor, TaskHandle, TaskSpec
from runink.core.plugins import PluginManager
from runink.testing import plugin_manager

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with 1,200 inodes, unmounted after."""
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=1200", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def manager() -> Iterator[PluginManager]:
    with plugin_manager() as manager:
        yield manager


def _agent(life: Lifecycle, node: str, work: Path, room: DiskRoom | None) -> Agent:
    work.mkdir(exist_ok=True)  # (`runink agent` makes it)
    executor: Executor = load_driver(Executor, "process", {})
    agent = Agent(life, executor, node, Amount(cpu=4, memory=1 << 30), work_dir=work, disk_room=room)
    agent.sync()  # registers
    return agent


def _fill_inodes(folder: Path) -> int:
    """Empty files in ``folder`` until its file system has no inode left; how many."""
    made = 0
    while True:
        try:
            (folder / f"f{made}").touch()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            return made
        made += 1


def test_free_bytes_inodes_and_a_read_only_disk_each_make_a_node_unfit(small_disk: Path) -> None:
    room = DiskRoom(small_disk, 512 << 10)
    assert room.unfit() == ""
    (small_disk / "filler").write_bytes(b"x" * (700 << 10))
    assert room.unfit().startswith(f"work dir {small_disk}: ") and "less than the 512.0 KiB kept free" in room.unfit()
    (small_disk / "filler").unlink()
    assert room.unfit() == ""
    made = _fill_inodes(small_disk)  # its inodes, not its bytes
    assert f"fewer than {MIN_FREE_INODES} inodes free" in room.unfit()
    for number in range(made):
        (small_disk / f"f{number}").unlink()
    assert room.unfit() == ""
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert room.unfit() == f"work dir {small_disk}: its file system is read-only"
    assert DiskRoom(small_disk, 0).unfit() == ""  # (0: no such check, the local runner's node)


def test_a_start_failed_for_want_of_room_on_the_work_dirs_disk_makes_the_node_unfit_for_a_while(
    tmp_path: Path,
) -> None:
    now = [100.0]
    room = DiskRoom(tmp_path, 1, clock=lambda: now[0])
    here = str(tmp_path / "tasks" / "t-a1")  # (not made yet: the mkdir failed)
    assert not room.failed(PermissionError(errno.EACCES, "denied", here))  # the task's, not the disk's
    assert room.unfit() == ""
    wrapped = RuninkError("the slice could not be made")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded", here)
    assert no_room(wrapped) is wrapped.__cause__ and room.failed(wrapped)
    assert "a task could not start for want of room (Disk quota exceeded)" in room.unfit()
    now[0] += HOLD_AFTER_FAILURE + 0.1
    assert room.unfit() == ""
    # another file system's (a pipeline's output folder, read-only or full), or one naming no
    # file: the task's failure, the node stays fit (one user's output folder made every node
    # unfit in turn, a review)
    elsewhere = "/dev/shm" if os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev else "/proc/x"
    assert not room.failed(OSError(errno.EROFS, "Read-only file system", f"{elsewhere}/out/.staging"))
    assert not room.failed(OSError(errno.ENOSPC, "No space left on device"))
    assert room.unfit() == ""
    assert not DiskRoom(tmp_path, 0).failed(OSError(errno.ENOSPC, "full", here))  # (0: the task fails, as before)


class _NoRoomExecutor(DelegatingExecutor):
    """Every start fails as a disk with no room says (``errno``, naming ``where``): a quota the
    free count does not show, which no small file system here can make."""

    def __init__(self, inner: Executor, errno_: int, where: Path) -> None:
        super().__init__(inner)
        self.errno_, self.where = errno_, where

    def start(self, spec: TaskSpec) -> TaskHandle:
        raise OSError(self.errno_, os.strerror(self.errno_), str(self.where))


def test_a_node_says_it_is_unfit_before_it_gives_a_task_back_and_fails_it_after_three(
    store: ClusterStore, life: Lifecycle, tmp_path: Path
) -> None:
    """The heartbeat saying so goes before the report (else the task is placed here again at
    once); a task given back MAX_GIVE_BACKS times (each placement takes one of its attempts)
    fails there, naming the disk, instead of going round for ever."""
    work = tmp_path / "node"
    work.mkdir()
    calls: list[str] = []

    class Recording(ProxyControl):
        def heartbeat(self, node_id: str, incarnation: str, usage: object = None, unfit: str = "") -> bool:
            calls.append(f"heartbeat unfit={bool(unfit)}")
            return super().heartbeat(node_id, incarnation, usage, unfit)

        def report(self, herd: str, task_id: str, attempt: int, token: int, state: RunState, **more: Any) -> bool:
            calls.append(f"report {state}")
            return super().report(herd, task_id, attempt, token, state, **more)

    inner: Executor = load_driver(Executor, "process", {})
    executor = _NoRoomExecutor(inner, errno.EDQUOT, work / "tasks")
    room = DiskRoom(work, 1)
    agent = Agent(Recording(life), executor, "n1", Amount(cpu=4, memory=1 << 30), work_dir=work, disk_room=room)
    try:
        agent.sync()
        job = life.submit_command("lab", ["/bin/true"], retries=5)
        for number in range(1, MAX_GIVE_BACKS + 2):
            schedule(store, job.id)
            calls.clear()
            agent.sync()
            task = task_of(store, job.id)
            if number <= MAX_GIVE_BACKS:
                assert task.state is RunState.PENDING and task.message.endswith(": given back"), task
                assert calls.index("heartbeat unfit=True") < calls.index("report PENDING"), calls
                assert "Disk quota exceeded" in store.node("n1").record.unfit
        assert task.state is RunState.PENDING and "retry" in task.transitions[-1].reason  # (failed: retried)
        assert task.attempt == MAX_GIVE_BACKS + 1 and "Disk quota exceeded" in task.message
    finally:
        inner.close()


def test_nothing_is_placed_on_an_unfit_node_and_explain_says_why(
    store: ClusterStore, life: Lifecycle, manager: PluginManager, small_disk: Path, tmp_path: Path
) -> None:
    full = _agent(life, "full", small_disk, DiskRoom(small_disk, 512 << 10))
    roomy = _agent(life, "roomy", tmp_path / "roomy", DiskRoom(tmp_path / "roomy", 1))
    try:
        scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"))
        (small_disk / "filler").write_bytes(b"x" * (700 << 10))
        full.sync()  # (its heartbeat says so)
        assert "less than the 512.0 KiB kept free" in store.node("full").record.unfit
        assert not store.node("full").record.schedulable
        placed = []
        for _ in range(4):  # (spread would take the idle node half the time)
            job = life.submit_command("lab", ["/bin/true"])
            scheduler.run_pass(now=time.time())
            task = task_of(store, job.id)
            assert task.node == "roomy", task.explain
            placed.append(task)
        assert any(line.startswith("full: unfit: work dir ") for line in placed[-1].explain), placed[-1].explain
        (small_disk / "filler").unlink()
        full.sync()
        assert store.node("full").record.unfit == "" and store.node("full").record.schedulable
    finally:
        for agent in (full, roomy):
            agent.executor.close()


def test_a_task_that_could_not_start_for_want_of_room_is_given_back_and_placed_elsewhere(
    store: ClusterStore, life: Lifecycle, manager: PluginManager, small_disk: Path, tmp_path: Path
) -> None:
    """Placed there before its heartbeat said so: its start fails (ENOSPC: no inode for the
    task's dir), it goes back PENDING, not FAILED, and the next pass places it elsewhere."""
    full = _agent(life, "full", small_disk, DiskRoom(small_disk, 1))
    roomy = _agent(life, "roomy", tmp_path / "roomy", DiskRoom(tmp_path / "roomy", 1))
    try:
        job = life.submit_command("lab", ["/bin/true"])
        schedule(store, job.id, node="full")
        _fill_inodes(small_disk)  # (after its last heartbeat: the scheduler did not know)
        full.sync()
        task = task_of(store, job.id)
        assert task.state is RunState.PENDING and task.node is None, task
        assert "could not start it" in task.message and "No space left on device" in task.message, task.message
        assert task.message.endswith(": given back")
        assert store.node("full").record.unfit  # (it said so before the report)
        Scheduler(store, manager, load_driver(SchedulerPolicy, "binpack")).run_pass(now=time.time())
        assert task_of(store, job.id).node == "roomy"
        deadline = time.monotonic() + 10
        while task_of(store, job.id).state is not RunState.SUCCEEDED:
            assert time.monotonic() < deadline, task_of(store, job.id)
            roomy.sync()
            time.sleep(0.02)
        assert task_of(store, job.id).attempt == 2
    finally:
        for agent in (full, roomy):
            agent.executor.close()


def test_an_agent_short_of_room_says_so_through_the_servers(tmp_path: Path, run_cli: CliRunner) -> None:
    """Through the gRPC stream and the REST API: `runink nodes list` shows the node unfit and
    why, and a job waits PENDING saying so."""
    from runink_processes import server_and_agent

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    with server_and_agent(tmp_path, env, agent_args=("--min-free-disk", "1000Ti")):
        deadline = time.monotonic() + 20
        while not (nodes := json.loads(run_cli("nodes", "list", "--json", env=env).stdout))[0].get("unfit"):
            assert time.monotonic() < deadline, nodes
            time.sleep(0.2)
        assert "less than the 1000.0 TiB kept free (--min-free-disk)" in nodes[0]["unfit"]
        listed = run_cli("nodes", "list", env=env)
        assert "ready unfit" in listed.stdout and "n1 is unfit: work dir " in listed.stdout
        assert run_cli("herd", "create", "default", env=env).returncode == 0
        job = run_cli("exec", "--detach", "--", "/bin/true", env=env).stdout.strip()
        while "n1: unfit: work dir" not in (explained := run_cli("status", job, "--explain", env=env).stdout):
            assert time.monotonic() < deadline + 20, explained
            time.sleep(0.2)
        assert json.loads(run_cli("status", job, "--json", env=env).stdout)["job"]["state"] == "PENDING"
        doctor = run_cli("doctor", "--cluster", "--json", env=env)  # (at once: no job tried on no node)
        assert doctor.returncode == 1, doctor.stderr
        checks = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert "0 of 1 ready; not taking work: n1 unfit (work dir " in checks["nodes"]["detail"]
        assert checks["a job runs"]["detail"] == "not tried: no node takes work"


def test_a_work_dirs_odd_name_never_gets_a_nodes_heartbeat_refused(store: ClusterStore, life: Lifecycle) -> None:
    """A no-break or zero-width space, a BOM or a name that is not UTF-8 in the work dir's
    path made the servers refuse the node's unfit reason, and the agent's registration with it
    (a review): the reason is one printable line of at most MAX_UNFIT bytes on both sides."""
    from runink.core.control.records import MAX_UNFIT, NodeRecord
    from runink.core.report import one_line

    for name in ("a\u00a0b", "a\u200bb", "\ufeffa", "a\u200eb", os.fsdecode(b"a\xffb"), "a\nb\x1b[2J", "é" * 400):
        line = one_line(f"work dir /w/{name}: less than the 512.0 MiB kept free", MAX_UNFIT)
        assert line.isprintable() and len(line.encode()) <= MAX_UNFIT, line
        node = life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=1, memory=1 << 30), unfit=line))
        assert life.heartbeat("n1", node.incarnation, unfit=f"work dir /w/{name}")  # (the lifecycle makes it one too)
        assert store.node("n1").record.unfit.isprintable()
