"""A pipeline project from someone else, run by `runink run` / `runink test` (often as root):
the files the runner reads and writes in it (a review's findings, each reproduced first)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fixture_types import CliRunner

from runink.core.config import load_config
from runink.core.config_trust import trust
from runink.core.datasets import DatasetError, resolve_dataset
from runink.core.errors import ConfigError
from runink.core.pipeline import PipelineBuilder
from runink.core.pipeline.compile import compile_pipeline
from runink.core.pipeline.dsl import DslError, parse_file

PIPELINE = 'Feature: Copy\n  @golden("golden/t")\n  Scenario: Copy\n    @source("csv://data/in.csv")\n{sinks}'
ONE_SINK = '    @sink("csv://out/copy.csv")\n'


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "golden" / "t" / "expected").mkdir(parents=True)
    (root / "data" / "in.csv").write_text("x\nfirst\n")
    (root / "golden" / "t" / "input.csv").write_text("x\nfirst\n")
    (root / "pipeline.dsl").write_text(PIPELINE.format(sinks=ONE_SINK))
    return root


def test_update_replaces_a_linked_expected_file_and_never_writes_through_it(
    run_cli: CliRunner, project: Path, tmp_path: Path
) -> None:
    # The link's target (~/.bashrc, say) was overwritten as root with rows the project chose.
    victim = tmp_path / "victim.sh"
    victim.write_text("echo mine\n")
    expected = project / "golden" / "t" / "expected" / "copy.csv.jsonl"
    expected.symlink_to(victim)
    out = run_cli("test", "--update", cwd=project)
    assert out.returncode == 0, out.stderr
    assert victim.read_text() == "echo mine\n"
    assert not expected.is_symlink() and json.loads(expected.read_text()) == {"x": "first"}
    assert run_cli("test", cwd=project).returncode == 0


def test_a_golden_folder_reached_through_a_link_is_refused(run_cli: CliRunner, project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (project / "golden" / "t").rename(elsewhere)
    (project / "golden" / "t").symlink_to(elsewhere)
    out = run_cli("test", "--update", cwd=project)
    assert out.returncode != 0 and "symbolic link" in out.stdout, out.stdout + out.stderr
    assert list((elsewhere / "expected").iterdir()) == []


def test_an_expected_file_is_read_only_as_a_regular_file_of_the_project(
    run_cli: CliRunner, project: Path, tmp_path: Path
) -> None:
    # A link to a root-only file was quoted in the diff; a FIFO hung; /dev/zero filled the memory.
    expected = project / "golden" / "t" / "expected" / "copy.csv.jsonl"
    secret = tmp_path / "secret"
    secret.write_text('{"x": "TOP-SECRET"}\n')
    expected.symlink_to(secret)
    out = run_cli("test", cwd=project)
    assert out.returncode == 1 and "symbolic link" in out.stdout and "TOP-SECRET" not in out.stdout + out.stderr
    expected.unlink()
    os.mkfifo(expected)
    out = run_cli("test", cwd=project)
    assert out.returncode == 1 and "not a regular file" in out.stdout, out.stdout + out.stderr
    expected.unlink()
    expected.write_text('{"x": "first"}\n[1, 2]\n')
    out = run_cli("test", cwd=project)
    assert out.returncode == 1 and f"{expected}:2: expected a JSON object (one row), got list" in out.stdout


def test_two_sinks_of_one_file_name_cannot_share_an_expected_file(run_cli: CliRunner, project: Path) -> None:
    # out/good/x.csv and out/bad/x.csv were compared with one expected file: a test passed falsely.
    sinks = '    @sink("csv://out/good/copy.csv")\n    @sink("csv://out/bad/copy.csv", when="invalid")\n'
    (project / "pipeline.dsl").write_text(PIPELINE.format(sinks=sinks))
    out = run_cli("test", cwd=project)
    assert out.returncode == 1
    assert "@golden: two sinks write files named copy.csv (expected rows are kept by file name)" in out.stdout


def test_a_pipeline_that_does_not_compile_is_an_error_and_the_others_are_tested(
    run_cli: CliRunner, project: Path
) -> None:
    assert run_cli("test", "--update", cwd=project).returncode == 0
    (project / "drafts").mkdir()
    (project / "drafts" / "wip.dsl").write_text("Feature: draft\n")
    os.mkfifo(project / "drafts" / "pipe.dsl")  # (no pipeline: skipped, never opened)
    out = run_cli("test", cwd=project)
    assert out.returncode == 1
    assert "PASSED pipeline.dsl: Copy" in out.stdout and "ERROR drafts/wip.dsl" in out.stdout, out.stdout + out.stderr
    assert "1 passed, 1 failed" in out.stdout
    listed = json.loads(run_cli("test", "--json", cwd=project).stdout)  # (its error was null: a review)
    assert sorted((r["status"], bool(r["error"])) for r in listed) == [("error", True), ("passed", False)]


def test_a_pipeline_file_that_is_no_regular_file_is_refused(run_cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "zero.dsl").symlink_to("/dev/zero")
    out = run_cli("run", "zero.dsl", cwd=tmp_path)
    assert out.returncode != 0 and "zero.dsl: not a regular file" in out.stderr, out.stderr


def test_a_line_break_other_than_newline_is_refused_where_it_is(run_cli: CliRunner, project: Path) -> None:
    # An editor showed a comment there; the parser read an @secrets annotation on a line of its own.
    text = "Feature: Copy\n  # reviewed: nothing secret\u2028  @network\n"
    (project / "pipeline.dsl").write_text(text)
    out = run_cli("run", "pipeline.dsl", "--dry-run", cwd=project)
    assert out.returncode == 2
    assert "pipeline.dsl:2:29: a line break other than \\n (U+2028)" in out.stderr, out.stderr


def test_an_annotate_prompt_outside_the_pipeline_s_folder_is_refused(
    run_cli: CliRunner, project: Path, tmp_path: Path
) -> None:
    # It was read as root and handed to the slice: a root-only file reached the outputs.
    secret = tmp_path / "root-only.txt"
    secret.write_text("secret")
    steps = f'    @network\n    @annotate(prompt="{secret}", fields=["x"])\n' + ONE_SINK
    (project / "pipeline.dsl").write_text(PIPELINE.format(sinks=steps).replace("  @golden", "  #"))
    out = run_cli("run", "pipeline.dsl", "--dry-run", cwd=project)
    assert out.returncode == 2 and "not a path inside the pipeline's folder" in out.stderr, out.stderr
    (project / "p.txt").symlink_to(secret)
    (project / "pipeline.dsl").write_text(PIPELINE.format(sinks=steps.replace(str(secret), "p.txt")))
    out = run_cli("run", "pipeline.dsl", "--dry-run", cwd=project)
    assert out.returncode == 2 and "symbolic link" in out.stderr, out.stderr


def _compile_error(text: str, folder: Path) -> str:
    (folder / "p.dsl").write_text(text)
    with pytest.raises(DslError) as caught:
        compile_pipeline(parse_file(folder / "p.dsl"), check_code=False)
    return str(caught.value)


@pytest.mark.parametrize(
    ("scenarios", "message"),
    [
        # each passed the dry run and was refused (or crashed) only once submitted
        ("  Scenario: Load orders\n{body}  Scenario: load-orders\n{body}", "its runs' folder would be 'load-orders'"),
        ("  Scenario: " + "x" * 201 + "\n{body}", "scenario name of 201 characters: at most 200"),
        ("  Scenario: a\x1b[31mb\n{body}", "its name holds a control character"),
        ("  @retries(101)\n  Scenario: a\n{body}", "retries 101: 0 to 100"),
        ('  Scenario: a\n    @source("in.csv", block_size=10**40)\n    @sink("out/a.csv")\n', "block_size"),
        # (and what took minutes: 16,000 sinks compiled in 42 s, 40,000 steps parsed in 7)
        (
            '  Scenario: a\n    @source("in.csv")\n' + '    @step("s:f")\n' * 1001 + '    @sink("o.csv")\n',
            "more than 1000 steps",
        ),
    ],
)
def test_what_a_run_would_refuse_is_refused_when_compiled(tmp_path: Path, scenarios: str, message: str) -> None:
    (tmp_path / "in.csv").write_text("x\n1\n")
    body = '    @source("in.csv")\n    @sink("out/{n}.csv")\n'
    text = "Feature: f\n" + scenarios.replace("{body}", body)
    count = text.count("{n}")
    for n in range(count):
        text = text.replace("{n}", f"o{n}", 1)
    assert message in _compile_error(text.replace("10**40", str(10**40)), tmp_path)


def test_a_feature_name_that_would_drive_the_terminal_is_refused(tmp_path: Path) -> None:
    error = _compile_error(
        'Feature: x \x1b]0;PWNED\x07\n  Scenario: a\n    @source("in.csv")\n    @sink("o.csv")\n', tmp_path
    )
    assert error.endswith("the Feature's name: printable text of at most 200 characters")


def test_the_python_builder_gets_the_dsl_s_checks(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("x\n1\n")
    twice = PipelineBuilder("p", base_dir=tmp_path)
    for _ in range(2):
        twice.scenario("A").source("in.csv").sink(tmp_path / "out" / "a.csv")  # (a Path: taken as its text)
    with pytest.raises(DslError, match="scenario 'A' is defined twice"):
        compile_pipeline(twice.build(), check_code=False)
    typo = PipelineBuilder("p", base_dir=tmp_path).scenario("A").source("in.csv").sink("out/a.csv")
    typo.sink("out/bad.csv", when="vaild")  # type: ignore[arg-type]
    with pytest.raises(DslError, match="when='vaild': expected 'valid' or 'invalid'"):
        compile_pipeline(typo.build(), check_code=False)


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("file:///data/x.csv", "/data/x.csv"),
        ("file://localhost/data/x.csv", "/data/x.csv"),
        ("file:/data/x.csv", "/data/x.csv"),
    ],
)
def test_file_uris_are_read_as_rfc_8089_has_them(uri: str, path: str) -> None:
    # file://localhost/tmp/x.csv was <project>/localhost/tmp/x.csv; file:/tmp/x.csv <project>/file:/tmp/x.csv
    assert str(resolve_dataset(uri, Path("/project")).path) == path
    with pytest.raises(DatasetError, match="names the host 'elsewhere': only this machine's files"):
        resolve_dataset("file://elsewhere/data/x.csv", Path("/project"))


def test_a_local_run_refuses_a_node_label_this_machine_lacks_instead_of_waiting(
    run_cli: CliRunner, project: Path
) -> None:
    text = PIPELINE.format(sinks=ONE_SINK).replace("  Scenario: Copy", '  @affinity(label="zone=eu")\n  Scenario: Copy')
    (project / "pipeline.dsl").write_text(text)
    out = run_cli("run", "pipeline.dsl", cwd=project)
    assert out.returncode == 1 and "scenario 'Copy' asks for a node labelled zone=eu" in out.stderr, out.stderr


def test_init_makes_no_folder_through_a_link(run_cli: CliRunner, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "data").symlink_to(outside)
    out = run_cli("init", "new")
    assert out.returncode == 1 and "symbolic link" in out.stderr, out.stderr
    assert list(outside.iterdir()) == []


def test_a_golden_folder_outside_the_pipeline_s_is_refused_when_compiled(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("x\n1\n")
    text = 'Feature: f\n  @golden("../shared/t")\n  Scenario: a\n    @source("in.csv")\n    @sink("o.csv")\n'
    assert "@golden('../shared/t'): a folder inside the pipeline's folder" in _compile_error(text, tmp_path)


def test_trust_is_the_file_s_as_found_not_its_link_target_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A/runink.toml -> ../B/runink.toml: trusting B's let A run with it
    (tmp_path / "B").mkdir()
    (tmp_path / "A").mkdir()
    (tmp_path / "B" / "runink.toml").write_text('[executor]\ndriver = "process"\n')
    (tmp_path / "A" / "runink.toml").symlink_to("../B/runink.toml")
    trust(tmp_path / "B" / "runink.toml")
    monkeypatch.chdir(tmp_path / "A")
    with pytest.raises(ConfigError, match="not trusted yet"):
        load_config()
    os.mkfifo(tmp_path / "C")  # (a FIFO as ./runink.toml hung every command in its folder)
    (tmp_path / "D").mkdir()
    (tmp_path / "D" / "runink.toml").symlink_to(tmp_path / "C")
    monkeypatch.chdir(tmp_path / "D")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config()
