"""Sources and sinks stay in the pipeline's folder (or one [paths] allow lists), and no sink
replaces the pipeline's own files: checked when the pipeline compiles, before anything runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixture_types import CliRunner

from runink.core.config import load_config
from runink.core.pipeline.compile import CompiledPipeline, compile_pipeline
from runink.core.pipeline.dsl import DslError, parse_file


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "pipes" / "p"
    (root / "data").mkdir(parents=True)
    (root / "data" / "in.csv").write_text("id\n1\n2\n")
    (root / "steps.py").write_text("def keep(batch):\n    return batch\n")
    (root / "contracts.py").write_text(
        "from runink.core.contracts import Contract, Field\n\nclass Row(Contract):\n    id: int = Field(ge=0)\n"
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("id\n42\n")
    return root


def compile_with(project: Path, source: str, sink: str, environ: dict[str, str] | None = None) -> CompiledPipeline:
    (project / "p.dsl").write_text(
        f'Feature: f\n  Scenario: a\n    @source("{source}", contract="contracts:Row")\n'
        f'    @step("steps:keep")\n    @sink("{sink}")\n'
    )
    config = load_config(environ=environ or {})
    return compile_pipeline(parse_file(project / "p.dsl"), config=config)


def refused(project: Path, source: str, sink: str, line: int, message: str, **kw: dict[str, str]) -> None:
    with pytest.raises(DslError) as info:
        compile_with(project, source, sink, **kw)
    text = str(info.value)
    assert f"p.dsl:{line}:5: " in text and message in text, text
    assert "\n" not in text


def test_sources_outside_the_folder_are_refused(project: Path, tmp_path: Path) -> None:
    refused(
        project, "csv://../../../../etc/passwd", "out/o.csv", 3, "@source 'csv://../../../../etc/passwd': '..' leads"
    )
    refused(project, "data/../../x.csv", "out/o.csv", 3, "'..' leads out of the pipeline's folder")
    secret = tmp_path / "outside" / "secret.csv"
    refused(project, f"csv://{secret}", "out/o.csv", 3, f"{secret} is outside the pipeline's folder")
    refused(project, "csv://~/.gitconfig", "out/o.csv", 3, "is outside the pipeline's folder")
    # a link inside the folder to a file outside: the real path counts
    (project / "data" / "link.csv").symlink_to(secret)
    refused(project, "csv://data/link.csv", "out/o.csv", 3, f"(through a symbolic link: {secret})")
    (project / "elsewhere").symlink_to(tmp_path / "outside")
    refused(project, "csv://elsewhere/secret.csv", "out/o.csv", 3, "through a symbolic link")


def test_sinks_outside_the_folder_are_refused(project: Path, tmp_path: Path) -> None:
    refused(project, "csv://data/in.csv", "csv://../../outside/x.csv", 5, "'..' leads out")
    refused(project, "csv://data/in.csv", f"csv://{tmp_path}/outside/secret.csv", 5, "outside the pipeline's folder")
    (project / "out").symlink_to(tmp_path / "outside")
    refused(project, "csv://data/in.csv", "csv://out/secret.csv", 5, "through a symbolic link")


def test_sinks_never_replace_the_pipelines_own_files(project: Path) -> None:
    src = "csv://data/in.csv"
    refused(project, src, "csv://steps.py", 5, "would replace the module of step 'steps:keep'")
    refused(project, src, "csv://contracts.py", 5, "would replace the module of contract 'contracts:Row'")
    refused(project, src, "csv://p.dsl", 5, "would replace the pipeline's .dsl file")
    refused(project, src, "csv://pyarrow.py", 5, "a sink may not write a file Python imports")  # shadowing
    refused(project, src, "csv://sitecustomize.pth", 5, "a sink may not write a file Python imports")
    refused(project, src, "csv://runink.toml", 5, "a .toml file")
    refused(project, src, "csv://data", 5, "is a folder")
    (project / "data" / "alias.csv").symlink_to(project / "data" / "in.csv")
    refused(project, src, "csv://data/alias.csv", 5, "writes the dataset it reads")


def test_a_sink_writing_another_scenarios_source_through_a_link_is_refused(project: Path) -> None:
    (project / "alias").symlink_to(project / "data")
    (project / "p.dsl").write_text(
        'Feature: f\n  Scenario: a\n    @source("csv://data/in.csv")\n    @sink("out/a.csv")\n'
        '  Scenario: b\n    @source("csv://out/a.csv")\n    @sink("csv://alias/in.csv")\n'
    )
    with pytest.raises(DslError, match=r"p\.dsl:7:5: @sink 'csv://alias/in.csv' is the source of scenario 'a'"):
        compile_pipeline(parse_file(project / "p.dsl"))


def test_paths_allow_opens_listed_folders_only(project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    allow = {"RUNINK_PATHS__ALLOW": str(outside)}
    compiled = compile_with(project, f"csv://{outside}/secret.csv", f"csv://{outside}/copy.csv", allow)
    assert compiled.scenarios[0].source.path == outside / "secret.csv"
    # inside the folder, '..' that stays inside, and absolute paths into the folder are fine
    compile_with(project, "csv://data/../data/in.csv", f"csv://{project}/out/o.csv")
    # a relative path does not reach an allowed folder through '..'
    refused(project, "csv://../../outside/secret.csv", "out/o.csv", 3, "'..' leads out", environ=allow)
    refused(
        project, "csv:///etc/passwd", "out/o.csv", 3, f"and the folders [paths] allow lists ({outside})", environ=allow
    )


def test_runink_run_reads_and_writes_nothing_outside(
    run_cli: CliRunner, project: Path, tmp_path: Path, data_home: Path
) -> None:
    env = {"RUNINK_EXECUTOR__DRIVER": "process"}
    victim = tmp_path / "outside" / "root-only.csv"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    steps_before = (project / "steps.py").read_text()
    cases = [
        ("csv://../../../../etc/passwd", "out/o.csv", 3),
        ("csv:///etc/passwd", "out/o.csv", 3),
        ("csv://data/in.csv", f"csv://{victim}", 5),
        ("csv://data/in.csv", "csv://steps.py", 5),
        ("csv://data/in.csv", "csv://p.dsl", 5),
    ]
    for source, sink, line in cases:
        text = f'Feature: f\n  Scenario: a\n    @source("{source}")\n    @step("steps:keep")\n    @sink("{sink}")\n'
        (project / "p.dsl").write_text(text)
        for extra in ([], ["--dry-run"]):
            out = run_cli("run", "p.dsl", *extra, cwd=project, env=env)
            assert out.returncode == 2, (source, sink, out.stderr)
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: p.dsl:{line}:5: "), lines
            assert (source if line == 3 else sink) in lines[0]
        assert (project / "p.dsl").read_text() == text
    assert victim.read_text() == "precious\n" and (project / "steps.py").read_text() == steps_before
    assert not (project / "out").exists() and not (data_home / "runs").exists()
    # allowed in the configuration file: the same absolute paths work
    (project / "runink.toml").write_text(f'[paths]\nallow = ["{tmp_path / "outside"}"]\n')
    (project / "p.dsl").write_text(
        f'Feature: f\n  Scenario: a\n    @source("csv://data/in.csv")\n    @sink("csv://{tmp_path}/outside/copy.csv")\n'
    )
    out = run_cli("run", "p.dsl", cwd=project, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "outside" / "copy.csv").read_text().splitlines()[1:] == ["1", "2"]
    assert os.stat(victim).st_mode & 0o777 == 0o600
