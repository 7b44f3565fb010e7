"""bench/barn/gets: linearizable gets on a 3-member raft Barn (loopback, fsync on), to the leader.

    python bench/barn/gets.py                    # 1,000 sequential gets, then 4 processes x 16 threads x 200
    python bench/barn/gets.py --processes 1 --threads 64

Prints the sequential p50/p99, the concurrent gets/s and p50, and the leader's log length
before and after (a read that goes through the log grows it). bench/barn/run.py drives 64
threads from one Python process; here the clients can be spread over processes, so the
measure is the Barn's, not one client process's GIL.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from barn_cluster import Cluster

KEY, VALUE = "/bench/gets", b"v" * 100


def client_process(endpoint: str, shape: tuple[int, int], ready: Any, go: Any, results: Any) -> None:
    threads, gets = shape
    from runink.plugins.barn.raft.client import RaftBarn

    clients = [RaftBarn(endpoints=[endpoint], timeout=10) for _ in range(threads)]
    for barn in clients:
        barn.get(KEY)  # connected and warm before the clock starts
    latencies: list[float] = []

    def work(barn: Any) -> None:
        for _ in range(gets):
            start = time.perf_counter()
            barn.get(KEY)
            latencies.append(time.perf_counter() - start)

    workers = [threading.Thread(target=work, args=(barn,)) for barn in clients]
    ready.put(True)
    go.wait()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(latencies)


def ms(values: list[float], fraction: float) -> str:
    return f"{sorted(values)[int(fraction * (len(values) - 1))] * 1e3:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=1000, help="sequential gets (default 1000)")
    parser.add_argument("--processes", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--threads", type=int, default=16, help="threads per client process (default 16)")
    parser.add_argument("--gets", type=int, default=200, help="gets per thread (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runink-bench-gets-") as tmp:
        cluster = Cluster(Path(tmp))
        cluster.start()
        try:
            leader = cluster.leader()
            barn = cluster.client(leader)
            barn.put(KEY, VALUE)
            for _ in range(100):
                barn.get(KEY)
            log_before = cluster.status(leader)["log_len"]
            sequential = []
            for _ in range(args.sequential):
                start = time.perf_counter()
                barn.get(KEY)
                sequential.append(time.perf_counter() - start)
            barn.close()
            context = multiprocessing.get_context("spawn")
            ready, go, results = context.Queue(), context.Event(), context.Queue()
            endpoint = cluster.http[leader]
            processes = [
                context.Process(target=client_process, args=(endpoint, (args.threads, args.gets), ready, go, results))
                for _ in range(args.processes)
            ]
            for process in processes:
                process.start()
            for _ in processes:  # every process has connected and warmed up
                ready.get(timeout=60)
            start = time.perf_counter()
            go.set()
            concurrent: list[float] = []
            for _ in processes:
                concurrent += results.get(timeout=300)
            elapsed = time.perf_counter() - start
            for process in processes:
                process.join()
            log_after = cluster.status(leader)["log_len"]
        finally:
            cluster.stop()
    print(f"sequential gets ({args.sequential}): p50 {ms(sequential, 0.5)}, p99 {ms(sequential, 0.99)}")
    print(
        f"concurrent gets ({args.processes} processes x {args.threads} threads x {args.gets}): "
        f"{len(concurrent) / elapsed:,.0f}/s, p50 {ms(concurrent, 0.5)}, p99 {ms(concurrent, 0.99)}"
    )
    print(f"leader's log length: {log_before} before the gets, {log_after} after")


if __name__ == "__main__":
    main()
