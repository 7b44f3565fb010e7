"""bench/barn: the raft Barn against etcd, side by side in one run.

    python bench/barn/run.py            # 1,000 sequential puts; 8 x 200 puts, 64 x 100 puts and gets, 3 turns
    python bench/barn/run.py --quick
    python bench/barn/run.py --secret     # the Barn's Raft traffic sealed with a shared secret

Both are 3 members on loopback, durable (etcd fsyncs its WAL; the Barn fdatasyncs its journal),
and both are driven the same way: Python threads, one keep-alive HTTP/1.1 connection each,
JSON bodies (etcd's v3 JSON gateway, ``POST /v3/kv/put``; the Barn's ``POST /v1/put`` through
its client), 100-byte values, every request to the leader. etcd comes from the Debian package
``etcd-server`` (installed with apt-get if missing).
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# the project's own Raft harness (real servers in network namespaces) lives with its tests
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from barn_cluster import Cluster, free_ports

VALUE = b"v" * 100


class Etcd:
    def __init__(self, root: Path) -> None:
        ports = free_ports(6)
        self.names = ["e0", "e1", "e2"]
        self.client = {n: f"127.0.0.1:{ports[2 * i]}" for i, n in enumerate(self.names)}
        self.peer = {n: f"127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(self.names)}
        initial = ",".join(f"{n}=http://{self.peer[n]}" for n in self.names)
        self.processes = []
        for n in self.names:
            command = [
                "etcd", "--name", n, "--data-dir", str(root / n),
                "--listen-client-urls", f"http://{self.client[n]}", "--advertise-client-urls", f"http://{self.client[n]}",
                "--listen-peer-urls", f"http://{self.peer[n]}", "--initial-advertise-peer-urls", f"http://{self.peer[n]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new", "--log-level", "error",
            ]  # fmt: skip
            self.processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def leader(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in self.names:
                try:
                    status = _post(self.client[name], "/v3/maintenance/status", {})
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


def _post(address: str, path: str, body: dict[str, object]) -> dict[str, object]:
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        return dict(json.loads(connection.getresponse().read()))
    finally:
        connection.close()


class EtcdClient:
    """One thread's keep-alive connection to etcd's JSON gateway."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)
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
    args = parser.parse_args()
    count, per_client, rounds = (200, 50, 1) if args.quick else (1000, 200, 3)
    if shutil.which("etcd") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server"], check=True)
    with tempfile.TemporaryDirectory(prefix="runink-bench-barn-") as tmp:
        root = Path(tmp)
        etcd = Etcd(root / "etcd")
        (root / "barn").mkdir()
        options: tuple[str, ...] = ()
        if args.secret:
            (root / "secret").write_text(os.urandom(24).hex())
            options = ("--secret-file", str(root / "secret"))
        barn = Cluster(root / "barn", options=options)
        try:
            barn.start()
            etcd_leader, barn_leader = etcd.leader(), barn.leader()

            def barn_putter() -> Callable[[str], None]:
                client = barn.client(barn_leader)
                return lambda key: client.put(key, VALUE) and None

            makers: dict[str, dict[str, Callable[[], Callable[[str], None]]]] = {
                "etcd": {
                    "put": lambda: EtcdClient(etcd.client[etcd_leader]).put,
                    "get": lambda: EtcdClient(etcd.client[etcd_leader]).get,
                },
                "barn": {"put": barn_putter, "get": lambda: barn.client(barn_leader).get},
            }
            results: dict[str, dict[object, float]] = {"etcd": {}, "barn": {}}
            for system, make in makers.items():
                put = make["put"]()
                for i in range(50):  # warm-up
                    put(f"/warm/{system}/{i}")
                results[system]["p50"], results[system]["p99"] = sequential(put, count, f"{system}-seq")
            # throughput: the two systems take turns, each measure ``rounds`` times (median), so
            # the drift of a shared machine falls on both alike
            for measure, clients, each, kind in ((8, 8, per_client, "put"), (64, 64, per_client // 2, "put"),
                                                 ("reads", 64, per_client // 2, "get")):  # fmt: skip
                rates: dict[str, list[float]] = {"etcd": [], "barn": []}
                for turn in range(rounds):
                    order = ["etcd", "barn"] if turn % 2 == 0 else ["barn", "etcd"]
                    for system in order:
                        # reads go to keys the 64-client writes of this turn wrote
                        tag = f"{system}-64-{turn}" if kind == "get" else f"{system}-{measure}-{turn}"
                        rates[system].append(concurrent_rate(makers[system][kind], clients, each, tag))
                for system, measured in rates.items():
                    results[system][measure] = statistics.median(measured)
        finally:
            barn.stop()
            etcd.stop()
    e, b = results["etcd"], results["barn"]
    machine = f"{os.cpu_count()} cores · Linux {platform.release()}"
    sealed = " (Raft traffic sealed with a shared secret)" if args.secret else ""
    print(f"# {dt.date.today()} · {machine} · etcd 3 members vs Barn 3 members{sealed}, loopback")
    print(f"# throughput: median of {rounds} turns each, the systems alternating\n")
    print("| measure | etcd | Barn | Barn ÷ etcd |")
    print("| --- | ---: | ---: | ---: |")
    for label, key in (("sequential put p50", "p50"), ("sequential put p99", "p99")):
        print(f"| {label} ({count} puts) | {e[key]:.2f} ms | {b[key]:.2f} ms | {b[key] / e[key]:.2f} |")
    for label, key in (
        ("puts/s, 8 clients", 8),
        ("puts/s, 64 clients", 64),
        ("linearizable gets/s, 64 clients", "reads"),
    ):
        print(f"| {label} | {e[key]:,.0f} | {b[key]:,.0f} | {b[key] / e[key]:.2f} |")


if __name__ == "__main__":
    main()
