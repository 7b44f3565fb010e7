"""Slice cgroups: real cgroup v1 on this machine (as root), cgroup v2 against a fake tree.

The v2 hierarchy here has no controllers enabled, so v2 is checked for the files it writes;
the v1 tests run for real and skip, with the reason, where not root or a controller is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from runink.plugins.executors.linux.cgroups import (
    CgroupError,
    CgroupLimits,
    CgroupManager,
    SliceCgroup,
    detect,
)

LAYOUT = detect()
needs_v1 = pytest.mark.skipif(
    os.geteuid() != 0 or LAYOUT.version != 1 or not {"cpu", "cpuacct", "memory", "pids"} <= set(LAYOUT.own),
    reason="needs root and cgroup v1 cpu, cpuacct, memory and pids controllers",
)


@pytest.fixture
def manager() -> CgroupManager:
    return CgroupManager(LAYOUT, parent_name=f"runink-test-{uuid.uuid4().hex[:6]}")


def run_in(cgroup: SliceCgroup, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with sh after the shell moved itself into the cgroup (before the payload starts)."""
    join = " && ".join(f"echo $$ > {procs}" for procs in cgroup.procs_files)  # a failed join fails the test
    return subprocess.run(
        ["sh", "-c", f"{join} || exit 99; {script}"], capture_output=True, text=True, timeout=timeout, check=False
    )


def cleanup(manager: CgroupManager) -> None:
    for parent in set(manager.parents().values()):
        for child in parent.iterdir() if parent.exists() else []:
            if child.is_dir():
                child.rmdir()
        if parent.exists():
            parent.rmdir()


@needs_v1
def test_memory_limit_ooms_and_is_detected(manager: CgroupManager) -> None:
    cgroup = manager.create("oom", CgroupLimits(memory=64 * 1024**2))
    try:
        done = run_in(cgroup, f"exec {sys.executable} -c 'x = bytearray(512 * 2**20); print(len(x))'")
        assert done.returncode in (-9, 137), (done.returncode, done.stderr)
        usage = cgroup.usage()
        assert usage.oom_kills >= 1
        assert usage.memory_peak <= 64 * 1024**2 + 4096
    finally:
        cgroup.remove()
        cleanup(manager)


