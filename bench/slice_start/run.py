"""bench/slice_start: how fast an isolated slice starts, against the usual ways to get one.

    python bench/slice_start/run.py            # 1,000 runink slices per row, 300 of each anchor
    python bench/slice_start/run.py --quick    # 100 / 30
    python bench/slice_start/run.py --previous /path/to/other/venv/bin/python   # + launcher A/B rows

Every variant is timed from the launch request to "step code running": a Python step's first
act is to write the time (CLOCK_MONOTONIC) to its stdout, a FIFO the bench reads; for a command
(``/bin/echo``) it is when its first byte arrives on that FIFO. The executor's Python row is
also timed until ``start()`` returns (its bookkeeping after the launch). Rows:

* runink, Python step: ``LinuxExecutor.start`` of ``python -c "...write(1, b'x')"`` — slice
  cgroup created (cpu, memory, pids limits), pid/mount/uts/ipc/net namespaces, minimal root,
  unprivileged uid, no_new_privs; the code runs in a fork of the preloaded launcher;
* runink launcher alone: the same Python step sent straight to the fork server (cgroup claimed,
  limits written, granted work dir mounted), without the executor's bookkeeping;
* runink, command step: the same for ``/bin/echo x`` (posix_spawn from the payload, which waits);
* bwrap (``--ro-bind / / --unshare-pid --unshare-uts --unshare-ipc --proc /proc --dev /dev``),
  ``/bin/echo x``: the fastest mainstream namespace sandbox, no cgroup;
* ``unshare -fpmui --mount-proc`` (util-linux) with a cgroup from the shell (``echo $$ >
  cgroup.procs`` before exec), ``/bin/echo x``;
* a cold ``python -c "import runink; ..."``: what starting a fresh interpreter per slice costs.

With ``--previous PYTHON`` (an interpreter whose runink is another version, e.g. a venv of the
last release), the launcher row is also run for that version, for this one and for this one
without its seccomp filter, taking turns in 5 rounds: what a change to the start costs, with
the machine's drift on all alike; and so is the executor's Python step row (each round a fresh
executor in a child process of either interpreter: this file run with ``--executor-worker N``).
Launcher requests ask for a user namespace per slice where the kernel allows it, as the
executor does, and carry no uid (this launcher picks one per sandbox; the previous version
gets uid 100001). The executor rows use
``slices_outlive_executor=True``: such slices write their log files themselves, so stdout
can be the bench's FIFO (by default the executor pipes logs into capped files).

Then throughput: slices started and finished per second with both cores busy (4 in flight),
runink (Python step) against bwrap and the unshare row.

Needs root; installs nothing itself (``apt-get install bubblewrap`` for the bwrap rows).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from runink.core.interfaces.executor import TaskSpec
from runink.core.model import Resources
from runink.plugins.executors.linux.cgroups import CgroupLimits, CgroupManager, SliceCgroup
from runink.plugins.executors.linux.executor import LinuxExecutor
from runink.plugins.executors.linux.namespaces import probe_unprivileged_user

BWRAP = [
    "bwrap", "--ro-bind", "/", "/", "--unshare-pid", "--unshare-uts", "--unshare-ipc",
    "--proc", "/proc", "--dev", "/dev",
]  # fmt: skip
# The Python step's first act: write the time it started running (CLOCK_MONOTONIC, the clock
# of time.monotonic() on both sides: no time namespace is involved), so "step code running"
# is read from the step itself, not from when the bench got around to reading its pipe.
PY_CODE = "import os, time; os.write(1, b'%.9f' % time.monotonic())"
LIMITS = Resources(cpu=1.0, memory=256 * 1024**2, pids=64)
USERNS = probe_unprivileged_user() is None  # the executor's default: a user namespace per slice where allowed


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.99) - 1)]


class Fifo:
    """A FIFO whose read end is open: the slice's stdout; the first byte marks "code running"."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"out-{uuid.uuid4().hex[:8]}"
        os.mkfifo(self.path, 0o666)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)

    def first_byte(self, timeout: float = 30) -> float:
        """When the slice's code began: the time a Python step wrote, else now (the first byte
        of a command's output arriving)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        now = time.monotonic()
        data = os.read(self.fd, 64) if ready else b""
        if not data:
            raise SystemExit(f"no output from the slice within {timeout}s")
        try:
            return float(data)
        except ValueError:
            return now

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink()


def time_executor(
    executor: LinuxExecutor, count: int, work: Path, command: tuple[str, ...], returned: list[float] | None = None
) -> list[float]:
    """Request to step code running, per slice; ``returned`` gets request to ``start()``
    returning (its handle written, its watch set up)."""
    samples = []
    for i in range(count):
        fifo = Fifo(work)
        spec_id = f"b-{uuid.uuid4().hex[:8]}-{i}"
        spec = TaskSpec(
            spec_id, command, work / "tasks" / spec_id, env={"PATH": "/usr/bin:/bin"},
            cwd=work, limits=LIMITS,
        )  # fmt: skip
        # stdout.log is the FIFO: the launcher opens it for the slice (set up before the clock starts)
        spec.task_dir.mkdir(parents=True)
        os.symlink(fifo.path, spec.task_dir / "stdout.log")
        time.sleep(0.01)  # between requests, as slices arrive in a pipeline: the pool refills
        started = time.monotonic()
        executor.start(spec)
        if returned is not None:
            returned.append((time.monotonic() - started) * 1000)
        samples.append((fifo.first_byte() - started) * 1000)
        result = executor.wait(spec.id, 30)
        assert result is not None and result.exit_code == 0, (result, executor.read_log(spec.id, "stderr"))
        executor.destroy(spec.id)
        fifo.close()
    return samples


def time_launcher(
    count: int, work: Path, tag: str, gap: float, *, python: str = sys.executable, options: tuple[str, ...] = ()
) -> list[float]:
    """The fork server alone (what the executor adds: its bookkeeping, threads, task files);
    ``python`` may be another installation's interpreter (``--previous``)."""
    manager = CgroupManager(parent_name=f"runink-bench-l-{tag}")
    manager.prepare()
    layout = manager.layout
    own = {c: str(d) for c, d in layout.own.items()}
    cgroups = {"version": layout.version, "own": own, "parent": manager.parent_name}
    launcher = subprocess.Popen(
        [python, "-m", "runink.plugins.executors.linux.launcher", "--preload",
         "pyarrow,pyarrow.compute,runink.core.dataplane.slice", "--cgroups", json.dumps(cgroups), *options],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert launcher.stdin is not None and launcher.stdout is not None
    samples = []
    try:
        for i in range(count + 3):
            fifo = Fifo(work)
            request = {
                "op": "launch", "id": f"l-{tag}-{i}", "command": ["python"], "python": {"code": PY_CODE},
                "env": {"PATH": "/usr/bin:/bin"}, "cwd": str(work), "binds": [{"path": str(work), "writable": True}],
                "stdout": str(fifo.path), "limits": {"cpu": 1.0, "memory": 256 * 1024**2, "pids": 64},
                "userns": USERNS,  # as the executor asks where the kernel allows it
            }  # fmt: skip
            if python != sys.executable:  # a previous version needs the uid; this one picks it, as for the executor
                request.update(uid=100001, gid=100001)
            time.sleep(0.03 if i < 3 else gap)
            started = time.monotonic()
            launcher.stdin.write(json.dumps(request) + "\n")
            launcher.stdin.flush()
            running = fifo.first_byte()
            if i >= 3:  # the first ones wait for the pool to be built
                samples.append((running - started) * 1000)
            event = json.loads(launcher.stdout.readline())
            assert event["event"] == "started", event
            ended = json.loads(launcher.stdout.readline())
            assert ended.get("code") == 0, ended
            fifo.close()
            SliceCgroup(layout, {c: p / event["cgroup"] for c, p in manager.parents().items()}).remove()
    finally:
        launcher.stdin.close()
        launcher.wait(30)
        for parent in set(manager.parents().values()):
            parent.rmdir()
    return samples


def time_command(
    make: Callable[[], list[str]], count: int, work: Path, shell_cgroup: CgroupManager | None = None
) -> list[float]:
    samples = []
    for i in range(count):
        fifo = Fifo(work)
        limits = CgroupLimits(cpu=1.0, memory=256 * 1024**2, pids=64)
        cgroup = shell_cgroup.create(f"u-{i}", limits) if shell_cgroup else None
        command = make()
        if cgroup is not None:  # join the cgroup from the shell, then the unshare command
            joins = "; ".join(f"echo $$ > {p}" for p in cgroup.procs_files)
            command = ["sh", "-c", f"{joins}; exec {' '.join(command)}"]
        time.sleep(0.01)
        started = time.monotonic()
        with open(fifo.path, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL)
        samples.append((fifo.first_byte() - started) * 1000)
        assert process.wait(30) == 0
        fifo.close()
        if cgroup is not None:
            cgroup.remove()
    return samples


def compare_with_previous(
    previous: str, count: int, work: Path, tag: str, rounds: int = 5
) -> list[tuple[str, int, list[float]]]:
    """The launcher alone, this version against a previous installation's (its interpreter),
    and this one without its seccomp filter: the variants take turns, ``rounds`` times, so the
    machine's drift falls on all alike. Same request, same work (a granted work dir, limits)."""
    variants = {
        "previous version's launcher": (previous, ()),
        "this launcher, seccomp filter off": (sys.executable, ("--no-seccomp",)),
        "this launcher (seccomp, id-mapped grants, own session)": (sys.executable, ()),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for turn in range(rounds):
        for i, (name, (python, options)) in enumerate(variants.items()):
            samples[name] += time_launcher(
                count // rounds, work, f"{tag}c{turn}{i}", 0.01, python=python, options=options
            )
    return [(f"A/B: {name}, a request every 10 ms", len(values), values) for name, values in samples.items()]


def executor_worker(count: int) -> None:
    """One executor's Python-step samples, as JSON on stdout: run by ``compare_executors`` under
    either interpreter (this file must import with both versions' runink)."""
    tag = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory(prefix="runink-bench-w-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        work.chmod(0o777)
        executor = LinuxExecutor(cgroup_parent=f"runink-bench-w-{tag}", slices_outlive_executor=True)
        try:
            time_executor(executor, 3, work, (sys.executable, "-c", PY_CODE))  # warm-up, not sampled
            returned: list[float] = []
            running = time_executor(executor, count, work, (sys.executable, "-c", PY_CODE), returned)
        finally:
            executor.close()
            if executor.cgroups is not None:
                for parent in set(executor.cgroups.parents().values()):
                    parent.rmdir()
    print(json.dumps({"running": running, "returned": returned}))


def compare_executors(previous: str, count: int, rounds: int = 6) -> list[tuple[str, int, list[float]]]:
    """The executor's Python step, this version against a previous installation's, taking turns
    (A B A B ...; each turn a fresh executor process), so drift falls on both alike."""
    variants = {"previous version's": previous, "this version's": sys.executable}
    samples: dict[str, dict[str, list[float]]] = {name: {"running": [], "returned": []} for name in variants}
    for turn in range(rounds):
        order = list(variants.items()) if turn % 2 == 0 else list(reversed(variants.items()))
        for name, python in order:
            out = subprocess.run(
                [python, __file__, "--executor-worker", str(count // rounds)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            result = json.loads(out.stdout.splitlines()[-1])
            for key in ("running", "returned"):
                samples[name][key] += result[key]
    rows = []
    for name in variants:
        running, returned = samples[name]["running"], samples[name]["returned"]
        rows.append((f"A/B: {name} executor, Python step", len(running), running))
        rows.append((f"A/B: {name} executor, until start() returned", len(returned), returned))
    return rows


def pass_slice(task_id: str, work: Path) -> TaskSpec:
    """The throughput rows' slice: ``python -c pass`` with the bench's limits, output in ``work``."""
    return TaskSpec(
        task_id,
        (sys.executable, "-c", "pass"),
        work / "tput" / task_id,
        env={"PATH": "/usr/bin:/bin"},
        cwd=work,
        limits=LIMITS,
    )


def throughput(run_one: Callable[[int], None], count: int, in_flight: int = 4) -> float:
    """Slices started and finished per second, ``in_flight`` at a time."""
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(run_one, range(count)))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--previous",
        metavar="PYTHON",
        help="also time the launcher of another installation (its interpreter), alternating with this one",
    )
    parser.add_argument("--executor-worker", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.executor_worker:
        executor_worker(args.executor_worker)
        return
    ours, anchors = (100, 30) if args.quick else (1000, 300)
    if os.geteuid() != 0:
        raise SystemExit("bench/slice_start needs root (cgroups and namespaces)")
    rows: list[tuple[str, int, list[float]]] = []
    rates: list[tuple[str, int, float]] = []
    tag = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory(prefix="runink-bench-") as tmp:
        # the granted work dir in a private folder (0700), as the linux executor requires
        work = Path(tmp) / "work"
        work.mkdir()
        work.chmod(0o777)  # the previous version's slices (--previous) write it without an id-mapping
        # Slices that outlive the executor write their log files themselves, so stdout.log can be
        # the bench's FIFO; by default the executor pipes logs into capped files (logs.py), which
        # costs two pipes before the request and nothing after.
        executor = LinuxExecutor(cgroup_parent=f"runink-bench-{tag}", slices_outlive_executor=True)
        try:
            # first use starts the launchers and their warm pools; not part of any sample
            time_executor(executor, 3, work, (sys.executable, "-c", PY_CODE))
            time_executor(executor, 3, work, ("/bin/echo", "x"))
            returned: list[float] = []
            rows.append(
                (
                    "runink linux executor, Python step (fork of the preloaded launcher)",
                    ours,
                    time_executor(executor, ours, work, (sys.executable, "-c", PY_CODE), returned),
                )
            )
            rows.append(("runink linux executor, Python step: until start() returned", ours, returned))
            for gap in (0.01, 0.03):
                rows.append(
                    (
                        f"runink launcher alone (fork server), Python step, a request every {gap * 1000:.0f} ms",
                        ours,
                        time_launcher(ours, work, f"{tag}{gap * 1000:.0f}", gap),
                    )
                )
            if args.previous:
                rows += compare_with_previous(args.previous, ours, work, tag)
                rows += compare_executors(args.previous, ours)
            rows.append(
                (
                    "runink linux executor, command step (/bin/echo, spawned by the payload)",
                    ours,
                    time_executor(executor, ours, work, ("/bin/echo", "x")),
                )
            )

            def one_slice(i: int) -> None:
                spec = pass_slice(f"t-{tag}-{i}", work)
                executor.start(spec)
                result = executor.wait(spec.id, 60)
                assert result is not None and result.exit_code == 0, result
                executor.destroy(spec.id)

            rates.append(("runink linux executor, Python step", ours, throughput(one_slice, ours)))
        finally:
            executor.close()
            if executor.cgroups is not None:
                for parent in set(executor.cgroups.parents().values()):
                    parent.rmdir()
        shell = CgroupManager(parent_name=f"runink-bench-sh-{tag}")
        try:
            if shutil.which("bwrap"):
                rows.append(
                    (
                        "bwrap /bin/echo (no cgroup)",
                        anchors,
                        time_command(lambda: [*BWRAP, "/bin/echo", "x"], anchors, work),
                    )
                )
            rows.append(
                (
                    "unshare -fpmui --mount-proc + cgroup from sh, /bin/echo",
                    anchors,
                    time_command(lambda: ["unshare", "-fpmui", "--mount-proc", "/bin/echo", "x"], anchors, work, shell),
                )
            )
            rows.append(
                (
                    "cold python -c 'import runink'",
                    anchors,
                    time_command(lambda: [sys.executable, "-c", f"import runink; {PY_CODE}"], anchors, work),
                )
            )
        finally:
            for parent in set(shell.parents().values()):
                if parent.exists():
                    parent.rmdir()
        if shutil.which("bwrap"):

            def one_bwrap(_: int) -> None:
                subprocess.run([*BWRAP, "/bin/true"], check=True)

            rates.append(("bwrap /bin/true", anchors, throughput(one_bwrap, anchors)))

        def one_unshare(_: int) -> None:
            subprocess.run(["unshare", "-fpmui", "--mount-proc", "/bin/true"], check=True)

        rates.append(("unshare -fpmui --mount-proc /bin/true (no cgroup)", anchors, throughput(one_unshare, anchors)))
    base = percentiles(rows[0][2])[0]
    machine = f"{os.cpu_count()} cores · Linux {platform.release()} · Python {platform.python_version()}"
    print(f"# {dt.date.today()} · {machine}")
    print()
    print("| variant | runs | p50 ms | p99 ms | p50 ÷ runink Python step p50 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, count, samples in rows:
        p50, p99 = percentiles(samples)
        print(f"| {name} | {count} | {p50:.2f} | {p99:.2f} | {p50 / base:.2f} |")
    print()
    print("| slices started and finished per second, 4 in flight | runs | slices/s |")
    print("| --- | ---: | ---: |")
    for name, count, rate in rates:
        print(f"| {name} | {count} | {rate:.0f} |")


if __name__ == "__main__":
    main()
