"""`runink init` writes a pipeline that `runink run` and `runink test` pass at once; `runink.run`
runs a builder pipeline (or a .dsl) with one call and returns the `--json` summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fixture_types import CliRunner

import runink
from runink.core.errors import RuninkError
from runink.core.pipeline import PipelineBuilder


def test_init_writes_a_pipeline_that_runs_and_passes_its_golden_test(run_cli: CliRunner, tmp_path: Path) -> None:
    made = run_cli("init", "project", "--json")
    assert made.returncode == 0, made.stderr
    project = tmp_path / "project"
    written = {str(Path(p).relative_to(project)) for p in json.loads(made.stdout)["files"]}
    assert {"pipeline.dsl", "contracts.py", "steps.py", "data/orders.csv", ".gitignore", "README.md"} <= written
    assert "golden/clean-orders/input.csv" in written
    ran = run_cli("run", "pipeline.dsl", "--json", cwd=project)
    assert ran.returncode == 0, ran.stderr
    (scenario,) = json.loads(ran.stdout)["scenarios"]
    assert (scenario["state"], scenario["rows_valid"], scenario["rows_invalid"]) == ("SUCCEEDED", 5, 3)
    assert (project / "out" / "orders.parquet").is_file() and (project / "out" / "rejected.jsonl").is_file()
    tested = run_cli("test", cwd=project)
    assert tested.returncode == 0 and "1 passed, 0 failed" in tested.stdout, tested.stdout + tested.stderr
    # the golden test checks for real: a changed step fails it
    steps = project / "steps.py"
    steps.write_text(steps.read_text().replace("pc.round(batch.column", "pc.add(0.01, batch.column"))
    steps.write_text(steps.read_text().replace('column("amount"), 2)', 'column("amount"))'))
    failed = run_cli("test", cwd=project)
    assert failed.returncode == 1 and "0 passed, 1 failed" in failed.stdout, failed.stdout + failed.stderr


def test_init_overwrites_nothing(run_cli: CliRunner, tmp_path: Path) -> None:
    project = tmp_path / "mine"
    project.mkdir()
    (project / "steps.py").write_text("# my own steps\n")
    refused = run_cli("init", str(project))
    assert refused.returncode == 1
    why = "already there (runink init writes into a new or empty folder)"
    assert refused.stderr.strip() == f"error: {project / 'steps.py'}: {why}"
    assert sorted(p.name for p in project.iterdir()) == ["steps.py"]  # nothing else written
    assert (project / "steps.py").read_text() == "# my own steps\n"
    (tmp_path / "file").write_text("x")
    assert "not a folder" in run_cli("init", str(tmp_path / "file")).stderr
    below_a_file = run_cli("init", str(tmp_path / "file" / "sub"))  # (was an "internal error": a review)
    assert (below_a_file.returncode, below_a_file.stderr.strip()) == (
        1,
        f"error: {tmp_path / 'file' / 'sub'}: cannot make the folder: Not a directory",
    )


def test_runink_run_takes_a_builder_pipeline_or_a_dsl_and_returns_the_summary(
    run_cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_cli("init", "project").returncode == 0
    project = tmp_path / "project"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    pipeline = (
        PipelineBuilder("Orders", base_dir=project)
        .scenario("Clean orders")
        .source("csv://data/orders.csv", contract="contracts:Order")
        .step("steps:normalize")
        .sink("parquet://out/built.parquet")
        .build()
    )
    summary = runink.run(pipeline)
    assert summary["ok"] is True and summary["pipeline"] == "Orders"
    assert summary["scenarios"][0]["rows_valid"] == 5 and (project / "out" / "built.parquet").is_file()
    from_dsl = runink.run(project / "pipeline.dsl", overrides={"run.fail_on_invalid": "10"})
    assert from_dsl["ok"] is False  # 3 of 8 rows invalid: past 10%, the scenario fails, as with --set
    assert from_dsl["scenarios"][0]["state"] == "FAILED"
    shutil.rmtree(project / "out")
    with pytest.raises(RuninkError, match="no_such_key"):
        runink.run(project / "pipeline.dsl", overrides={"no_such_key": "1"})
    with pytest.raises(TypeError, match=r"expected a \.dsl path or a Pipeline"):
        runink.run(42)
