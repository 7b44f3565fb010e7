"""[limits] disk: a slice's work dir and outputs' staging bounded together (core/agent/disk_limits.py).
Before it, one step could fill the node's disk for every other slice and herd."""

from __future__ import annotations

import json
import os
import re
import textwrap
import time
from pathlib import Path

import pytest
from conftest import CliRunner

from runink.core.agent import disk_limits
from runink.core.agent.disk_limits import DiskLimitedExecutor, OverLimit, disk_used
from runink.core.interfaces.executor import TaskSpec, TaskState
from runink.plugins.executors.process import ProcessExecutor

MiB = 1 << 20


def test_disk_used_sums_allocated_blocks_and_follows_no_link(tmp_path: Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    (work / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (work / "a" / "b" / "data").write_bytes(os.urandom(2 * MiB))
    with open(work / "sparse", "wb") as sparse:  # 1 GiB long, nothing in it: no disk taken
        sparse.truncate(1 << 30)
    (outside / "big").write_bytes(os.urandom(4 * MiB))
    (work / "link").symlink_to(outside)  # (what a link leads to is not the slice's)
    used = disk_used([work])
    assert 2 * MiB <= used < 2 * MiB + 256 * 1024, used
    assert disk_used([work, outside]) >= 6 * MiB  # (each root counted)
    # a root is opened a component at a time, no link followed: one moved and swapped for a
    # link (to an empty folder, or to a large one) is noticed, not summed
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "work").mkdir()
    (tmp_path / "parent").symlink_to(tmp_path / "moved")
    with pytest.raises(OSError, match=r"symbolic links|Not a directory"):
        disk_used([tmp_path / "parent" / "work"])
    with pytest.raises(FileNotFoundError):
        disk_used([tmp_path / "not-made"])


def test_a_file_held_open_after_it_was_unlinked_is_counted(tmp_path: Path) -> None:
    """The walk saw names only: a slice that unlinked its 64 MiB file and kept it open filled
    the disk past its limit and ended SUCCEEDED (a review's run)."""
    work = tmp_path / "work"
    work.mkdir()
    with open(work / "hidden.bin", "wb") as hidden:
        hidden.write(os.urandom(3 * MiB))
        hidden.flush()
        os.unlink(work / "hidden.bin")
        assert disk_used([work]) < MiB  # (no name left)
        assert disk_used([work], [os.getpid()]) >= 3 * MiB
        with open("/dev/shm/runink-test-unlinked", "wb") as elsewhere:  # (another file system: not the disk's)
            os.unlink("/dev/shm/runink-test-unlinked")
            elsewhere.write(os.urandom(MiB))
            elsewhere.flush()
            assert disk_used([work], [os.getpid()]) < 4 * MiB


def test_too_many_files_or_levels_are_over_the_limit_whatever_their_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk stays bounded: a slice cannot make the check itself the attack."""
    monkeypatch.setattr(disk_limits, "MAX_ENTRIES", 50)
    monkeypatch.setattr(disk_limits, "MAX_DEPTH", 5)
    many, deep = tmp_path / "many", tmp_path / "deep"
    many.mkdir()
    for n in range(51):
        (many / str(n)).touch()
    with pytest.raises(OverLimit, match="more than 50 files and folders"):
        disk_used([many])
    (deep / "1" / "2" / "3" / "4" / "5" / "6").mkdir(parents=True)
    with pytest.raises(OverLimit, match="more than 5 levels deep"):
        disk_used([deep])
    descriptors = len(os.listdir("/proc/self/fd"))
    (deep / "1" / "2" / "3" / "4" / "5" / "6").rmdir()
    assert disk_used([deep]) == disk_used([deep])  # (within bounds now) and no descriptor left open
    assert len(os.listdir("/proc/self/fd")) == descriptors


def _spec(tmp_path: Path, name: str, script: str, writable: Path) -> TaskSpec:
    task_dir = tmp_path / name
    (task_dir / "work").mkdir(parents=True)
    return TaskSpec(
        id=name,
        command=("/bin/sh", "-c", script),
        task_dir=task_dir,
        cwd=task_dir / "work",
        writable=(writable,),
    )


def test_a_slice_that_fills_its_folders_past_the_limit_is_stopped_and_failed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    executor = DiskLimitedExecutor(ProcessExecutor(degrade=True), 2 * MiB, grace=1.0, every=0.2)
    try:
        # half in its work dir, half in an output folder: together past the limit
        executor.start(
            _spec(
                tmp_path,
                "filler",
                f"head -c 1500000 /dev/urandom > a; head -c 1500000 /dev/urandom > {out}/b; sleep 30",
                out,
            )
        )
        executor.start(_spec(tmp_path, "small", "head -c 100000 /dev/urandom > a; sleep 1", tmp_path / "small"))
        began = time.monotonic()
        filled = executor.wait("filler", 20)
        small = executor.wait("small", 20)
    finally:
        executor.close()
    assert filled is not None and small is not None
    assert time.monotonic() - began < 10
    assert filled.state is TaskState.FAILED, filled
    assert re.search(r"took [23]\.\d MiB of disk, more than its limit of 2\.0 MiB: stopped", filled.message), filled
    assert small.state is TaskState.SUCCEEDED, small  # (within the limit: untouched)


@pytest.mark.parametrize("unlinked", [False, True])
def test_runink_run_fails_a_scenario_past_its_disk_limit(run_cli: CliRunner, tmp_path: Path, unlinked: bool) -> None:
    """``unlinked``: the file is unlinked at once and kept open (no name for a walk to see)."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "in.csv").write_text("id\n1\n")
    (root / "fill.py").write_text(
        textwrap.dedent(
            f"""\
            import os, time

            def fill(batch):
                with open("big.bin", "wb") as out:  # in its work dir
                    if {unlinked}:
                        os.unlink("big.bin")
                    for _ in range(8):
                        out.write(os.urandom(1 << 20))
                    out.flush()
                    time.sleep(30)
                return batch
            """
        )
    )
    (root / "p.dsl").write_text(
        'Feature: f\n  Scenario: fills\n    @source("in.csv")\n    @step("fill:fill")\n    @sink("out/o.csv")\n'
    )
    began = time.monotonic()
    out = run_cli("run", "p.dsl", "--json", cwd=root, env={"RUNINK_LIMITS__DISK": "4MiB"})
    assert out.returncode == 1, out.stderr
    (fills,) = json.loads(out.stdout)["scenarios"]
    assert fills["state"] == "FAILED" and "more than its limit of 4.0 MiB: stopped" in fills["error"], fills
    assert time.monotonic() - began < 25  # (not the step's 30 s)
    assert not (root / "out" / "o.csv").exists()
    bad = run_cli("run", "p.dsl", cwd=root, env={"RUNINK_LIMITS__DISK": "lots"})
    assert bad.returncode != 0 and "disk" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_a_driver_that_cannot_say_a_tasks_processes_does_not_end_the_watch(tmp_path: Path) -> None:
    """Its pids raised for a task that ended meanwhile: the watcher's thread ended with it, and
    no slice's disk was checked again."""

    class Forgetful(ProcessExecutor):
        def pids(self, task_id: str) -> list[int]:
            raise KeyError(task_id)

    out = tmp_path / "out"
    out.mkdir()
    executor = DiskLimitedExecutor(Forgetful(degrade=True), MiB, grace=1.0, every=0.2)
    try:
        executor.start(_spec(tmp_path, "filler", "head -c 3000000 /dev/urandom > a; sleep 30", out))
        filled = executor.wait("filler", 20)
    finally:
        executor.close()
    assert filled is not None and filled.state is TaskState.FAILED, filled
