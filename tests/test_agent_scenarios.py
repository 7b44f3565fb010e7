"""What a node does with a pipeline scenario's task it cannot trust: the ScenarioRef comes from
the Barn (a submitter wrote it), so its path and run id are checked before they become paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_helpers import keeping_attempts
from fixture_types import CliRunner

from runink.core.agent.agent import Agent
from runink.core.agent.scenarios import NodePipelines, PipelineRun, ScenarioAttempts
from runink.core.config import RuninkConfig
from runink.core.control.records import Amount, RecordError, ScenarioRef, TaskRecord
from runink.core.errors import RuninkError
from runink.core.interfaces.executor import TaskHandle
from runink.core.pipeline.compile import CompiledPipeline
from runink.core.pipeline.dsl import DslError, Location
from runink.core.plugins import PluginManager
from runink.core.units import check_name
from runink.plugins.executors.process import ProcessExecutor


def _task(pipeline: str, run: str = "job-1", roots: tuple[str, ...] = ("/srv",)) -> TaskRecord:
    ref = ScenarioRef(pipeline=pipeline, scenario="a", run=run, roots=list(roots))
    return TaskRecord(id="t1", job_id="job-1", herd="default", scenario=ref, attempt=1, token=5)


@pytest.mark.parametrize("run", ["../etc", "a/b", "", ".hidden", "x" * 101, "a\nb", "run\n"])
def test_a_run_id_that_is_not_one_plain_path_component_is_refused(run: str) -> None:
    with pytest.raises(RecordError, match="run"):
        ScenarioRef.model_validate({"pipeline": "/p/p.dsl", "scenario": "a", "run": run})


def test_a_task_names_a_command_or_a_scenario_never_both_nor_neither() -> None:
    ref = ScenarioRef(pipeline="/p/p.dsl", scenario="a", run="r")
    with pytest.raises(ValueError, match="not both"):
        TaskRecord(id="t", job_id="j", herd="h", command=["/bin/true"], scenario=ref)
    with pytest.raises(ValueError, match="command: empty"):
        TaskRecord(id="t", job_id="j", herd="h")
    with pytest.raises(RecordError, match=r"^command: empty"):  # (read from data: the same check)
        TaskRecord.model_validate({"id": "t", "job_id": "j", "herd": "h"})


def test_the_node_compiles_only_a_dsl_its_herd_may_have_and_says_why_without_its_text(tmp_path: Path) -> None:
    """Read as pipeline_file.py allows (tests/test_pipeline_file.py), compiled from its text;
    a compile error names line and column, never the text (the agent read it as root: a link
    to /etc/shadow once had its first line quoted back); a parser's RecursionError is a refusal."""
    compiled: list[str] = []
    errors = iter([DslError(Location("x", 3, 5), "unexpected text 'root:*:20228:0'"), RecursionError("deep")])

    def compile_text(text: str, path: Path) -> CompiledPipeline:
        compiled.append(text)
        raise next(errors)

    folder = tmp_path / "srv" / "p"
    folder.mkdir(parents=True)
    (folder / "p.dsl").write_text("Feature: x\n")
    pipelines = NodePipelines(compile_text, RuninkConfig(), tmp_path / "work")
    dsl = str(folder / "p.dsl")
    for bad, roots in (("relative/p.dsl", (str(tmp_path),)), ("/etc/shadow", ("/etc",)), (dsl, ("/srv",)), (dsl, ())):
        with pytest.raises(RuninkError, match=r"^pipeline "):
            pipelines(_task(bad, roots=roots))
    assert compiled == []  # none was read
    with pytest.raises(RuninkError) as error:
        pipelines(_task(dsl, roots=(str(tmp_path / "srv"),)))
    assert str(error.value) == (
        f"pipeline {dsl} on this node: 3:5: it does not compile here (`runink check` it where it was submitted from)"
    )
    with pytest.raises(RuninkError, match=r"it does not compile here \(RecursionError\)$"):
        pipelines(_task(dsl, run="job-2", roots=(str(tmp_path / "srv"),)))
    assert compiled == ["Feature: x\n"] * 2


