"""A group of real Barn server processes on loopback, for tests and benchmarks (``Cluster``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from netns import NetLab

from runink.core.drivers import load_driver
from runink.core.interfaces import BarnBackend
from runink.core.ports import free_ports


class Cluster:
    """Members a, b, c... on loopback with free ports; or, with ``lab`` (a ``NetLab`` whose
    hosts are the member names), each member on its own host, on ports 7001 (Raft) and 8001."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        history: int = 100_000,
        fsync: bool = True,
        lab: NetLab | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        self.names = lab.hosts if lab is not None else [chr(ord("a") + i) for i in range(size)]
        self.lab = lab
        if lab is not None:
            self.raft = {n: f"{lab.address[n]}:7001" for n in self.names}
            self.http = {n: f"{lab.address[n]}:8001" for n in self.names}
        else:
            ports = free_ports(2 * size)
            self.raft = {n: f"127.0.0.1:{ports[2 * i]}" for i, n in enumerate(self.names)}
            self.http = {n: f"127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(self.names)}
        self.root = root
        self.history = history
        self.fsync = fsync
        self.options = options  # more server options, e.g. ("--compaction-entries", "100")
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.peers_of: dict[str, list[str]] = {}  # members started with a peer list of their own
        # with ``beats(...)`` on: each member's pipe from its "server" ($RUNINK_PARENT_BEAT)
        self.beat_pipes: dict[str, int] = {}
        self._silence: float | None = None

    def grow(self, name: str) -> None:
        """Make a place for a new member (loopback only): started later with every member so far
        as its peers, and added to the running group with ``runink barn member add``."""
        assert self.lab is None, "grow() is for loopback groups"
        raft, http = free_ports(2)
        self.peers_of[name] = list(self.names)
        self.names.append(name)
        self.raft[name], self.http[name] = f"127.0.0.1:{raft}", f"127.0.0.1:{http}"

    def command(self, name: str) -> list[str]:
        command = [*(self.lab.run_in(name) if self.lab else []),
            sys.executable, "-m", "runink.plugins.barn.raft.server", "--name", name,
            "--raft", self.raft[name], "--http", self.http[name], "--data-dir", str(self.root / name),
            "--history", str(self.history),
        ]  # fmt: skip
        for other in self.peers_of.get(name, self.names):
            if other != name:
                command += ["--peer", f"{other}={self.raft[other]},{self.http[other]}"]
        # (no TLS in this harness unless its options give the --tls-* flags: then they do)
        plaintext = [] if "--tls-cert" in self.options else ["--plaintext"]
        return command + ([] if self.fsync else ["--no-fsync"]) + list(self.options) + plaintext

    def beats(self, silence: float) -> None:
        """Start members from now on as a `runink server` starts its own: each hearing a pipe
        (``beat_pipes``: the test writes to it, or not) and held back after ``silence`` s of none."""
        self._silence = silence

    def start(self, *names: str) -> None:
        for name in names or self.names:
            log = open(self.root / f"{name}.log", "a")  # noqa: SIM115 (the process keeps it)
            env, fds = {**os.environ}, ()
            if self._silence is not None:
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(write_end, False)
                self.beat_pipes[name] = write_end
                env["RUNINK_PARENT_BEAT"], fds = f"{read_end}:{self._silence:g}", (read_end,)
            process = subprocess.Popen(
                self.command(name), stdout=subprocess.PIPE, stderr=log, text=True, env=env, pass_fds=fds
            )
            for fd in fds:
                os.close(fd)
            self.processes[name] = process
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                tail = (self.root / f"{name}.log").read_text().strip().splitlines()[-5:]
                raise AssertionError(f"Barn member {name} exited at start: " + " | ".join(tail))
            assert json.loads(line)["event"] == "serving", line

    def client(self, *names: str, timeout: float = 10.0) -> Any:
        """The raft Barn backend's client (a BarnBackend, plus ``status()`` and ``call()``), loaded
        by name as a configured backend is: the harness imports no plugin."""
        options = {"endpoints": [self.http[n] for n in names or self.names], "timeout": timeout}
        return load_driver(BarnBackend, "raft", options)

    def post(self, name: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A raw POST of ``body`` (JSON) to member ``name``'s HTTP API: (status, answer), a
        refusal's too (plaintext groups only)."""
        import json
        import urllib.error
        import urllib.request

        ask = urllib.request.Request(
            f"http://{self.http[name]}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(ask, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def status(self, name: str) -> dict[str, Any]:
        client = self.client(name, timeout=2)
        try:
            return dict(client.status())
        finally:
            client.close()

    def leader(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in self.alive():
                with contextlib.suppress(Exception):
                    if self.status(name)["state"] == "leader":
                        return name
            time.sleep(0.05)
        raise AssertionError(f"no leader within {timeout}s")

    def alive(self) -> list[str]:
        return [n for n, p in self.processes.items() if p.poll() is None]

    def pause(self, name: str, within: float = 5.0) -> None:
        """SIGSTOP member ``name`` and return once it is stopped (state T): a test that then
        expects it silent must not race the signal's delivery."""
        pid = self.processes[name].pid
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + within
        while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
            assert time.monotonic() < deadline, f"member {name} not stopped within {within}s"
            time.sleep(0.01)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        process.send_signal(sig)
        process.wait(10)

    def stop(self) -> None:
        """SIGTERM every member; one that has not exited 10 s later is SIGKILLed and reported,
        and so is any member whose log shows it truncated entries it had already applied."""
        alive = self.alive()
        for name in alive:
            self.processes[name].terminate()
        stuck = []
        for name in alive:
            try:
                self.processes[name].wait(10)
            except subprocess.TimeoutExpired:
                stuck.append(name)
                self.processes[name].kill()
                self.processes[name].wait(10)
        for process in self.processes.values():
            if process.stdout is not None:
                process.stdout.close()
        for fd in self.beat_pipes.values():  # (after: a member whose pipe closes stops, saying so)
            os.close(fd)
        self.beat_pipes.clear()
        if stuck:
            raise AssertionError(f"Barn members {stuck} did not exit within 10 s of SIGTERM")
        diverged = [
            f"{name}: {line.strip()}"
            for name in self.processes
            if (self.root / f"{name}.log").exists()
            for line in (self.root / f"{name}.log").read_text(errors="replace").splitlines()
            if "truncating already-applied" in line
        ]
        if diverged:  # pysyncobj's sign that a follower dropped entries it had applied
            raise AssertionError("a member truncated applied entries: " + " | ".join(diverged[:3]))
