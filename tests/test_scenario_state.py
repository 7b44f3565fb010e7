"""A scenario's state is the ScenarioState enum (its slice's TaskState, or SKIPPED), printed
as the same plain strings by ``runink run --json``."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

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
