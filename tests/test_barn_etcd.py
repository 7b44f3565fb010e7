"""The ``etcd`` Barn driver against a real 3-member etcd (Debian's ``etcd-server``, started
here on loopback): the whole BarnConformance suite, a leader answering ``leads``, and the
cluster's own store (herds, jobs, tasks through the lifecycle) on it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from barn_cluster import free_ports
from fixture_types import CliRunner
from runink_processes import cluster_auth, node_auth, ready, start_runink

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Herd, RunState
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.interfaces.barn import BarnBackend
from runink.testing.barn import COMPACTION_HISTORY, BarnConformance, take


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three etcd members on loopback; yields their client endpoints."""
    binary = shutil.which("etcd")
    if binary is None:
        pytest.skip("no etcd binary (Debian's `etcd-server` package; .ci/run installs it)")
    root = tmp_path_factory.mktemp("etcd")
    ports = free_ports(6)
    names = ["e0", "e1", "e2"]
    client = {n: f"127.0.0.1:{ports[2 * i]}" for i, n in enumerate(names)}
    peer = {n: f"127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names)}
    initial = ",".join(f"{n}=http://{peer[n]}" for n in names)
    processes = []
    for n in names:
        command = [
            binary, "--name", n, "--data-dir", str(root / n),
            "--listen-client-urls", f"http://{client[n]}", "--advertise-client-urls", f"http://{client[n]}",
            "--listen-peer-urls", f"http://{peer[n]}", "--initial-advertise-peer-urls", f"http://{peer[n]}",
            "--initial-cluster", initial, "--initial-cluster-state", "new", "--log-level", "error",
        ]  # fmt: skip
        log = (root / f"{n}.log").open("w")
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
    endpoints = [client[n] for n in names]
    try:
        deadline = time.monotonic() + 60
        barn = load_driver(BarnBackend, "etcd", {"endpoints": endpoints, "timeout": 5.0})
        try:
            while True:
                try:
                    barn.revision()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            barn.close()
        yield endpoints
    finally:
        for process in processes:  # (killed: a member told to stop waits ~7 s on its stopping peers)
            process.kill()
        for process in processes:
            process.wait(10)


class TestEtcdConformance(BarnConformance):
    driver_name = "etcd"

    @pytest.fixture
    def barn(self, etcd: list[str]) -> Iterator[BarnBackend]:
        backend: BarnBackend = load_driver(
            BarnBackend, "etcd", {"endpoints": etcd, "history": COMPACTION_HISTORY, "timeout": 10.0}
        )
        yield backend
        backend.close()


def test_one_member_leads_and_a_dead_endpoint_is_skipped(etcd: list[str]) -> None:
    led = []
    for endpoint in etcd:
        barn: Any = load_driver(BarnBackend, "etcd", {"endpoints": [endpoint]})
        try:
            led.append(barn.leads())
        finally:
            barn.close()
    assert led.count(True) == 1
    (dead,) = free_ports(1)
    barn = load_driver(BarnBackend, "etcd", {"endpoints": [f"127.0.0.1:{dead}", *etcd], "timeout": 3.0})
    try:
        assert barn.put("/test/failover", b"x") > 0 and barn.get("/test/failover") is not None
    finally:
        barn.close()
    watcher = load_driver(BarnBackend, "etcd", {"endpoints": [f"127.0.0.1:{dead}", *etcd], "timeout": 3.0})
    try:  # a watch goes past the dead endpoint too
        events = watcher.watch("/test/failover-watch/", 0)
        revision = watcher.put("/test/failover-watch/k", b"seen")
        (event,) = take(events, 1)
        assert event.kv.key == "/test/failover-watch/k" and event.revision == revision
    finally:
        watcher.close()


def test_the_clusters_store_and_lifecycle_run_on_etcd(etcd: list[str], tmp_path: Path) -> None:
    barn = load_driver(BarnBackend, "etcd", {"endpoints": etcd})
    try:
        store = ClusterStore(barn)
        life = Lifecycle(store)
        herd = f"h{int(time.time() * 1000) % 10**9}"
        store.create_herd(Herd(name=herd))
        job = life.submit_command(herd, ["/bin/true"])
        assert store.job(job.id).record.state is RunState.PENDING
        assert [v.record.id for v in store.job_tasks(job)] == job.tasks
        assert life.cancel(job.id).state is RunState.CANCELLED
        assert [j.id for j in store.jobs(herd)] == [job.id]
    finally:
        barn.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the agent's linux executor needs root")
def test_two_servers_on_one_etcd_one_schedules_and_a_job_runs(
    etcd: list[str], run_cli: CliRunner, tmp_path: Path
) -> None:
    """`runink server --barn etcd://...` (no Barn member of its own): two servers share the
    etcd, one holds the leadership lease and schedules; an agent on the other runs a job."""
    ports = free_ports(4)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "RUNINK_SERVER": f"127.0.0.1:{ports[0]}"}
    barn = "etcd://" + ",".join(etcd)
    auth = cluster_auth(tmp_path, env)
    processes = []
    try:
        for number in range(2):
            api, grpc = ports[2 * number], ports[2 * number + 1]
            args = ["server", "--api", f"127.0.0.1:{api}", "--agents", f"127.0.0.1:{grpc}", "--barn", barn, *auth]
            server = start_runink(args, tmp_path / f"s{number}.log", env)
            processes.append(server)
            ready(server, tmp_path / f"s{number}.log")
        agent_args = [
            "agent",
            "--servers",
            f"127.0.0.1:{ports[3]}",
            "--node-id",
            "e1",
            "--work-dir",
            str(tmp_path / "a"),
        ]
        agent = start_runink([*agent_args, *node_auth(tmp_path, "e1")], tmp_path / "a.log", env)
        processes.append(agent)
        ready(agent, tmp_path / "a.log")
        assert run_cli("herd", "create", "on-etcd", env=env).returncode == 0
        ran = run_cli("exec", "--herd", "on-etcd", "--", "/bin/sh", "-c", "echo on etcd", env=env)
        assert ran.returncode == 0 and ran.stdout == "on etcd\n", ran.stderr
        client = load_driver(BarnBackend, "etcd", {"endpoints": etcd})
        try:
            holder = client.get("/cluster/leader")
        finally:
            client.close()
        assert holder is not None  # one server holds the leadership, on a lease
        pid = int(holder.value.decode().split(":")[1])
        assert pid in [p.pid for p in processes[:2]]  # (hostname:pid:random of the server holding it)
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:  # (a stop that hangs fails the test, and leaves nothing behind)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
                raise
    bad = run_cli("server", "--barn", "redis://x:1")
    assert bad.returncode == 2 and "expected etcd://HOST:PORT" in bad.stderr


