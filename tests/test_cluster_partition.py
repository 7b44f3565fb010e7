"""An agent cut off from its server by a partition, then healed: its task is placed again on
another node (attempt 2) and runs there once; the cut-off agent's attempt is fenced when it
comes back (its reports refused, its slice stopped), and the job ends in one final state.

Three "hosts" in network namespaces the test makes (tests/netns.py): the server and two
agents, each a real process; the partition is blackhole routes between the server and one
agent. Traffic stays inside those namespaces and loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import netns
import pytest
from runink_processes import admin_headers, cluster_auth, node_auth

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

API, GRPC = 8470, 8471


def _start(command: list[str], log: Path) -> subprocess.Popen[str]:
    with open(log, "w") as err:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)


def _ready(process: subprocess.Popen[str], log: Path) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"it exited before it was ready: {log.read_text()[-2000:]}"
    json.loads(line)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[netns.NetLab, httpx.Client, dict[str, subprocess.Popen[str]]]]:
    with netns.NetLab(["srv", "a1", "a2"]) as net:
        runink = [sys.executable, "-m", "runink"]
        server_address = net.address["srv"]
        processes: dict[str, subprocess.Popen[str]] = {}
        env: dict[str, str] = {}
        auth = cluster_auth(tmp_path, env)
        try:
            processes["srv"] = _start(
                [*net.run_in("srv"), *runink, "server", "--api", f"{server_address}:{API}", "--agents",
                 f"{server_address}:{GRPC}", "--insecure-bind", "--liveness-timeout", "2", *auth],
                tmp_path / "srv.log",
            )  # fmt: skip
            _ready(processes["srv"], tmp_path / "srv.log")
            for name in ("a1", "a2"):
                processes[name] = _start(
                    [*net.run_in(name), *runink, "agent", "--servers", f"{server_address}:{GRPC}", "--node-id", name,
                     "--work-dir", str(tmp_path / name), "--interval", "0.1", "--plaintext",
                     *node_auth(tmp_path, name)],
                    tmp_path / f"{name}.log",
                )  # fmt: skip
                _ready(processes[name], tmp_path / f"{name}.log")
            with httpx.Client(
                base_url=f"http://{server_address}:{API}", timeout=10, headers=admin_headers(env)
            ) as client:
                yield net, client, processes
        finally:
            for process in processes.values():
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _task(client: httpx.Client, job_id: str) -> dict[str, object]:
    answer = client.get(f"/v1/jobs/{job_id}").json()
    task: dict[str, object] = answer["tasks"][0]
    return {**task, "job_state": answer["job"]["state"]}


def _until(what: str, check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow  # (chaos: `tox -e slow`)
def test_a_partitioned_agents_attempt_is_placed_again_and_fenced(
    lab: tuple[netns.NetLab, httpx.Client, dict[str, subprocess.Popen[str]]],
) -> None:
    net, client, _processes = lab
    assert client.post("/v1/herds", json={"name": "default"}).status_code == 201
    client.post("/v1/nodes/a2/cordon").raise_for_status()  # the first attempt goes to a1
    marker = "sleep 6.4321"
    job = client.post("/v1/jobs", json={"herd": "default", "command": marker.split()}).json()["job"]
    _until("attempt 1 running on a1", lambda: _task(client, job["id"])["state"] == "RUNNING")
    first = _task(client, job["id"])
    assert (first["node"], first["attempt"]) == ("a1", 1)
    client.post("/v1/nodes/a2/uncordon").raise_for_status()

    net.cut(["a1"], ["srv"])
    # past the liveness timeout (2 s of the server's clock) a1 is dead: attempt 2 on a2
    _until("attempt 2 running on a2", lambda: _task(client, job["id"])["attempt"] == 2, timeout=20)
    second = _task(client, job["id"])
    assert second["node"] == "a2" and second["token"] > first["token"]  # type: ignore[operator]
    nodes = {n["id"]: n for n in client.get("/v1/nodes").json()["nodes"]}
    assert nodes["a1"]["ready"] is False

    net.heal()
    # a1 comes back: registers again; its attempt 1 is no longer assigned to it, so it stops
    # that slice, and its report for attempt 1 is refused (fenced by the token)
    _until("a1 ready again", lambda: {n["id"]: n for n in client.get("/v1/nodes").json()["nodes"]}["a1"]["ready"])
    _until("the job ended", lambda: _task(client, job["id"])["job_state"] in ("SUCCEEDED", "FAILED"), timeout=30)
    final = _task(client, job["id"])
    assert (final["job_state"], final["attempt"], final["node"], final["exit_code"]) == ("SUCCEEDED", 2, "a2", 0)
    states = [(t["state"], t["attempt"]) for t in final["transitions"]]  # type: ignore[attr-defined]
    assert states.count(("SUCCEEDED", 2)) == 1 and not any(s == "SUCCEEDED" and a == 1 for s, a in states)
    # the fenced slice on a1 is gone (only a2's may remain, ending on its own)
    _until(
        "a1's slice stopped",
        lambda: (
            len(subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False).stdout.split())
            == 0
        ),
        timeout=20,
    )
