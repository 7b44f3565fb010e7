"""Compilation: check a parsed Pipeline against the file system and order its scenarios.

Checks, each reported at the annotation's file:line:column: every scenario has a source and
a valid-row sink; dataset URIs resolve to an installed storage format with known options;
``module:function`` steps and ``module:Class`` contracts exist (found on disk and checked in
the module's syntax tree, never imported: user code runs only inside the slice); one
scenario produces each dataset; scenarios connected through datasets form no cycle.
"""

from __future__ import annotations

import ast
import importlib.machinery
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runink.core.datasets import DatasetError, DatasetRef, resolve_dataset
from runink.core.drivers import driver_names
from runink.core.pipeline.dsl import DslError
from runink.core.pipeline.model import Location, Pipeline, Scenario

READ_OPTIONS = {"csv": {"delimiter", "block_size"}, "jsonl": {"chunk_lines"}, "parquet": {"batch_rows"}}
WRITE_OPTIONS = {"csv": set(), "jsonl": set(), "parquet": {"compression"}}


@dataclass(frozen=True)
class CompiledSink:
    ref: DatasetRef
    when: str
    options: dict[str, Any]


@dataclass(frozen=True)
class CompiledScenario:
    scenario: Scenario
    source: DatasetRef
    sinks: tuple[CompiledSink, ...]
    upstream: tuple[str, ...] = ()  # names of scenarios producing this one's source

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def valid_sinks(self) -> tuple[DatasetRef, ...]:
        return tuple(s.ref for s in self.sinks if s.when == "valid")

    @property
    def invalid_sinks(self) -> tuple[DatasetRef, ...]:
        return tuple(s.ref for s in self.sinks if s.when == "invalid")

    @property
    def outputs(self) -> tuple[DatasetRef, ...]:
        return tuple(s.ref for s in self.sinks)


@dataclass(frozen=True)
class CompiledPipeline:
    pipeline: Pipeline
    scenarios: tuple[CompiledScenario, ...]  # in dependency order
    levels: tuple[tuple[str, ...], ...] = field(default_factory=tuple)

    def get(self, name: str) -> CompiledScenario:
        return next(s for s in self.scenarios if s.name == name)


def compile_pipeline(pipeline: Pipeline, *, check_code: bool = True) -> CompiledPipeline:
    formats = set(driver_names("runink.storage"))
    compiled: dict[str, CompiledScenario] = {}
    producers: dict[str, str] = {}
    for scenario in pipeline.scenarios:
        if scenario.source is None:
            raise DslError(scenario.at, f"scenario {scenario.name!r} has no @source")
        source = _dataset(scenario.source.uri, pipeline.base_dir, scenario.source.at, formats)
        _check_options(source, scenario.source.options, READ_OPTIONS, scenario.source.at, "@source")
        if check_code and scenario.source.contract:
            _check_reference(scenario.source.contract, pipeline.base_dir, scenario.source.at, "contract", ast.ClassDef)
        if check_code:
            for step in scenario.steps:
                _check_reference(step.ref, pipeline.base_dir, step.at, "step", (ast.FunctionDef,))
        sinks: list[CompiledSink] = []
        if not any(s.when == "valid" for s in scenario.sinks):
            raise DslError(scenario.at, f"scenario {scenario.name!r} has no @sink for its output")
        if any(s.when == "invalid" for s in scenario.sinks) and not scenario.source.contract:
            bad = next(s for s in scenario.sinks if s.when == "invalid")
            raise DslError(bad.at, 'a sink with when="invalid" needs a contract on the @source')
        for sink in scenario.sinks:
            ref = _dataset(sink.uri, pipeline.base_dir, sink.at, formats)
            _check_options(ref, sink.options, WRITE_OPTIONS, sink.at, "@sink")
            if ref.key == source.key:
                raise DslError(sink.at, f"scenario {scenario.name!r} writes the dataset it reads ({ref.path})")
            if ref.key in producers:
                raise DslError(sink.at, f"dataset {ref.path} is also written by scenario {producers[ref.key]!r}")
            producers[ref.key] = scenario.name
            sinks.append(CompiledSink(ref, sink.when, dict(sink.options)))
        compiled[scenario.name] = CompiledScenario(scenario, source, tuple(sinks))

    for name, item in list(compiled.items()):
        upstream = (producers[item.source.key],) if item.source.key in producers else ()
        compiled[name] = replace(item, upstream=upstream)
        colocate = item.scenario.colocate_with
        if colocate is not None and colocate not in compiled:
            raise DslError(item.scenario.at, f"@affinity: colocate_with names unknown scenario {colocate!r}")

    levels = _levels(compiled)
    ordered = tuple(compiled[name] for level in levels for name in level)
    return CompiledPipeline(pipeline, ordered, levels)