def test_an_agent_restarted_during_a_scenarios_attempt_reports_it_failed(tmp_path: Path) -> None:
    """Its outputs' staging was the old agent's: the attempt is not followed (it is retried)."""

    class Reports:
        def __init__(self) -> None:
            self.sent: list[tuple[str, str]] = []

        def register_node(self, node: object) -> object:
            raise AssertionError("not reached")

        def heartbeat(self, node_id: str, incarnation: str, **more: object) -> bool:
            return True

        def assignments(self, node_id: str) -> list[TaskRecord]:
            return []

        def report(self, herd: str, task_id: str, attempt: int, token: int, state: object, **more: object) -> bool:
            self.sent.append((task_id, str(state)))
            self.message = str(more.get("message", ""))
            return True

    handles = tmp_path / "attempts"
    handles.mkdir()
    handle = TaskHandle(task_id="t1-a1", driver="process", task_dir=str(tmp_path / "t"), started_at=0.0)
    saved = {"herd": "default", "task": "t1", "attempt": 1, "token": 5, "handle": handle.to_dict(), "scenario": True}
    (handles / "t1-a1.json").write_text(json.dumps(saved))
    control = Reports()

    def no_pipelines(task: TaskRecord) -> PipelineRun:
        raise AssertionError("nothing is started")

    attempts = ScenarioAttempts(ProcessExecutor(degrade=True), RuninkConfig(), PluginManager(), no_pipelines)
    # (a fake control: only reports matter here)
    agent = Agent(control, attempts, "n1", Amount(cpu=1), work_dir=tmp_path)  # type: ignore[arg-type]
    agent.incarnation = "i"
    agent.sync()
    assert control.sent == [("t1", "FAILED")]
    assert "scenario's attempt: it is not re-attached" in control.message
    assert not (handles / "t1-a1.json").exists()  # answered: forgotten


def test_record_annotations_a_slice_reports_are_taken_only_as_they_should_be(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The slice writes them: entries of the wrong shape are left out, texts and fields are
    bounded, and an attempt passes on no more than MAX_RECORD_ANNOTATIONS in all."""
    from runink.core.agent import scenarios

    reported = {
        "model": "m\x1b[2J" + "x" * 500,
        "prompt_hash": 7,
        "records": [
            "not a dict",
            {"record": 3, "fields": {}},  # not a string
            {"record": "1", "fields": {f"f{n}": "v" * 20_000 for n in range(40)}},
            {"record": "2", "failed": "yes", "raw": "r" * 20_000},
        ],
    }
    chunk = scenarios._record_annotations(reported)
    assert chunk is not None and [e["record"] for e in chunk["records"]] == ["1", "2"]
    first, second = chunk["records"]
    assert len(first["fields"]) == 32 and {len(v) for v in first["fields"].values()} == {16_000}
    assert second["failed"] is False and len(second["raw"]) == 16_000  # only True is true
    assert "\x1b" not in chunk["model"] and len(chunk["model"]) == 200 and chunk["prompt_hash"] == ""
    assert scenarios._record_annotations({"records": "nope"}) is None
    monkeypatch.setattr(scenarios, "MAX_RECORD_ANNOTATIONS", 3)
    many = {"records": [{"record": str(n), "fields": {"a": "b"}} for n in range(5)]}
    bounded = scenarios._record_annotations(many, passed=1)
    assert bounded is not None and [e["record"] for e in bounded["records"]] == ["0", "1"]
    assert scenarios._record_annotations(many, passed=3) is None


def test_names_with_a_trailing_line_break_are_refused() -> None:
    """A pattern's ``$`` matches before a final line break in Python's re: names, secrets and
    GPU ids are matched whole (``fullmatch``, ``\\Z``)."""
    with pytest.raises(ValueError, match="herd 'team\\\\n'"):
        check_name("team\n", "herd")
    base = {"id": "t", "job_id": "j", "herd": "h", "command": ["/bin/true"]}
    for change in ({"secrets": ["token\n"]}, {"gpus": ["GPU-1\n"], "resources": {"gpu": 1}}):
        with pytest.raises(RecordError, match="matching regex"):
            TaskRecord.model_validate({**base, **change})
    assert TaskRecord.model_validate({**base, "secrets": ["token"]}).secrets == ["token"]


def test_a_scenarios_slice_is_limited_to_what_its_task_booked_not_what_its_file_says(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """The node reads the .dsl from a path its submitter chose: a task booked at 0.1 core once
    ran with the 2 cores and 8 GiB its file's @requires said (the scheduler counted 0.1)."""

    assert run_cli("init", "project").returncode == 0
    dsl = tmp_path / "project" / "pipeline.dsl"
    dsl.write_text(dsl.read_text().replace('@requires(cpu=1, memory="256Mi"', '@requires(cpu=2, memory="8Gi"'))
    attempts, given = keeping_attempts(tmp_path)
    ref = ScenarioRef(pipeline=str(dsl), scenario="Clean orders", run="r1", roots=[str(tmp_path)])
    booked = Amount(cpu=0.1, memory=64 << 20)
    task = TaskRecord(
        id="t1", job_id="job-1", herd="default", attempt=1, token=5, resources=booked, scenario=ref, timeout=30
    )
    with pytest.raises(RuninkError, match="kept, not run"):
        attempts.start_scenario(task, "t1-a1")
    (spec,) = given
    assert (spec.limits.cpu, spec.limits.memory, spec.timeout) == (0.1, 64 << 20, 30)  # (its file: 5m)
    assert spec.limits.pids == RuninkConfig().limits.pids  # (this node's [limits] where the task asked none)
