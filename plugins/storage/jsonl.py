"""JSON Lines datasets: parsed in chunks of lines with pyarrow; an invalid line is reported, not fatal.

A chunk that pyarrow cannot parse is re-read line by line only to find the bad lines; the
good ones still go through the vectorized parser.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson

from runink.core.datasets import AtomicFileWriter, DatasetError
from runink.core.interfaces.storage import DatasetWriter, Malformed, ReadBatch, Storage

CHUNK_LINES = 65_536


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
        try:
            line_no = 0
            while True:
                lines: list[bytes] = []
                numbers: list[int] = []
                for raw_line in fh:
                    line_no += 1
                    if raw_line.strip():
                        lines.append(raw_line if raw_line.endswith(b"\n") else raw_line + b"\n")
                        numbers.append(line_no)
                    if len(lines) >= chunk_lines:
                        break
                if not lines:
                    return
                yield self._parse(lines, numbers, raw)
        finally:
            fh.close()

    def _parse(self, lines: list[bytes], numbers: list[int], raw: bool) -> ReadBatch:
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
                except ValueError as exc:
                    text = line.decode(errors="replace").rstrip("\n")
                    detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                    malformed.append(Malformed(number, f"invalid JSON: {detail}", text[:1000]))
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
                table = pa.Table.from_pylist(rows)
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

        frame = pl.DataFrame(pl.from_arrow(batch))
        frame.write_ndjson(self._fh)

    def _close(self) -> None:
        self._fh.close()
