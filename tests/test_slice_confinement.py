"""What a slice may not reach of the runner's session (issue 17, items 1 and 2): its terminal,
its keyring, and the kernel interfaces the seccomp filter denies. Real slices, real ptys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runink.plugins.executors.linux.executor import LinuxExecutor

PROBLEMS = LinuxExecutor._detect_problems()
pytestmark = pytest.mark.skipif(bool(PROBLEMS), reason=f"cannot isolate here: {PROBLEMS}")

# Runs as the "runner": a session leader whose controlling terminal is the pty given as argv[1],
# with a key in its own session keyring, starting one slice that runs STEP; prints the slice's
# stdout (JSON) on its own stdout.
RUNNER = textwrap.dedent(
    """
    import ctypes, json, os, sys, tempfile, uuid
    from pathlib import Path
    from runink.core.interfaces.executor import TaskSpec
    from runink.plugins.executors.linux.executor import LinuxExecutor

    os.setsid()
    tty = os.open(sys.argv[1], os.O_RDWR)  # a session leader's first tty: its controlling terminal
    os.dup2(tty, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    KEYCTL, ADD_KEY = 250, 248  # x86_64 (the test skips elsewhere)
    libc.syscall(KEYCTL, 1, None)  # KEYCTL_JOIN_SESSION_KEYRING: a fresh one for this test
    secret = b"s3cret-of-the-runner"
    key = libc.syscall(ADD_KEY, b"user", b"runink-test-key", secret, len(secret), -3)
    assert key > 0, ctypes.get_errno()
    step = sys.argv[2].replace("KEY_ID", str(key))
    work = Path(tempfile.mkdtemp())
    os.chmod(work, 0o755)
    userns = sys.argv[3] == "userns"
    executor = LinuxExecutor(cgroup_parent=f"runink-test-{uuid.uuid4().hex[:8]}", pool=0, user_namespace=userns)
    task_id = "c-" + uuid.uuid4().hex[:8]
    spec = TaskSpec(task_id, (sys.executable, "-c", step), work / "task", env={"PATH": "/usr/bin:/bin"})
    executor.start(spec)
    result = executor.wait(spec.id, 60)
    print(json.dumps({"state": result.state.value, "stdout": executor.read_log(spec.id),
                      "stderr": executor.read_log(spec.id, "stderr")}))
    executor.close()
    for parent in set(executor.cgroups.parents().values()):  # (the test's own cgroup parents)
        parent.rmdir()
    """
)


def _run_in_session(step: str, userns: bool = True) -> tuple[dict[str, str], bytes]:
    """Run STEP in a slice of a runner that has a terminal; return its result and what reached the terminal."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    try:
        out = subprocess.run(
            [sys.executable, "-c", RUNNER, name, textwrap.dedent(step), "userns" if userns else "-"],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        time.sleep(0.2)
        typed = b""
        os.set_blocking(master, False)
        try:
            while chunk := os.read(master, 4096):
                typed += chunk
        except (BlockingIOError, OSError):
            pass
        return json.loads(out.stdout.strip().splitlines()[-1]), typed
    finally:
        os.close(master)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers of x86_64")
def test_a_slice_cannot_type_into_the_runners_terminal() -> None:
    result, typed = _run_in_session(
        """
        import fcntl, json, os, termios
        tried = {}
        for path in ("/dev/tty", "/proc/1/fd/0"):
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError as exc:
                tried[path] = exc.strerror
                continue
            try:
                for ch in "echo pwned\\n":
                    fcntl.ioctl(fd, termios.TIOCSTI, ch.encode())
                tried[path] = "typed"
            except OSError as exc:
                tried[path] = exc.strerror
        print(json.dumps({"tried": tried, "sid_is_own": os.getsid(0) == os.getpid(), "init_sid": os.getsid(1),
                          "dev": sorted(os.listdir("/dev"))}))
        """
    )
    assert result["state"] == "SUCCEEDED", result
    seen = json.loads(result["stdout"])
    assert b"pwned" not in typed, typed
    assert "typed" not in seen["tried"].values(), seen
    assert "tty" not in seen["dev"], seen  # no tty device in the slice at all
    assert seen["sid_is_own"], "the slice must lead a session of its own (no controlling terminal)"
    assert seen["init_sid"] == 1, "its PID 1 too: no process of the slice in the runner's session"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers of x86_64")
def test_a_slice_cannot_read_the_runners_keyring() -> None:
    result, _ = _run_in_session(
        """
        import ctypes, json
        libc = ctypes.CDLL(None, use_errno=True)
        buffer = ctypes.create_string_buffer(256)
        got = libc.syscall(250, 11, KEY_ID, buffer, 256)  # KEYCTL_READ the runner's key
        keys = open("/proc/keys").read()
        print(json.dumps({"read": buffer.raw[:max(got, 0)].decode(errors="replace"), "errno": ctypes.get_errno(),
                          "listed": "runink-test-key" in keys}))
        """
    )
    assert result["state"] == "SUCCEEDED", result
    seen = json.loads(result["stdout"])
    assert "s3cret" not in seen["read"], seen
    assert not seen["listed"], seen


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers of x86_64")
@pytest.mark.parametrize("userns", [True, False], ids=["own user namespace", "no user namespace"])
def test_the_seccomp_filter_denies_what_a_step_never_needs(userns: bool) -> None:
    # Each call would fail differently (or succeed) without the filter: EPERM is the filter's answer.
    result, _ = _run_in_session(
        """
        import ctypes, errno, fcntl, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        def call(number, *args):
            ctypes.set_errno(0)
            rc = libc.syscall(number, *args)
            return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno())) if rc < 0 else "allowed"
        params = ctypes.create_string_buffer(120)
        seen = {
            "keyctl": call(250, 0, -3, 0),          # KEYCTL_GET_KEYRING_ID of its own session keyring
            "add_key": call(248, b"user", b"k", b"v", 1, -3),
            "bpf": call(321, 0, None, 0),
            "perf_event_open": call(298, None, 0, -1, -1, 0),
            "userfaultfd": call(323, 0),
            "io_uring_setup": call(425, 1, params),
            "kexec_load": call(246, 0, 0, None, 0),
            "ptrace": call(101, 0, 0, None, None),  # PTRACE_TRACEME
            "unshare(user)": call(272, 0x10000000),
            "clone3": call(435, None, 0),
            "mount": call(165, b"none", b"/tmp", b"tmpfs", 0, None),  # denied by the final part
            "move_mount": call(429, -1, b"", -100, b"/tmp", 4),
        }
        try:
            fcntl.ioctl(1, 0x5412, b"x")  # TIOCSTI on its log file: ENOTTY without the filter
            seen["TIOCSTI"] = "allowed"
        except OSError as exc:
            seen["TIOCSTI"] = errno.errorcode[exc.errno]
        # what a step needs still works: threads (clone without namespace flags), subprocesses
        import subprocess, threading
        box = []
        thread = threading.Thread(target=box.append, args=(1,)); thread.start(); thread.join()
        seen["thread"] = "allowed" if box == [1] else "broken"
        seen["subprocess"] = subprocess.run(["/bin/echo", "ok"], capture_output=True, text=True).stdout.strip()
        print(json.dumps(seen))
        """,
        userns,
    )
    assert result["state"] == "SUCCEEDED", result
    seen = json.loads(result["stdout"])
    if userns:  # the namespace's own limit answers (user.max_user_namespaces = 0 in it)
        assert seen.pop("unshare(user)") == "ENOSPC", seen
    denied = {k: v for k, v in seen.items() if k not in ("thread", "subprocess", "clone3")}
    assert denied == dict.fromkeys(denied, "EPERM"), seen
    assert seen["clone3"] == "ENOSYS", seen  # so that libc falls back to clone, which the filter can read
    assert seen["thread"] == "allowed" and seen["subprocess"] == "ok", seen


def test_the_filter_is_built_with_libseccomp_and_lists_its_reasons() -> None:
    from runink.plugins.executors.linux.seccomp import DENIED_SYSCALLS, build_program

    program = build_program()
    assert len(program) % 8 == 0 and len(program) > 8 * len(DENIED_SYSCALLS) // 2
    warm, final = build_program("warm"), build_program("final")  # what the payload loads before / after set-up
    assert len(final) < len(warm) < len(program) + 8 and len(final) % 8 == 0
    with pytest.raises(ValueError, match="unknown filter part"):
        build_program("most")
    docs = Path(__file__).parents[1] / "docs" / "isolation.md"
    text = docs.read_text()
    missing = [name for name in DENIED_SYSCALLS if f"`{name}`" not in text]
    assert not missing, f"docs/isolation.md does not list {missing}"


def test_a_command_cannot_reach_its_payloads_memory_or_files(tmp_path: Path) -> None:
    """A command runs as PID 3 under its payload (PID 2, a fork of the launcher, which once
    held earlier slices' requests). Left dumpable, the payload's /proc/2/mem was open to the
    command (same uid), and pidfd_getfd took its descriptors (a review's slice read another
    herd's command line and wrote into its status file so)."""
    import uuid

    from conftest import close_linux

    from runink.core.interfaces.executor import TaskSpec

    probe = (
        "import ctypes, errno, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "try:\n"
        "    os.close(os.open('/proc/2/mem', os.O_RDONLY)); print('mem: open')\n"
        "except OSError as exc:\n"
        "    print('mem:', errno.errorcode[exc.errno])\n"
        "pidfd = os.pidfd_open(2)\n"
        "ctypes.set_errno(0)\n"
        "got = libc.syscall(438, pidfd, 0, 0)  # pidfd_getfd (x86_64)\n"
        "print('getfd:', 'taken' if got >= 0 else errno.errorcode[ctypes.get_errno()])\n"
    )
    linux = LinuxExecutor(cgroup_parent=f"runink-test-{uuid.uuid4().hex[:8]}", pool=1)
    try:
        command = ("/usr/bin/python3", "-c", probe)  # (not this interpreter: exec'd, a command)
        spec = TaskSpec(f"p-{uuid.uuid4().hex[:8]}", command, tmp_path / "t", env={"PATH": "/usr/bin:/bin"})
        linux.start(spec)
        result = linux.wait(spec.id, 60)
        out = linux.read_log(spec.id)
    finally:
        close_linux(linux)
    assert result.state.value == "SUCCEEDED", (result, linux.read_log(spec.id, "stderr"))
    assert out.splitlines() == ["mem: EACCES", "getfd: EPERM"], out


SCAN_OWN_MEMORY = """
import ctypes, hashlib, re, sys
wanted = sys.argv[1]
found = False
with open("/proc/self/maps") as maps:
    regions = [line.split() for line in maps]
for fields in regions:  # (its own memory, read in place: no /proc/self/mem needed)
    start, end = (int(x, 16) for x in fields[0].split("-"))
    if not fields[1].startswith("rw") or len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]", "[vdso]"):
        continue
    data = ctypes.string_at(start, end - start)
    for seen in re.findall(rb"sealed-[0-9a-f]{32}", data):
        found = found or hashlib.sha256(seen).hexdigest() == wanted
print("found" if found else "not found")
"""


def test_a_slice_finds_no_earlier_slices_command_line_in_its_memory(tmp_path: Path) -> None:
    """Sandboxes are forks of the launcher, which parsed every request: a later slice, of any
    herd, read earlier slices' command lines (`--password=...`) in its own memory (a review).
    The command travels sealed, in the memfd the launcher passes on unread."""
    import hashlib
    import secrets
    import uuid

    from conftest import close_linux

    from runink.core.interfaces.executor import TaskSpec

    marker = f"sealed-{secrets.token_hex(16)}"
    linux = LinuxExecutor(cgroup_parent=f"runink-test-{uuid.uuid4().hex[:8]}", pool=1)
    try:
        first = TaskSpec("first", (sys.executable, "-c", "pass", f"--password={marker}"), tmp_path / "a", env={})
        linux.start(first)
        assert linux.wait(first.id, 60).state.value == "SUCCEEDED"
        digest = hashlib.sha256(marker.encode()).hexdigest()
        later = TaskSpec("later", (sys.executable, "-c", SCAN_OWN_MEMORY, digest), tmp_path / "b", env={})
        linux.start(later)
        result = linux.wait(later.id, 120)
        out = linux.read_log(later.id)
        assert result.state.value == "SUCCEEDED", (result, linux.read_log(later.id, "stderr"))
    finally:
        close_linux(linux)
    assert out == "not found\n"
