"""The pipeline model: a Feature (pipeline) of Scenarios (slices), each source -> steps -> sinks.

Built by the .dsl parser or in Python with ``PipelineBuilder``::

    pipeline = (
        PipelineBuilder("Orders to silver", herd="finance", base_dir=Path("."))
        .scenario("Validate orders", requires={"cpu": 1, "memory": "256Mi", "timeout": "10m"})
        .source("csv://data/orders.csv", contract="contracts:Order")
        .step("steps:normalize")
        .sink("parquet://out/silver/orders.parquet")
        .sink("jsonl://out/dlq/orders.jsonl", when="invalid")
        .build()
    )
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from runink.core.command_step import step_name
from runink.core.units import MAX_MEMORY, MAX_PIDS, parse_duration, parse_memory

#: Upper bounds of what a requirement can sensibly be; beyond them a value is a typo (or an
#: attack) that would only surface as a crash where it is used (a cgroup write, a timer).
MAX_CPU = 65536.0
MAX_GPU = 1024


@dataclass(frozen=True)
class Location:
    """Where something was declared, for messages: ``file:line:column``."""

    file: str = "<python>"
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}" if self.line else self.file


@dataclass(frozen=True)
class Source:
    uri: str
    contract: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    at: Location = Location()


@dataclass(frozen=True)
class StepRef:
    ref: str  # "module:function"
    at: Location = Location()

    @property
    def name(self) -> str:
        return self.ref.rsplit(":", 1)[-1]


@dataclass(frozen=True)
class AnnotateStep:
    """Records annotated by a model (``@annotate``): the ``fields`` it answers about each record,
    asked with the prompt in the file ``prompt`` (beside the pipeline), become columns of the
    rows that pass (``columns``: what of each record the model sees; all by default)."""

    prompt: str
    fields: tuple[str, ...]
    model: str | None = None
    columns: tuple[str, ...] | None = None
    at: Location = Location()

    @property
    def ref(self) -> str:
        return f"annotate:{self.prompt}"

    @property
    def name(self) -> str:
        return self.ref


@dataclass(frozen=True)
class CommandStep:
    """A program run over the rows that reach it (``@run``): they are written to a file in
    ``format``, the program runs once, and the file it writes is read back as the step's output."""

    command: str  # placeholders {input} and {output}: runink.core.command_step
    shell: bool = False
    format: str = "csv"
    at: Location = Location()

    @property
    def ref(self) -> str:
        return step_name(self.command, self.shell)

    @property
    def name(self) -> str:
        return self.ref.partition(":")[2]


@dataclass(frozen=True)
class Sink:
    uri: str
    when: Literal["valid", "invalid"] = "valid"
    options: dict[str, Any] = field(default_factory=dict)
    at: Location = Location()