@needs_v1
def test_a_warm_cgroup_takes_the_slices_limits(manager: CgroupManager) -> None:
    """Sandboxes wait in cgroups made with the last request's limits; a slice writes only what differs."""
    warm_limits = CgroupLimits(cpu=1.0, memory=256 * 1024**2, pids=8)
    cgroup = manager.create("sandbox-1", warm_limits)
    try:
        cgroup.update(CgroupLimits(memory=64 * 1024**2, pids=8), warm_limits)
        memory = cgroup.dirs["memory"]
        assert int((memory / "memory.limit_in_bytes").read_text()) == 64 * 1024**2
        assert (cgroup.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "-1"  # removed: unlimited again
        assert (cgroup.dirs["pids"] / "pids.max").read_text().strip() == "8"
        done = run_in(cgroup, f"exec {sys.executable} -c 'x = bytearray(512 * 2**20)'")
        assert done.returncode in (-9, 137) and cgroup.usage().oom_kills >= 1  # the lowered limit holds
        cgroup.update(CgroupLimits(memory=128 * 1024**2), CgroupLimits(memory=64 * 1024**2, pids=8))
        assert int((memory / "memory.limit_in_bytes").read_text()) == 128 * 1024**2  # raised (memsw first)
        assert (cgroup.dirs["pids"] / "pids.max").read_text().strip() == "max"
        cgroup.remove()
        assert manager.leftovers() == []
    finally:
        cleanup(manager)


@needs_v1
def test_pids_limit_stops_a_fork_bomb(manager: CgroupManager) -> None:
    cgroup = manager.create("bomb", CgroupLimits(pids=16))
    try:
        done = run_in(cgroup, "for i in $(seq 60); do sleep 3 & done; wait", timeout=60)
        assert "fork" in done.stderr.lower() or "resource temporarily unavailable" in done.stderr.lower()
        assert cgroup.usage().pids_current <= 16
    finally:
        cgroup.remove()
        cleanup(manager)
    assert not manager.leftovers()


@needs_v1
def test_half_a_core(manager: CgroupManager) -> None:
    cgroup = manager.create("cpu", CgroupLimits(cpu=0.5))
    try:
        started = time.monotonic()
        run_in(cgroup, f"exec {sys.executable} -c 'import time; t = time.time()\nwhile time.time() - t < 2: pass'")
        wall = time.monotonic() - started
        used = cgroup.usage().cpu_seconds
        assert 0.35 * wall <= used <= 0.65 * wall, (used, wall)
    finally:
        cgroup.remove()
        cleanup(manager)


@needs_v1
def test_kill_and_remove_leave_nothing(manager: CgroupManager) -> None:
    cgroup = manager.create("leftover")
    child = subprocess.Popen(
        [
            "sh",
            "-c",
            " && ".join(f"echo $$ > {p}" for p in cgroup.procs_files) + " || exit 99; sleep 60 & sleep 60 & wait",
        ]
    )
    try:
        deadline = time.monotonic() + 5
        while len(cgroup.pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(cgroup.pids()) == 3
        cgroup.remove()
        assert child.wait(5) == -9
        assert not manager.leftovers()
        assert all(not d.exists() for d in cgroup.dirs.values())
    finally:
        child.kill()
        cleanup(manager)


@needs_v1
def test_duplicate_and_bad_ids(manager: CgroupManager) -> None:
    cgroup = manager.create("dup")
    try:
        with pytest.raises(CgroupError, match="exists already"):
            manager.create("dup")
        with pytest.raises(CgroupError, match="invalid slice id"):
            manager.create("../escape")
    finally:
        cgroup.remove()
        cleanup(manager)


def fake_v2(tmp_path: Path) -> tuple[Path, Path]:
    fs, proc = tmp_path / "fs", tmp_path / "proc"
    own = fs / "sys/fs/cgroup/system.slice/runink.service"
    own.mkdir(parents=True)
    (fs / "sys/fs/cgroup/cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(
        "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n26 1 0:5 / /proc rw - proc proc rw\n"
    )
    (proc / "self" / "cgroup").write_text("0::/system.slice/runink.service\n")
    return fs, proc


def test_v2_detection_and_files(tmp_path: Path) -> None:
    fs, proc = fake_v2(tmp_path)
    layout = detect(proc, fs_root=fs)
    own = fs / "sys/fs/cgroup/system.slice/runink.service"
    assert (
        layout.version == 2 and layout.own["memory"] == own and layout.available == ("cpu", "memory", "pids", "cpuset")
    )
    manager = CgroupManager(layout)
    cgroup = manager.create("s-1", CgroupLimits(cpu=0.5, memory=256 * 1024**2, pids=64, cpuset="0"))
    # the agent moved itself to a leaf, and the controllers were delegated down to the slices
    assert (own / "runink-agent" / "cgroup.procs").read_text() == str(os.getpid())
    assert (own / "cgroup.subtree_control").read_text() == "+cpu +memory +pids +cpuset"
    assert (own / "runink" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids +cpuset"
    slice_dir = own / "runink" / "s-1"
    assert (slice_dir / "cpu.max").read_text() == "50000 100000"
    assert (slice_dir / "memory.max").read_text() == str(256 * 1024**2)
    assert (slice_dir / "pids.max").read_text() == "64"
    assert (slice_dir / "cpuset.cpus").read_text() == "0"
    (slice_dir / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (slice_dir / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    (slice_dir / "memory.peak").write_text("1048576\n")
    usage = cgroup.usage()
    assert (usage.oom_kills, usage.cpu_seconds, usage.memory_peak) == (1, 1.5, 1048576)


def test_missing_controller_is_named(tmp_path: Path) -> None:
    fs, proc = fake_v2(tmp_path)
    (fs / "sys/fs/cgroup/cgroup.controllers").write_text("memory pids\n")
    manager = CgroupManager(detect(proc, fs_root=fs))
    with pytest.raises(CgroupError, match="cpu limit requested but the cpu controller is unavailable: not enabled"):
        manager.create("s-2", CgroupLimits(cpu=1))
    assert not (fs / "sys/fs/cgroup/system.slice/runink.service/runink/s-2").exists()


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"])


@pytest.mark.parametrize("listed_again", [True, False])
def test_a_signal_reaches_only_a_process_still_listed_once_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed_again: bool
) -> None:
    """The pid read from cgroup.procs is signalled only if cgroup.procs still lists it once the
    process is pinned by a pidfd: else the number may be another process's now (pids wrap)."""
    process = _sleeper()
    cgroup = SliceCgroup(LAYOUT, {"pids": tmp_path})
    reads = iter([[process.pid], [process.pid] if listed_again else []])
    monkeypatch.setattr(cgroup, "pids", lambda: next(reads))  # (first read, then the one after pinning)
    try:
        cgroup.send_signal(15)
        try:
            code = process.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        assert code == (-15 if listed_again else None)  # (not listed again: this pid is "another's")
    finally:
        process.kill()
        process.wait()


@needs_v1
def test_send_signal_reaches_every_process_of_a_real_cgroup(manager: CgroupManager) -> None:
    cgroup = manager.create(f"s-{uuid.uuid4().hex[:6]}")
    try:
        inside = [_sleeper() for _ in range(3)]
        for process in inside:
            cgroup.attach(process.pid)
        outside = _sleeper()
        cgroup.send_signal(15)
        assert [process.wait(5) for process in inside] == [-15, -15, -15]
        assert outside.poll() is None
        outside.kill()
        outside.wait()
    finally:
        cgroup.remove()
        cleanup(manager)


def test_a_signal_to_more_processes_than_a_batch_pins_them_a_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runink.plugins.executors.linux import cgroups

    monkeypatch.setattr(cgroups, "PIN_BATCH", 2)
    processes = [_sleeper() for _ in range(5)]
    cgroup = SliceCgroup(LAYOUT, {"pids": tmp_path})
    monkeypatch.setattr(cgroup, "pids", lambda: [p.pid for p in processes if p.poll() is None])
    try:
        cgroup.send_signal(15)
        assert [p.wait(5) for p in processes] == [-15] * 5
    finally:
        for process in processes:
            process.kill()
            process.wait()
