"""A slice's logs stay within their cap however fast it writes (docs/isolation.md, Logs)."""

from __future__ import annotations

import os
import stat
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import close_linux

from runink.core.interfaces.executor import TaskSpec, TaskState
from runink.plugins.executors.linux.executor import LinuxExecutor
from runink.plugins.executors.linux.logs import CappedLog

PROBLEMS = LinuxExecutor._detect_problems()
CAP = 1024 * 1024

FLOOD = """
import sys
import time
out = sys.stdout.buffer
block = b"".join(b"%08d %s\\n" % (i, b"x" * 90) for i in range(10_000))  # ~1 MiB of whole lines
for _ in range(200):  # ~200 MiB, as fast as the slice can
    out.write(block)
out.write(b"the newest line\\n")
out.flush()
"""


@pytest.mark.skipif(bool(PROBLEMS), reason=f"cannot isolate here: {PROBLEMS}")
def test_a_flood_of_output_leaves_at_most_twice_the_cap(tmp_path: Path) -> None:
    executor = LinuxExecutor(cgroup_parent=f"runink-test-{uuid.uuid4().hex[:8]}", log_max_bytes=CAP)
    try:
        work = tmp_path / "work"
        work.mkdir()
        os.chmod(work, 0o777)
        spec = TaskSpec(f"l-{uuid.uuid4().hex[:8]}", (sys.executable, "-c", FLOOD), tmp_path / "task", env={}, cwd=work)
        executor.start(spec)
        result = executor.wait(spec.id, 60)
        assert result is not None and result.state is TaskState.SUCCEEDED, executor.read_log(spec.id, "stderr")
        task_dir = Path(spec.task_dir)
        logs = {p.name: p.stat() for p in task_dir.glob("stdout.log*")}
        assert sorted(logs) == ["stdout.log", "stdout.log.1"]
        assert sum(s.st_size for s in logs.values()) <= 2 * CAP, logs  # ~200 MiB written
        assert {stat.S_IMODE(s.st_mode) for s in logs.values()} == {0o640}  # the rotated one too
        newest = (task_dir / "stdout.log").read_bytes()
        assert newest.endswith(b"x" * 90 + b"\nthe newest line\n")  # the newest lines are kept, whole
        rotated = (task_dir / "stdout.log.1").read_bytes()
        assert rotated.endswith(b"\n") and len(rotated) > CAP // 2  # rotated at a line's end, nearly full
        executor.destroy(spec.id)
    finally:
        close_linux(executor)


def test_capped_log_rotates_at_line_ends_and_splits_only_overlong_lines(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "out.log", 10)
    log.write(b"aaaa\nbbbb\ncc")  # 12 bytes: the first two lines fit, "cc" starts the next file
    log.write(b"c\n" + b"z" * 25 + b"\n")  # a line longer than the cap is split
    log.close()
    assert (tmp_path / "out.log.1").read_bytes() == b"z" * 10
    assert (tmp_path / "out.log").read_bytes() == b"z" * 5 + b"\n"
    assert stat.S_IMODE((tmp_path / "out.log.1").stat().st_mode) == 0o640


HOLDS = """
import contextlib, ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
def names(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # (listdir's own, closed by now)
        return ""
(status,) = [int(fd) for fd in os.listdir("/proc/self/fd") if names(fd).endswith("exit_status")]
with contextlib.suppress(OSError):  # (a pipe, unless the slice outlives the executor)
    os.ftruncate(1, 1 << 40)  # a sparse 1 TiB stdout: the whole file was copied
for fd in (2, status):  # 256 MiB at once past the end of stderr, of its status file: refused
    assert libc.fallocate(fd, 1, 0, 256 << 20) == -1 and ctypes.get_errno() == errno.EOPNOTSUPP
block = b"x" * (1 << 20)
for _ in range(16):  # 16 MiB written to each: capped, emptied
    os.write(status, block)
    os.write(2, block)
time.sleep(2)
"""


@pytest.mark.skipif(bool(PROBLEMS), reason=f"cannot isolate here: {PROBLEMS}")
@pytest.mark.parametrize("outlive", [False, True])
def test_logs_and_a_status_file_a_slice_holds_open_cannot_take_the_disk(tmp_path: Path, outlive: bool) -> None:
    """Slices that outlive their executor hold their log files open, and a Python step's slice
    its status file (whatever its logs are): sparse, fallocated or written to, they took
    gigabytes of the node's disk, and the cap copied a sparse log whole (reviews: 917 MiB of
    zeros in seconds; 1 GiB held by a status file for the slice's whole run)."""
    executor = LinuxExecutor(
        cgroup_parent=f"runink-test-{uuid.uuid4().hex[:8]}", log_max_bytes=CAP, slices_outlive_executor=outlive
    )
    try:
        spec = TaskSpec(f"h-{uuid.uuid4().hex[:8]}", (sys.executable, "-c", HOLDS), tmp_path / "task", env={})
        executor.start(spec)
        task_dir = Path(spec.task_dir)
        held = 0  # the most the task dir's files took at a look, once a check had run
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            time.sleep(0.4)
            held = max(held, sum(p.stat().st_blocks * 512 for p in task_dir.iterdir() if p.is_file()))
        result = executor.wait(spec.id, 30)
        assert result is not None and result.state is TaskState.SUCCEEDED, executor.read_log(spec.id, "stderr")
        took = {p.name: (p.stat().st_size, p.stat().st_blocks * 512) for p in task_dir.iterdir() if p.is_file()}
        assert all(blocks <= 2 * CAP for _, blocks in took.values()), took
        assert took["exit_status"][0] == 1, took  # ("0", written at its end)
        if outlive:
            assert took["stdout.log.1"][0] <= CAP and took["stdout.log"][0] == 0, took  # (its newest bytes only)
        assert held < 16 << 20, held
        executor.destroy(spec.id)
    finally:
        close_linux(executor)
