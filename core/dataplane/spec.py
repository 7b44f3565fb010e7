"""The slice spec: what the runner tells a slice to do, as one typed, versioned structure.

The runner writes it as JSON into the slice's work dir (``SliceSpec.to_json``); the slice reads
it back (``SliceSpec.from_json``) before anything else. Both sides are this module, so a field
added or renamed is added or renamed in one place; ``version`` lets a slice refuse a spec
from a runner it does not match (a slice started by an older agent, say) with one line.
Plain dataclasses, no pydantic: the slice imports this on its start path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SPEC_VERSION = 1


class SpecError(ValueError):
    """The spec file is not one this slice can run; the message names the field."""


@dataclass(frozen=True)
class SourceSpec:
    uri: str
    format: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    contract: str | None = None  # "module:Class"


@dataclass(frozen=True)
class SinkSpec:
    format: str
    path: str  # where the slice writes it: a staging folder's file
    when: str = "valid"  # "valid" or "invalid" (the dead letters)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandSpec:
    """A command step (``@run``): runink.core.command_step reads ``command``."""

    command: str
    shell: bool = False
    format: str = "csv"  # of the files the rows are exchanged in


@dataclass(frozen=True)
class AnnotateSpec:
    """An ``@annotate`` step: the prompt's text (read by the node; the slice reads no file for
    it), its path and hash (what the catalog records), the fields asked for, the columns the
    model sees (None: all), and the annotator driver with its options ([annotator])."""

    prompt_text: str
    prompt_path: str
    prompt_hash: str
    fields: list[str]
    columns: list[str] | None = None
    driver: str = "openai"
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "annotate"


@dataclass(frozen=True)
class SliceSpec:
    task_id: str  # its log lines are tagged with it and the step that wrote them
    scenario: str
    herd: str
    base_dir: str  # the pipeline's folder: its step modules import from there
    source: SourceSpec
    steps: tuple[str | CommandSpec | AnnotateSpec, ...]  # "module:function", a command or an annotate step
    sinks: tuple[SinkSpec, ...]
    drift_policy: str
    report: str  # the report file the runner reads (core/report.py)
    #: a remote storage driver's options by format ([plugin.storage-FORMAT]: endpoint, credentials)
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the storage drivers' targets (MODULE:ATTRIBUTE) by format, as the runner's entry points
    #: name them: the slice imports them without scanning every package's (~17 ms)
    storage_drivers: dict[str, str] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> SliceSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"the slice spec is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError("the slice spec is not a JSON object")
        if data.get("version") != SPEC_VERSION:
            raise SpecError(f"slice spec version {data.get('version')!r}: this slice reads version {SPEC_VERSION}")
        try:
            source = SourceSpec(**_fields(data["source"], "source"))
            sinks = tuple(SinkSpec(**_fields(s, "sinks[]")) for s in data["sinks"])
            if not isinstance(data["steps"], list):
                raise SpecError("slice spec field 'steps' is not a list")
            steps = tuple(_step(step) for step in data["steps"])
            spec = cls(**{**data, "source": source, "sinks": sinks, "steps": steps})
        except (KeyError, TypeError) as exc:
            raise SpecError(f"the slice spec lacks or mistypes a field: {exc}") from None
        for name in ("task_id", "scenario", "herd", "base_dir", "drift_policy", "report"):
            if not isinstance(getattr(spec, name), str):
                raise SpecError(f"slice spec field {name!r} is not a string")
        drivers = spec.storage_drivers
        if not isinstance(drivers, dict) or not all(isinstance(v, str) for v in drivers.values()):
            raise SpecError("slice spec field 'storage_drivers' is not an object of strings")
        return spec


def _step(value: Any) -> str | CommandSpec | AnnotateSpec:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("kind") == "annotate":
        annotate = AnnotateSpec(**value)
        texts = (annotate.prompt_text, annotate.prompt_path, annotate.prompt_hash, annotate.driver)
        fields = annotate.fields if isinstance(annotate.fields, list) else None
        columns = annotate.columns if annotate.columns is None or isinstance(annotate.columns, list) else None
        if (
            all(isinstance(t, str) for t in texts)
            and fields
            and all(isinstance(f, str) for f in fields)
            and (annotate.columns is None or (columns and all(isinstance(c, str) for c in columns)))
            and isinstance(annotate.options, dict)
        ):
            return annotate
    elif isinstance(value, dict):
        command = CommandSpec(**value)
        if isinstance(command.command, str) and isinstance(command.shell, bool) and isinstance(command.format, str):
            return command
    raise SpecError("slice spec field 'steps' is not a list of strings (Python steps) and objects (command steps)")


def _fields(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"slice spec field {where!r} is not an object")
    return value
