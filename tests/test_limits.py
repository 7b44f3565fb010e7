"""Slice limits: @requires values are checked where they are written, and the configured
[limits] defaults reach the executor for every scenario that sets none."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from fixture_types import CliRunner

from runink.core.config import load_config
from runink.core.interfaces.executor import TaskHandle, TaskSpec
from runink.core.model import Resources
from runink.core.pipeline.compile import compile_pipeline
from runink.core.pipeline.dsl import DslError, parse, parse_file
from runink.core.plugins import PluginManager
from runink.core.runner import LocalRunner
from runink.plugins.executors.linux.executor import LinuxExecutor
from runink.plugins.executors.process import ProcessExecutor


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("cpu=1e400", "@requires: cpu must be a number of cores > 0"),
        ('cpu="nan"', "@requires: cpu must be a number of cores > 0"),
        ("cpu=-1", "@requires: cpu must be"),
        ("cpu=0", "@requires: cpu must be"),
        ("cpu=True", "@requires: cpu must be"),
        ("memory=1e400", "@requires: memory: invalid memory size inf"),
        ("memory=-5", "@requires: memory: invalid memory size -5: negative"),
        ("memory=0", "@requires: memory must be more than 0"),
        ('memory="lots"', "@requires: memory: invalid memory size 'lots'"),
        ('memory="99999999999999Ti"', "@requires: memory must be more than 0 and at most 1Ei bytes"),
        ("gpu=-1", "@requires: gpu must be a whole number from 0 to 1024, got -1"),
        ("gpu=1.5", "@requires: gpu must be a whole number"),
        ("pids=0", "@requires: pids must be a whole number from 1 to 4194304, got 0"),
        ("pids=-3", "@requires: pids must be a whole number"),
        ('pids="64"', "@requires: pids must be a whole number"),
        ("pids=10**9", "@requires: arguments must be literals"),
        ("pids=1000000000", "@requires: pids must be a whole number"),
        ("timeout=0", "@requires: timeout: invalid duration 0: must be positive"),
        ('timeout="0s"', "@requires: timeout: invalid duration '0s': must be positive"),
        ("timeout=-1", "@requires: timeout: invalid duration -1"),
        ("timeout=1e400", "@requires: timeout: invalid duration inf: at most 366 days"),
    ],
)
def test_nonsense_requirements_are_dsl_errors(arguments: str, message: str) -> None:
    text = f'Feature: x\n  Scenario: a\n    @source("a.csv")\n    @requires({arguments})\n    @sink("b.csv")\n'
    with pytest.raises(DslError) as info:
        parse(text, "p.dsl")
    assert str(info.value).startswith("p.dsl:4:5: "), str(info.value)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_feature_level_nonsense_and_retries_backoff() -> None:
    with pytest.raises(DslError, match=r"^p\.dsl:1:1: @requires: cpu must be"):
        parse('@requires(cpu=1e400)\nFeature: x\n  Scenario: a\n    @source("a.csv")\n', "p.dsl")
    with pytest.raises(DslError, match=r"^p\.dsl:3:5: @retries: backoff: invalid duration inf"):
        parse('Feature: x\n  Scenario: a\n    @retries(1, backoff=1e400)\n    @source("a.csv")\n', "p.dsl")


def test_pids_is_accepted_and_feature_values_are_defaults() -> None:
    pipeline = parse(
        '@requires(pids=32)\nFeature: x\n  Scenario: a\n    @source("a.csv")\n'
        '  @requires(pids=500, memory="1Gi")\n  Scenario: b\n    @source("b.csv")\n',
        "p.dsl",
    )
    a, b = pipeline.scenarios
    assert (a.requires.pids, a.requires.memory) == (32, 0)
    assert (b.requires.pids, b.requires.memory) == (500, 1024**3)


class RecordingExecutor(ProcessExecutor):
    """The process executor (degrading), keeping every spec it was asked to start."""

    def __init__(self) -> None:
        super().__init__(degrade=True)
        self.specs: list[TaskSpec] = []

    def start(self, spec: TaskSpec) -> TaskHandle:
        self.specs.append(spec)
        return super().start(spec)


def _project(tmp_path: Path) -> Path:
    (tmp_path / "in.csv").write_text("id\n1\n2\n")
    (tmp_path / "p.dsl").write_text(
        textwrap.dedent(
            """\
            Feature: limits
              Scenario: defaults
                @source("in.csv")
                @sink("out/a.csv")
              @requires(cpu=0.5, memory="3Gi", pids=4096)
              Scenario: asks for more
                @source("in.csv")
                @sink("out/b.csv")
            """
        )
    )
    return tmp_path / "p.dsl"


@pytest.mark.parametrize(
    ("environ", "defaults"),
    [
        ({}, Resources(cpu=1.0, memory=2 * 1024**3, pids=1024)),
        (
            {"RUNINK_LIMITS__PIDS": "77", "RUNINK_LIMITS__MEMORY": "300Mi"},
            Resources(cpu=1.0, memory=300 * 1024**2, pids=77),
        ),
    ],
)
def test_the_executor_gets_the_scenario_values_or_the_configured_defaults(
    tmp_path: Path, environ: dict[str, str], defaults: Resources
) -> None:
    compiled = compile_pipeline(parse_file(_project(tmp_path)))
    config = load_config(environ={**environ, "RUNINK_DATA_DIR": str(tmp_path / "state")})
    executor = RecordingExecutor()
    try:
        result = LocalRunner(config, PluginManager(config.plugins), executor).run(compiled)
    finally:
        executor.close()
    assert result.ok, [s.error for s in result.scenarios]
    limits = {spec.labels["scenario"]: spec.limits for spec in executor.specs}
    assert limits == {
        "defaults": defaults,
        "asks for more": Resources(cpu=0.5, memory=3 * 1024**3, pids=4096),
    }


def test_runink_run_refuses_a_nonsense_limit_before_starting_anything(
    run_cli: CliRunner, tmp_path: Path, data_home: Path
) -> None:
    (tmp_path / "in.csv").write_text("id\n1\n")
    (tmp_path / "p.dsl").write_text(
        'Feature: x\n  Scenario: a\n    @requires(cpu=1e400)\n    @source("in.csv")\n    @sink("out.csv")\n'
    )
    out = run_cli("run", "p.dsl", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: p.dsl:3:5: @requires: cpu must be a number of cores > 0 and at most 65536, got inf"
    ]
    assert not (tmp_path / "out.csv").exists() and not (data_home / "runs").exists()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RUNINK_LIMITS__MEMORY": "lots"}, "$RUNINK_LIMITS__MEMORY: limits.memory: invalid memory size"),
        ({"RUNINK_LIMITS__PIDS": "0"}, "$RUNINK_LIMITS__PIDS: limits.pids: Expected `int` >= 1"),
    ],
)
def test_nonsense_limit_defaults_are_config_errors(environ: dict[str, str], message: str) -> None:
    from runink.core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(environ=environ)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.skipif(bool(LinuxExecutor._detect_problems()), reason="cannot isolate here")
def test_an_isolated_slice_gets_the_default_pids_limit(run_cli: CliRunner, tmp_path: Path) -> None:
    """No @requires: the slice still cannot start more than [limits] pids (1024) tasks."""
    (tmp_path / "in.csv").write_text("id\n1\n")
    (tmp_path / "steps.py").write_text(
        textwrap.dedent(
            """
            import threading, time
            def many(batch):
                stop, started = threading.Event(), 0
                try:
                    for _ in range(1100):
                        threading.Thread(target=stop.wait, daemon=True).start()
                        started += 1
                except RuntimeError:
                    pass
                stop.set()
                print(f"started {started} threads")
                return batch
            """
        )
    )
    (tmp_path / "p.dsl").write_text(
        'Feature: x\n  Scenario: a\n    @source("in.csv")\n    @step("steps:many")\n    @sink("out.csv")\n'
    )
    out = run_cli("run", "p.dsl", "--json", cwd=tmp_path, env={"RUNINK_EXECUTOR__DRIVER": "linux"})
    assert out.returncode == 0, out.stderr
    log = Path(json.loads(out.stdout)["scenarios"][0]["log_dir"]) / "stdout.log"
    started = int(log.read_text().split("started ")[1].split()[0])
    assert 1000 <= started < 1024, started  # the pids cgroup stopped it (the slice's own tasks count too)
