"""bench/barn: the raft Barn against etcd, side by side in one run, with the Barn API on that
etcd (the `etcd` driver) beside them.

    python bench/barn/run.py            # 1,000 sequential puts; 8 x 200 puts, 64 x 100 puts and gets, 3 turns
    python bench/barn/run.py --quick
    python bench/barn/run.py --secret     # the Barn's Raft traffic sealed with a shared secret
    python bench/barn/run.py --tls        # both with mutual TLS between members and to clients

Both are 3 members on loopback, durable (etcd fsyncs its WAL; the Barn fdatasyncs its journal),
and both are driven the same way: Python threads, one keep-alive HTTP/1.1 connection each,
JSON bodies (etcd's v3 JSON gateway, ``POST /v3/kv/put``; the Barn's ``POST /v1/put`` through
its client), 100-byte values, every request to the leader. etcd comes from the Debian package
``etcd-server`` (installed with apt-get if missing).

With ``--tls`` both run mutual TLS everywhere, with certificates of one CA made by
``runink.core.server.pki``: etcd with ``--client-cert-auth`` and ``--peer-client-cert-auth``
over https URLs, the Barn with ``--tls-cert/--tls-key/--tls-ca`` (TLS between members and on
its HTTP API); every client presents a client certificate of the CA and checks the server's.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the project's own Raft harness (real servers in network namespaces) lives with its tests
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from barn_cluster import Cluster, free_ports

from runink.core.drivers import load_driver
from runink.core.interfaces import BarnBackend
from runink.core.server import pki

VALUE = b"v" * 100


class Tls:
    """One CA, one certificate for every member of both systems (usage both, 127.0.0.1) and one
    for the clients (both usages too: a server's, the only kind the Barn's HTTP API serves)."""

    def __init__(self, root: Path) -> None:
        pki.create_ca(root)
        self.ca = str(root / "ca.pem")
        self.cert, self.key = map(str, pki.issue(root, root, "member", sans=["127.0.0.1"], usage="both"))
        self.client_cert, self.client_key = map(str, pki.issue(root, root, "client", sans=["127.0.0.1"], usage="both"))

    def client_context(self) -> ssl.SSLContext:
        return pki.client_context(self.client_cert, self.client_key, self.ca)

    def barn_options(self) -> tuple[str, ...]:
        return ("--tls-cert", self.cert, "--tls-key", self.key, "--tls-ca", self.ca)

    def barn_client_options(self) -> dict[str, str]:
        return {"tls_ca": self.ca, "tls_cert": self.client_cert, "tls_key": self.client_key}


class BarnCluster(Cluster):
    """The harness's group, whose clients speak HTTPS with a client certificate under ``tls``."""

    def __init__(self, root: Path, options: tuple[str, ...], tls: Tls | None) -> None:
        super().__init__(root, options=options)
        self.tls = tls

    def client(self, *names: str, timeout: float = 10.0) -> Any:
        options: dict[str, object] = {"endpoints": [self.http[n] for n in names or self.names], "timeout": timeout}
        return load_driver(BarnBackend, "raft", {**options, **(self.tls.barn_client_options() if self.tls else {})})


def _connection(address: str, context: ssl.SSLContext | None, timeout: float) -> http.client.HTTPConnection:
    host, _, port = address.rpartition(":")
    if context is None:
        return http.client.HTTPConnection(host, int(port), timeout=timeout)
    return http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)


