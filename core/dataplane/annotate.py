"""The ``@annotate`` step in the slice: each record that reaches it goes to an annotator (a
model), and the fields it answers become columns of the record.

The rows it sees have been validated, so a contract's ``mask=True`` fields are masked already:
their values never leave the slice. The driver ([annotator], default ``openai``) is loaded in
the slice, which must be granted the network (the compile checks ``@network``); its API key
comes from the slice's environment (``@secrets("OPENAI_API_KEY", env=True)``, or the runner's
variables for a process executor). A record whose answer did not parse keeps its row, with the
fields empty and ``_runink_annotation_error`` saying why; the step never fails a run for it.
What the step did (records, failed ones, model, prompt, tokens and cost, and the first records'
annotations) goes to the runner in the slice's report, for the catalog: the slice writes no
catalog itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from runink.core.dataplane.spec import AnnotateSpec
from runink.core.errors import RuninkError

if TYPE_CHECKING:
    from runink.core.interfaces.annotator import Annotator

ERROR_COLUMN = "_runink_annotation_error"
#: record annotations reported for the catalog (all of them are in the output's columns)
REPORTED = 100
MAX_VALUE = 2000  # characters of one reported value


class AnnotateStage:
    def __init__(self, spec: AnnotateSpec, annotator: Annotator | None = None) -> None:
        self.spec = spec
        self.annotator = annotator
        self.records = self.failed = 0
        self.reported: list[dict[str, Any]] = []

    @property
    def ref(self) -> str:
        return f"annotate:{self.spec.prompt_path}"

    def _driver(self) -> Annotator:
        if self.annotator is None:
            from runink.core.drivers import load_driver
            from runink.core.interfaces.annotator import Annotator

            self.annotator = load_driver(Annotator, self.spec.driver, dict(self.spec.options), origin="@annotate")
        return self.annotator

    def annotate(self, batch: pa.RecordBatch, first_position: int = 0) -> pa.RecordBatch:
        """``batch`` with the fields' columns (strings) and the error column added."""
        fields = self.spec.fields
        for name in (*fields, ERROR_COLUMN):
            if name in batch.schema.names:
                raise RuninkError(f"@annotate: the rows already have a column {name!r} (a field to add)")
        if not batch.num_rows:
            empty = [pa.array([], pa.string()) for _ in (*fields, ERROR_COLUMN)]
            return pa.RecordBatch.from_arrays(
                [*batch.columns, *empty], names=[*batch.schema.names, *fields, ERROR_COLUMN]
            )
        shown = batch.select(self.spec.columns) if self.spec.columns else batch
        records = shown.to_pylist()
        results = self._driver().annotate_records(records, fields, self.spec.prompt_text)
        if len(results) != len(records):
            raise RuninkError(f"@annotate: the annotator answered {len(results)} results for {len(records)} records")
        values: dict[str, list[str | None]] = {name: [] for name in fields}
        errors: list[str | None] = []
        for number, result in enumerate(results):
            answer = {} if result.failed or result.fields is None else result.fields
            for name in fields:
                value = answer.get(name)
                values[name].append(None if value is None else value if isinstance(value, str) else str(value))
            errors.append((result.error or "the answer did not parse") if result.failed else None)
            self.records += 1
            self.failed += result.failed
            if len(self.reported) < REPORTED:
                self._report(first_position + number, result)
        added = [pa.array(values[name], pa.string()) for name in fields] + [pa.array(errors, pa.string())]
        return pa.RecordBatch.from_arrays([*batch.columns, *added], names=[*batch.schema.names, *fields, ERROR_COLUMN])

    def _report(self, position: int, result: Any) -> None:
        entry: dict[str, Any] = {"record": str(position), "failed": bool(result.failed)}
        if result.failed:
            entry["error"] = str(result.error or "")[:MAX_VALUE]
            entry["raw"] = None if result.raw is None else str(result.raw)[:MAX_VALUE]
        else:
            entry["fields"] = {k: str(v)[:MAX_VALUE] for k, v in (result.fields or {}).items()}
        self.reported.append(entry)

    def summary(self) -> dict[str, Any]:
        """What the slice reports of this step (the catalog's annotations of its run)."""
        usage = getattr(self.annotator, "usage", None)
        return {
            "step": self.ref,
            "driver": self.spec.driver,
            "model": str(getattr(self.annotator, "model", "") or self.spec.options.get("model") or ""),
            "prompt_path": self.spec.prompt_path,
            "prompt_hash": self.spec.prompt_hash,
            "fields": list(self.spec.fields),
            "records": self.records,
            "failed": self.failed,
            "usage": usage.to_json() if usage is not None and hasattr(usage, "to_json") else None,
            "annotations": self.reported,
        }


def annotated(stream: Iterator[Any], stage: AnnotateStage, counters: Any) -> Iterator[Any]:
    """The flows of ``stream`` with their records annotated (a batch at a time)."""
    from runink.core.dataplane.slice import Flow

    seen = 0
    for flow in stream:
        if not flow.batch.num_rows:
            yield flow
            continue
        batch = stage.annotate(flow.batch, seen)
        seen += flow.batch.num_rows
        counters.steps[stage.ref] = counters.steps.get(stage.ref, 0) + batch.num_rows
        yield Flow(batch, flow.positions, flow.origin, flow.unit)
