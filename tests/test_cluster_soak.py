"""Soak (slow, `tox -e slow`): 2,000 short jobs on a `runink up` cluster (3 raft servers, 2
agents) while an agent is killed with SIGKILL, the scheduling leader's server is paused
(SIGSTOP) for PAUSE seconds, and then the leader's server is killed with SIGKILL. Every
accepted job must reach exactly one final state, none may succeed twice, none may be lost.
Bounded: the submissions and the wait each have a deadline."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from fixture_types import CliRunner
from runink_processes import admin_headers, cluster_folder, up_tls

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the agents' linux executor needs root"),
]

JOBS = 2000
SUBMIT_DEADLINE = 600.0  # seconds for all submissions
FINISH_DEADLINE = 900.0  # seconds for all jobs to end after the last submission
FINAL = {"SUCCEEDED", "FAILED", "OOMKILLED", "DEADLINE_EXCEEDED", "CANCELLED"}
PAUSE = 8.0  # seconds the leader's server is paused: its member hands the lead over after 5


def _leading(servers: list[dict[str, object]]) -> dict[str, object]:
    for server in servers:
        try:
            status = httpx.get(f"https://{server['barn']}/v1/status", timeout=2, verify=up_tls())
            if status.json().get("state") == "leader":
                return server
        except httpx.HTTPError:
            continue
    raise AssertionError("no leader")


def _post(apis: list[str], body: dict[str, object]) -> str:
    """Submit through any live server; retried on a dead one or an unknown outcome (503)."""
    deadline = time.monotonic() + 60
    while True:
        for api in apis:
            try:
                answer = httpx.post(api + "/v1/jobs", json=body, timeout=10, headers=admin_headers(), verify=up_tls())
            except httpx.TransportError:
                continue
            if answer.status_code == 201:
                return str(answer.json()["job"]["id"])
        assert time.monotonic() < deadline, "no server accepted a submission for 60 s"
        time.sleep(0.2)


def _job_states(client: httpx.Client, api: str) -> dict[str, str] | None:
    """Every job's state, page after page (None: a page was refused)."""
    states: dict[str, str] = {}
    after = None
    for _ in range(100):  # (a page holds up to 5,000: 2,000 jobs are one)
        answer = client.get(api + "/v1/jobs", params={"limit": 5000} | ({"after": after} if after else {}))
        if answer.status_code != 200:
            return None
        page = answer.json()
        states.update({j["id"]: j["state"] for j in page["jobs"]})
        if (after := page["next"]) is None:
            return states
    raise AssertionError("GET /v1/jobs: its pages never ended")


def test_jobs_survive_an_agents_death_the_leaders_pause_and_its_death(run_cli: CliRunner, tmp_path: Path) -> None:
    up = run_cli("up", "--servers", "3", "--agents", "2", "--json", "--dir", str(cluster_folder(tmp_path)))
    assert up.returncode == 0, up.stderr
    cluster = json.loads(up.stdout)
    apis: list[str] = cluster["api"]
    accepted: list[str] = []
    paused: list[dict[str, object]] = []
    lock = threading.Lock()
    try:
        began = time.monotonic()

        def submit(i: int) -> None:
            job = _post(apis, {"herd": "default", "command": ["/bin/sh", "-c", f"exit {i % 2}"]})
            with lock:
                accepted.append(job)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(submit, i) for i in range(JOBS)]
            while not all(f.done() for f in futures):
                done = sum(f.done() for f in futures)
                if done > JOBS // 4 and cluster["agents"][0].get("killed") is None:
                    os.killpg(cluster["agents"][0]["pid"], signal.SIGKILL)
                    cluster["agents"][0]["killed"] = True
                if done > JOBS * 3 // 8 and not paused:  # (the server only: its member runs on)
                    paused.append(_leading(cluster["servers"]))
                    os.kill(paused[0]["pid"], signal.SIGSTOP)  # type: ignore[arg-type]
                    threading.Timer(PAUSE, os.kill, (paused[0]["pid"], signal.SIGCONT)).start()
                if done > JOBS // 2 and not any(s.get("killed") for s in cluster["servers"]):
                    leader = _leading(cluster["servers"])
                    os.killpg(leader["pid"], signal.SIGKILL)  # type: ignore[arg-type]
                    leader["killed"] = True
                assert time.monotonic() - began < SUBMIT_DEADLINE, "submissions took too long"
                time.sleep(0.2)
            for future in futures:
                future.result()
        assert len(accepted) == JOBS == len(set(accepted))

        live = [s["api"] for s in cluster["servers"] if not s.get("killed")]
        deadline = time.monotonic() + FINISH_DEADLINE
        with httpx.Client(timeout=30, headers=admin_headers(), verify=up_tls()) as client:
            while True:
                states = _job_states(client, str(live[0]))
                if states is None:  # (a 503 while the Barn elects: ask again)
                    assert time.monotonic() < deadline, "GET /v1/jobs kept failing"
                    time.sleep(1.0)
                    continue
                if all(states.get(job) in FINAL for job in accepted):
                    break
                assert time.monotonic() < deadline, (
                    f"{sum(states.get(j) not in FINAL for j in accepted)} jobs never ended"
                )
                time.sleep(1.0)
            for job_id in accepted:  # exactly one final state each, never two successes
                got = client.get(f"{live[0]}/v1/jobs/{job_id}")
                for _ in range(5):  # (a 503 while the Barn elects, as _job_states takes it: ask again)
                    if got.status_code != 503:
                        break
                    time.sleep(1.0)
                    got = client.get(f"{live[0]}/v1/jobs/{job_id}")
                if got.status_code != 200:  # (the server's log says why)
                    server = next(s for s in cluster["servers"] if s["api"] == live[0])
                    log_tail = (cluster_folder(tmp_path) / f"{server['name']}.log").read_text()[-3000:]
                    raise AssertionError((job_id, got.status_code, got.text[:300], log_tail))
                answer = got.json()
                transitions = answer["tasks"][0]["transitions"]
                finals = [t["state"] for t in transitions if t["state"] in FINAL]
                assert len(finals) == 1, (job_id, transitions)
                expected = "SUCCEEDED" if answer["tasks"][0]["command"][-1] == "exit 0" else "FAILED"
                assert answer["job"]["state"] == finals[0] == expected, (job_id, transitions)
    finally:
        for server in paused:
            with contextlib.suppress(ProcessLookupError):  # (killed since: it led again)
                os.kill(server["pid"], signal.SIGCONT)  # type: ignore[arg-type]
        run_cli("down")
