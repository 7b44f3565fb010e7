"""The ``@annotate`` step in the slice: each record that reaches it goes to an annotator (a
model), and the fields it answers become columns of the record.

The rows it sees have been validated, so a contract's ``mask=True`` fields are masked already,
and its other ``pii=True`` fields are masked here (``mask``): their values never leave the
slice. The driver ([annotator], default ``openai``) is loaded in the slice, which must be
granted the network (the compile checks ``@network``); its API key
comes from the slice's environment (``@secrets("OPENAI_API_KEY", env=True)``, or the runner's
variables for a process executor). A record whose answer did not parse keeps its row, with the
fields empty and ``_runink_annotation_error`` saying why; the step never fails a run for it.
Every record's annotation goes to the runner in the slice's report as it is made, in
``annotated`` lines of at most ``CHUNK_BYTES`` each, and what the step did (records, failed ones,
model, prompt, tokens and cost) in the report's last line; the runner passes both on to the
catalog: the slice writes no catalog itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from runink.core.dataplane.spec import AnnotateSpec
from runink.core.errors import RuninkError

if TYPE_CHECKING:
    from runink.core.interfaces.annotator import Annotator

ERROR_COLUMN = "_runink_annotation_error"
#: bytes of record annotations in one report line (the runner's bound on a lineage event's facets
#: is 64 KiB; a report line's is 1 MiB)
CHUNK_BYTES = 48 * 1024
#: characters of the values of one record's annotation, all fields together (and of its raw text)
MAX_RECORD_TEXT = 16_000
#: bytes of one record's annotation as JSON (non-ASCII text takes up to 6 bytes a character)
MAX_RECORD_BYTES = 24 * 1024


class AnnotateStage:
    def __init__(self, spec: AnnotateSpec, annotator: Annotator | None = None, *, mask: tuple[str, ...] = ()) -> None:
        self.spec = spec
        self.annotator = annotator
        self.mask = mask  # fields whose values are not sent (the contract's pii ones)
        self.records = self.failed = 0
        self._pending: list[tuple[dict[str, Any], int]] = []  # (a record's annotation, its bytes as JSON)

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
        results = self._driver().annotate_records(records, fields, self.spec.prompt_text, mask=self.mask)
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
            self._keep(first_position + number, result)
        added = [pa.array(values[name], pa.string()) for name in fields] + [pa.array(errors, pa.string())]
        return pa.RecordBatch.from_arrays([*batch.columns, *added], names=[*batch.schema.names, *fields, ERROR_COLUMN])

    def _keep(self, position: int, result: Any) -> None:
        """One record's annotation, bounded, to report with the next chunk."""
        entry: dict[str, Any] = {"record": str(position), "failed": bool(result.failed)}
        if result.failed:
            entry["error"] = str(result.error or "")[:2000]
            entry["raw"] = None if result.raw is None else str(result.raw)[:MAX_RECORD_TEXT]
        else:
            answer = result.fields or {}
            each = MAX_RECORD_TEXT // max(1, len(answer))
            entry["fields"] = {str(k)[:63]: str(v)[:each] for k, v in list(answer.items())[:32]}
        for _ in range(8):  # its texts shortened in proportion until it fits
            size = len(json.dumps(entry))
            if size <= MAX_RECORD_BYTES:
                break
            _shorten(entry, MAX_RECORD_BYTES / size)
        self._pending.append((entry, size))

    def chunks(self) -> Iterator[dict[str, Any]]:
        """The annotations made since the last call, as report lines' payloads (``step``, what
        made them, and ``records``), each at most about ``CHUNK_BYTES``."""
        pending, self._pending = self._pending, []
        chunk: list[dict[str, Any]] = []
        size = 0
        for entry, length in pending:
            if chunk and size + length > CHUNK_BYTES:
                yield self._chunk(chunk)
                chunk, size = [], 0
            chunk.append(entry)
            size += length
        if chunk:
            yield self._chunk(chunk)

    def _chunk(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {**self._made_by(), "records": records}

    def _made_by(self) -> dict[str, Any]:
        return {
            "step": self.ref,
            "model": str(getattr(self.annotator, "model", "") or self.spec.options.get("model") or ""),
            "prompt_path": self.spec.prompt_path,
            "prompt_hash": self.spec.prompt_hash,
        }

    def summary(self) -> dict[str, Any]:
        """What the slice reports of this step (the catalog's annotations of its run)."""
        usage = getattr(self.annotator, "usage", None)
        return {
            **self._made_by(),
            "driver": self.spec.driver,
            "fields": list(self.spec.fields),
            "records": self.records,
            "failed": self.failed,
            "usage": usage.to_json() if usage is not None and hasattr(usage, "to_json") else None,
        }


def _shorten(entry: dict[str, Any], ratio: float) -> None:
    for holder in (entry, entry.get("fields") or {}):
        for key, value in holder.items():
            if isinstance(value, str) and key != "record":
                holder[key] = value[: int(len(value) * ratio * 0.9)]


def annotated(
    stream: Iterator[Any], stage: AnnotateStage, counters: Any, report: Callable[[dict[str, Any]], None]
) -> Iterator[Any]:
    """The flows of ``stream`` with their records annotated (a batch at a time); each batch's
    annotations go to ``report`` before its rows go on."""
    from runink.core.dataplane.slice import Flow

    seen = 0
    for flow in stream:
        if not flow.batch.num_rows:
            yield flow
            continue
        batch = stage.annotate(flow.batch, seen)
        seen += flow.batch.num_rows
        for chunk in stage.chunks():
            report(chunk)
        counters.steps[stage.ref] = counters.steps.get(stage.ref, 0) + batch.num_rows
        yield Flow(batch, flow.positions, flow.origin, flow.unit)
