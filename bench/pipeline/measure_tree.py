"""Run a command and measure it as a whole process tree: wall time, the peak RSS of its
largest process (getrusage of the children) and the peak of the tree's summed PSS
(proportional set size: a page shared by a fork is counted once), sampled every 100 ms
from /proc.

    python measure_tree.py COMMAND [ARGS...]   # prints one JSON line

Used by bench/pipeline/run.py, so that a runner that forks helpers (runink: the CLI, the
launcher, the slice) is measured as all of them, not only its largest process.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time

SAMPLE_EVERY = 0.1  # (every variant pays the same sampling; more often would cost a real share of a core)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(parent, []).append(int(name))
    return tree


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_pss_kb(root: int) -> int:
    tree = _children()
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        total += _pss_kb(pid)
        frontier.extend(tree.get(pid, []))
    return total


def main() -> None:
    began = time.perf_counter()
    process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(SAMPLE_EVERY):
            peak = max(peak, tree_pss_kb(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = process.wait()
    seconds = time.perf_counter() - began
    done.set()
    sampler.join()
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"rc": rc, "seconds": seconds, "peak_rss_kb": largest, "tree_pss_kb": peak}))


if __name__ == "__main__":
    main()
