"""The slice launcher (fork server): real namespaces, real cgroups, as root on this machine."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from launcher_client import Launcher
from proc_tree import descendants, host_mounts

from runink.plugins.executors.linux.cgroups import CgroupManager, SliceCgroup, detect
from runink.plugins.executors.linux.launcher import native_init_available
from runink.plugins.executors.linux.namespaces import probe, probe_unprivileged_user
from runink.plugins.executors.linux.rootfs import runtime_paths

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or probe("pid") is not None or probe("mount") is not None,
    reason="needs root and permission to create pid and mount namespaces",
)


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    running = Launcher()
    yield running
    running.close()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(work, 0o777)
    return work


def request(work: Path, script: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"s-{uuid.uuid4().hex[:8]}",
        "command": ["sh", "-c", script],
        "env": {"PATH": "/usr/bin:/bin"},
        "cwd": str(work),
        "binds": [{"path": str(work), "writable": True}],
        "uid": 100001,
        "gid": 100001,
        "stdout": str(work / "out.log"),
        "stderr": str(work / "err.log"),
        **extra,
    }


def test_slice_is_isolated(launcher: Launcher, work: Path) -> None:
    outside = Path("/var/tmp") / f"runink-open-{uuid.uuid4().hex[:6]}"
    outside.mkdir(mode=0o777)
    os.chmod(outside, 0o777)
    try:
        script = (
            f"echo pid=$$; hostname; id -u; ls /proc | grep -c '^[0-9]'; tail -n +3 /proc/net/dev | cut -d: -f1; "
            f"touch {outside}/x 2>&1; touch mine && echo wrote-work; touch /tmp/t && echo wrote-tmp; "
            f"grep NoNewPrivs /proc/self/status"
        )
        req = request(work, script, hostname="slice-7")
        assert launcher.run(req)["code"] == 0, (work / "err.log").read_text()
        out = (work / "out.log").read_text().splitlines()
        # 1: the slice's init, 2: the payload waiting for the command, 3: the command; no host process
        assert out[0] == "pid=3"
        assert out[1] == "slice-7"
        assert out[2] == "100001"  # never root inside
        assert int(out[3]) <= 5  # only the slice's own processes in /proc
        assert out[4].strip() == "lo"  # no network but loopback
        assert "No such file or directory" in out[5] and not (outside / "x").exists()  # not in its view
        assert out[6:8] == ["wrote-work", "wrote-tmp"]
        # id-mapped: what the slice (uid 100001) wrote is stored as the work folder's owner's
        assert (work / "mine").stat().st_uid == work.stat().st_uid == 0
        assert out[8].split() == ["NoNewPrivs:", "1"]
        assert not Path("/tmp/t").exists() or Path("/tmp/t").stat().st_uid != 100001  # /tmp was private
    finally:
        for child in outside.iterdir():
            child.unlink()
        outside.rmdir()


def test_the_python_init_isolates_the_same(work: Path) -> None:
    """Without runink-init (no C compiler at install) PID 1 is a fork of the launcher: same sandbox."""
    fallback = Launcher("--python-init")
    try:
        script = "echo pid=$$; ls /proc | grep -c '^[0-9]'; sleep 5 & exit 4"  # an orphan: PID 1 must end it
        assert fallback.run(request(work, script))["code"] == 4
        out = (work / "out.log").read_text().split()
        assert out[0] == "pid=3" and int(out[1]) <= 5
        assert {uid for _, uid in descendants(fallback.process.pid)} <= {0}  # the orphan went with its sandbox
    finally:
        fallback.close()


def test_runink_init_is_built_here() -> None:
    """The install built the native init (CI has a compiler): the fast path is the one tested."""
    assert native_init_available() == (shutil.which("cc") is not None)


USERNS_REFUSAL = probe_unprivileged_user() if os.geteuid() == 0 else "needs root"


@pytest.mark.skipif(USERNS_REFUSAL is not None, reason=f"no user namespaces here: {USERNS_REFUSAL}")
def test_a_slice_in_its_user_namespace_can_make_no_namespace(work: Path) -> None:
    """Its own user namespace, same ids, no capability, and no way to make nested namespaces
    (tested without the seccomp filter, which denies unshare too: each layer holds alone)."""
    launcher = Launcher("--no-seccomp")
    script = (
        "id -u; cat /proc/self/uid_map; grep CapEff /proc/self/status; "
        "unshare -U true 2>&1; echo userns=$?; unshare -m true 2>&1; echo mountns=$?"
    )
    bare = launcher.run(request(work, script))
    assert bare["code"] == 0, (work / "err.log").read_text()
    without = (work / "out.log").read_text()
    assert "userns=0" in without  # this host lets any user make one: what the slice's namespace stops
    (work / "out.log").unlink()
    assert launcher.run(request(work, script, userns=True))["code"] == 0, (work / "err.log").read_text()
    out = (work / "out.log").read_text().splitlines()
    assert out[0] == "100001"
    assert out[1].split() == ["100001", "100001", "1"]  # only its own uid, mapped to itself
    assert out[2].split() == ["CapEff:", "0000000000000000"]
    assert "userns=1" in out and "mountns=1" in out
    assert any("No space left on device" in x for x in out)  # user.max_user_namespaces = 0 inside
    launcher.close()


def test_network_when_granted(launcher: Launcher, work: Path) -> None:
    req = request(work, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '", network=True)
    assert launcher.run(req)["code"] == 0, (work / "err.log").read_text()
    # its own namespace, with slirp4netns's tap0: none of the host's interfaces (tests/test_network_grant.py)
    assert (work / "out.log").read_text().split() == ["lo", "tap0"]


def test_exit_codes_and_missing_command(launcher: Launcher, work: Path) -> None:
    assert launcher.run(request(work, "exit 7"))["code"] == 7
    req = request(work, "") | {"command": ["/nonexistent/runink-cmd"]}
    assert launcher.run(req)["code"] == 127
    assert "cannot start /nonexistent/runink-cmd" in (work / "err.log").read_text()


def test_memory_limit_from_the_first_instruction(launcher: Launcher, work: Path) -> None:
    layout = detect()
    if "memory" not in layout.own:
        pytest.skip("no memory controller")
    manager = CgroupManager(layout, parent_name=f"runink-test-{uuid.uuid4().hex[:6]}")
    manager.prepare()
    spec = {"version": layout.version, "own": {c: str(d) for c, d in layout.own.items()}, "parent": manager.parent_name}
    with_cgroups = Launcher("--cgroups", json.dumps(spec))
    try:
        # tail must hold a 600 MiB "line" of zeros in memory: the kernel kills it at 64 MiB
        req = request(work, "head -c 600M /dev/zero | tail > /dev/null", limits={"memory": 64 * 1024**2, "pids": 64})
        ended = with_cgroups.run(req)
        assert ended["code"] == 137  # SIGKILL by the kernel's OOM killer
        cgroup = SliceCgroup(layout, {c: p / ended["cgroup"] for c, p in manager.parents().items()})
        assert cgroup.usage().oom_kills >= 1
        assert int((cgroup.dirs["pids"] / "pids.max").read_text()) == 64
        cgroup.remove()
        # only the warm sandboxes' (2, none with the network: no slice asked for it)
        assert len({p.name for p in manager.leftovers()}) <= 2
        with_cgroups.close()
        assert manager.leftovers() == []  # removed with their sandboxes
    finally:
        with_cgroups.close()
        for parent in set(manager.parents().values()):
            for child in parent.iterdir():
                if child.is_dir():
                    child.rmdir()
            parent.rmdir()


def test_many_slices_leave_nothing_behind(launcher: Launcher, work: Path) -> None:
    mounts_before = host_mounts()
    for _ in range(100):
        assert launcher.run(request(work, "sleep 0.001 & true"))["code"] == 0

    def children_now() -> list[str]:
        found = subprocess.run(
            ["ps", "--ppid", str(launcher.process.pid), "-o", "pid="], capture_output=True, text=True, check=False
        )
        return found.stdout.split()

    # only warm sandboxes (2, none with the network: no slice asked for it), an init and a payload
    # each; a refill under way has a moment's helper too (the id-mapping namespace's holder,
    # grants.py), which a leak would not stop being: allowed a few seconds to go
    deadline = time.monotonic() + 5
    while len(children := children_now()) > 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(children) <= 4, children
    assert {uid for _, uid in descendants(launcher.process.pid)} <= {0}  # only warm sandboxes: no slice left
    assert host_mounts() == mounts_before
    launcher.close()
    children = subprocess.run(
        ["ps", "--ppid", str(launcher.process.pid), "-o", "pid="], capture_output=True, text=True, check=False
    ).stdout.split()
    assert children == []


def test_slice_holds_no_launcher_fd(launcher: Launcher, work: Path) -> None:
    req = request(work, "ls /proc/self/fd | sort -n | tr '\\n' ' '")
    assert launcher.run(req)["code"] == 0
    assert (work / "out.log").read_text().split() == ["0", "1", "2", "3"]  # 3: the fd ls itself opened


def test_slice_sees_only_its_runtime_and_grants(launcher: Launcher, work: Path, tmp_path: Path) -> None:
    granted = tmp_path / "inputs"
    granted.mkdir()
    (granted / "orders.csv").write_text("a,b\n")
    script = (
        f"cat {granted}/orders.csv; touch {granted}/new 2>&1; ls / | tr '\\n' ' '; echo; "
        "ls /home /var /boot 2>&1 | head -3; touch /usr/x 2>&1; touch /x 2>&1; ls /dev | tr '\\n' ' '; echo; "
        "ls -A /root 2>/dev/null | tr '\\n' ' '"
    )
    req = request(work, script)
    req["binds"].append({"path": str(granted), "writable": False})
    assert launcher.run(req)["code"] == 0, (work / "err.log").read_text()
    out = (work / "out.log").read_text().splitlines()
    assert out[0] == "a,b"
    assert "Read-only file system" in out[1] and not (granted / "new").exists()
    top = set(out[2].split())
    assert {"usr", "etc", "proc", "tmp", "dev"} <= top and not top & {"home", "var", "boot", "srv"}
    assert all("No such file or directory" in line for line in out[3:6])
    assert "Read-only file system" in out[6] and "Read-only file system" in out[7]
    assert set(out[8].split()) >= {"null", "zero", "urandom", "shm", "fd"} and "vda" not in out[8]
    # /root exists only if the runtime lives under it (pyenv here), holding just that path
    _, runtime = runtime_paths()
    expected = {p.split("/")[2] for p in runtime if p.startswith("/root/")}
    assert set(out[9].split()) == expected


def test_a_missing_grant_fails_the_launch_not_the_launcher(launcher: Launcher, work: Path) -> None:
    req = request(work, "true")
    req["binds"].append({"path": "/nonexistent/runink-input", "writable": False})
    event = launcher.run(req)
    assert event["event"] == "failed" and "/nonexistent/runink-input" in event["message"]
    assert launcher.run(request(work, "exit 3"))["code"] == 3  # still serving


def test_a_malformed_request_fails_naming_its_field_and_the_launcher_serves_on(launcher: Launcher, work: Path) -> None:
    """A request that is not what messages.py says gets a "failed" event naming the bad field
    (before, a bind without its path killed the launcher, and every slice with it)."""
    req = request(work, "true")
    req["binds"].append({"writable": True})
    event = launcher.run(req)
    assert event["event"] == "failed" and event["id"] == req["id"]
    assert "binds[1].path: missing" in event["message"]
    req = request(work, "true", uid="100001")
    assert "uid: expected an integer, got str" in launcher.run(req)["message"]
    assert launcher.run(request(work, "exit 3"))["code"] == 3  # still serving


def test_requests_that_wait_for_sandboxes_keep_their_order_and_block_no_other_answer(work: Path) -> None:
    """More requests at once than warm sandboxes: each waits for one of its own (in order)
    while the launcher serves on, so a malformed request sent last is answered before them;
    every one then starts and exits. (A waiting request used to block the launcher.)"""
    launcher = Launcher("--pool", "1")
    try:
        assert launcher.process.stdin and launcher.process.stdout
        valid = [request(work, f"echo {i} >> order.log") for i in range(4)]
        bad = {**request(work, "true"), "uid": "x"}
        lines = "".join(json.dumps({"op": "launch", **r}) + "\n" for r in [*valid, bad])
        launcher.process.stdin.write(lines)  # (one write: read and taken together)
        launcher.process.stdin.flush()
        lines_out: queue.Queue[str] = queue.Queue()  # (read on a thread: a launch that failed
        # sends one event less, and the test must end rather than wait for it)
        stdout = launcher.process.stdout
        threading.Thread(target=lambda: [lines_out.put(line) for line in stdout], daemon=True).start()
        events = [json.loads(lines_out.get(timeout=60)) for _ in range(2 * len(valid) + 1)]
    finally:
        launcher.close()
    failed = [i for i, e in enumerate(events) if e["event"] == "failed"]
    assert [events[i]["id"] for i in failed] == [bad["id"]]  # the only failure: the malformed one
    started = [e["id"] for e in events if e["event"] == "started"]
    assert started == [r["id"] for r in valid]  # in the order they came
    assert failed[0] < events.index(next(e for e in events if e["id"] == valid[-1]["id"]))
    assert sorted(e["id"] for e in events if e["event"] == "exited") == sorted(r["id"] for r in valid)
    assert sorted((work / "order.log").read_text().split()) == ["0", "1", "2", "3"]  # (each ran once)


def test_python_runs_in_the_preloaded_interpreter(work: Path) -> None:
    preloaded = Launcher("--preload", "pyarrow,runink.core.dataplane.slice")
    try:
        code = (
            "import os, sys; print(sys.argv[1:], os.getuid(), sorted(os.environ)); "
            "print('pyarrow' in sys.modules); sys.exit(5)"
        )
        req = request(work, "") | {"python": {"code": code, "args": ["a", "b"]}}
        assert preloaded.run(req)["code"] == 5, (work / "err.log").read_text()
        out = (work / "out.log").read_text().splitlines()
        assert out == ["['a', 'b'] 100001 ['PATH']", "True"]  # no exec: the runtime came with the fork
        module = request(work, "") | {"python": {"module": "runink.core.dataplane.slice", "args": []}}
        assert preloaded.run(module)["code"] == 2  # its main(): usage error
        assert "usage: python -m runink.core.dataplane.slice" in (work / "err.log").read_text()
    finally:
        preloaded.close()


@contextlib.contextmanager
def _answers_within(seconds: int) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging the test run when a launcher never answers."""

    def expired(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"no answer from the launcher in {seconds} s")

    before = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def test_an_awaiting_launcher_preloads_first_and_serves_with_the_arguments_it_is_sent(work: Path) -> None:
    """``--await-config`` (a launcher started before its executor knew its arguments): the
    preload is done at once, the rest of the arguments come as the first line of its input,
    and it serves as if started with them; with no arguments sent, it ends quietly."""
    awaiting = Launcher("--await-config", "--preload", "pyarrow")
    try:
        with _answers_within(60):
            assert awaiting.process.stdin
            awaiting.process.stdin.write(
                json.dumps(["--pool", "1", "--preload", "pyarrow,runink.core.dataplane.slice"]) + "\n"
            )
            awaiting.process.stdin.flush()
            code = "import sys; print('pyarrow' in sys.modules, 'runink.core.dataplane.slice' in sys.modules)"
            req = request(work, "") | {"python": {"code": code, "args": []}}
            assert awaiting.run(req)["code"] == 0, (work / "err.log").read_text()
            assert (work / "out.log").read_text().split() == ["True", "True"]
            assert awaiting.run(request(work, "exit 3"))["code"] == 3
    finally:
        awaiting.close()
    assert awaiting.process.returncode == 0

    # a request in the same write as the arguments (read with them) is answered too
    early = Launcher("--await-config")
    try:
        with _answers_within(60):
            assert early.process.stdin and early.process.stdout
            req = request(work, "exit 4")
            early.process.stdin.write(json.dumps(["--pool", "0"]) + "\n" + json.dumps({"op": "launch", **req}) + "\n")
            early.process.stdin.flush()
            events = [json.loads(early.process.stdout.readline()) for _ in range(2)]
            assert [(e["event"], e.get("code")) for e in events] == [("started", None), ("exited", 4)], events
    finally:
        early.close()

    for given, refusal in (
        ("", None),
        ("not json\n", "not JSON"),
        ('["--await-config"]\n', "await again"),
        ('["--pool"', "cut"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "runink.plugins.executors.linux.launcher", "--await-config"],
            check=False,
            input=given,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if refusal is None:
            assert (done.returncode, done.stderr) == (0, "")  # nobody came for it
        else:
            assert done.returncode == 1 and refusal in done.stderr, done.stderr


def test_preloading_a_module_that_starts_threads_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runink.plugins.executors.linux.launcher", "--preload", "polars"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "preloading polars started" in done.stderr  # (it names the module)
    assert "must stay single-threaded" in done.stderr


def test_only_runinks_own_storage_drivers_are_preloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every installed storage driver's module was imported by the launcher, as root, before
    any run: one whose import failed, started a thread or slept stopped (or slowed) every run
    of the executor, even disabled in [plugins] (a review's runs). Another package's is
    imported by the slice that uses it."""
    from importlib.metadata import EntryPoint

    from runink.core import driverload
    from runink.plugins.executors.linux import executor

    def installed(group: str) -> list[EntryPoint]:
        assert group == "runink.storage"
        return [
            EntryPoint("csv", "runink.plugins.storage.csv:CsvStorage", group),
            EntryPoint("queue", "third_party_storage.queue:QueueStorage", group),
        ]

    monkeypatch.setattr(driverload, "installed_entry_points", installed)
    assert executor._storage_modules() == ["runink.plugins.storage.csv"]


def test_runtime_paths_under_tmp_are_visible(work: Path, tmp_path: Path) -> None:
    """A virtualenv in /tmp (CI clones there) stays visible under the slice's private /tmp."""
    runtime = tmp_path / "venv-like"
    runtime.mkdir()
    (runtime / "marker.txt").write_text("runtime here\n")
    with_runtime = Launcher("--readable", str(runtime))
    try:
        req = request(work, f"cat {runtime}/marker.txt; touch {runtime}/x 2>&1; true")
        assert with_runtime.run(req)["code"] == 0, (work / "err.log").read_text()
        out = (work / "out.log").read_text().splitlines()
        assert out[0] == "runtime here" and "Read-only file system" in out[1]
    finally:
        with_runtime.close()


@pytest.mark.parametrize("seccomp", [True, False])
def test_what_main_sets_reaches_the_forked_payload(work: Path, seccomp: bool) -> None:
    """main() sets the payload module's globals before any fork: the slice gets back the umask
    the launcher was started with, and the seccomp filter unless --no-seccomp."""
    old = os.umask(0o027)
    try:
        launcher = Launcher(*([] if seccomp else ["--no-seccomp"]))
    finally:
        os.umask(old)
    try:
        result = launcher.run(request(work, "grep -E '^(Umask|Seccomp):' /proc/self/status"))
        assert result["code"] == 0, (work / "err.log").read_text()
        status = dict(line.split(":\t") for line in (work / "out.log").read_text().splitlines())
        assert status == {"Umask": "0027", "Seccomp": "2" if seccomp else "0"}
    finally:
        launcher.close()


def test_the_sandbox_side_imports_nothing_of_the_launcher() -> None:
    """payload.py (what runs in a sandbox), rootfs.py and syscalls.py (with messages.py) stand alone: the launcher
    imports them, never the other way round."""
    code = (
        "import sys\n"
        "import runink.plugins.executors.linux.payload, runink.plugins.executors.linux.rootfs\n"
        "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('runink.plugins.executors.linux.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == [
        "['messages',",
        "'namespaces',",
        "'payload',",
        "'rootfs',",
        "'seccomp',",
        "'syscalls']",
    ]


def test_a_slices_preload_builds_no_executor_barn_or_model_classes() -> None:
    """The slice's runtime imports ``runink.core.interfaces.storage`` only: the package's other
    interfaces (and the model they build on) are imported when first asked for, not with it
    (~30 ms of every launcher's start, on the path to the first slice)."""
    code = (
        "import sys\n"
        "import runink.core.dataplane.slice\n"
        "from runink.core.interfaces import Storage\n"
        "print(sorted(m for m in sys.modules if m.startswith(('runink.core.interfaces.', 'runink.core.model'))))\n"
        "import runink.core.interfaces as interfaces\n"
        "for name in interfaces.__all__:\n"
        "    assert getattr(interfaces, name).__name__ == name, name\n"
        "print(sorted(m for m in sys.modules if m.startswith('runink.core.interfaces.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "['runink.core.interfaces.storage']"
    every = ["annotator", "barn", "executor", "scaler", "scheduler_policy", "secrets", "storage"]
    assert out[1] == str([f"runink.core.interfaces.{name}" for name in every])
