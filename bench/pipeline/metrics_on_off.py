"""bench/pipeline/metrics_on_off: do metrics and log shipping slow a pipeline? `runink run` on
bench/pipeline's work without either, against `runink run --metrics-port PORT` with its /metrics
scraped every second while it runs (as Prometheus would, at a short interval) and its log
records and slice lines shipped to a forward-protocol receiver in a process of its own (``[log]
slice_output``, ``[plugin.fluentd]``), taking turns (off, on, on, off, ...).

    python bench/pipeline/metrics_on_off.py                 # 1M rows, 5 rounds
    python bench/pipeline/metrics_on_off.py --rows 100000 --rounds 3

Reported per variant: the median wall time, CPU time (user + system of the whole process tree)
and peak RSS (the largest process of the tree); the target (issue 22) is under 3% between them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))
from forward_receiver import ForwardReceiver  # noqa: E402 (bench/)
from lineage_sinks import WRAPPER  # noqa: E402 (beside this file)
from run import DSL, RUNINK, counts, generate  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape_while(port: int, stop: threading.Event, seen: list[int]) -> None:
    """GET /metrics every second until ``stop`` (the run not serving yet or any more: skipped)."""
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                answer.read()
                seen[0] += 1
        except OSError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/runink-bench-pipeline"))
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"orders-{args.rows}.csv"
    generate(args.rows, source)
    project = work / "metrics-project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir()
    for name in ("contracts.py", "steps.py"):
        shutil.copy(HERE / name, project / name)
    config = project / "runink.toml"
    config.write_text(
        f"data_dir = {json.dumps(str(project / 'state'))}\n[paths]\nallow = [{json.dumps(str(work.resolve()))}]\n"
    )
    collector = ForwardReceiver()
    collector_port = collector.port
    shipping = project / "shipping.toml"
    shipping.write_text(
        config.read_text() + f'[log]\nslice_output = true\n[plugin.fluentd]\nhost = "127.0.0.1"\n'
        f"port = {collector_port}\n"
    )
    out = work / "out-metrics"
    (project / "bench.dsl").write_text(DSL.format(source=source, out=out))
    results: dict[str, list[dict[str, float]]] = {"off": [], "metrics scraped every 1 s, logs shipped": []}
    scrapes = [0]
    for round_number in range(args.rounds):
        variants = list(results)
        order = variants if round_number % 2 == 0 else variants[::-1]  # ABBA
        for variant in order:
            shutil.rmtree(out, ignore_errors=True)
            stop = threading.Event()
            extra: list[str] = []
            scraper = None
            command = [*RUNINK, "--config", str(config), "run", str(project / "bench.dsl")]
            if variant != "off":
                port = _free_port()
                command[len(RUNINK) + 1] = str(shipping)
                extra = ["--metrics-port", str(port)]
                scraper = threading.Thread(target=_scrape_while, args=(port, stop, scrapes), daemon=True)
                scraper.start()
            began = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", WRAPPER, *command, *extra],
                cwd=project,
                capture_output=True,
                text=True,
                check=True,
            )
            stop.set()
            if scraper is not None:
                scraper.join(5)
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            if measured["rc"] != 0:
                raise SystemExit(f"{variant}: runink run failed with exit code {measured['rc']}")
            counts(out)
            results[variant].append(measured)
            print(
                f"round {round_number + 1} {variant}: {measured['seconds']:.2f} s, cpu {measured['cpu']:.2f} s "
                f"({time.perf_counter() - began:.2f} s with the wrapper)",
                file=sys.stderr,
            )
    print(f"{scrapes[0]} scrapes answered, {collector.records} log records shipped", file=sys.stderr)
    collector.close()
    heading = f"variant ({args.rows:,} rows, {args.rounds} rounds taking turns)"
    print(f"| {heading} | median s | median CPU s | peak RSS MiB (largest process) |")
    print("| --- | ---: | ---: | ---: |")
    medians = {}
    for variant, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        rss = max(r["peak_rss_kb"] for r in runs) / 1024
        medians[variant] = (seconds, cpu)
        print(f"| {variant} | {seconds:.2f} | {cpu:.2f} | {rss:.0f} |")
    on, off = medians["metrics scraped every 1 s, logs shipped"], medians["off"]
    print(f"\non / off: wall {on[0] / off[0]:.3f}x, CPU {on[1] / off[1]:.3f}x (target: under 1.03x)")


if __name__ == "__main__":
    main()
