"""The cluster's records (core/control/records.py): msgspec Structs checked when read, their
errors one line naming the path, their JSON what the Barn stores and reads back."""

from __future__ import annotations

import math

import pytest

from runink.core.control.records import (
    Amount,
    HerdAdmission,
    JobRecord,
    NodeRecord,
    RecordError,
    RunState,
    TaskRecord,
    parse_usage,
)

TASK = {"id": "t", "job_id": "j", "herd": "h", "command": ["/bin/true"]}


def test_a_record_reads_back_from_its_json_as_it_was() -> None:
    task = TaskRecord.model_validate({**TASK, "resources": {"cpu": 1.5, "memory": 2**20}})
    moved = task.moved_to(RunState.SCHEDULED, "placed", attempt=1, node="n1", token=7)
    again = TaskRecord.model_validate_json(moved.model_dump_json().encode())
    assert again == moved and again.state is RunState.SCHEDULED
    assert again.transitions[-1].node == "n1" and again.resources == Amount(cpu=1.5, memory=2**20)
    assert moved.model_dump(mode="json")["state"] == "SCHEDULED"  # (states as their names)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({**TASK, "resources": {"cpu": -1}}, "resources.cpu: Expected `float` >= 0.0"),
        ({**TASK, "resources": {"disk": 1}}, "resources.disk: not a known field"),
        ({key: v for key, v in TASK.items() if key != "job_id"}, "job_id: required"),
        ({**TASK, "transitions": [{"state": "RUNNING"}, {"state": "DONE"}]}, "transitions.1.state: Invalid enum"),
        ({**TASK, "command": ["a\0b"]}, "command[0]: contains a NUL byte"),
        ({**TASK, "command": []}, "command: empty"),
        ({**TASK, "timeout": math.inf}, "timeout: must be a finite number"),
        ({**TASK, "cost": math.nan}, "cost: Expected `float` >= 0.0"),
    ],
)
def test_a_bad_record_is_one_line_naming_its_path(data: dict[str, object], error: str) -> None:
    with pytest.raises(RecordError) as caught:
        TaskRecord.model_validate(data)
    assert str(caught.value).startswith(error) and "\n" not in str(caught.value)
    first = caught.value.errors()[0]  # (as pydantic's ValidationError gave them: the same line)
    where = ".".join(str(p) for p in first["loc"])
    assert (f"{where}: " if where else "") + first["msg"] == str(caught.value)


def test_the_barns_json_is_read_strictly_and_a_bad_one_says_so() -> None:
    with pytest.raises(RecordError, match="owner: Expected `str`, got `int`"):
        JobRecord.model_validate_json(b'{"id": "j", "herd": "h", "tasks": ["t"], "estimate": null, "owner": 1}')
    with pytest.raises(RecordError, match="not a JSON record"):
        JobRecord.model_validate_json(b'{"id": "j"')
    with pytest.raises(RecordError, match="memory: Expected `int`"):  # (no "1" for 1 in stored JSON)
        Amount.model_validate_json(b'{"memory": "1"}')


def test_a_records_own_checks_run_when_it_is_built_and_when_it_is_read() -> None:
    with pytest.raises(ValueError, match="node 'Bad Node'"):
        NodeRecord(id="Bad Node", capacity=Amount(cpu=1))
    with pytest.raises(RecordError, match=r"gpus: 2 listed but capacity\.gpu is 1"):
        NodeRecord.model_validate({"id": "n1", "capacity": {"gpu": 1}, "gpus": ["GPU-a", "GPU-b"]})
    with pytest.raises(RecordError, match="budget: must be a finite number"):
        HerdAdmission.model_validate({"budget": math.inf})
    # a usage sample names the task whose numbers are wrong, by its key
    sample = {"tasks": {"task-1": {"attempt": 0, "cpu_seconds": 1.0, "memory": 1, "processes": 1}}}
    with pytest.raises(ValueError, match=r"^tasks\.task-1\.attempt: Expected `int` >= 1"):
        parse_usage(sample)