def test_over_mutual_tls_with_a_client_certificate_and_never_without(tmp_path: Path) -> None:
    """One etcd member asking for client certificates of a CA (`--client-cert-auth`): the
    driver with `tls_ca`/`tls_cert`/`tls_key` works; without its certificate, or trusting
    another CA, it is refused."""
    from runink.core.errors import BarnError
    from runink.core.server import pki

    binary = shutil.which("etcd")
    if binary is None:
        pytest.skip("no etcd binary (Debian's `etcd-server` package; .ci/run installs it)")
    pki.create_ca(tmp_path / "ca")
    member = pki.issue(tmp_path / "ca", tmp_path, "member", sans=["127.0.0.1"], usage="both")
    client = pki.issue(tmp_path / "ca", tmp_path, "client", sans=["127.0.0.1"], usage="client")
    pki.create_ca(tmp_path / "other")
    client_port, peer_port = free_ports(2)
    url, peer = f"https://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    command = [
        binary, "--name", "t0", "--data-dir", str(tmp_path / "data"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"t0={peer}", "--log-level", "error",
        "--cert-file", str(member.cert), "--key-file", str(member.key),
        "--trusted-ca-file", str(tmp_path / "ca" / "ca.pem"), "--client-cert-auth",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=(tmp_path / "etcd.log").open("w"))
    endpoint = f"127.0.0.1:{client_port}"
    secured = {"tls_ca": str(tmp_path / "ca" / "ca.pem"), "tls_cert": str(client.cert), "tls_key": str(client.key)}
    try:
        barn = load_driver(BarnBackend, "etcd", {"endpoints": [endpoint], "timeout": 3.0, **secured})
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert barn.put("/tls/k", b"v") > 0
                    break
                except BarnError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            found = barn.get("/tls/k")
            assert found is not None and found.value == b"v"
        finally:
            barn.close()
        for options in (
            {"tls_ca": secured["tls_ca"]},  # no client certificate
            {**secured, "tls_ca": str(tmp_path / "other" / "ca.pem")},  # trusting another CA
            {},  # plaintext
        ):
            stranger = load_driver(BarnBackend, "etcd", {"endpoints": [endpoint], "timeout": 3.0, **options})
            try:
                with pytest.raises(BarnError):
                    stranger.get("/tls/k")
            finally:
                stranger.close()
    finally:
        process.terminate()
        process.wait(10)
