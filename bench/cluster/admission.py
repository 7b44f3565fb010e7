"""bench/cluster/admission: what admission adds to a submission (issue 23: under 1 ms p50).

    python bench/cluster/admission.py            # 2,000 submissions per variant, 4 rounds
    python bench/cluster/admission.py --quick    # 300, 2 rounds

``POST /v1/jobs`` (a `/bin/true` job) against the server's real REST API (uvicorn on
loopback, one keep-alive client), on a real raft Barn (the tests' harness: 3 members, fsync)
and on the memory Barn, with and without admission: per-job bounds on every resource and a
herd rate too high to refuse (so every variant does the same work, one stored job each). The
two apps share one Barn and one herd each; submissions take turns (A B B A), rounds median.
No agent runs: the jobs stay PENDING, as they are when the API answers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from barn_cluster import Cluster

from runink.core.config import AdmissionConfig
from runink.core.control.admission import Admission
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Herd
from runink.core.control.store import ClusterStore
from runink.core.plugins import create_plugin_manager
from runink.core.server.api import create_app
from runink.core.server.serve_api import serve_api, stop_api
from runink.plugins.barn.memory import MemoryBarn

BOUNDS = AdmissionConfig(max_cpu=64, max_memory="256Gi", max_gpu=8, max_timeout="1d", rate=1_000_000, burst=1_000_000)
BODY = {"command": ["/bin/true"], "resources": {"cpu": 1, "memory": 1 << 30}, "timeout": 60}


def serve(store: ClusterStore, admission: Admission | None) -> tuple[Any, Any, httpx.Client]:
    app = create_app(Lifecycle(store), store, admission=admission)
    server, thread = serve_api(app, "127.0.0.1", 0)
    return server, thread, httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=30)


def timed(http: httpx.Client, herd: str) -> float:
    began = time.perf_counter()
    answer = http.post("/v1/jobs", json={"herd": herd, **BODY})
    elapsed = (time.perf_counter() - began) * 1000
    if answer.status_code != 201:
        raise SystemExit(f"submission refused: {answer.status_code} {answer.text}")
    return elapsed


def one_round(store: ClusterStore, count: int) -> tuple[float, float]:
    """p50 ms of (without, with) admission, taking turns."""
    manager = create_plugin_manager()
    for herd in ("bare", "admitted"):
        if not [h for h in store.herds() if h.name == herd]:
            store.create_herd(Herd(name=herd))
    variants = {
        "bare": serve(store, None),
        "admitted": serve(store, Admission(store, manager, BOUNDS)),
    }
    samples: dict[str, list[float]] = {"bare": [], "admitted": []}
    try:
        for name, (_, _, http) in variants.items():  # warm up: connections, caches, the bucket read
            for _ in range(20):
                timed(http, name)
        for number in range(count):
            order = ["bare", "admitted"] if number % 2 == 0 else ["admitted", "bare"]
            for name in order:
                samples[name].append(timed(variants[name][2], name))
    finally:
        for server, thread, http in variants.values():
            http.close()
            stop_api(server, thread)
    return statistics.median(samples["bare"]), statistics.median(samples["admitted"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count, rounds = (300, 2) if args.quick else (2000, 4)
    rows = []
    with tempfile.TemporaryDirectory(prefix="runink-bench-admission-") as tmp:
        (Path(tmp) / "barn").mkdir()
        raft = Cluster(Path(tmp) / "barn")
        raft.start()
        try:
            raft.leader()
            client = raft.client()
            try:
                for label, barn in (("memory Barn", MemoryBarn()), ("raft Barn (3 members, fsync)", client)):
                    results = [one_round(ClusterStore(barn), count) for _ in range(rounds)]
                    bare = statistics.median(r[0] for r in results)
                    admitted = statistics.median(r[1] for r in results)
                    rows.append((label, bare, admitted, [r[1] - r[0] for r in results]))
            finally:
                client.close()
        finally:
            raft.stop()
    machine = f"{os.cpu_count()} cores · Linux {platform.release()} · Python {platform.python_version()}"
    print(f"# {dt.date.today()} · {machine} · {count} submissions per variant per round, {rounds} rounds")
    print()
    print("| Barn | without admission: p50 ms | with admission: p50 ms | added p50 ms (rounds) |")
    print("| --- | ---: | ---: | ---: |")
    for label, bare, admitted, added in rows:
        shown = ", ".join(f"{a:+.3f}" for a in added)
        print(f"| {label} | {bare:.3f} | {admitted:.3f} | {admitted - bare:+.3f} ({shown}) |")
    print("\ntarget: under 1 ms added p50")


if __name__ == "__main__":
    main()
