"""Granted paths (issue 17, items 6 and 10): staging folders nobody can redirect, and a slice that
reads and writes what it is granted whatever the modes, changing nothing on the host."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import close_linux

from runink.core.interfaces.executor import TaskSpec, TaskState
from runink.plugins.executors.linux.executor import LinuxExecutor

REPO = Path(__file__).resolve().parent.parent
PROBLEMS = LinuxExecutor._detect_problems()
pytestmark = pytest.mark.skipif(bool(PROBLEMS), reason=f"cannot isolate here: {PROBLEMS}")


@pytest.fixture
def linux() -> Iterator[LinuxExecutor]:
    executor = LinuxExecutor(cgroup_parent=f"runink-test-{uuid.uuid4().hex[:8]}", pool=1)
    yield executor
    close_linux(executor)  # (its cgroup parents too)


def _task(folder: Path, script: str, *, writable: tuple[Path, ...] = (), readable: tuple[Path, ...] = ()) -> TaskSpec:
    task_id = f"g-{uuid.uuid4().hex[:8]}"
    return TaskSpec(
        task_id,
        ("sh", "-c", script),
        folder / task_id,
        env={"PATH": "/usr/bin:/bin"},
        writable=writable,
        readable=readable,
    )


def test_a_writable_grant_swapped_for_a_link_is_refused(linux: LinuxExecutor, tmp_path: Path) -> None:
    """A user who can write the sink's folder replaces the staging folder with a link to a
    root-only folder: the launcher neither mounts nor changes the link's target."""
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (victim / "secret").write_text("root only\n")
    os.chmod(victim / "secret", 0o600)
    sinks = tmp_path / "shared"
    sinks.mkdir()
    os.chmod(sinks, 0o777)  # anyone may write it (group-writable in the issue)
    stage = sinks / ".runink-stage-x"
    os.symlink(victim, stage)
    spec = _task(tmp_path, f"echo pwned > {stage}/secret", writable=(stage,))
    with pytest.raises(Exception, match="symbolic link on the way"):
        linux.start(spec)
    assert (victim / "secret").read_text() == "root only\n"
    assert victim.stat().st_uid == 0 and stat.S_IMODE(victim.stat().st_mode) == 0o700


def test_a_writable_grant_owned_by_someone_else_is_refused(linux: LinuxExecutor, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 4242, 4242)
    with pytest.raises(Exception, match="not a folder the runner made"):
        linux.start(_task(tmp_path, "true", writable=(theirs,)))
    assert theirs.stat().st_uid == 4242  # nothing chowned


def test_the_launcher_refuses_a_link_that_appears_after_the_executor_resolved(tmp_path: Path) -> None:
    from runink.plugins.executors.linux.grants import GrantError, grant_tree

    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    os.symlink(real, link)
    with pytest.raises(GrantError, match="symbolic link on the way"):
        grant_tree(str(link / "x"), writable=False, idmaps=None)
    with pytest.raises(GrantError, match="symbolic link on the way"):
        grant_tree(str(link), writable=True, idmaps=None)
    os.close(grant_tree(str(real), writable=True, idmaps=None))


def test_a_private_tree_is_read_and_written_without_changing_hands(linux: LinuxExecutor, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "in.csv").write_text("a\n1\n")
    os.chmod(private / "in.csv", 0o600)
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    spec = _task(tmp_path, f"cat {private}/in.csv > {out}/copy && id -u", readable=(private,), writable=(out,))
    linux.start(spec)
    result = linux.wait(spec.id, 30)
    assert result is not None and result.state is TaskState.SUCCEEDED, linux.read_log(spec.id, "stderr")
    assert int(linux.read_log(spec.id).strip()) >= 100_000  # an unprivileged slice did it
    assert (out / "copy").read_text() == "a\n1\n"
    assert (out / "copy").stat().st_uid == 0  # stored as the folder's owner's: nothing to chown
    for path, mode in ((private, 0o700), (private / "in.csv", 0o600), (out, 0o700)):
        info = path.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, mode), path  # nothing changed on the host


def test_a_read_only_grant_stays_read_only(linux: LinuxExecutor, tmp_path: Path) -> None:
    private = tmp_path / "ro"
    private.mkdir(mode=0o700)
    (private / "f").write_text("x")
    spec = _task(tmp_path, f"echo y > {private}/f; chmod 777 {private}/f; echo done", readable=(private,))
    linux.start(spec)
    result = linux.wait(spec.id, 30)
    assert result is not None
    assert (private / "f").read_text() == "x" and stat.S_IMODE((private / "f").stat().st_mode) == 0o644
    assert "Read-only file system" in linux.read_log(spec.id, "stderr")


def _runink(args: list[str], cwd: Path, umask: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINK_")}
    code = f"import os, sys; os.umask({umask}); from runink.core.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def test_a_private_pipeline_runs_isolated_under_umask_077(tmp_path: Path) -> None:
    """What a new user does: `mktemp -d` (0700), umask 077, a 0600 source; as root."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    pipeline = home / "orders"
    shutil.copytree(
        REPO / "examples" / "orders", pipeline, ignore=shutil.ignore_patterns("out", "__pycache__", ".runink")
    )
    for path in [pipeline, *pipeline.rglob("*")]:
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    out = _runink(["run", "orders.dsl", "--json"], pipeline, 0o077)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert [s["state"] for s in result["scenarios"]] == ["SUCCEEDED", "SUCCEEDED"]
    silver = pipeline / "out" / "silver" / "orders.parquet"
    info = silver.stat()
    assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o600  # the runner's user and umask
    assert stat.S_IMODE((pipeline / "data" / "orders.csv").stat().st_mode) == 0o600  # nothing changed
    assert not list(pipeline.rglob(".runink-stage-*"))  # staging folders gone


def test_a_slice_that_cannot_be_set_up_says_why_in_one_line(linux: LinuxExecutor, tmp_path: Path) -> None:
    spec = TaskSpec(
        f"g-{uuid.uuid4().hex[:8]}", ("true",), tmp_path / "task", env={"PATH": "/usr/bin:/bin"}, files={"../x": "y"}
    )
    linux.start(spec)
    result = linux.wait(spec.id, 30)
    assert result is not None and result.state is TaskState.FAILED and result.exit_code == 126
    assert result.message == f"cannot set up slice {spec.id}: invalid file name '../x'", result.message


def test_a_writable_grant_in_a_folder_others_may_enter_is_refused(linux: LinuxExecutor, tmp_path: Path) -> None:
    """What a slice writes is stored as the runner's user's, in modes the slice chose (even
    setuid): a writable grant must sit in a private folder of the runner's."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    out = shared / "out"
    out.mkdir()
    with pytest.raises(Exception, match=r"must be the runner's and private \(mode 0700; it is 0755"):
        linux.start(_task(tmp_path, "true", writable=(out,)))
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "out").mkdir()
    spec = _task(tmp_path, f"cp /bin/true {private}/out/t && chmod 4755 {private}/out/t", writable=(private / "out",))
    linux.start(spec)
    result = linux.wait(spec.id, 30)
    assert result is not None and result.state is TaskState.SUCCEEDED, linux.read_log(spec.id, "stderr")
    # a setuid file of the runner's user, as the review showed, but where no one else can reach it
    assert (private / "out" / "t").stat().st_mode & 0o4000 and private.stat().st_mode & 0o777 == 0o700
