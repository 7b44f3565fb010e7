"""bench/pipeline: runink run vs a plain Python loop, polars and DuckDB on the same work.

    python bench/pipeline/run.py                      # 1M, 10M and 100M rows, 3 rounds (100M: 1)
    python bench/pipeline/run.py --sizes 1000000 10000000 --rounds 5
    python bench/pipeline/run.py --quick              # 100k rows, a smoke run

Work: parse an orders CSV (~2% bad rows, some malformed), validate 5 constraints, 2
transforms, write valid rows to Parquet (zstd) and bad rows to a JSON Lines DLQ; every
variant's dead-letter rows carry the reasons they failed and their line (equal work). Every
variant runs as its own process tree, in rounds that take turns (A B C D, the order rotating
each round), and the table shows medians: wall time, the peak RSS of the largest process, the
peak of the whole tree's PSS (runink's CLI, launcher and slice together) and the outputs'
sizes. All variants must agree on the valid and invalid row counts. Data lives in --workdir
(/tmp; the 100M file is ~7 GB). The plain Python loop is an anchor for the small sizes only
(--plain-max).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import runpy
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
RUNINK = [sys.executable, "-m", "runink"]  # this interpreter's (the venv's bin need not be on PATH)
REPO = HERE.parent.parent
MEASURE = HERE / "measure_tree.py"  # wall time, largest process's peak RSS, the tree's peak PSS
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
    base = 10_000_000
    if rows > base and rows % base == 0:  # make_data.py writes ~100 MB a minute: repeat the 10M file
        generate(base, path.with_name(f"orders-{base}.csv"))
        print(f"writing {rows:,} rows -> {path} (the {base:,}-row file, {rows // base} times)", file=sys.stderr)
        temporary = path.with_suffix(".tmp")
        with open(path.with_name(f"orders-{base}.csv"), "rb") as source, open(temporary, "wb") as out:
            header = source.readline()
            out.write(header)
            for _ in range(rows // base):
                source.seek(len(header))
                shutil.copyfileobj(source, out, 16 * 2**20)
        temporary.rename(path)
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
        [sys.executable, str(MEASURE), *command], cwd=cwd, capture_output=True, text=True, check=True, timeout=7200
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


def run_size(rows: int, work: Path, rounds: int, plain_max: int) -> list[dict[str, object]]:
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
    if rows > plain_max:
        del variants["plain Python (csv/json loop)"]
    names = list(variants)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    outputs: dict[str, tuple[int, int, int, int]] = {}
    for round_number in range(rounds):
        turn = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in turn:
            out = work / f"out-{rows}-{name.split()[0]}"
            shutil.rmtree(out, ignore_errors=True)
            if name == "runink":
                (project / "bench.dsl").write_text(DSL.format(source=source, out=out))
            measured = measure(variants[name](out), project)
            runs[name].append(measured)
            valid, invalid = counts(out)
            sizes = ((out / "orders.parquet").stat().st_size, (out / "dlq.jsonl").stat().st_size)
            outputs[name] = (valid, invalid, *sizes)
            print(
                f"{rows:>11,} round {round_number + 1} {name:<30} {measured['seconds']:8.2f} s "
                f"{measured['peak_rss_kb'] / 1024:6.0f} MiB largest, {measured['tree_pss_kb'] / 1024:6.0f} MiB tree",
                file=sys.stderr,
            )
    results = []
    for name in names:
        seconds = statistics.median(r["seconds"] for r in runs[name])
        valid, invalid, parquet_bytes, dlq_bytes = outputs[name]
        results.append(
            {
                "variant": name,
                "rows": rows,
                "rounds": rounds,
                "seconds": seconds,
                "all_seconds": [round(r["seconds"], 3) for r in runs[name]],
                "rows_per_s": rows / seconds,
                "peak_rss_mib": statistics.median(r["peak_rss_kb"] for r in runs[name]) / 1024,
                "tree_pss_mib": statistics.median(r["tree_pss_kb"] for r in runs[name]) / 1024,
                "parquet_mib": parquet_bytes / 2**20,
                "dlq_mib": dlq_bytes / 2**20,
                "valid": valid,
                "invalid": invalid,
            }
        )
    agreed = {(r["valid"], r["invalid"]) for r in results}
    if len(agreed) != 1:
        raise SystemExit(f"variants disagree on valid/invalid counts at {rows:,} rows: {results}")
    return results


def table(results: list[dict[str, object]]) -> str:
    lines = [
        "| rows | variant | rounds | median s | rows/s | peak RSS, largest process (MiB) | peak PSS, whole tree (MiB) "
        "| Parquet (MiB) | DLQ (MiB) | runink rows/s ÷ this |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rows in sorted({r["rows"] for r in results}):  # type: ignore[type-var]
        group = [r for r in results if r["rows"] == rows]
        runink = next(r for r in group if r["variant"] == "runink")
        for r in group:
            ratio = float(runink["rows_per_s"]) / float(r["rows_per_s"])  # type: ignore[arg-type]
            lines.append(
                f"| {rows:,} | {r['variant']} | {r['rounds']} | {r['seconds']:.2f} | {r['rows_per_s']:,.0f} | "
                f"{r['peak_rss_mib']:.0f} | {r['tree_pss_mib']:.0f} | {r['parquet_mib']:.1f} | {r['dlq_mib']:.1f} | "
                f"{ratio:.2f} |"
            )
    return "\n".join(lines)


def checks(results: list[dict[str, object]]) -> list[str]:
    out = []
    sizes = sorted({int(r["rows"]) for r in results})  # type: ignore[call-overload]
    for rows in sizes:
        group = {r["variant"]: r for r in results if r["rows"] == rows}
        runink = float(group["runink"]["rows_per_s"])  # type: ignore[arg-type]
        if "plain Python (csv/json loop)" in group:
            plain = float(group["plain Python (csv/json loop)"]["rows_per_s"])  # type: ignore[arg-type]
            out.append(
                f"{rows:,} rows: runink / plain Python = {runink / plain:.1f}x (target >= 10x): "
                f"{'PASS' if runink / plain >= 10 else 'FAIL'}"
            )
        fastest = max(float(group[v]["rows_per_s"]) for v in ("polars (direct)", "duckdb (direct)"))  # type: ignore[arg-type]
        target = 1.0 if rows >= 10_000_000 else 0.8  # issue 24: runink's rows/s ÷ the faster engine's
        out.append(
            f"{rows:,} rows: runink rows/s / fastest direct engine's = {runink / fastest:.2f}x "
            f"(target >= {target}x): {'PASS' if runink / fastest >= target else 'FAIL'}"
        )
        polars_rss = float(group["polars (direct)"]["peak_rss_mib"])  # type: ignore[arg-type]
        runink_tree = float(group["runink"]["tree_pss_mib"])  # type: ignore[arg-type]
        out.append(
            f"{rows:,} rows: runink's whole tree {runink_tree:.0f} MiB / polars' peak {polars_rss:.0f} MiB = "
            f"{runink_tree / polars_rss:.2f} (target <= 0.5): {'PASS' if runink_tree / polars_rss <= 0.5 else 'FAIL'}"
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
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000])
    parser.add_argument("--quick", action="store_true", help="100k rows only, one round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (variants take turns); 1 above 10M rows")
    parser.add_argument("--plain-max", type=int, default=10_000_000, help="the plain Python loop up to this size")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/runink-bench-pipeline"))
    args = parser.parse_args()
    sizes = [100_000] if args.quick else args.sizes
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in sizes:
        rounds = 1 if args.quick or rows > 10_000_000 else args.rounds
        results += run_size(rows, args.workdir, rounds, args.plain_max)
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
