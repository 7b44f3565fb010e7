"""bench/cluster/slurm_exec: `runink exec -- /bin/true` through the slurm executor, beside Slurm's own.

    python bench/cluster/slurm_exec.py                      # 30 rounds
    python bench/cluster/slurm_exec.py --rounds 10          # a quicker look
    python bench/cluster/slurm_exec.py --poll-interval 0.1  # the driver's squeue interval (default 0.5 s)

One Slurm (Debian's slurm-wlm: a munged, slurmctld and slurmd of their own in a temp dir,
task/cgroup where cgroup v1 is there; ``runink_slurm.testing.LocalSlurm``) and one Runink
cluster (`runink up --servers 1 --agents 1`: TLS and tokens as by default) whose agent runs
tasks with the ``slurm`` executor (packages/runink-slurm, pip-installed offline into a temp
dir put on PYTHONPATH; ``RUNINK_EXECUTOR__DRIVER=slurm``). Each round runs, in turn:

* **runink exec -- /bin/true** (the CLI, its start included): server, scheduler, agent, then
  sbatch, the job, and the driver seeing it end (squeue every poll interval);
* **the slurm executor alone**: ``start`` + ``wait`` of ``/bin/true`` in the bench's process,
  without Runink's control plane (sbatch, the job, squeue every poll interval);
* **srun /bin/true**: Slurm's interactive path (an immediate allocation, one step);
* **sbatch --wrap=/bin/true, then squeue every 0.1 s until it ended**: Slurm's batch path,
  which the driver takes (a batch job waits for the scheduler's next pass: about once a
  second here, with ``batch_sched_delay=0``);
* **sbatch --wait --wrap=/bin/true**: the same, as a Slurm user waits for it (sbatch polls);
* **runink --version**: the CLI's start alone, to tell it from the rest.

Medians (and p90) of each, milliseconds. Needs root; everything stays on loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
PACKAGE = REPO / "packages" / "runink-slurm"
RUNINK = [sys.executable, "-m", "runink"]


def install_driver(target: Path) -> None:
    """pip-install runink-slurm (offline, no deps) into ``target``, from a copy of its source."""
    source = target.parent / "runink-slurm-src"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation"]
    done = subprocess.run(
        [*pip, "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"pip install runink-slurm failed:\n{done.stdout}{done.stderr}")


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def sbatch_polled(env: dict[str, str]) -> float:
    """sbatch a job, then squeue every 0.1 s until Slurm no longer lists it running."""
    started = time.perf_counter()
    submit = ["sbatch", "--parsable", "--output=/dev/null", "--wrap=/bin/true"]
    job = subprocess.run(submit, env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    query = ["squeue", "--noheader", "--states=all", f"--jobs={job.split(';')[0]}", "--format=%T"]
    while True:
        state = subprocess.run(query, env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return (time.perf_counter() - started) * 1000
        time.sleep(0.1)


def driver_alone(executor: Any, root: Path) -> float:
    """The driver without Runink's control plane: start(/bin/true), wait for its result."""
    from runink.core.interfaces import TaskSpec

    task_id = f"bench-{uuid.uuid4().hex[:8]}"
    spec = TaskSpec(task_id, ("/bin/true",), root / "driver" / task_id, env={"PATH": "/usr/bin:/bin"})
    started = time.perf_counter()
    executor.start(spec)
    result = executor.wait(task_id, 60)
    elapsed = (time.perf_counter() - started) * 1000
    if result is None or result.state != "SUCCEEDED":
        raise SystemExit(f"the slurm executor ran /bin/true: {result}")
    executor.destroy(task_id)
    return elapsed


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--poll-interval", type=float, default=0.5, help="the slurm executor's poll_interval")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/cluster/slurm_exec needs root (it starts slurmd)")
    with tempfile.TemporaryDirectory(prefix="runink-bench-slurm-") as tmp:
        root = Path(tmp)
        install_driver(root / "site")
        sys.path.insert(0, str(root / "site"))
        from runink_slurm.testing import LocalSlurm, missing

        if reason := missing():
            raise SystemExit(reason)
        slurm = LocalSlurm(root / "slurm").start()
        xdg = root / "xdg"
        env = {
            **os.environ,
            **slurm.env,
            "XDG_CONFIG_HOME": str(xdg),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "site"), os.environ.get("PYTHONPATH")])),
            "RUNINK_EXECUTOR__DRIVER": "slurm",
            "RUNINK_EXECUTOR__OPTIONS__POLL_INTERVAL": str(args.poll_interval),
            # root jobs, as srun's beside them here (the agent runs as root; a run_as user would
            # need a work dir it can pass through: the driver's README)
            "RUNINK_EXECUTOR__OPTIONS__ALLOW_ROOT_JOBS": "true",
        }
        cli_env = {k: v for k, v in env.items() if not k.startswith("RUNINK_EXECUTOR")}
        up = subprocess.run(
            [*RUNINK, "up", "--servers", "1", "--agents", "1", "--json", "--dir", str(root / "cluster")],
            capture_output=True, text=True, env=env, timeout=180, check=False,
        )  # fmt: skip
        try:
            if up.returncode != 0:
                raise SystemExit(f"runink up failed: {up.stderr[-2000:]}")
            json.loads(up.stdout)
            from runink.core.drivers import load_driver
            from runink.core.interfaces import Executor

            options = {"poll_interval": args.poll_interval, "slurm_conf": str(slurm.conf), "allow_root_jobs": True}
            executor = load_driver(Executor, "slurm", options)
            wait = ["--wait", "--quiet", "--output=/dev/null"]
            variants: dict[str, Callable[[], float]] = {
                "runink exec -- /bin/true (slurm executor)": lambda: timed(
                    [*RUNINK, "exec", "--", "/bin/true"], cli_env
                ),
                "the slurm executor alone: start + wait, in this process": lambda: driver_alone(executor, root),
                "srun /bin/true": lambda: timed(["srun", "/bin/true"], cli_env),
                "sbatch --wrap=/bin/true, squeue every 0.1 s until it ended": lambda: sbatch_polled(cli_env),
                "sbatch --wait --wrap=/bin/true": lambda: timed(["sbatch", *wait, "--wrap=/bin/true"], cli_env),
                "runink --version (the CLI's start alone)": lambda: timed([*RUNINK, "--version"], cli_env),
            }
            for run in variants.values():  # warm-up: imports, the agent's first job, Slurm's caches
                run()
            samples: dict[str, list[float]] = {name: [] for name in variants}
            for number in range(args.rounds):  # taking turns, the order rotating: drift falls on all alike
                names = list(variants)
                names = names[number % len(names) :] + names[: number % len(names)]
                for name in names:
                    samples[name].append(variants[name]())
            names_seen = subprocess.run(
                ["squeue", "--noheader", "--states=all", "--format=%j"],
                env=cli_env, capture_output=True, text=True, check=True, timeout=30,
            ).stdout.split()  # fmt: skip
            by_runink = sum(1 for name in names_seen if name.startswith("runink-") and "runink-bench-" not in name)
            if by_runink < args.rounds + 1:
                raise SystemExit(f"only {by_runink} Slurm jobs came from runink: was the slurm executor used?")
        finally:
            subprocess.run([*RUNINK, "down"], env=cli_env, capture_output=True, timeout=120, check=False)
            slurm.stop()
    machine = f"{os.cpu_count()} cores · Linux {platform.release()} · Python {platform.python_version()}"
    print(f"# {dt.date.today()} · {machine} · Slurm cgroups: {slurm.cgroups} · poll_interval {args.poll_interval:g} s")
    print()
    print("| variant | runs | median ms | p90 ms |")
    print("| --- | ---: | ---: | ---: |")
    for name, found in samples.items():
        median, p90 = summary(found)
        print(f"| {name} | {len(found)} | {median:.0f} | {p90:.0f} |")
    runink, srun = statistics.median(samples[next(iter(variants))]), statistics.median(samples["srun /bin/true"])
    print(f"\nrunink exec through slurm ÷ srun, medians: {runink / srun:.2f}x; Slurm jobs named runink-*: {by_runink}")


if __name__ == "__main__":
    main()
