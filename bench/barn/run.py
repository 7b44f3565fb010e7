"""bench/barn: the raft Barn against etcd, side by side in one run.

    python bench/barn/run.py            # 1,000 sequential puts, 8 and 64 concurrent clients
    python bench/barn/run.py --quick

Both are 3 members on loopback, durable (etcd fsyncs its WAL; the Barn msyncs its journal),
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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from runink.testing.barn_cluster import Cluster, free_ports

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
    args = parser.parse_args()
    count, per_client = (200, 50) if args.quick else (1000, 200)
    if shutil.which("etcd") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server"], check=True)
    with tempfile.TemporaryDirectory(prefix="runink-bench-barn-") as tmp:
        root = Path(tmp)
        etcd = Etcd(root / "etcd")
        (root / "barn").mkdir()
        barn = Cluster(root / "barn")
        try:
            barn.start()
            etcd_leader, barn_leader = etcd.leader(), barn.leader()
            results: dict[str, dict[str, object]] = {}
            for system in ("etcd", "barn"):
                if system == "etcd":

                    def make() -> Callable[[str], None]:
                        return EtcdClient(etcd.client[etcd_leader]).put

                    def make_reader() -> Callable[[str], None]:
                        return EtcdClient(etcd.client[etcd_leader]).get
                else:

                    def make() -> Callable[[str], None]:
                        client = barn.client(barn_leader)

                        def put_one(key: str) -> None:
                            client.put(key, VALUE)

                        return put_one

                    def make_reader() -> Callable[[str], None]:
                        return barn.client(barn_leader).get

                put = make()
                for i in range(50):  # warm-up
                    put(f"/warm/{system}/{i}")
                p50, p99 = sequential(put, count, f"{system}-seq")
                results[system] = {
                    "p50": p50,
                    "p99": p99,
                    8: concurrent_rate(make, 8, per_client, f"{system}-8"),
                    64: concurrent_rate(make, 64, per_client // 4, f"{system}-64"),
                    # reads of keys written above (every read a linearizable one)
                    "reads": concurrent_rate(make_reader, 64, per_client // 4, f"{system}-64"),
                }
        finally:
            barn.stop()
            etcd.stop()
    e, b = results["etcd"], results["barn"]
    machine = f"{os.cpu_count()} cores · Linux {platform.release()}"
    print(f"# {dt.date.today()} · {machine} · etcd 3 members vs Barn 3 members, loopback\n")
    print("| measure | etcd | Barn | Barn ÷ etcd |")
    print("| --- | ---: | ---: | ---: |")
    for label, key, unit in (("sequential put p50", "p50", "ms"), ("sequential put p99", "p99", "ms")):
        print(f"| {label} ({count} puts) | {e[key]:.2f} {unit} | {b[key]:.2f} {unit} | {b[key] / e[key]:.2f} |")  # type: ignore[operator]
    for clients in (8, 64):
        print(f"| puts/s, {clients} clients | {e[clients]:,.0f} | {b[clients]:,.0f} | {b[clients] / e[clients]:.2f} |")  # type: ignore[operator]
    e_r, b_r = e["reads"], b["reads"]
    print(f"| linearizable gets/s, 64 clients | {e_r:,.0f} | {b_r:,.0f} | {b_r / e_r:.2f} |")  # type: ignore[operator]


if __name__ == "__main__":
    main()