def _whole(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


@dataclass(frozen=True)
class Requirements:
    """What a scenario asks for. ``memory`` and ``pids`` 0: not set (the configuration's
    ``[limits]`` defaults apply, see ``with_defaults``)."""

    cpu: float = 1.0
    memory: int = 0
    gpu: int = 0
    timeout: float | None = None
    pids: int = 0

    @classmethod
    def parse(cls, values: dict[str, Any], base: Requirements | None = None) -> Requirements:
        """From ``@requires`` arguments (``memory="256Mi"``, ``timeout="10m"``) over ``base``.

        Raises ValueError starting with the field's name for a value that makes no sense
        (not a number, NaN, infinite, negative, zero where zero means nothing, too large).
        """
        known = {"cpu", "memory", "gpu", "timeout", "pids"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown requirement(s) {', '.join(unknown)} (expected {', '.join(sorted(known))})")
        result = base or cls()
        if "cpu" in values:
            cpu = values["cpu"]
            if isinstance(cpu, bool) or not isinstance(cpu, int | float) or not 0 < cpu <= MAX_CPU:
                raise ValueError(f"cpu must be a number of cores > 0 and at most {MAX_CPU:g}, got {cpu!r}")
            result = replace(result, cpu=float(cpu))
        if "memory" in values:
            try:
                memory = parse_memory(values["memory"])
            except (ValueError, OverflowError, TypeError) as exc:
                raise ValueError(f"memory: {exc}") from None
            if not 0 < memory <= MAX_MEMORY:
                raise ValueError(f"memory must be more than 0 and at most 1Ei bytes, got {values['memory']!r}")
            result = replace(result, memory=memory)
        if "gpu" in values:
            result = replace(result, gpu=_whole("gpu", values["gpu"], 0, MAX_GPU))
        if "pids" in values:
            result = replace(result, pids=_whole("pids", values["pids"], 1, MAX_PIDS))
        if "timeout" in values:
            try:
                result = replace(result, timeout=parse_duration(values["timeout"]))
            except ValueError as exc:
                raise ValueError(f"timeout: {exc}") from None
        return result

    def with_defaults(self, *, memory: int, pids: int) -> Requirements:
        """These requirements with the configured defaults where the scenario set none."""
        return replace(self, memory=self.memory or memory, pids=self.pids or pids)


@dataclass(frozen=True)
class Scenario:
    """One slice: a source, steps that stream into each other, sinks for valid and invalid rows."""

    name: str
    source: Source | None = None
    steps: tuple[StepRef | CommandStep | AnnotateStep, ...] = ()
    sinks: tuple[Sink, ...] = ()
    requires: Requirements = Requirements()
    node_labels: dict[str, str] = field(default_factory=dict)
    colocate_with: str | None = None
    retries: int = 0
    backoff: float = 1.0
    golden: str | None = None
    network: bool = False
    secrets: tuple[str, ...] = ()  # the herd's secrets its slice receives (@secrets)
    secrets_env: bool = False  # ...as environment variables too
    description: tuple[str, ...] = ()
    at: Location = Location()


def slug(name: str) -> str:
    """A scenario's name as the folder its runs keep their attempts in (two scenarios of a
    pipeline may not share one: the compiler refuses them)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "scenario"


@dataclass(frozen=True)
class Pipeline:
    name: str
    base_dir: Path
    herd: str = "default"
    scenarios: tuple[Scenario, ...] = ()
    description: tuple[str, ...] = ()
    file: Path | None = None
    at: Location = Location()

    def scenario(self, name: str) -> Scenario:
        for scenario in self.scenarios:
            if scenario.name == name:
                return scenario
        raise KeyError(name)


class PipelineBuilder:
    """Builds a Pipeline in Python; the result is compiled and run exactly like a parsed .dsl."""

    def __init__(self, name: str, *, herd: str = "default", base_dir: Path | str = ".") -> None:
        self._pipeline = Pipeline(name=name, base_dir=Path(base_dir).resolve(), herd=herd)
        self._scenarios: list[Scenario] = []

    def scenario(
        self,
        name: str,
        *,
        requires: dict[str, Any] | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        golden: str | None = None,
        network: bool = False,
        node_labels: dict[str, str] | None = None,
    ) -> PipelineBuilder:
        self._scenarios.append(
            Scenario(
                name,
                requires=Requirements.parse(requires or {}),
                retries=retries,
                backoff=backoff,
                golden=golden,
                network=network,
                node_labels=dict(node_labels or {}),
            )
        )
        return self

    def _update(self, **changes: Any) -> PipelineBuilder:
        if not self._scenarios:
            raise ValueError("call .scenario(name) before adding sources, steps or sinks")
        self._scenarios[-1] = replace(self._scenarios[-1], **changes)
        return self

    def source(self, uri: str | os.PathLike[str], *, contract: str | None = None, **options: Any) -> PipelineBuilder:
        return self._update(source=Source(os.fspath(uri), contract, options))

    def step(self, ref: str) -> PipelineBuilder:
        return self._update(steps=(*self._scenarios[-1].steps, StepRef(ref)))

    def run(self, command: str, *, shell: bool = False, format: str = "csv") -> PipelineBuilder:
        """A command step (``@run``)."""
        return self._update(steps=(*self._scenarios[-1].steps, CommandStep(command, shell, format)))

    def sink(
        self, uri: str | os.PathLike[str], *, when: Literal["valid", "invalid"] = "valid", **options: Any
    ) -> PipelineBuilder:
        return self._update(sinks=(*self._scenarios[-1].sinks, Sink(os.fspath(uri), when, options)))

    def build(self) -> Pipeline:
        return replace(self._pipeline, scenarios=tuple(self._scenarios))
