"""What `runink run` tells a person or a script: where the valid rows and the dead letters went,
progress lines when stderr is not a terminal, and `--fail-on-invalid` failing a scenario whose
invalid share passes a threshold (its outputs not published, what follows it skipped)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fixture_types import CliRunner


def test_the_summary_says_where_the_valid_rows_and_the_dead_letters_went(run_cli: CliRunner, orders: Path) -> None:
    out = run_cli("run", "orders.dsl", cwd=orders)
    assert out.returncode == 0, out.stderr
    assert (
        "Validate orders: 980 valid rows -> out/silver/orders.parquet; 20 dead letters -> out/dlq/orders.jsonl"
        in out.stdout
    )
    assert "Large orders: " in out.stdout and "-> out/gold/large_orders.csv" in out.stdout
    assert "ROWS/S" in out.stdout
    summary = json.loads(run_cli("run", "orders.dsl", "--json", cwd=orders).stdout)
    (validate,) = [s for s in summary["scenarios"] if s["scenario"] == "Validate orders"]
    assert validate["dead_letters"] == [str(orders / "out" / "dlq" / "orders.jsonl")]


def test_fail_on_invalid_fails_the_scenario_and_publishes_nothing(run_cli: CliRunner, orders: Path) -> None:
    out = run_cli("run", "orders.dsl", "--fail-on-invalid", "1", "--json", cwd=orders)
    assert out.returncode == 1, out.stderr
    scenarios = {s["scenario"]: s for s in json.loads(out.stdout)["scenarios"]}
    validate = scenarios["Validate orders"]
    assert validate["state"] == "FAILED"
    assert "20 of 1,000 rows invalid (2.0%), over --fail-on-invalid 1%" in validate["error"]
    assert scenarios["Large orders"]["state"] == "SKIPPED"
    assert not (orders / "out" / "silver" / "orders.parquet").exists()  # nothing half-published
    assert not (orders / "out" / "dlq" / "orders.jsonl").exists()
    line = run_cli("run", "orders.dsl", "--fail-on-invalid", "1", cwd=orders)
    assert line.returncode == 1 and "over --fail-on-invalid 1%" in line.stderr and "Traceback" not in line.stderr
    assert run_cli("run", "orders.dsl", "--fail-on-invalid", "2.5", cwd=orders).returncode == 0
    bad = run_cli("run", "orders.dsl", "--fail-on-invalid", "101", cwd=orders)
    assert bad.returncode == 2 and "--fail-on-invalid" in bad.stderr


def test_without_a_terminal_a_running_scenario_says_how_far_it_is(run_cli: CliRunner, tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    # 8 blocks of 1 KiB, a second each: after 5 s the line says how much is read and what is left
    (project / "in.csv").write_text("id,pad\n" + "".join(f"{i:07d},{'x' * 24}\n" for i in range(256)))
    (project / "steps.py").write_text("import time\ndef slow(batch):\n    time.sleep(1)\n    return batch\n")
    (project / "p.dsl").write_text(
        'Feature: Slow\n  Scenario: Crawl\n    @source("csv://in.csv", block_size=1024)\n    @step("steps:slow")\n'
        '    @sink("csv://out.csv")\n'
    )
    out = run_cli("run", "p.dsl", cwd=project)  # (stderr a pipe: no live table)
    assert out.returncode == 0, out.stderr
    progress = [line for line in out.stderr.splitlines() if "Crawl: rows in" in line]
    assert progress, out.stderr
    pace = re.search(r"\(([\d,]+) rows/s; (\d+)% read, (\d+)s left\)$", progress[0])
    assert pace is not None, progress[0]
    assert 30 <= int(pace[2]) <= 95 and 1 <= int(pace[3]) <= 10, progress[0]
    assert "Crawl: running" in out.stderr and "Crawl: succeeded" in out.stderr
