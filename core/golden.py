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
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runink.core.agent.scenarios import ScenarioRun
from runink.core.config import RuninkConfig
from runink.core.datasets import resolve_dataset
from runink.core.drivers import load_driver
from runink.core.interfaces import Storage
from runink.core.pipeline.compile import CompiledPipeline, CompiledScenario, CompiledSink, compile_pipeline
from runink.core.pipeline.dsl import DslError
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
            "error": self.run.error if self.run else None,
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
    storage = load_driver(Storage, fmt)
    rows: list[dict[str, Any]] = []
    for read in storage.read(path):
        rows.extend(_jsonable(row) for row in read.batch.to_pylist())
    return rows


def golden_scenarios(compiled: CompiledPipeline) -> list[CompiledScenario]:
    return [item for item in compiled.scenarios if item.scenario.golden]


def _golden_dir(compiled: CompiledPipeline, item: CompiledScenario) -> Path:
    return (compiled.pipeline.base_dir / str(item.scenario.golden)).resolve()


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
        expected_dir = directory / "expected"
        differences: list[str] = []
        for sink in sinks:
            actual = read_rows(sink.ref.path, sink.ref.format)
            expected_file = expected_dir / f"{sink.ref.path.name}.jsonl"
            if update:
                expected_dir.mkdir(parents=True, exist_ok=True)
                expected_file.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in actual))
                continue
            if not expected_file.exists():
                differences.append(f"{expected_file}: missing (run `runink test --update` to record it)")
                continue
            expected = [json.loads(line) for line in expected_file.read_text().splitlines() if line.strip()]
            differences.extend(_diff(sink.ref.path.name, expected, actual))
        status = "updated" if update else ("failed" if differences else "passed")
        return GoldenResult(name, item.name, status, differences, run)


def _diff(label: str, expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> list[str]:
    out = []
    if len(expected) != len(actual):
        out.append(f"{label}: expected {len(expected)} rows, got {len(actual)}")
    for index, (want, got) in enumerate(zip(expected, actual, strict=False), start=1):
        if want == got:
            continue
        keys = sorted(set(want) | set(got))
        fields = [f"{k}: expected {want.get(k)!r}, got {got.get(k)!r}" for k in keys if want.get(k) != got.get(k)]
        out.append(f"{label} row {index}: " + "; ".join(fields))
        if len(out) >= MAX_DIFFS:
            out.append(f"{label}: (more differences not shown)")
            break
    return out


def find_pipelines(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.dsl") if not any(part.startswith(".") for part in p.parts))


def load(path: Path, config: RuninkConfig | None = None) -> CompiledPipeline:
    from runink.core.pipeline.dsl import parse_file

    return compile_pipeline(parse_file(path), config=config)
