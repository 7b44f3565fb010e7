"""bench/cluster/versions: two versions of Runink's cluster, the same jobs, taking turns.

    python bench/cluster/versions.py --a /tmp/old-venv/bin/python --b .venv/bin/python [--rounds 3]

Each interpreter must have its own Runink installed (a worktree of the commit to compare,
`pip install -e` into a copy of the venv). Each round starts a fresh `runink up --servers 3
--agents 2` of A, then of B (B then A in the next round), and measures on it: the p50 and p99
of 40 `/bin/true` jobs one at a time (a submission, then reads that wait for the job's next
change, as `runink exec` does: from the revision the submission answered where the version
gives one), jobs per second with 8 threads each running a job at a time (100 jobs) and with
all 100 submitted then waited for, and the CPU per job of each kind of process over the
8-thread run (from /proc: Barn members, servers, agents, launchers and slices, this client).
Prints each round and the medians. Root only (the agents' slices).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from exec_latency import Runink, runink_batch_rate, runink_rate

SINGLE, MANY, THREADS = 40, 100, 8


def cpu_by_kind() -> dict[str, float]:
    """CPU seconds so far of every Runink process on this machine, by kind."""
    found: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if "runink" not in command or int(pid) == os.getpid():
            continue
        kind = (
            "members"
            if " barn serve" in command
            else "servers"
            if " server " in command
            else "agents"
            if " agent " in command
            else "launchers"
        )
        found[kind] = found.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def measure(python: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="runink-bench-versions-") as tmp:
        cluster = Runink(Path(tmp), python=python)
        try:
            for _ in range(5):  # warm-up: connections, warm sandboxes
                cluster.run_one()
            single = sorted(cluster.run_one() for _ in range(SINGLE))
            before, mine = cpu_by_kind(), os.times()
            rate = runink_rate(cluster, MANY, THREADS)
            after, mine_after = cpu_by_kind(), os.times()
            batch = runink_batch_rate(cluster, MANY, THREADS)
        finally:
            cluster.close()
    row = {
        "p50 ms": statistics.median(single),
        "p99 ms": single[int(len(single) * 0.99) - 1],
        "jobs/s, 8 threads": rate,
        "jobs/s, all submitted": batch,
    }
    for kind in ("members", "servers", "agents", "launchers"):
        row[f"CPU ms/job, {kind}"] = (after.get(kind, 0) - before.get(kind, 0)) * 1000 / MANY
    client = mine_after.user + mine_after.system - mine.user - mine.system
    row["CPU ms/job, client"] = client * 1000 / MANY
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="the interpreter of version A (its own Runink installed)")
    parser.add_argument("--b", required=True, help="the interpreter of version B")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/cluster/versions needs root")
    rows: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for round_ in range(args.rounds):
        for name in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
            rows[name].append(measure(args.a if name == "A" else args.b))
            print(round_, name, {k: round(v, 1) for k, v in rows[name][-1].items()}, flush=True)
    print()
    print(f"| measure (median of {args.rounds} rounds) | A | B | B/A |")
    print("| --- | ---: | ---: | ---: |")
    for key in rows["A"][0]:
        a = statistics.median(r[key] for r in rows["A"])
        b = statistics.median(r[key] for r in rows["B"])
        print(f"| {key} | {a:.1f} | {b:.1f} | {b / a if a else float('nan'):.2f} |")


if __name__ == "__main__":
    main()
