"""Golden tests: run a scenario on recorded input and compare its outputs with expected ones.

A scenario with ``@golden("DIR")`` (relative to the .dsl file) has in DIR:

* ``input.<ext>`` — the recorded input, in the source's format (``input.csv``...);
* ``expected/<sink file name>.jsonl`` — the expected rows of each sink, one JSON object per
  line, in output order (JSON Lines whatever the sink's format, so diffs are readable).

``runink test`` runs the scenario through the same executor and data plane as ``runink run``,
with the source replaced by the input and the sinks redirected to a temporary folder, then
compares row by row. ``--update`` (re)writes the expected files from the actual outputs.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from runink.core.agent.scenarios import ScenarioRun
from runink.core.config import RuninkConfig
from runink.core.datasets import resolve_dataset
from runink.core.drivers import load_driver
from runink.core.errors import RuninkError
from runink.core.interfaces import Storage
from runink.core.pipeline.compile import CompiledPipeline, CompiledScenario, CompiledSink, compile_pipeline
from runink.core.pipeline.dsl import DslError
from runink.core.project_files import open_folder_below, read_below, write_below
from runink.core.runner import LocalRunner

MAX_DIFFS = 5


@dataclass
class GoldenResult:
    pipeline: str
    scenario: str
    status: str  # "passed", "failed", "updated", "error"
    differences: list[str] = field(default_factory=list)
    run: ScenarioRun | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "scenario": self.scenario,
            "status": self.status,
            "differences": self.differences,
            # (a pipeline that did not compile has no run: its error is its one difference)
            "error": self.run.error
            if self.run
            else (self.differences[0] if self.status == "error" and self.differences else None),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    """The rows of an output as written: a CSV file's values as its text (``raw``), not as
    Arrow guesses them ("02134" read as 2134 and "NA" as null passed a golden test whose step
    had dropped the zero and blanked the note, a review); the formats that carry types
    (JSON Lines, Parquet) as typed."""
    storage = load_driver(Storage, fmt)
    rows: list[dict[str, Any]] = []
    for read in storage.read(path, raw=fmt == "csv"):
        rows.extend(_jsonable(row) for row in _nanoseconds_as_text(read.batch).to_pylist())
    return rows


def _nanoseconds_as_text(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Nanosecond timestamps as their text (Python's datetimes hold microseconds: without
    pandas, ``to_pylist`` failed on one with nanoseconds, and ``--update`` with it)."""
    for index, column in enumerate(batch.schema):
        if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
            batch = batch.set_column(index, pa.field(column.name, pa.string()), batch.column(index).cast(pa.string()))
    return batch


def golden_scenarios(compiled: CompiledPipeline) -> list[CompiledScenario]:
    return [item for item in compiled.scenarios if item.scenario.golden]


def _golden_dir(compiled: CompiledPipeline, item: CompiledScenario) -> Path:
    """The scenario's golden folder: inside the pipeline's, reached through no symbolic link
    (the runner writes there with --update, often as root, and prints what it reads)."""
    base = compiled.pipeline.base_dir
    try:
        os.close(open_folder_below(base, PurePosixPath(str(item.scenario.golden)), "@golden folder"))
    except RuninkError as exc:
        raise DslError(item.scenario.at, str(exc)) from None
    return base / str(item.scenario.golden)


def _input_path(compiled: CompiledPipeline, item: CompiledScenario) -> Path:
    directory = _golden_dir(compiled, item)
    candidates = sorted(directory.glob("input.*"))
    if not candidates:
        raise DslError(item.scenario.at, f"@golden: no input.* file in {directory}")
    return candidates[0]


