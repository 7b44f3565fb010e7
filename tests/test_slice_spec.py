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
        (lambda d: d.update(storage_drivers={"csv": 1}), "'storage_drivers' is not an object of strings"),
        (lambda d: d.update(storage_drivers=["csv"]), "'storage_drivers' is not an object of strings"),
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


def test_a_slice_imports_its_storage_drivers_by_target_without_reading_entry_points(tmp_path: Path) -> None:
    """The runner names each format's driver in the spec (``storage_drivers``, from its entry
    points): the slice imports them directly, no scan of every package's metadata (~17 ms);
    a target that is not MODULE:ATTRIBUTE fails the slice in one line."""
    (tmp_path / "data.csv").write_text("id,name\n1,a\n2,b\n")
    drivers = {"csv": "runink.plugins.storage.csv:CsvStorage"}
    spec = replace(
        SPEC,
        base_dir=str(tmp_path),
        source=SourceSpec("csv://data.csv", "csv", str(tmp_path / "data.csv"), {}, None),
        steps=(),
        sinks=(SinkSpec("csv", str(tmp_path / "out.csv")),),  # (a JSONL sink imports polars, which reads them)
        report=str(tmp_path / "report.jsonl"),
        storage_drivers=drivers,
    )
    code = (
        "import sys, runpy; sys.argv = ['slice', sys.argv[1]]; from runink.core.dataplane import slice as s; "
        "code = s.main(); print('importlib.metadata' in sys.modules, file=sys.stderr); sys.exit(code)"
    )
    for given, ok in ((drivers, True), ({**drivers, "csv": "runink.plugins.storage.csv.CsvStorage"}, False)):
        path = tmp_path / "slice.json"
        path.write_text(replace(spec, storage_drivers=given).to_json())
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False)
        if ok:
            assert out.returncode == 0, out.stderr
            assert out.stderr.strip().splitlines()[-1].endswith(" False")  # (no entry point was read)
            assert (tmp_path / "out.csv").read_text().count("\n") == 3
        else:
            assert out.returncode == 1
            done = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()][-1]
            assert "'runink.plugins.storage.csv.CsvStorage' is not MODULE:ATTRIBUTE" in done["error"], done
