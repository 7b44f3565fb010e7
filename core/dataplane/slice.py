"""A slice's main program: stream one scenario from its source through its steps to its sinks.

Run as ``python -m runink.core.dataplane.slice SPEC.json`` by an executor. One batch is in
flight at a time (pull-based: the source is read only as fast as the sinks write), so
memory stays flat whatever the input size. Progress, the final counts and any error go to
the report file named in the spec as JSON lines; the runner (later the agent) reads it. The
slice never talks to the control plane.

User code (contracts, steps) is imported here, inside the slice, never by the launcher.
Sinks write to temporary names and are renamed into place only when the whole scenario
succeeded; on any error every sink is discarded and the previous outputs stay intact.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from runink.core.contracts import Contract, detect_drift, validate
from runink.core.dataplane.log_tags import TaggedStream, step_context
from runink.core.dataplane.spec import SliceSpec, SpecError
from runink.core.driverload import load_installed
from runink.core.errors import RuninkError
from runink.core.interfaces.storage import DatasetWriter, Malformed, Storage
from runink.core.steps import StepFunction, adapt, import_reference

META_COLUMNS = [
    pa.field("_runink_reason", pa.string()),
    pa.field("_runink_source", pa.string()),
    pa.field("_runink_position", pa.int64()),
    pa.field("_runink_text", pa.string()),
]
REPORT_INTERVAL = 0.25


class SliceError(Exception):
    """A failure with a message naming the scenario's step, sink or source position."""


@dataclass
class Counters:
    rows_in: int = 0
    rows_valid: int = 0
    rows_invalid: int = 0
    rows_malformed: int = 0
    rows_out: int = 0
    steps: dict[str, int] = field(default_factory=dict)
    sinks: dict[str, int] = field(default_factory=dict)


class Reporter:
    def __init__(self, path: Path) -> None:
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the slice
        self._last = 0.0
        self.started = time.monotonic()

    def send(self, event: str, force: bool = False, **data: Any) -> None:
        now = time.monotonic()
        if not force and now - self._last < REPORT_INTERVAL:
            return
        self._last = now
        self._fh.write(
            json.dumps({"event": event, "elapsed": round(now - self.started, 3), **data}, default=str) + "\n"
        )
        self._fh.flush()


@dataclass
class SinkSlot:
    format: str
    path: Path
    when: str
    options: dict[str, Any]
    driver: Storage
    writer: DatasetWriter | None = None
    rows: int = 0


def run(spec: SliceSpec) -> int:
    reporter = Reporter(Path(spec.report))
    counters = Counters()
    sinks: list[SinkSlot] = []
    output: SinkWriterThread | None = None
    scenario = spec.scenario
    try:
        base_dir = spec.base_dir
        if base_dir not in sys.path:
            sys.path.insert(0, base_dir)
        source = spec.source
        contract = _load_contract(source.contract)
        steps = _load_steps(list(spec.steps))
        source_driver: Storage = _storage(source.format, spec.storage_options)
        sinks = [
            SinkSlot(
                s.format,
                Path(s.path),
                s.when,
                s.options,
                _storage(s.format, spec.storage_options),
            )
            for s in spec.sinks
        ]
        output = SinkWriterThread(sinks, counters)
        drift_reported: set[str] = set()
        drift_messages: list[str] = []
        dlq_schema: pa.Schema | None = None
        source_uri = source.uri
        unit = source_driver.position_unit
        for read in source_driver.read(Path(source.path), raw=contract is not None, options=source.options):
            batch = read.batch
            counters.rows_in += batch.num_rows + len(read.malformed)
            counters.rows_malformed += len(read.malformed)
            if contract is not None:
                new_drift = [d for d in detect_drift(contract, batch.schema) if d not in drift_reported]
                if new_drift and batch.num_rows:
                    drift_reported.update(new_drift)
                    drift_messages.extend(new_drift)
                    if spec.drift_policy == "block":
                        raise SliceError(
                            f"schema drift in {source_uri} against contract {source.contract} "
                            f"(herd policy: block): {'; '.join(new_drift)}"
                        )
            if dlq_schema is None and batch.schema.names:
                dlq_schema = pa.schema([pa.field(n, pa.string()) for n in batch.schema.names] + META_COLUMNS)
            invalid_parts = []
            if contract is not None:
                result = validate(contract, batch) if batch.num_rows else None
                if result is not None and result.invalid.num_rows:
                    positions = read.positions.take(result.invalid_index)
                    invalid_parts.append(_dlq_rows(result.invalid, result.reasons, positions, source_uri, dlq_schema))
                batch = result.valid if result is not None else pa.RecordBatch.from_pylist([], schema=contract.schema())
            if read.malformed:  # dead letters whether or not the source has a contract
                invalid_parts.append(_malformed_rows(read.malformed, source_uri, unit, dlq_schema))
            for part in invalid_parts:
                counters.rows_invalid += part.num_rows
                output.submit("invalid", part)
            counters.rows_valid += batch.num_rows
            for ref, step in steps:
                if batch.num_rows == 0:
                    break
                batch = _run_step(ref, step, batch, read.positions, unit=unit, source_uri=source_uri)
                counters.steps[ref] = counters.steps.get(ref, 0) + batch.num_rows
            if batch.num_rows:
                counters.rows_out += batch.num_rows
                output.submit("valid", batch)
            reporter.send("progress", **_counts(counters))
        output.finish()
        _open_empty(sinks, contract, steps, dlq_schema)
        for slot in sinks:
            assert slot.writer is not None
            slot.writer.commit()
        reporter.send(
            "done",
            force=True,
            ok=True,
            drift=drift_messages,
            contract_hash=contract.contract_hash() if contract else None,
            **_counts(counters),
        )
        return 0
    except Exception as exc:
        if output is not None:
            output.close()
        for slot in sinks:
            if slot.writer is not None:
                with contextlib.suppress(Exception):  # the original error is the one to report
                    slot.writer.abort()
        message = str(exc) if isinstance(exc, SliceError) else f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
        reporter.send("done", force=True, ok=False, error=f"scenario {scenario!r}: {message}", **_counts(counters))
        return 1