def _dataset(uri: str, base_dir: Path, at: Location, formats: set[str]) -> DatasetRef:
    try:
        ref = resolve_dataset(uri, base_dir)
    except DatasetError as exc:
        raise DslError(at, str(exc)) from None
    if ref.format not in formats:
        raise DslError(at, f"no storage driver for format {ref.format!r} (installed: {', '.join(sorted(formats))})")
    return ref


def _check_options(
    ref: DatasetRef, options: dict[str, object], known: dict[str, set[str]], at: Location, what: str
) -> None:
    allowed = known.get(ref.format)
    if allowed is None:
        return  # a third-party format validates its own options
    unknown = sorted(set(options) - allowed)
    if unknown:
        expected = ", ".join(sorted(allowed)) or "none"
        raise DslError(at, f"{what}: unknown option(s) {', '.join(unknown)} for {ref.format} (expected: {expected})")


def _levels(compiled: dict[str, CompiledScenario]) -> tuple[tuple[str, ...], ...]:
    """Scenarios grouped so each group depends only on earlier ones; a cycle is an error."""
    remaining = {name: set(item.upstream) for name, item in compiled.items()}
    levels: list[tuple[str, ...]] = []
    done: set[str] = set()
    while remaining:
        ready = tuple(name for name in compiled if name in remaining and remaining[name] <= done)
        if not ready:
            cycle = _find_cycle(remaining)
            first = compiled[cycle[0]].scenario
            raise DslError(first.at, "cycle between scenarios: " + " -> ".join([*cycle, cycle[0]]))
        levels.append(ready)
        done.update(ready)
        for name in ready:
            del remaining[name]
    return tuple(levels)


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    start = next(iter(graph))
    path: list[str] = []
    node = start
    while node not in path:
        path.append(node)
        node = next(iter(graph[node] & graph.keys()))
    return path[path.index(node) :]


def _find_module_file(module: str, base_dir: Path) -> Path | None:
    """The source file of ``module``, looked up in the pipeline's folder then sys.path, without importing."""
    search: Sequence[str] | None = [str(base_dir), *sys.path]
    spec = None
    for part in module.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            return None
        search = spec.submodule_search_locations
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return None
    return Path(spec.origin)


def _check_reference(ref: str, base_dir: Path, at: Location, what: str, kinds: object) -> None:
    module, sep, attribute = ref.partition(":")
    if not sep or not module or not attribute.isidentifier():
        raise DslError(at, f"{what} {ref!r}: expected 'module:{'Class' if what == 'contract' else 'function'}'")
    file = _find_module_file(module, base_dir)
    if file is None:
        raise DslError(at, f"{what} {ref!r}: module {module!r} not found in {base_dir} or on sys.path")
    if file.suffix != ".py":
        return  # compiled extension: cannot inspect without importing; the slice will tell
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    except SyntaxError as exc:
        raise DslError(at, f"{what} {ref!r}: {file}:{exc.lineno}: syntax error: {exc.msg}") from None
    defined = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    if attribute not in defined:
        raise DslError(at, f"{what} {ref!r}: {file.name} defines no {attribute!r}")
