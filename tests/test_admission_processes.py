"""Admission's counters on a real raft cluster (`runink up --servers 3`): a herd's submission
bucket is right after the leading server is SIGKILLed in the middle of a burst of 8 clients.

Right means: every job a client was told was created exists; no job exists that took no token;
and once the burst is over, exactly the tokens no job took are left (the herd's rate refills
less than one token over the test).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
from fixture_types import CliRunner
from runink_processes import admin_headers, up_cluster, up_tls

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="`runink up` runs its agents' linux executor as root")

BURST = 12
RATE = 0.005  # jobs per second: under 0.2 of a token over the test


def _leader(servers: list[dict[str, object]]) -> dict[str, object]:
    for server in servers:
        try:
            status = httpx.get(f"https://{server['barn']}/v1/status", timeout=5, verify=up_tls()).json()
        except httpx.HTTPError:
            continue
        if status.get("state") == "leader":
            return server
    raise AssertionError("no leader")


@pytest.mark.slow  # (chaos: `tox -e slow`)
def test_the_rate_bucket_is_right_after_the_leader_is_killed_mid_burst(run_cli: CliRunner, tmp_path: Path) -> None:
    with up_cluster(run_cli, tmp_path, 3, 0) as cluster:
        env = cluster.env
        made = run_cli("herd", "create", "burst", "--rate", str(RATE), "--burst", str(BURST), env=env)
        assert made.returncode == 0, made.stderr
        apis: list[str] = list(cluster.started["api"])
        headers = admin_headers(env)
        context = json.loads((Path(env["XDG_CONFIG_HOME"]) / "runink" / "cluster.json").read_text())
        ca = ssl.create_default_context(cafile=context["ca"])
        created: list[str] = []  # job ids the API answered 201 for
        refused: list[int] = []
        unclear: list[str] = []  # no answer (the server died under it): created or not, unknown
        unexpected: list[str] = []
        lock = threading.Lock()
        dead: set[str] = set()
        killed = threading.Event()
        deadline = time.monotonic() + 60

        def client(number: int) -> None:
            with httpx.Client(headers=headers, verify=ca, timeout=20) as http:
                tries = 0
                while time.monotonic() < deadline and tries < 60:
                    tries += 1
                    live = [a for a in apis if a not in dead]
                    api = live[(number + tries) % len(live)]
                    try:
                        answer = http.post(f"{api}/v1/jobs", json={"herd": "burst", "command": ["/bin/true"]})
                    except httpx.HTTPError as exc:
                        with lock:
                            unclear.append(f"{api}: {type(exc).__name__}")
                            if killed.is_set():
                                dead.add(api)
                        continue
                    with lock:
                        if answer.status_code == 201:
                            body = answer.json()
                            created.append(body["job"]["id"] if "job" in body else body["id"])
                        elif answer.status_code == 429:
                            refused.append(1)
                        elif answer.status_code >= 500:  # (a leader change under the request)
                            unclear.append(f"{answer.status_code} {answer.text[:200]}")
                        else:
                            unexpected.append(f"{answer.status_code} {answer.text[:200]}")
                    if answer.status_code == 429 and killed.is_set():
                        return  # the bucket is empty after the kill: this client is done
                    time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        while len(created) < BURST // 2 and time.monotonic() < deadline:  # mid-burst
            time.sleep(0.01)
        leader = _leader(cluster.started["servers"])
        os.killpg(int(leader["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        dead.add(str(leader["api"]))
        killed.set()
        for thread in threads:
            thread.join(90)
        assert not unexpected, unexpected[:3]
        assert refused, "the bucket never ran dry"
        # every acknowledged job is there, and nothing else took a token: no further job fits
        live = [a for a in apis if a not in dead]
        with httpx.Client(headers=headers, verify=ca, timeout=20) as http:
            listed = http.get(f"{live[0]}/v1/jobs", params={"herd": "burst"}).json()
            jobs = {j["id"] for j in (listed["jobs"] if isinstance(listed, dict) else listed)}
            assert set(created) <= jobs, (sorted(set(created) - jobs), unclear)
            assert len(jobs) <= BURST, (len(jobs), len(created), unclear)
            more = 0
            for _ in range(BURST + 2):  # what is left of the bucket: exactly the tokens no job took
                answer = http.post(f"{live[0]}/v1/jobs", json={"herd": "burst", "command": ["/bin/true"]})
                if answer.status_code == 429:
                    assert int(answer.headers["Retry-After"]) >= 1
                    break
                assert answer.status_code == 201, answer.text
                more += 1
        assert len(jobs) + more in (BURST, BURST + 1), (len(jobs), more, len(created), unclear)
