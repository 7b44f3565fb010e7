"""What a hostile step leaves for the runner: forged counts in its report, folder chains far
deeper than Python recurses in its work dir and its sink's staging folder. The run's result
stands, no later run nor prune is broken, nothing is left behind (real `runink run`s)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fixture_types import CliRunner

from runink.core import fstree

DSL = """@herd("h")
Feature: F
  Scenario: S
    @source("csv://in.csv")
    @step("steps:evil")
    @sink("csv://out/o.csv")
    Given x
"""

CHAIN = """
def chain(folder, depth):
    fd = os.open(folder, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        deeper = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(fd)
"""


def _project(root: Path, steps: str) -> Path:
    project = root / "project"
    project.mkdir()
    (project / "steps.py").write_text(steps)
    (project / "in.csv").write_text("id,v\n1,a\n2,b\n")
    (project / "p.dsl").write_text(DSL)
    return project


def test_forged_counts_in_a_slices_report_change_nothing_the_runner_does(run_cli: CliRunner, tmp_path: Path) -> None:
    steps = """import runink.core.dataplane.slice as s
real = s._counts
def forged(counters):  # (the step runs in the slice's process: it can rewrite its report)
    return {**real(counters), "rows_in": 10**400, "rows_out": -5, "steps": {"evil": 10**30}}
s._counts = forged
def evil(batch):
    return batch
"""
    project = _project(tmp_path, steps)
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    assert out.returncode == 0, out.stderr
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr
    (scenario,) = json.loads(out.stdout)["scenarios"]
    assert scenario["state"] == "SUCCEEDED" and scenario["rows_in"] < 2**63 and scenario["rows_out"] >= 0


def test_folder_chains_deeper_than_python_recurses_break_no_run_nor_prune(
    run_cli: CliRunner, tmp_path: Path, data_home: Path
) -> None:
    steps = (
        "import json, os\n"
        + CHAIN
        + """
def evil(batch):
    chain(os.environ["HOME"], 1500)  # its work dir: kept with the run
    spec = json.load(open(os.path.join(os.environ["HOME"], "slice.json")))
    chain(os.path.dirname(spec["sinks"][0]["path"]), 3000)  # its sink's staging folder
    return batch
"""
    )
    project = _project(tmp_path, steps)
    try:
        out = run_cli("run", "p.dsl", cwd=project)
        assert out.returncode == 0 and "internal error" not in out.stderr, out.stderr
        assert sorted(p.name for p in (project / "out").iterdir()) == ["o.csv"]  # the staging is gone
        again = run_cli("run", "p.dsl", cwd=project)  # (its end measures and prunes the runs kept)
        assert again.returncode == 0 and "internal error" not in again.stderr, again.stderr
        pruned = run_cli("jobs", "prune", "--max-size", "1", "--json")  # (every ended run goes)
        assert pruned.returncode == 0, pruned.stderr
        assert len(json.loads(pruned.stdout)["removed"]) == 2
        assert [p.name for p in (data_home / "runs").iterdir() if not p.name.startswith(".")] == []
    finally:
        fstree.remove_tree(tmp_path)  # (pytest's own clean-up of this folder would recurse)
        os.makedirs(tmp_path)


def test_a_slice_reads_the_config_in_its_folder_as_empty(run_cli: CliRunner, tmp_path: Path) -> None:
    """`runink run` from the project reads ./runink.toml, inside the folder every slice reads:
    the credentials in it (an s3 secret_key, an annotator's api_key) are for the slices meant
    to have them, as variables; a slice sees the file empty."""
    steps = """from pathlib import Path
def evil(batch):
    seen = (Path(__file__).parent / "runink.toml").read_text()
    if "S3-SECRET" in seen:
        raise SystemExit("read the credentials: " + seen)
    return batch
"""
    project = _project(tmp_path, steps)
    (project / "runink.toml").write_text('[plugin.storage-s3]\nsecret_key = "S3-SECRET"\n')
    (project / "runink.toml").chmod(0o600)
    out = run_cli("run", "p.dsl", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (project / "runink.toml").read_text() == '[plugin.storage-s3]\nsecret_key = "S3-SECRET"\n'