def _storage(fmt: str, options: dict[str, dict[str, Any]]) -> Storage:
    """The storage driver for a format, through the one driver loader (runink.core.driverload,
    which imports no config or plugin machinery); the names were checked at compile time."""
    try:
        return load_installed(Storage, fmt, options.get(fmt))
    except RuninkError as exc:
        raise SliceError(f"storage driver {fmt!r}: {exc}") from None


def _counts(counters: Counters) -> dict[str, Any]:
    return {
        "rows_in": counters.rows_in,
        "rows_valid": counters.rows_valid,
        "rows_invalid": counters.rows_invalid,
        "rows_malformed": counters.rows_malformed,
        "rows_out": counters.rows_out,
        "steps": dict(counters.steps),
        "sinks": dict(counters.sinks),
    }


def _load_contract(ref: str | None) -> type[Contract] | None:
    if not ref:
        return None
    try:
        contract = import_reference(ref)
    except Exception as exc:
        raise SliceError(f"contract {ref}: cannot import: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(contract, type) and issubclass(contract, Contract)):
        raise SliceError(f"contract {ref} is not a runink.core.contracts.Contract subclass")
    return contract


def _load_steps(refs: list[str]) -> list[tuple[str, StepFunction]]:
    steps = []
    for ref in refs:
        try:
            function = import_reference(ref)
        except Exception as exc:
            raise SliceError(f"step {ref}: cannot import: {type(exc).__name__}: {exc}") from exc
        if not callable(function):
            raise SliceError(f"step {ref} is not callable")
        steps.append((ref, adapt(ref, function)))
    return steps


def _run_step(
    ref: str, step: StepFunction, batch: pa.RecordBatch, positions: pa.Array, *, unit: str, source_uri: str
) -> pa.RecordBatch:
    try:
        with step_context(ref):
            return step(batch)
    except Exception as exc:
        first = positions[0].as_py() if len(positions) else "?"
        last = positions[-1].as_py() if len(positions) else "?"
        raise SliceError(
            f"step {ref} raised {type(exc).__name__}: {exc} (batch of {source_uri} {unit}s {first}-{last})"
        ) from exc


def _dlq_rows(
    invalid: pa.RecordBatch, reasons: pa.Array, positions: pa.Array, source_uri: str, schema: pa.Schema | None
) -> pa.RecordBatch:
    assert schema is not None
    n = invalid.num_rows
    columns = {}
    for name in schema.names:
        if name in invalid.schema.names:
            columns[name] = invalid.column(name).cast(pa.string())
    columns["_runink_reason"] = reasons
    columns["_runink_source"] = pa.array([source_uri] * n, pa.string())
    columns["_runink_position"] = positions
    columns["_runink_text"] = pa.nulls(n, pa.string())
    return _conform(columns, n, schema)


def _malformed_rows(malformed: list[Malformed], source_uri: str, unit: str, schema: pa.Schema | None) -> pa.RecordBatch:
    if schema is None:
        schema = pa.schema(META_COLUMNS)
    n = len(malformed)
    columns = {
        "_runink_reason": pa.array([f"malformed {unit}: {m.reason}" for m in malformed], pa.string()),
        "_runink_source": pa.array([source_uri] * n, pa.string()),
        "_runink_position": pa.array([m.position for m in malformed], pa.int64()),
        "_runink_text": pa.array([m.text for m in malformed], pa.string()),
    }
    return _conform(columns, n, schema)


def _conform(columns: dict[str, pa.Array], n: int, schema: pa.Schema) -> pa.RecordBatch:
    arrays = [columns.get(f.name, pa.nulls(n, f.type)) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class SinkWriterThread:
    """Writes batches to the sinks on one background thread, so encoding and compressing
    output (which releases the GIL) overlaps with reading and validating the next batch.

    The queue holds at most ``QUEUE_BATCHES`` batches: memory stays bounded, and a slow sink
    slows the source down (backpressure). A sink error is raised on the next ``submit`` or
    on ``finish``.
    """

    QUEUE_BATCHES = 4

    def __init__(self, sinks: list[SinkSlot], counters: Counters) -> None:
        self.sinks = sinks
        self.counters = counters
        self.error: BaseException | None = None
        self.queue: queue.Queue[tuple[str, pa.RecordBatch] | None] = queue.Queue(self.QUEUE_BATCHES)
        self.thread = threading.Thread(target=self._loop, name="runink-sink-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    _write(self.sinks, item[0], item[1], self.counters)
                except BaseException as exc:
                    self.error = exc

    def submit(self, when: str, batch: pa.RecordBatch) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((when, batch))

    def finish(self) -> None:
        """Wait until everything submitted is written; raise the first sink error."""
        self.close()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


def _write(sinks: list[SinkSlot], when: str, batch: pa.RecordBatch, counters: Counters) -> None:
    for slot in sinks:
        if slot.when != when:
            continue
        try:
            if slot.writer is None:
                slot.writer = slot.driver.writer(slot.path, batch.schema, options=slot.options)
            expected = getattr(slot.writer, "schema", batch.schema)
            if batch.schema != expected:
                if when == "invalid":  # DLQ rows: columns as first seen, missing ones null, extras dropped
                    present = {name: batch.column(name) for name in batch.schema.names}
                    batch = _conform(present, batch.num_rows, expected)
                batch = batch.cast(expected)
            slot.writer.write(batch)
        except SliceError:
            raise
        except Exception as exc:
            raise SliceError(f"sink {slot.format}://{slot.path}: {type(exc).__name__}: {exc}") from exc
        slot.rows += batch.num_rows
        counters.sinks[str(slot.path)] = slot.rows


def _open_empty(
    sinks: list[SinkSlot],
    contract: type[Contract] | None,
    steps: list[tuple[str, StepFunction]],
    dlq_schema: pa.Schema | None,
) -> None:
    """Sinks that got no rows still get a (empty) dataset with the right columns."""
    for slot in sinks:
        if slot.writer is not None:
            continue
        if slot.when == "invalid":
            schema = dlq_schema or pa.schema(
                [pa.field(f.name, pa.string()) for f in (contract.fields() if contract else [])] + META_COLUMNS
            )
        else:
            schema = _output_schema(contract, steps)
        try:
            slot.writer = slot.driver.writer(slot.path, schema, options=slot.options)
        except Exception as exc:
            raise SliceError(f"sink {slot.format}://{slot.path}: {type(exc).__name__}: {exc}") from exc


def _output_schema(contract: type[Contract] | None, steps: list[tuple[str, StepFunction]]) -> pa.Schema:
    """The steps' output schema, found by running them on an empty batch of the input schema."""
    batch = pa.RecordBatch.from_pylist([], schema=contract.schema() if contract else pa.schema([]))
    for ref, step in steps:
        try:
            with step_context(ref):
                batch = step(batch)
        except Exception:
            break
    return batch.schema


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m runink.core.dataplane.slice SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = SliceSpec.from_json(Path(args[0]).read_text())
    except (OSError, SpecError) as exc:
        print(f"runink slice: {args[0]}: {exc}", file=sys.stderr)
        return 2
    if spec.task_id:
        sys.stdout = TaggedStream(sys.stdout, spec.task_id)
        sys.stderr = TaggedStream(sys.stderr, spec.task_id)
    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
