"""bench/cli_start: how long the `runink` command takes to answer, start-up included.

    python bench/cli_start.py               # 10 rounds
    python bench/cli_start.py --rounds 20

Each round runs every variant once, in turn (A B C ... A B C ...), as a fresh process, and
times it from fork to exit (wall) with its CPU (user + system of the process tree, from
wait4's rusage). The anchor is `python -c pass` with the same interpreter: what any Python
command costs here before it does anything. Variants: `runink --version`, `runink --help`,
`runink plugins list` (from its index, as every run after the first after an install or a
config change), `runink plugins list --refresh` (loading every plugin and driver, as the first),
`runink run examples/orders/orders.dsl --dry-run` (issue 24's targets: --version, --help and
plugins list under 150 ms, the dry run under 300 ms, medians).

Prints a table: median and p90 wall, median CPU, and the median's ratio to the anchor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def variants(project: Path) -> dict[str, list[str]]:
    runink = [PYTHON, "-m", "runink"]
    return {
        "python -c pass (anchor)": [PYTHON, "-c", "pass"],
        "runink --version": [*runink, "--version"],
        "runink --help": [*runink, "--help"],
        "runink plugins list": [*runink, "plugins", "list"],
        "runink plugins list --refresh": [*runink, "plugins", "list", "--refresh"],
        "runink run orders.dsl --dry-run": [*runink, "run", str(project / "orders.dsl"), "--dry-run"],
    }


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, cpu seconds of the process tree)."""
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    stderr = process.stderr.read() if process.stderr else b""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {stderr.decode(errors='replace')[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        project = work / "orders"
        shutil.copytree(REPO / "examples" / "orders", project, ignore=shutil.ignore_patterns("out"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINK_")}
        env.update(
            XDG_CONFIG_HOME=str(work / "xdg"), XDG_DATA_HOME=str(work / "data"), XDG_CACHE_HOME=str(work / "cache")
        )
        commands = variants(project)
        # warm the file cache and the .pyc files once; this builds the command and plugin
        # indexes too, which --help and plugins list then answer from, as a user's second run does
        for command in commands.values():
            timed(command, env, work)
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                wall, cpu = timed(command, env, work)
                walls[name].append(wall)
                cpus[name].append(cpu)
    anchor = statistics.median(walls["python -c pass (anchor)"])
    print(f"{args.rounds} rounds, variants in turn; {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"| {'variant':<36} | median ms | p90 ms | cpu ms | ÷ anchor |")
    print(f"| {'-' * 36} | ---: | ---: | ---: | ---: |")
    for name in commands:
        ordered = sorted(walls[name])
        median = statistics.median(ordered)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        cpu = statistics.median(cpus[name])
        print(f"| {name:<36} | {median * 1000:.0f} | {p90 * 1000:.0f} | {cpu * 1000:.0f} | {median / anchor:.1f} |")


if __name__ == "__main__":
    main()
