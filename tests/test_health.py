"""Health: /healthz and /readyz on servers (the Barn answers) and agents (registered, heartbeats
taken); `runink up` waits on them; `runink doctor --cluster` checks a cluster end to end."""

from __future__ import annotations

import json
import select
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fixture_types import CliRunner
from runink_processes import up_cluster

from runink.core.agent.health import agent_readiness, serve_health
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.store import ClusterStore
from runink.core.errors import BarnError
from runink.core.server.api import create_app
from runink.plugins.barn.memory import MemoryBarn


class _NoQuorum(MemoryBarn):
    def revision(self) -> int:
        raise BarnError("no leader: 1 of 3 members reachable")


def test_a_server_is_alive_but_not_ready_while_its_barn_does_not_answer() -> None:
    for barn, ready in ((MemoryBarn(), 200), (_NoQuorum(), 503)):
        store = ClusterStore(barn)
        client = TestClient(create_app(Lifecycle(store), store))
        assert client.get("/healthz").json() == {"status": "alive"}  # no token needed
        answer = client.get("/readyz")
        assert answer.status_code == ready, answer.text
        if ready == 503:
            assert "the Barn: no leader: 1 of 3 members reachable" in answer.json()["detail"]
            assert answer.headers["Retry-After"] == "1"


class _Agent:
    incarnation = ""
    last_beat_ok: float | None = None


def _get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_an_agent_is_ready_once_registered_and_its_heartbeats_are_taken() -> None:
    agent = _Agent()
    server = serve_health("127.0.0.1", 0, agent_readiness(agent, stale=3.0))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert _get(base + "/healthz") == (200, {"status": "alive"})
        assert _get(base + "/readyz") == (503, {"status": "not ready", "detail": "not registered yet"})
        agent.incarnation = "i-1"
        assert _get(base + "/readyz")[1]["detail"] == "registered; no heartbeat accepted yet"
        agent.last_beat_ok = time.monotonic()
        assert _get(base + "/readyz")[0] == 200
        agent.last_beat_ok = time.monotonic() - 10
        status, body = _get(base + "/readyz")
        assert status == 503 and "no heartbeat accepted for 10s" in body["detail"]
        assert _get(base + "/metrics")[0] == 404
    finally:
        server.shutdown()


def test_runink_up_waits_for_readiness_and_doctor_checks_the_cluster(run_cli: CliRunner, tmp_path: Path) -> None:
    with up_cluster(run_cli, tmp_path, servers=1, agents=1) as up:
        context = json.loads((tmp_path / "xdg" / "runink" / "cluster.json").read_text())
        tls = ssl.create_default_context(cafile=context["ca"])
        with urllib.request.urlopen(up.started["api"][0] + "/readyz", context=tls, timeout=5) as answer:
            assert answer.status == 200 and json.loads(answer.read())["status"] == "ready"
        assert _get(f"http://{up.started['health']['agent-0']}/readyz")[0] == 200
        out = run_cli("doctor", "--cluster", "--json", env=up.env)
        assert out.returncode == 0, out.stdout + out.stderr
        checks = {c["check"]: c for c in json.loads(out.stdout)["checks"]}
        assert checks["nodes"]["ok"] and "1 of 1 ready: agent-0" in checks["nodes"]["detail"]
        assert checks["a job runs"]["ok"] and "SUCCEEDED" in checks["a job runs"]["detail"]
        assert all(c["ok"] for c in checks.values())
        missing = run_cli("doctor", "--cluster", "--herd", "nope", env=up.env)
        assert missing.returncode == 1 and "a job runs" in missing.stdout and "NO" in missing.stdout


def test_a_barn_that_does_not_answer_is_a_503_not_an_internal_error() -> None:
    """Seen under load: a read of a job timing out in the Barn answered 500; it is 503 now,
    and says whether trying again is safe."""

    class Away(ClusterStore):
        def job(self, *args: object, **kwargs: object) -> object:
            raise BarnError("no leader within 5s")

    away = Away(MemoryBarn())
    client = TestClient(create_app(Lifecycle(away), away), raise_server_exceptions=False)
    answer = client.get("/v1/jobs/job-1")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1", answer.text
    assert answer.json()["detail"] == "the Barn did not answer (no leader within 5s); try again"


def test_probes_and_scrapes_take_a_bounded_number_of_threads_and_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread per connection for as long as the client liked: 300 half-sent requests held
    300 threads (500 slow scrapes 455 MiB). Past MAX_CLIENTS a connection is closed at once,
    and one that sends nothing is closed after TIMEOUT; probes are answered after."""
    import socket
    import threading

    from runink.core import small_http

    monkeypatch.setattr(small_http, "TIMEOUT", 0.5)
    server = serve_health("127.0.0.1", 0, lambda: (True, "fine"))
    address = server.server_address[:2]
    threads = threading.active_count()
    try:
        silent = [socket.create_connection(address, timeout=5) for _ in range(small_http.MAX_CLIENTS + 20)]
        time.sleep(0.2)
        assert threading.active_count() <= threads + small_http.MAX_CLIENTS
        time.sleep(1.0)  # (the silent ones time out)
        ready, _, _ = select.select(silent, [], [], 0)
        closed = 0
        for sock in ready:
            try:
                closed += sock.recv(1024) == b""
            except OSError:  # (reset)
                closed += 1
        assert closed == len(silent)
        for sock in silent:
            sock.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{address[1]}/healthz", timeout=5) as answer:
            assert json.loads(answer.read()) == {"status": "alive"}
        assert threading.active_count() <= threads + 1
    finally:
        server.shutdown()
