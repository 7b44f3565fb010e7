"""bench/pipeline/lineage_sinks: does lineage capture slow a pipeline? `runink run` on bench/pipeline's
work with every lineage sink off, against the three built-in sinks on (JSON Lines, the SQLite
catalog, OpenLineage over HTTP to a collector on loopback), taking turns (off, on, on, off, ...).

    python bench/pipeline/lineage_sinks.py                 # 1M rows, 5 rounds
    python bench/pipeline/lineage_sinks.py --rows 100000 --rounds 3

Reported per variant: the median wall time, CPU time (user + system of the whole process tree)
and peak RSS (the largest process of the tree); the target (issue 21) is under 3% between them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import DSL, RUNINK, counts, generate  # noqa: E402 (beside this file)

WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "seconds = time.perf_counter() - t\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'rc': rc, 'seconds': seconds, 'cpu': r.ru_utime + r.ru_stime, 'peak_rss_kb': r.ru_maxrss}))\n"
)
OFF = "lineage-jsonl,catalog,openlineage"


class Collector(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/runink-bench-pipeline"))
    parser.add_argument(
        "--on", default="lineage-jsonl,catalog,openlineage", help="the sinks of the 'sinks on' variant (the rest off)"
    )
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"orders-{args.rows}.csv"
    generate(args.rows, source)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    project = work / "lineage-project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir()
    for name in ("contracts.py", "steps.py"):
        shutil.copy(HERE / name, project / name)
    config = project / "runink.toml"
    config.write_text(
        f"data_dir = {json.dumps(str(project / 'state'))}\n"
        f"[paths]\nallow = [{json.dumps(str(work.resolve()))}]\n"
        f'[plugin.openlineage]\ntransport = {{ type = "http", url = "{url}" }}\n'
    )
    out = work / "out-lineage"
    (project / "bench.dsl").write_text(DSL.format(source=source, out=out))
    command = [*RUNINK, "--config", str(config), "run", str(project / "bench.dsl")]
    results: dict[str, list[dict[str, float]]] = {"sinks off": [], "sinks on": []}
    for round_number in range(args.rounds):
        # ABBA: which goes first alternates (a pair's second run found the page cache warmer)
        order = ("sinks off", "sinks on") if round_number % 2 == 0 else ("sinks on", "sinks off")
        for variant in order:
            shutil.rmtree(out, ignore_errors=True)
            kept = set(args.on.split(",")) if variant == "sinks on" else set()
            env = {**os.environ, "RUNINK_DISABLE_PLUGINS": ",".join(s for s in OFF.split(",") if s not in kept)}
            done = subprocess.run(
                [sys.executable, "-c", WRAPPER, *command],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            if measured["rc"] != 0:
                raise SystemExit(f"{variant}: runink run failed with exit code {measured['rc']}")
            counts(out)  # the outputs are there
            results[variant].append(measured)
            print(
                f"round {round_number + 1} {variant}: {measured['seconds']:.2f} s, cpu {measured['cpu']:.2f} s",
                file=sys.stderr,
            )
    catalog = project / "state" / "catalog.db"
    jsonl = project / "state" / "lineage" / "events.jsonl"
    events = len(jsonl.read_text().splitlines()) if jsonl.exists() else 0
    size = catalog.stat().st_size if catalog.exists() else 0
    posts = Collector.received
    print(
        f"sinks on ({args.on}): {events} JSON lines, {posts} OpenLineage posts, catalog {size} bytes", file=sys.stderr
    )
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
    wall = medians["sinks on"][0] / medians["sinks off"][0]
    cpu = medians["sinks on"][1] / medians["sinks off"][1]
    print(f"\non / off: wall {wall:.3f}x, CPU {cpu:.3f}x (target: under 1.03x)")
    server.shutdown()


if __name__ == "__main__":
    main()