def run_golden(
    runner: LocalRunner, compiled: CompiledPipeline, item: CompiledScenario, *, update: bool = False
) -> GoldenResult:
    """Run one golden scenario in isolation and compare (or update) its outputs."""
    directory = _golden_dir(compiled, item)
    source_path = _input_path(compiled, item)
    names = [sink.ref.path.name for sink in item.sinks]
    if len(set(names)) < len(names):
        shared = next(name for name in names if names.count(name) > 1)
        why = f"@golden: two sinks write files named {shared} (expected rows are kept by file name): rename one"
        raise DslError(item.scenario.at, why)
    with tempfile.TemporaryDirectory(prefix="runink-golden-") as tmp:
        out_dir = Path(tmp)
        source = resolve_dataset(f"{item.source.format}://{source_path}", compiled.pipeline.base_dir)
        sinks = tuple(
            CompiledSink(
                resolve_dataset(str(out_dir / sink.ref.path.name), out_dir)
                if sink.ref.remote  # compared as a local file of the same name (its extension's format)
                else replace(sink.ref, path=out_dir / sink.ref.path.name, uri=str(out_dir / sink.ref.path.name)),
                sink.when,
                sink.options,
            )
            for sink in item.sinks
        )
        scenario = replace(
            item.scenario,
            retries=0,
            source=replace(item.scenario.source, uri=f"{item.source.format}://{source_path.name}")
            if item.scenario.source
            else None,
        )
        isolated = CompiledScenario(scenario, source, sinks, ())
        single = CompiledPipeline(compiled.pipeline, (isolated,), ((isolated.name,),))
        result = runner.run(single, also_writable=(out_dir,))
        run = result.scenarios[0]
        name = compiled.pipeline.name
        if run.state != "SUCCEEDED":
            return GoldenResult(name, item.name, "error", [run.error or run.state], run)
        differences: list[str] = []
        for sink in sinks:
            actual = read_rows(sink.ref.path, sink.ref.format)
            expected_name = f"expected/{sink.ref.path.name}.jsonl"
            if update:
                rows = "".join(json.dumps(row, sort_keys=True) + "\n" for row in actual)
                write_below(directory, expected_name, rows.encode(), "expected file")
                continue
            try:
                expected = _expected_rows(directory, expected_name)
            except FileNotFoundError:
                differences.append(f"{directory / expected_name}: missing (run `runink test --update` to record it)")
                continue
            except RuninkError as exc:
                differences.append(str(exc))
                continue
            differences.extend(_diff(sink.ref.path.name, expected, actual))
        status = "updated" if update else ("failed" if differences else "passed")
        return GoldenResult(name, item.name, status, differences, run)


def _expected_rows(directory: Path, name: str) -> list[dict[str, Any]]:
    """The rows of an expected file (a regular file, through no link, bounded); RuninkError
    naming file:line for one that is not a JSON object, FileNotFoundError if there is none."""
    path = directory / name
    if not os.path.lexists(path):
        raise FileNotFoundError(path)
    data = read_below(directory, name, "expected file")
    rows = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise RuninkError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise RuninkError(f"{path}:{number}: expected a JSON object (one row), got {type(row).__name__}")
        rows.append(row)
    return rows


def _diff(label: str, expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> list[str]:
    out = []
    if len(expected) != len(actual):
        out.append(f"{label}: expected {len(expected)} rows, got {len(actual)}")
    for index, (want, got) in enumerate(zip(expected, actual, strict=False), start=1):
        if _same(want, got):
            continue
        keys = sorted(set(want) | set(got))
        fields = [
            f"{k}: expected {want.get(k)!r}, got {got.get(k)!r}" for k in keys if not _same(want.get(k), got.get(k))
        ]
        out.append(f"{label} row {index}: " + "; ".join(fields))
        if len(out) >= MAX_DIFFS:
            out.append(f"{label}: (more differences not shown)")
            break
    return out


def _same(want: Any, got: Any) -> bool:
    """Equal as JSON values are: Python's ``==`` took true for 1 (and 1.0), so a boolean column
    turned into numbers passed its golden test. An int and a float of the same value stay equal
    (an expected file written by hand may say 10 for 10.0)."""
    if isinstance(want, bool) or isinstance(got, bool):
        return type(want) is type(got) and want == got
    if isinstance(want, dict) and isinstance(got, dict):
        return want.keys() == got.keys() and all(_same(want[k], got[k]) for k in want)
    if isinstance(want, list) and isinstance(got, list):
        return len(want) == len(got) and all(_same(a, b) for a, b in zip(want, got, strict=True))
    if isinstance(want, float) and isinstance(got, float) and math.isnan(want) and math.isnan(got):
        return True  # (NaN is no value equal to itself: a float column with one failed every time)
    return bool(want == got)


def find_pipelines(path: Path) -> list[Path]:
    """``path`` if it is not a folder, else the .dsl files in it (not in hidden folders; a
    FIFO or a device named .dsl is none: the parser would block on it or read it forever)."""
    if not path.is_dir():
        return [path]
    found = (p for p in path.rglob("*.dsl") if not any(part.startswith(".") for part in p.parts))
    return sorted(p for p in found if p.is_file())


def load(path: Path, config: RuninkConfig | None = None) -> CompiledPipeline:
    from runink.core.pipeline.dsl import parse_file

    return compile_pipeline(parse_file(path), config=config)
