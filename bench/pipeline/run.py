"""bench/pipeline: runink run vs a plain Python loop, polars and DuckDB on the same work.

    python bench/pipeline/run.py                # 1M and 10M rows (about 5 minutes here)
    python bench/pipeline/run.py --quick        # 100k rows, a smoke run

Work: parse an orders CSV (~2% bad rows, some malformed), validate 5 constraints, 2
transforms, write valid rows to Parquet (zstd) and bad rows to a JSON Lines DLQ. Every
variant runs as its own process tree; wall time and peak RSS (the largest process of the
tree, from getrusage(RUSAGE_CHILDREN) in a fresh wrapper) are measured per run; all
variants must agree on the valid and invalid row counts. Data lives in --workdir (/tmp).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
RUNINK = [sys.executable, "-m", "runink"]  # this interpreter's (the venv's bin need not be on PATH)
REPO = HERE.parent.parent
WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "seconds = time.perf_counter() - t\n"
    "print(json.dumps({'rc': rc, 'seconds': seconds,\n"
    "                  'peak_rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)
# cpu=2: the slice may use both cores, as the engines it is compared with do (the default
# @requires(cpu=1) is enforced as a one-core cgroup limit by the linux executor).
DSL = """Feature: Bench orders
  @requires(cpu=2)
  Scenario: Validate orders
    @source("csv://{source}", contract="contracts:Order")
    @step("steps:normalize")
    @step("steps:enrich")
    @sink("parquet://{out}/orders.parquet")
    @sink("jsonl://{out}/dlq.jsonl", when="invalid")
"""


def generate(rows: int, path: Path) -> None:
    if path.exists():
        return
    print(f"generating {rows:,} rows -> {path}", file=sys.stderr)
    argv = sys.argv
    sys.argv = ["make_data.py", str(rows), str(path)]
    try:
        runpy.run_path(str(REPO / "examples" / "orders" / "make_data.py"), run_name="__main__")
    finally:
        sys.argv = argv


def measure(command: list[str], cwd: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *command], cwd=cwd, capture_output=True, text=True, check=True, timeout=3600
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{command[:3]} failed with exit code {result['rc']}")
    return result


def counts(out: Path) -> tuple[int, int]:
    valid = pq.read_metadata(out / "orders.parquet").num_rows
    with open(out / "dlq.jsonl", "rb") as fh:
        invalid = sum(1 for line in fh if line.strip())
    return valid, invalid


def run_size(rows: int, work: Path, repeat: int) -> list[dict[str, object]]:
    source = work / f"orders-{rows}.csv"
    generate(rows, source)
    project = work / "runink-project"
    project.mkdir(exist_ok=True)
    (project / "runink.toml").write_text(f"[paths]\nallow = [{json.dumps(str(work.resolve()))}]\n")
    for name in ("contracts.py", "steps.py"):
        shutil.copy(HERE / name, project / name)
    variants = {
        # the data and outputs live beside the project, in the bench's work dir: allowed by config
        "runink": lambda out: [*RUNINK, "--config", str(project / "runink.toml"), "run", str(project / "bench.dsl")],
        "plain Python (csv/json loop)": lambda out: [
            sys.executable,
            str(HERE / "plain_python.py"),
            str(source),
            str(out),
        ],
        "polars (direct)": lambda out: [sys.executable, str(HERE / "polars_direct.py"), str(source), str(out)],
        "duckdb (direct)": lambda out: [sys.executable, str(HERE / "duckdb_direct.py"), str(source), str(out)],
    }
    results = []
    for name, make in variants.items():
        out = work / f"out-{rows}-{name.split()[0]}"
        best = None
        for _ in range(repeat):
            shutil.rmtree(out, ignore_errors=True)
            if name == "runink":
                (project / "bench.dsl").write_text(DSL.format(source=source, out=out))
            measured = measure(make(out), project)
            if best is None or measured["seconds"] < best["seconds"]:
                best = measured
        assert best is not None
        valid, invalid = counts(out)
        results.append(
            {
                "variant": name,
                "rows": rows,
                "seconds": best["seconds"],
                "rows_per_s": rows / best["seconds"],
                "peak_rss_mib": best["peak_rss_kb"] / 1024,
                "valid": valid,
                "invalid": invalid,
            }
        )
        print(
            f"{rows:>11,} {name:<30} {best['seconds']:8.2f} s {rows / best['seconds']:>12,.0f} rows/s "
            f"{best['peak_rss_kb'] / 1024:8.0f} MiB  valid {valid:,} invalid {invalid:,}",
            file=sys.stderr,
        )
    agreed = {(r["valid"], r["invalid"]) for r in results}
    if len(agreed) != 1:
        raise SystemExit(f"variants disagree on valid/invalid counts at {rows:,} rows: {results}")
    return results


def table(results: list[dict[str, object]]) -> str:
    lines = [
        "| rows | variant | seconds | rows/s | peak RSS (MiB) | runink rows/s ÷ this |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for rows in sorted({r["rows"] for r in results}):  # type: ignore[type-var]
        group = [r for r in results if r["rows"] == rows]
        runink = next(r for r in group if r["variant"] == "runink")
        for r in group:
            ratio = float(runink["rows_per_s"]) / float(r["rows_per_s"])  # type: ignore[arg-type]
            lines.append(
                f"| {rows:,} | {r['variant']} | {r['seconds']:.2f} | {r['rows_per_s']:,.0f} | "
                f"{r['peak_rss_mib']:.0f} | {ratio:.2f} |"
            )
    return "\n".join(lines)


def checks(results: list[dict[str, object]]) -> list[str]:
    out = []
    sizes = sorted({int(r["rows"]) for r in results})  # type: ignore[call-overload]
    for rows in sizes:
        group = {r["variant"]: r for r in results if r["rows"] == rows}
        runink = float(group["runink"]["rows_per_s"])  # type: ignore[arg-type]
        plain = float(group["plain Python (csv/json loop)"]["rows_per_s"])  # type: ignore[arg-type]
        fastest = max(float(group[v]["rows_per_s"]) for v in ("polars (direct)", "duckdb (direct)"))  # type: ignore[arg-type]
        out.append(
            f"{rows:,} rows: runink / plain Python = {runink / plain:.1f}x (target >= 10x): "
            f"{'PASS' if runink / plain >= 10 else 'FAIL'}"
        )
        out.append(
            f"{rows:,} rows: fastest direct engine / runink = {fastest / runink:.2f}x (target <= 2x): "
            f"{'PASS' if fastest / runink <= 2 else 'FAIL'}"
        )
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        rss = {r["rows"]: float(r["peak_rss_mib"]) for r in results if r["variant"] == "runink"}  # type: ignore[arg-type]
        ratio = rss[large] / rss[small]
        out.append(
            f"runink peak RSS {large:,} / {small:,} rows = {ratio:.2f}x (target <= 1.2x): "
            f"{'PASS' if ratio <= 1.2 else 'FAIL'}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--quick", action="store_true", help="100k rows only")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant (best is kept)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/runink-bench-pipeline"))
    args = parser.parse_args()
    sizes = [100_000] if args.quick else args.sizes
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = [r for rows in sizes for r in run_size(rows, args.workdir, args.repeat)]
    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cpus, {platform.platform()}",
        "python": platform.python_version(),
        "results": results,
        "checks": checks(results),
    }
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / f"pipeline-{report['date']}.json").write_text(json.dumps(report, indent=2))
    print(table(results))
    print()
    for line in report["checks"]:
        print(f"- {line}")


if __name__ == "__main__":
    main()
