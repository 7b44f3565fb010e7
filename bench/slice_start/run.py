"""bench/slice_start: how fast an isolated slice starts, against the usual ways to get one.

    python bench/slice_start/run.py            # 1,000 runink slices, 300 of each anchor
    python bench/slice_start/run.py --quick    # 100 / 30

Every variant runs ``/bin/true`` isolated and is timed from the launch request until its
exit is known (an upper bound of "request to code running", measured the same way for all):

* runink linux executor: ``start`` + ``wait`` through the `linux` driver — slice cgroup
  created, pid/mount/uts/ipc/net namespaces, private /proc and /tmp, read-only root,
  unprivileged uid, cgroup removed after;
* runink launcher only: the fork server's request -> exit event, namespaces without a cgroup;
* bwrap (``--ro-bind / / --unshare-pid --unshare-uts --unshare-ipc --proc /proc --dev /dev``);
* ``unshare -fpmui --mount-proc`` (util-linux), no cgroup;
* a cold ``python -c "import runink"`` (what starting a fresh interpreter per slice costs).

Needs root; installs nothing itself (``apt-get install bubblewrap`` for the bwrap row).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from runink.core.interfaces.executor import TaskSpec
from runink.plugins.executors.linux.executor import LinuxExecutor


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.99) - 1)]


def time_command(command: list[str], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def time_executor(count: int, work: Path) -> list[float]:
    executor = LinuxExecutor(cgroup_parent=f"runink-bench-{uuid.uuid4().hex[:6]}")
    samples = []
    for i in range(count):
        spec = TaskSpec(f"b-{i}", ("/bin/true",), work / f"t{i}", env={"PATH": "/usr/bin:/bin"}, cwd=work)
        started = time.perf_counter()
        executor.start(spec)
        result = executor.wait(spec.id, 30)
        samples.append((time.perf_counter() - started) * 1000)
        assert result is not None and result.exit_code == 0, result
        executor.destroy(spec.id)
    assert executor.cgroups is not None and not executor.cgroups.leftovers()
    for parent in set(executor.cgroups.parents().values()):
        parent.rmdir()
    return samples


def time_launcher(count: int, work: Path) -> list[float]:
    launcher = subprocess.Popen([sys.executable, "-m", "runink.plugins.executors.linux.launcher"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert launcher.stdin and launcher.stdout
    samples = []
    for i in range(count):
        request = {"op": "launch", "id": f"l-{i}", "command": ["/bin/true"], "env": {"PATH": "/usr/bin:/bin"},
                   "cwd": str(work), "writable": [str(work)], "uid": 100001, "gid": 100001}
        started = time.perf_counter()
        launcher.stdin.write(json.dumps(request) + "\n")
        launcher.stdin.flush()
        launcher.stdout.readline()
        ended = json.loads(launcher.stdout.readline())
        samples.append((time.perf_counter() - started) * 1000)
        assert ended["code"] == 0, ended
    launcher.stdin.close()
    launcher.wait()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    ours, anchors = (100, 30) if args.quick else (1000, 300)
    rows: list[tuple[str, int, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="runink-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o777)
        rows.append(("runink linux executor (cgroup + namespaces)", ours, time_executor(ours, work)))
        rows.append(("runink launcher only (namespaces)", ours, time_launcher(ours, work)))
    if shutil.which("bwrap"):
        rows.append(("bwrap", anchors, time_command(
            ["bwrap", "--ro-bind", "/", "/", "--unshare-pid", "--unshare-uts", "--unshare-ipc", "--proc", "/proc",
             "--dev", "/dev", "/bin/true"], anchors)))
    rows.append(("unshare -fpmui --mount-proc", anchors, time_command(
        ["unshare", "-fpmui", "--mount-proc", "/bin/true"], anchors)))
    rows.append(("cold python -c 'import runink'", anchors, time_command(
        [sys.executable, "-c", "import runink"], anchors)))
    base = percentiles(rows[0][2])[0]
    print("| variant | runs | p50 ms | p99 ms | p50 ÷ runink executor p50 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, count, samples in rows:
        p50, p99 = percentiles(samples)
        print(f"| {name} | {count} | {p50:.2f} | {p99:.2f} | {p50 / base:.2f} |")


if __name__ == "__main__":
    main()