class Etcd:
    def __init__(self, root: Path, tls: Tls | None = None) -> None:
        ports = free_ports(6)
        self.names = ["e0", "e1", "e2"]
        self.client = {n: f"127.0.0.1:{ports[2 * i]}" for i, n in enumerate(self.names)}
        self.peer = {n: f"127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(self.names)}
        self.context = tls.client_context() if tls else None
        scheme = "https" if tls else "http"
        initial = ",".join(f"{n}={scheme}://{self.peer[n]}" for n in self.names)
        secured = [
            "--cert-file", tls.cert, "--key-file", tls.key, "--trusted-ca-file", tls.ca, "--client-cert-auth",
            "--peer-cert-file", tls.cert, "--peer-key-file", tls.key, "--peer-trusted-ca-file", tls.ca,
            "--peer-client-cert-auth",
        ] if tls else []  # fmt: skip
        self.processes = []
        for n in self.names:
            client, peer = f"{scheme}://{self.client[n]}", f"{scheme}://{self.peer[n]}"
            command = [
                "etcd", "--name", n, "--data-dir", str(root / n),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", initial, "--initial-cluster-state", "new", "--log-level", "error", *secured,
            ]  # fmt: skip
            self.processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def leader(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in self.names:
                try:
                    status = _post(self.client[name], "/v3/maintenance/status", {}, self.context)
                    if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                        return name
                except (OSError, ValueError, KeyError):
                    pass
            time.sleep(0.2)
        raise SystemExit("etcd did not elect a leader")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(10)


def _post(address: str, path: str, body: dict[str, object], context: ssl.SSLContext | None) -> dict[str, object]:
    connection = _connection(address, context, 10)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        return dict(json.loads(connection.getresponse().read()))
    finally:
        connection.close()


class EtcdClient:
    """One thread's keep-alive connection to etcd's JSON gateway."""

    def __init__(self, address: str, context: ssl.SSLContext | None = None) -> None:
        self.connection = _connection(address, context, 30)
        self.value = base64.b64encode(VALUE).decode()

    def put(self, key: str) -> None:
        self._post("/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(), "value": self.value})

    def get(self, key: str) -> None:  # linearizable: etcd's default for range
        self._post("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})

    def _post(self, path: str, body: dict[str, str]) -> None:
        self.connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        answer = self.connection.getresponse()
        data = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"etcd answered {answer.status}: {data[:200]!r}")


def sequential(put: Callable[[str], None], count: int, tag: str) -> tuple[float, float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        put(f"/bench/{tag}/{i}")
        samples.append((time.perf_counter() - started) * 1000)
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def concurrent_rate(make: Callable[[], Callable[[str], None]], clients: int, per_client: int, tag: str) -> float:
    putters = [make() for _ in range(clients)]

    def run(n: int) -> None:
        for i in range(per_client):
            putters[n](f"/bench/{tag}/{n}/{i}")

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    return clients * per_client / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--secret", action="store_true", help="the Barn with a shared secret (sealed Raft traffic)")
    parser.add_argument("--tls", action="store_true", help="both with mutual TLS between members and to clients")
    args = parser.parse_args()
    count, per_client, rounds = (200, 50, 1) if args.quick else (1000, 200, 3)
    if shutil.which("etcd") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server"], check=True)
    with tempfile.TemporaryDirectory(prefix="runink-bench-barn-") as tmp:
        root = Path(tmp)
        tls = Tls(root / "pki") if args.tls else None
        etcd = Etcd(root / "etcd", tls)
        (root / "barn").mkdir()
        options: tuple[str, ...] = tls.barn_options() if tls else ()
        if args.secret:
            (root / "secret").write_text(os.urandom(24).hex())
            options += ("--secret-file", str(root / "secret"))
        barn = BarnCluster(root / "barn", options, tls)
        try:
            barn.start()
            etcd_leader, barn_leader = etcd.leader(), barn.leader()

            def barn_putter() -> Callable[[str], None]:
                client = barn.client(barn_leader)
                return lambda key: client.put(key, VALUE) and None

            def etcd_driver() -> Any:  # the Barn API through the `etcd` driver, on the same etcd
                secured = {"tls_ca": tls.ca, "tls_cert": tls.client_cert, "tls_key": tls.client_key} if tls else {}
                return load_driver(BarnBackend, "etcd", {"endpoints": [etcd.client[etcd_leader]], **secured})

            def driver_putter() -> Callable[[str], None]:
                client = etcd_driver()
                return lambda key: client.put(key, VALUE) and None

            makers: dict[str, dict[str, Callable[[], Callable[[str], None]]]] = {
                "etcd": {
                    "put": lambda: EtcdClient(etcd.client[etcd_leader], etcd.context).put,
                    "get": lambda: EtcdClient(etcd.client[etcd_leader], etcd.context).get,
                },
                "barn": {"put": barn_putter, "get": lambda: barn.client(barn_leader).get},
                "driver": {
                    "put": driver_putter,
                    "get": lambda: etcd_driver().get,
                },
            }
            results: dict[str, dict[object, float]] = {"etcd": {}, "barn": {}, "driver": {}}
            for system, make in makers.items():
                put = make["put"]()
                for i in range(50):  # warm-up
                    put(f"/warm/{system}/{i}")
                results[system]["p50"], results[system]["p99"] = sequential(put, count, f"{system}-seq")
            # throughput: the two systems take turns, each measure ``rounds`` times (median), so
            # the drift of a shared machine falls on both alike
            for measure, clients, each, kind in ((8, 8, per_client, "put"), (64, 64, per_client // 2, "put"),
                                                 ("reads", 64, per_client // 2, "get")):  # fmt: skip
                rates: dict[str, list[float]] = {"etcd": [], "barn": [], "driver": []}
                for turn in range(rounds):
                    systems = ["etcd", "barn", "driver"]
                    order = systems[turn % 3 :] + systems[: turn % 3]  # (each goes first in turn)
                    for system in order:
                        # reads go to keys the 64-client writes of this turn wrote
                        tag = f"{system}-64-{turn}" if kind == "get" else f"{system}-{measure}-{turn}"
                        rates[system].append(concurrent_rate(makers[system][kind], clients, each, tag))
                for system, measured in rates.items():
                    results[system][measure] = statistics.median(measured)
        finally:
            barn.stop()
            etcd.stop()
    e, b, d = results["etcd"], results["barn"], results["driver"]
    machine = f"{os.cpu_count()} cores · Linux {platform.release()}"
    sealed = " (Raft traffic sealed with a shared secret)" if args.secret else ""
    sealed += " (both: mutual TLS between members and to clients)" if args.tls else ""
    print(f"# {dt.date.today()} · {machine} · etcd 3 members vs Barn 3 members{sealed}, loopback")
    print(f"# throughput: median of {rounds} turns each, the systems alternating\n")
    print("| measure | etcd (JSON gateway) | Barn (raft) | Barn ÷ etcd | Barn API on etcd (`etcd` driver, gRPC) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, key in (("sequential put p50", "p50"), ("sequential put p99", "p99")):
        row = (
            f"| {label} ({count} puts) | {e[key]:.2f} ms | {b[key]:.2f} ms | {b[key] / e[key]:.2f} | {d[key]:.2f} ms |"
        )
        print(row)
    for label, key in (
        ("puts/s, 8 clients", 8),
        ("puts/s, 64 clients", 64),
        ("linearizable gets/s, 64 clients", "reads"),
    ):
        print(f"| {label} | {e[key]:,.0f} | {b[key]:,.0f} | {b[key] / e[key]:.2f} | {d[key]:,.0f} |")


if __name__ == "__main__":
    main()
