"""bench/slice_start/cpu_per_slice: where a slice's CPU goes when slices run back to back.

    python bench/slice_start/cpu_per_slice.py                 # 300 slices, 4 in flight
    python bench/slice_start/cpu_per_slice.py --slices 600 --pool 4
    python bench/slice_start/cpu_per_slice.py --command       # /bin/true slices, as `runink exec` runs

Runs Python-step slices (``python -c pass``) through the linux executor as run.py's
throughput row does (start, wait, destroy; 4 in flight), or with ``--command`` ``/bin/true``
command slices (the command launcher's, as a cluster's `runink exec -- /bin/true` jobs), and
reads the CPU time of this
process, of the launcher and of the launcher's reaped children (the sandboxes and slices)
from /proc before and after. Prints slices/s, CPU per slice of each, and the median time
start(), wait() and destroy() took. What no process is charged for (kernel work in its own
threads: cgroup removal, namespace teardown) is the rest of the two cores.

Needs root.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from runink.plugins.executors.linux.executor import LinuxExecutor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import pass_slice  # (the same slice as the bench's throughput row)


def cpu_seconds(pid: int) -> tuple[float, float, float, float]:
    """utime, stime, cutime, cstime of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    user, system, child_user, child_system = (int(f) / tick for f in fields[11:15])
    return user, system, child_user, child_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--pool", type=int, default=2, help="warm sandboxes the launcher keeps")
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--command", action="store_true", help="/bin/true command slices instead of Python steps")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (cgroups and namespaces)")
    tag = uuid.uuid4().hex[:6]
    timings: list[tuple[float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="runink-bench-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        executor = LinuxExecutor(cgroup_parent=f"runink-bench-{tag}", slices_outlive_executor=True, pool=args.pool)

        def one(i: int) -> None:
            spec = pass_slice(f"t-{tag}-{i}", work)
            if args.command:
                spec = dataclasses.replace(spec, command=("/bin/true",))
            began = time.perf_counter()
            executor.start(spec)
            started = time.perf_counter()
            result = executor.wait(spec.id, 60)
            ended = time.perf_counter()
            assert result is not None and result.exit_code == 0, result
            executor.destroy(spec.id)
            timings.append((started - began, ended - started, time.perf_counter() - ended))

        try:
            for i in range(5):  # the launcher's start and warm pool: not counted
                one(1_000_000 + i)
            timings.clear()
            launcher = executor._launcher_process("exec" if args.command else "python").pid
            ours, theirs, began = os.times(), cpu_seconds(launcher), time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.in_flight) as pool:
                list(pool.map(one, range(args.slices)))
            took = time.perf_counter() - began
            ours_after, theirs_after = os.times(), cpu_seconds(launcher)
        finally:
            executor.close()
            if executor.cgroups is not None:
                for parent in set(executor.cgroups.parents().values()):
                    parent.rmdir()
    n = args.slices
    per = [1000 * (after - before) / n for before, after in zip(theirs, theirs_after, strict=True)]
    kind = "/bin/true command" if args.command else "Python-step"
    print(f"{n / took:.0f} {kind} slices/s ({n} slices, {args.in_flight} in flight, pool {args.pool})")
    own = (1000 * (ours_after.user - ours.user) / n, 1000 * (ours_after.system - ours.system) / n)
    print(f"CPU ms per slice: this process user {own[0]:.2f} system {own[1]:.2f}; ", end="")
    print(f"launcher user {per[0]:.2f} system {per[1]:.2f}; ", end="")
    print(f"sandboxes and slices user {per[2]:.2f} system {per[3]:.2f}; wall per slice {1000 * took / n:.2f}")
    medians = [1000 * statistics.median(t[k] for t in timings) for k in range(3)]
    print(f"median ms: start() {medians[0]:.2f}, wait() {medians[1]:.2f}, destroy() {medians[2]:.2f}")


if __name__ == "__main__":
    main()
