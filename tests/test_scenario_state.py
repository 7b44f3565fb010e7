"""A scenario's state is the ScenarioState enum (its slice's TaskState, or SKIPPED), printed
as the same plain strings by ``runink run --json``."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from runink.core.config import load_config
from runink.core.interfaces.executor import TaskHandle, TaskSpec, TaskState
from runink.core.model import ScenarioState
from runink.core.pipeline.compile import compile_pipeline
from runink.core.pipeline.dsl import parse_file
from runink.core.plugins import PluginManager
from runink.core.runner import LocalRunner
from runink.plugins.executors.process import ProcessExecutor


def test_every_final_task_state_is_a_scenario_state() -> None:
    for state in TaskState:
        assert ScenarioState(state.value).final == state.final
    assert {s.value for s in ScenarioState} - {s.value for s in TaskState} == {"SKIPPED"}
    assert ScenarioState.SKIPPED.final


class SlowA(ProcessExecutor):
    """Scenario a's slice sleeps past its timeout; every other slice runs as given."""

    def __init__(self) -> None:
        super().__init__(degrade=True, timeout_grace=0.2)

    def start(self, spec: TaskSpec) -> TaskHandle:
        if spec.labels.get("scenario") == "a":
            spec = dataclasses.replace(spec, command=("sleep", "30"))
        return super().start(spec)


def test_a_timed_out_scenario_and_its_skipped_downstream(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id\n1\n")
    (tmp_path / "p.dsl").write_text(
        textwrap.dedent(
            """\
            Feature: states
              @requires(timeout=0.5)
              Scenario: a
                @source("in.csv")
                @sink("out/a.csv")
              Scenario: b
                @source("out/a.csv")
                @sink("out/b.csv")
              Scenario: c
                @source("in.csv")
                @sink("out/c.csv")
            """
        )
    )
    compiled = compile_pipeline(parse_file(tmp_path / "p.dsl"))
    config = load_config(environ={"RUNINK_DATA_DIR": str(tmp_path / "state")})
    executor = SlowA()
    try:
        result = LocalRunner(config, PluginManager(config.plugins), executor).run(compiled)
    finally:
        executor.close()
    states = {run.name: run.state for run in result.scenarios}
    assert states == {
        "a": ScenarioState.DEADLINE_EXCEEDED,  # the task's final state, carried over
        "b": ScenarioState.SKIPPED,
        "c": ScenarioState.SUCCEEDED,
    }
    assert all(type(state) is ScenarioState for state in states.values())
    assert not result.ok
    printed = json.loads(json.dumps(result.to_json()))
    assert {s["scenario"]: s["state"] for s in printed["scenarios"]} == {
        "a": "DEADLINE_EXCEEDED",
        "b": "SKIPPED",
        "c": "SUCCEEDED",
    }
    assert all(type(s["state"]) is str for s in result.to_json()["scenarios"])


def test_a_cancel_that_comes_while_a_scenario_publishes_says_its_outputs_went_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while a scenario's outputs were being put in place: the run said only
    "cancelled", yet the outputs were there."""
    from runink.core.agent import scenarios
    from runink.core.cli import run_cmd
    from runink.core.control.lifecycle import DONE_BEFORE_CANCEL
    from runink.core.control.records import RunState

    (tmp_path / "in.csv").write_text("id\n1\n")
    (tmp_path / "p.dsl").write_text('Feature: f\n  Scenario: a\n    @source("in.csv")\n    @sink("out/a.csv")\n')
    compiled = compile_pipeline(parse_file(tmp_path / "p.dsl"))
    config = load_config(environ={"RUNINK_DATA_DIR": str(tmp_path / "state")})
    executor = ProcessExecutor(degrade=True)
    runner = LocalRunner(config, PluginManager(config.plugins), executor)
    real_publish = scenarios.publish

    def publish_once_cancelled(*args: Any) -> None:
        runner.cancel()
        plane = runner._plane
        assert plane is not None
        for _ in range(200):  # (the run's loop cancels its job within a round)
            if all(v.record.state is RunState.CANCELLED for v in plane.store.tasks()):
                break
            time.sleep(0.05)
        real_publish(*args)

    monkeypatch.setattr(scenarios, "publish", publish_once_cancelled)
    try:
        result = runner.run(compiled)
    finally:
        executor.close()
    (run,) = result.scenarios
    assert run.state is ScenarioState.CANCELLED and run.error == DONE_BEFORE_CANCEL.format(attempt=1), run.error
    assert run.published and run.to_json()["published"] is True
    from runink.core.history import RunHistory  # (what `runink status` shows it wrote)

    kept = RunHistory(Path(config.data_dir)).find(result.run_id)
    assert kept is not None and kept.record is not None
    (dataset,) = kept.record["datasets"]
    assert dataset["wrote"] == [{"uri": f"csv://{tmp_path / 'out' / 'a.csv'}", "rows": 1}]
    assert (tmp_path / "out" / "a.csv").read_text().splitlines() == ['"id"', "1"]
    assert run.outputs == [str(tmp_path / "out" / "a.csv")]
    run_cmd._say_published(result)  # what `runink run` prints after Ctrl-C
    assert f"a: its outputs were published before the cancel reached it: {tmp_path}" in capsys.readouterr().err
    run.published = False  # (one cancelled before it published: nothing said)
    run_cmd._say_published(result)
    assert capsys.readouterr().err == ""
