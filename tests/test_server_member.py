"""A server's own raft Barn member (core/server/process.Member): started again whenever it
exits without being stopped, never outliving its server, never leading for a paused one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixture_types import CliRunner

from runink.core.ports import free_ports
from runink.core.processes import PARENT_BEAT
from runink.core.server.process import MEMBER_SILENCE, Member


def _member_args(tmp_path: Path) -> list[str]:
    raft, http = free_ports(2)
    return [
        "--name", "solo", "--raft", f"127.0.0.1:{raft}", "--http", f"127.0.0.1:{http}",
        "--data-dir", str(tmp_path / "solo"), "--plaintext",
    ]  # fmt: skip


def _answers(http: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{http}/v1/status", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def test_a_member_that_exits_is_started_again_and_one_stopped_is_not(tmp_path: Path) -> None:
    """A member that stopped on a full disk (as it must) stayed down for good while its server
    went on: the group ran on one member less, silently (a faults review's run)."""
    member = Member(_member_args(tmp_path), None)
    try:
        first = member.process.pid
        assert _answers(member.http)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while member.restarts < 1 or not _answers(member.http):
            assert time.monotonic() < deadline, "the member was not started again"
            time.sleep(0.2)
        assert member.process.pid != first
    finally:
        member.stop()
    stopped = member.process.pid
    time.sleep(1.5)  # (longer than the first restart's delay)
    assert member.restarts == 1 and member.process.pid == stopped and member.process.poll() is not None


def test_a_restarted_member_dies_with_its_server(tmp_path: Path) -> None:
    """It asks for PR_SET_PDEATHSIG itself (a restart comes from a thread, where a preexec_fn is
    unsafe): killed with SIGKILL, the server leaves no member leading without it."""
    server = _server_of(
        _member_args(tmp_path),
        """
        os.kill(member.process.pid, signal.SIGKILL)
        while member.restarts < 1:
            time.sleep(0.1)
        """,
    )
    try:
        assert server.stdout is not None
        pid = int(server.stdout.readline())
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            assert time.monotonic() < deadline, "the restarted member outlived its server"
            time.sleep(0.1)
    finally:
        server.kill()


def test_a_lone_member_whose_server_is_paused_stays_up_and_keeps_its_lead(tmp_path: Path) -> None:
    """Held back (its server wrote nothing for MEMBER_SILENCE s) a member hands its lead over
    (tests/test_barn_hold_back.py); alone it has no one to hand it to, and keeps it: a Barn
    with no leader would serve no one once the server runs again. It is not stopped either."""
    args = _member_args(tmp_path)
    http = args[args.index("--http") + 1]
    server = _server_of(args, "")
    try:
        assert server.stdout is not None
        member = int(server.stdout.readline())
        _until(lambda: _barn_state(http) == "leader", 15, "the member never led")
        os.kill(server.pid, signal.SIGSTOP)
        time.sleep(MEMBER_SILENCE + 1.5)
        assert _barn_state(http) == "leader" and _state(member) not in ("Z", "")
        os.kill(server.pid, signal.SIGCONT)
        time.sleep(1.0)
        assert _barn_state(http) == "leader" and _state(member) not in ("Z", "")
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.kill()
        server.wait(10)


def _server_of(args: list[str], then: str) -> subprocess.Popen[str]:
    """A process that runs a Member as `runink server` does, then ``then`` (code), prints the
    member's pid and sleeps: the test pauses or kills it."""
    script = (
        textwrap.dedent(
            f"""
        import os, signal, time
        from runink.core.server.process import Member
        member = Member({args!r}, None)
        """
        )
        + textwrap.dedent(then)
        + "\nprint(member.process.pid, flush=True)\ntime.sleep(600)\n"
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def _until(done: Callable[[], bool], seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def _barn_state(http: str) -> str:
    """The member's Raft state ("leader", "follower", "candidate"), or "" when it does not answer."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{http}/v1/status", timeout=2) as answer:
            return str(json.loads(answer.read()).get("state", ""))
    except OSError:
        return ""


def test_a_member_follows_its_server_beats_only_when_told(tmp_path: Path, run_cli: CliRunner) -> None:
    """$RUNINK_PARENT_BEAT is the server's to give: a malformed one is refused in one line."""
    out = run_cli("barn", "serve", *_member_args(tmp_path), env={PARENT_BEAT: "x:5"})
    assert out.returncode == 2 and "RUNINK_PARENT_BEAT='x:5': expected FD:SECONDS" in out.stderr
    assert "Traceback" not in out.stderr


def _state(pid: int) -> str:
    """The process's state letter from /proc ("" once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return text[text.rindex(")") + 2]


def test_the_beat_pipe_writes_only_while_its_server_says_it_is_healthy() -> None:
    """A server whose control loop hangs stops beating (BeatPipe.healthy), so its member is
    held back as a paused server's is."""
    from runink.core.processes import BeatPipe

    beats = BeatPipe(0.02)
    read_end = beats.child_end()
    os.set_blocking(read_end, False)
    try:
        time.sleep(0.2)
        assert len(os.read(read_end, 4096)) >= 3
        beats.healthy = lambda: False
        time.sleep(0.05)  # (a beat written before it changed)
        with contextlib.suppress(BlockingIOError):
            os.read(read_end, 4096)
        time.sleep(0.2)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 4096)
        beats.healthy = lambda: True
        time.sleep(0.2)
        assert len(os.read(read_end, 4096)) >= 3
    finally:
        beats.close()
        os.close(read_end)
