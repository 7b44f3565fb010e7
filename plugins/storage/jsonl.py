"""JSON Lines datasets: parsed in chunks of lines with pyarrow; an invalid line is reported, not fatal.

A chunk that pyarrow cannot parse is re-read line by line only to find the bad lines; the
good ones still go through the vectorized parser. A line longer than ``MAX_LINE_BYTES`` or
nested deeper than ``MAX_DEPTH`` (which would crash the parser or exhaust the stack) is a
malformed record found before parsing; such lines are skipped in pieces, never held whole.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from runink.core.datasets import AtomicFileWriter, DatasetError
from runink.core.interfaces.storage import MAX_LINE_BYTES, DatasetWriter, Malformed, ReadBatch, Storage

CHUNK_LINES = 65_536
#: deeper nesting is a malformed record (pyarrow's parser recurses: 100,000 levels crash it).
MAX_DEPTH = 512
MAX_TEXT = 1000
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _too_deep(line: bytes) -> bool:
    """Nested deeper than MAX_DEPTH? Cheap for almost every line: nesting needs that many brackets."""
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False
    # Brackets outside strings, as the parser sees them (an unclosed string counts its brackets:
    # an overestimate, never an underestimate).
    codes = np.frombuffer(_STRING.sub(b'""', line), np.uint8)
    steps = ((codes == 0x5B) | (codes == 0x7B)).astype(np.int32) - ((codes == 0x5D) | (codes == 0x7D))
    return int(np.cumsum(steps).max(initial=0)) > MAX_DEPTH


def _oversized(line: bytes, fh: io.BufferedReader) -> str | None:
    """Why a long line is a malformed record, if it is one (the rest of a too long line is skipped)."""
    if len(line) >= MAX_LINE_BYTES and not line.endswith(b"\n"):
        while (piece := fh.readline(1 << 20)) and not piece.endswith(b"\n"):
            pass
        return f"line longer than {MAX_LINE_BYTES} bytes"
    if _too_deep(line):
        return f"nested deeper than {MAX_DEPTH} levels"
    return None


def _text(line: bytes) -> str:
    return Malformed.text_of(line, MAX_TEXT)


def _stringify(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Every column as text (nested values as JSON), so the contract does the typing."""
    arrays = []
    for column in batch.columns:
        if pa.types.is_string(column.type):
            arrays.append(column)
        elif pa.types.is_nested(column.type):
            arrays.append(pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()], pa.string()))
        else:
            arrays.append(column.cast(pa.string()))
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


class JsonlStorage(Storage):
    name = "jsonl"
    position_unit = "line"
    extensions = (".jsonl", ".ndjson")

    def read(self, path: Path, *, raw: bool = False, options: Mapping[str, Any] | None = None) -> Iterator[ReadBatch]:
        chunk_lines = int((options or {}).get("chunk_lines", CHUNK_LINES))
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed in finally, across yields
        except FileNotFoundError:
            raise DatasetError(f"source {path} does not exist") from None
        readline, limit = fh.readline, MAX_LINE_BYTES
        info = os.fstat(fh.fileno())
        size = info.st_size if stat.S_ISREG(info.st_mode) else 0  # how far the read is, in bytes
        try:
            line_no = 0
            while True:
                lines: list[bytes] = []
                numbers: list[int] = []
                skipped: list[Malformed] = []
                while raw_line := readline(limit):
                    line_no += 1
                    # only a line longer than MAX_DEPTH bytes can be too deep or too long
                    if len(raw_line) > MAX_DEPTH and (reason := _oversized(raw_line, fh)):
                        skipped.append(Malformed(line_no, reason, _text(raw_line)))
                        if len(skipped) >= chunk_lines:
                            break
                    elif raw_line.strip():
                        lines.append(raw_line if raw_line.endswith(b"\n") else raw_line + b"\n")
                        numbers.append(line_no)
                        if len(lines) >= chunk_lines:
                            break
                if not lines and not skipped:
                    return
                read = self._parse(lines, numbers, raw, skipped)
                yield dataclasses.replace(read, fraction=min(1.0, fh.tell() / size) if size else None)
        finally:
            fh.close()

    def _parse(self, lines: list[bytes], numbers: list[int], raw: bool, skipped: list[Malformed]) -> ReadBatch:
        if not lines:
            return ReadBatch(pa.RecordBatch.from_pylist([]), pa.array([], pa.int64()), skipped)
        read = self._parse_lines(lines, numbers, raw)
        if skipped:
            read = ReadBatch(read.batch, read.positions, sorted([*skipped, *read.malformed], key=lambda m: m.position))
        return read

    def _parse_lines(self, lines: list[bytes], numbers: list[int], raw: bool) -> ReadBatch:
        malformed: list[Malformed] = []
        try:
            table = pajson.read_json(io.BytesIO(b"".join(lines)))
        except pa.ArrowInvalid:
            good_lines, good_numbers = [], []
            for line, number in zip(lines, numbers, strict=True):
                try:
                    value = json.loads(line)
                    if not isinstance(value, dict):
                        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
                except (ValueError, RecursionError) as exc:  # RecursionError: nesting, if MAX_DEPTH is raised
                    detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                    malformed.append(Malformed(number, f"invalid JSON: {detail}", _text(line).rstrip("\n")))
                    continue
                good_lines.append(line)
                good_numbers.append(number)
            lines, numbers = good_lines, good_numbers
            if not lines:
                return ReadBatch(pa.RecordBatch.from_pylist([]), pa.array([], pa.int64()), malformed)
            try:
                table = pajson.read_json(io.BytesIO(b"".join(lines)))
            except pa.ArrowInvalid:
                # Valid JSON whose types conflict between lines: fall back to Python for this chunk.
                rows = [
                    {k: (v if isinstance(v, str) or v is None else json.dumps(v)) for k, v in json.loads(x).items()}
                    for x in lines
                ]
                names = dict.fromkeys(name for row in rows for name in row)  # every row's keys, not the first's
                table = pa.Table.from_pylist(rows, schema=pa.schema([(name, pa.string()) for name in names]))
        batch = table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([])
        if raw:
            batch = _stringify(batch)
        return ReadBatch(batch, pa.array(numbers, pa.int64()), malformed)

    def writer(self, path: Path, schema: pa.Schema, *, options: Mapping[str, Any] | None = None) -> DatasetWriter:
        return JsonlWriter(path)


class JsonlWriter(AtomicFileWriter):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._fh = open(self.output.temp, "wb")  # noqa: SIM115 - closed on commit/abort

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        import polars as pl  # imported in the slice only, when a JSONL sink is used

        frame = pl.DataFrame(pl.from_arrow(_utc_timestamps(batch)))
        frame.write_ndjson(self._fh)

    def _close(self) -> None:
        self._fh.close()


def _utc_timestamps(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Timestamps without a zone as UTC ones (what they are: contracts convert offsets to UTC
    and take naive values as UTC), so each is written in ISO 8601 with its offset,
    ``2026-03-02T08:15:00+00:00``, not ``2026-03-02 08:15:00``. Only the type changes."""
    naive = [i for i, f in enumerate(batch.schema) if pa.types.is_timestamp(f.type) and f.type.tz is None]
    for i in naive:
        column = batch.column(i)
        batch = batch.set_column(
            i,
            batch.schema.field(i).with_type(pa.timestamp(column.type.unit, "UTC")),
            column.cast(pa.timestamp(column.type.unit, "UTC")),
        )
    return batch
