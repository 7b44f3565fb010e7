"""bench/barn/log_memory: what large overwrites leave in a raft Barn's members, by --compaction-mib.

    python bench/barn/log_memory.py                 # 0 (no bound by size) and 64, taking turns, 2 rounds
    python bench/barn/log_memory.py --mib 0 64 256 --rounds 1 --writes 300

A 3-member group on loopback (no fsync), ``--writes`` puts of a 1 MiB value to one key, one
after another; each member's RSS one second after the last. Every raft entry stays in memory
(and in the journal's mapped pages) until a snapshot replaces it: with the count and the time
alone, a minute of large writes was all held.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from barn_cluster import Cluster


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def measure(mib: int, writes: int) -> tuple[float, int]:
    """(seconds for the writes, the largest member's RSS in MiB)"""
    with tempfile.TemporaryDirectory(prefix="runink-bench-barn-") as tmp:
        cluster = Cluster(Path(tmp), fsync=False, options=("--compaction-mib", str(mib)))
        cluster.start()
        try:
            cluster.leader()
            client = cluster.client()
            value = b"v" * (1 << 20)
            began = time.perf_counter()
            for i in range(writes):
                client.put("/big", value[:-8] + f"{i:08d}".encode())
            took = time.perf_counter() - began
            client.close()
            time.sleep(1)
            return took, max(rss_mib(cluster.processes[n].pid) for n in cluster.names)
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, nargs="+", default=[0, 64])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    found: dict[int, list[tuple[float, int]]] = {m: [] for m in args.mib}
    for round_ in range(args.rounds):
        for mib in args.mib if round_ % 2 == 0 else list(reversed(args.mib)):
            found[mib].append(measure(mib, args.writes))
            print(f"round {round_}: --compaction-mib {mib}: {found[mib][-1]}", flush=True)
    print()
    print(f"| --compaction-mib | {args.writes} puts of 1 MiB, s | largest member RSS, MiB |")
    print("| ---: | ---: | ---: |")
    for mib, rows in found.items():
        took = statistics.median(r[0] for r in rows)
        rss = statistics.median(r[1] for r in rows)
        print(f"| {mib} | {took:.1f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
