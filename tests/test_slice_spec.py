"""The slice spec is one typed, versioned structure on both sides of the runner -> slice hand-off."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runink.core.dataplane.spec import SPEC_VERSION, SinkSpec, SliceSpec, SourceSpec, SpecError

SPEC = SliceSpec(
    task_id="r-1",
    scenario="Validate orders",
    herd="finance",
    base_dir="/p",
    source=SourceSpec("csv://data/o.csv", "csv", "/p/data/o.csv", {"delimiter": ";"}, "contracts:Order"),
    steps=("steps:normalize", "steps:enrich"),
    sinks=(SinkSpec("parquet", "/p/out/.s/out/o.parquet"), SinkSpec("jsonl", "/p/out/.t/out/d.jsonl", "invalid")),
    drift_policy="warn",
    report="/w/report.jsonl",
)


def test_a_spec_reads_back_as_written() -> None:
    assert SliceSpec.from_json(SPEC.to_json()) == SPEC
    assert json.loads(SPEC.to_json())["version"] == SPEC_VERSION


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=SPEC_VERSION + 1), "this slice reads version"),
        (lambda d: d.pop("report"), "lacks or mistypes a field"),
        (lambda d: d.update(extra=1), "lacks or mistypes a field"),
        (lambda d: d.update(herd=3), "'herd' is not a string"),
        (lambda d: d.update(steps=["a", 2]), "'steps' is not a list of strings"),
        (lambda d: d.update(source="csv"), "'source' is not an object"),
    ],
)
def test_a_spec_this_slice_cannot_run_is_refused_naming_the_field(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = json.loads(SPEC.to_json())
    change(data)
    with pytest.raises(SpecError, match=message):
        SliceSpec.from_json(json.dumps(data))


def test_the_slice_refuses_a_bad_spec_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "slice.json"
    path.write_text(json.dumps({**json.loads(replace(SPEC, report=str(tmp_path / "r")).to_json()), "version": 0}))
    out = subprocess.run(
        [sys.executable, "-m", "runink.core.dataplane.slice", str(path)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"runink slice: {path}: slice spec version 0: this slice reads version 1"
    ]
