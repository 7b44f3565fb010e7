"""CSV datasets: read in blocks of whole lines, parsed with pyarrow; malformed records are reported, not fatal.

A CSV value may not span lines: a record is one line. A quote that does not close on its line
(a CSV parser lets it swallow the following lines into one value), a wrong column count, a
line that is not UTF-8 or one longer than ``MAX_LINE_BYTES`` is one malformed record at its
line, and the lines after it are read as usual.

The common case costs a count of the line breaks of each block: when the parser returns as
many records (valid and invalid) as the block has lines, no value spanned lines and no line
was blank. Only a block whose counts differ is looked at line by line.
"""

from __future__ import annotations

import csv as stdlib_csv
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from runink.core.datasets import AtomicFileWriter, DatasetError
from runink.core.interfaces.storage import MAX_LINE_BYTES, DatasetWriter, Malformed, ReadBatch, Storage
from runink.core.readahead import ahead

# Bytes per parsed block, i.e. per batch. Peak memory is proportional to it (validation makes
# several column-sized intermediates): measured on 1M/10M-row orders, 2 MiB gives 291/320 MB
# peak at full speed; 4 MiB 324/443 MB (steady state reached only on long inputs); 1 MiB is flat
# but 40% slower.
BLOCK_SIZE = 2 << 20
#: a longer line is a malformed record, skipped in pieces, never held whole.
#: characters of a malformed record's text kept for its dead-letter row.
MAX_TEXT = 4096
UNCLOSED = "a quoted value does not close on its line (a CSV value may not span lines)"
BOM = b"\xef\xbb\xbf"


def _header(fh: IO[bytes], path: Path, delimiter: str) -> list[str]:
    line = fh.readline(MAX_LINE_BYTES)
    if not line.strip():
        raise DatasetError(f"{path}: empty file (expected a header line)")
    try:
        text = line.removeprefix(BOM).decode("utf-8")
        row = next(stdlib_csv.reader([text], delimiter=delimiter, strict=True))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}:1: the header is not UTF-8: {exc}") from None
    except stdlib_csv.Error as exc:
        raise DatasetError(f"{path}:1: the header is not one CSV line: {exc}") from None
    if not line.endswith((b"\n", b"\r")) and len(line) >= MAX_LINE_BYTES:
        raise DatasetError(f"{path}:1: the header is longer than {MAX_LINE_BYTES} bytes")
    return row


def physical_lines(records: np.ndarray, bad_lines: list[int]) -> np.ndarray:
    """1-based file line of each parsed record (1-based), given the malformed lines skipped so far.

    Line of record r = r + 1 (header) + the number of malformed lines before it. With the
    malformed lines b_0 < b_1 < ... the count is how many (b_i - i) are <= r + 1.
    """
    if not bad_lines:
        return records + 1
    adjusted = np.asarray(sorted(bad_lines), dtype=np.int64) - np.arange(len(bad_lines), dtype=np.int64)
    return records + 1 + np.searchsorted(adjusted, records + 1, side="right")


def _count_lines(data: bytes, end: int) -> int:
    """Line breaks in ``data[:end]`` as pyarrow ends records: \\r\\n, \\n or a lone \\r."""
    n = int(np.count_nonzero(np.frombuffer(data, np.uint8, end) == 10))  # 5x faster than bytes.count
    if data.find(b"\r", 0, end) >= 0:
        n += data.count(b"\r", 0, end) - data.count(b"\r\n", 0, end)
    return n


def _split_lines(chunk: memoryview | bytes) -> list[bytes]:
    """The lines of a chunk that ends with a line break, without their breaks."""
    lines = bytes(chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    lines.pop()  # after the final break
    return lines


def _text(line: bytes) -> str:
    return Malformed.text_of(line, MAX_TEXT)


def _size(fh: IO[bytes]) -> int | None:
    """The file's size, if it is a regular file (not a pipe or a device)."""
    try:
        info = os.fstat(fh.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) and info.st_size > 0 else None


def _blocks(fh: IO[bytes], block_size: int, line: int) -> Iterator[tuple[memoryview, int, int] | Malformed]:
    """Chunks of whole lines (each ending with a line break) with the line number of their first
    line and their number of lines, and a Malformed for each line longer than MAX_LINE_BYTES
    (skipped)."""
    limit = max(MAX_LINE_BYTES, block_size)
    seekable = fh.seekable()
    carry = b""
    while True:
        data = fh.read(block_size)
        if not data:
            if carry:
                chunk = carry if carry.endswith(b"\n") else carry + b"\n"
                yield memoryview(chunk), line, _count_lines(chunk, len(chunk))
            return
        if carry:
            data, carry = carry + data, b""
        cut = data.rfind(b"\n") + 1 or data.rfind(b"\r", 0, len(data) - 1) + 1  # a lone \r: old Mac files
        if cut == 0:
            carry = data
            if len(carry) > limit:
                yield Malformed(line, f"line longer than {limit} bytes", _text(carry))
                carry = _skip_line(fh, block_size)
                line += 1
            continue
        if cut < len(data):
            if seekable:  # the partial last line is read again with the next block: no copying
                fh.seek(cut - len(data), 1)
            else:
                carry = data[cut:]
        count = _count_lines(data, cut)
        yield memoryview(data)[:cut], line, count
        line += count


def _skip_line(fh: IO[bytes], block_size: int) -> bytes:
    """Read up to the end of the current line; return what follows it in the last read."""
    while data := fh.read(block_size):
        end = data.find(b"\n")
        if end >= 0:
            return data[end + 1 :]
    return b""


class _ChunkParser:
    """Parses chunks of whole lines: a batch, the file line of each of its rows, the malformed records."""

    MAX_NESTING = 16  # re-parses of swallowed lines inside swallowed lines (never seen beyond 2)

    def __init__(self, path: Path, names: list[str], delimiter: str, raw: bool) -> None:
        self.path = path
        self.names = names
        self.delimiter = delimiter
        # raw: every column as text. Otherwise the types pyarrow infers on the first rows are kept
        # for the rest of the file, as pyarrow's own streaming reader does.
        self.types: dict[str, pa.DataType] | None = dict.fromkeys(names, pa.string()) if raw else None

    def parse(self, chunk: memoryview, first_line: int, count: int) -> ReadBatch:
        batch, lines, bad = self._parse(chunk, first_line, count, self.types, 0)
        if batch.num_rows and self.types is None:
            self.types = dict(zip(batch.schema.names, batch.schema.types, strict=True))
        bad.sort(key=lambda m: m.position)
        return ReadBatch(batch, pa.array(lines, pa.int64()), bad)

    def _read(
        self, chunk: memoryview | bytes, types: dict[str, pa.DataType] | None, invalid: list[pacsv.InvalidRow]
    ) -> pa.RecordBatch:
        def on_invalid(row: pacsv.InvalidRow) -> str:
            invalid.append(row)
            return "skip"

        table = pacsv.read_csv(
            pa.BufferReader(chunk),
            # one block for the whole chunk: one batch, and row numbers counted from its start
            read_options=pacsv.ReadOptions(column_names=self.names, use_threads=False, block_size=len(chunk) + 1),
            parse_options=pacsv.ParseOptions(delimiter=self.delimiter, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
        )
        if table.num_rows == 0:
            return pa.RecordBatch.from_pylist([], schema=table.schema)
        batches = table.to_batches()
        return batches[0] if len(batches) == 1 else table.combine_chunks().to_batches()[0]

    def _parse(
        self, chunk: memoryview | bytes, first_line: int, count: int, types: dict[str, pa.DataType] | None, depth: int
    ) -> tuple[pa.RecordBatch, np.ndarray, list[Malformed]]:
        """``count``: the chunk's lines."""
        invalid: list[pacsv.InvalidRow] = []
        not_utf8: list[Malformed] = []
        split: list[bytes] | None = None  # the chunk's lines, split once if needed
        try:
            batch = self._read(chunk, types, invalid)
        except pa.ArrowInvalid as exc:
            split = _split_lines(chunk)
            chunk, not_utf8 = _blank_non_utf8(split, first_line)
            if not not_utf8:
                raise self._error(first_line, count, exc) from None
            invalid = []
            try:
                batch = self._read(chunk, types, invalid)
            except pa.ArrowInvalid as again:
                raise self._error(first_line, count, again) from None
        if not not_utf8 and batch.num_rows + len(invalid) == count:
            # As many records as lines: no value spans lines, no line is blank (the common case).
            numbers = [int(row.number) for row in invalid]
            rows = np.arange(1, batch.num_rows + 1, dtype=np.int64)
            lines = physical_lines(rows, [n + 1 for n in numbers]) + (first_line - 2)
            return (
                batch,
                lines,
                [_wrong_count(row, first_line - 1 + n) for row, n in zip(invalid, numbers, strict=True)],
            )
        return self._by_line(chunk, first_line, batch, invalid, not_utf8, depth=depth, lines=split)

    def _by_line(
        self,
        chunk: memoryview | bytes,
        first_line: int,
        batch: pa.RecordBatch,
        invalid: list[pacsv.InvalidRow],
        bad: list[Malformed],
        *,
        depth: int,
        lines: list[bytes] | None = None,
    ) -> tuple[pa.RecordBatch, np.ndarray, list[Malformed]]:
        """Match records to lines: skip blank lines, and make a record that spans lines (a quote
        left open) one malformed record at its first line, re-reading the lines it swallowed.
        ``lines``: the chunk's, if already split."""
        lines = _split_lines(chunk) if lines is None else lines
        invalid_at = {int(row.number): row for row in invalid}
        spans = _spans(batch)
        types = self.types or dict(zip(batch.schema.names, batch.schema.types, strict=True))
        keep: list[int] = []
        keep_lines: list[int] = []
        parts: list[tuple[pa.RecordBatch, np.ndarray]] = []
        k = valid = 0
        for record in range(1, batch.num_rows + len(invalid) + 1):
            while k < len(lines) and not lines[k]:
                k += 1  # pyarrow skips empty lines
            start = min(k, len(lines) - 1)
            row = invalid_at.get(record)
            span = int(spans[valid]) if row is None else 1 + _breaks(row.text or "")
            k = start + span
            if span > 1:
                bad.append(Malformed(first_line + start, UNCLOSED, _text(lines[start])))
                swallowed = lines[start + 1 : k]
                if swallowed and depth < self.MAX_NESTING:
                    sub_batch, sub_lines, sub_bad = self._parse(
                        b"\n".join(swallowed) + b"\n", first_line + start + 1, len(swallowed), types, depth + 1
                    )
                    parts.append((sub_batch, sub_lines))
                    bad.extend(sub_bad)
                else:
                    bad.extend(
                        Malformed(first_line + start + 1 + i, UNCLOSED, _text(x)) for i, x in enumerate(swallowed) if x
                    )
            elif row is None:
                keep.append(valid)
                keep_lines.append(first_line + start)
            else:
                bad.append(_wrong_count(row, first_line + start))
            if row is None:
                valid += 1
        kept = batch.take(pa.array(keep, pa.int64())) if len(keep) < batch.num_rows else batch
        positions = np.asarray(keep_lines, dtype=np.int64)
        if not parts:
            return kept, positions, bad
        # rows re-read from swallowed lines go back to their place in file order
        try:
            table = pa.concat_tables(
                [pa.Table.from_batches([b]) for b in [kept, *(p[0] for p in parts)]], promote_options="permissive"
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise self._error(first_line, len(lines), exc) from None
        positions = np.concatenate([positions, *(p[1] for p in parts)])
        order = np.argsort(positions, kind="stable")
        combined = table.combine_chunks()
        merged = (
            combined.to_batches()[0] if combined.num_rows else pa.RecordBatch.from_pylist([], schema=combined.schema)
        )
        return merged.take(pa.array(order)), positions[order], bad

    def _error(self, first_line: int, count: int, exc: Exception) -> DatasetError:
        return DatasetError(f"{self.path}: lines {first_line}-{first_line + count - 1}: {exc}")


def _spans(batch: pa.RecordBatch) -> np.ndarray:
    """Lines each row's record covered: 1 + the line breaks inside its (quoted) values."""
    spans = np.ones(batch.num_rows, dtype=np.int64)
    for column in batch.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for pattern, sign in (("\n", 1), ("\r", 1), ("\r\n", -1)):
                spans += sign * pc.count_substring(column, pattern).fill_null(0).to_numpy(zero_copy_only=False)
    return spans


def _breaks(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _wrong_count(row: pacsv.InvalidRow, line: int) -> Malformed:
    text = row.text or ""
    return Malformed(line, f"expected {row.expected_columns} columns, got {row.actual_columns}", text[:MAX_TEXT])


def _blank_non_utf8(lines: list[bytes], first_line: int) -> tuple[bytes, list[Malformed]]:
    """The chunk again, each line that is not UTF-8 made blank in it and in ``lines`` (so line
    numbers stay), and those lines."""
    bad = []
    for i, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append(
                Malformed(first_line + i, f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line)", _text(line))
            )
            lines[i] = b""
    return b"\n".join(lines) + b"\n", bad


def _parsed(fh: IO[bytes], parser: _ChunkParser, block_size: int) -> Iterator[ReadBatch]:
    """The file's batches, from its blocks of whole lines, in order."""
    names = parser.names
    pending: list[Malformed] = []
    size, consumed = _size(fh), fh.tell()  # bytes parsed so far: how far the read is
    for block in _blocks(fh, block_size, 2):
        if isinstance(block, Malformed):
            pending.append(block)
            continue
        read = parser.parse(*block)
        consumed += len(block[0])
        fraction = min(1.0, consumed / size) if size else None
        yield ReadBatch(read.batch, read.positions, [*pending, *read.malformed], fraction)
        pending = []
    if pending:
        schema = pa.schema([pa.field(n, (parser.types or {}).get(n, pa.string())) for n in names])
        yield ReadBatch(pa.RecordBatch.from_pylist([], schema=schema), pa.array([], pa.int64()), pending)


class CsvStorage(Storage):
    name = "csv"
    position_unit = "line"
    extensions = (".csv",)

    def read(self, path: Path, *, raw: bool = False, options: Mapping[str, Any] | None = None) -> Iterator[ReadBatch]:
        options = dict(options or {})
        delimiter = options.get("delimiter", ",")
        block_size = max(1 << 10, int(options.get("block_size", BLOCK_SIZE)))
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the with below, across yields
        except FileNotFoundError:
            raise DatasetError(f"source {path} does not exist") from None
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc}") from None
        with fh:
            names = _header(fh, path, delimiter)
            if len(set(names)) != len(names):
                raise DatasetError(f"{path}:1: duplicate column names in header: {names}")
            # Parsed on a thread one batch ahead: pyarrow parses without the GIL, so the next
            # block is parsed while the caller validates and transforms this one.
            yield from ahead(_parsed(fh, _ChunkParser(path, names, delimiter, raw), block_size), "runink-csv-read")

    def writer(self, path: Path, schema: pa.Schema, *, options: Mapping[str, Any] | None = None) -> DatasetWriter:
        return CsvWriter(path, schema)


class CsvWriter(AtomicFileWriter):
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        super().__init__(path)
        self.schema = schema
        self._writer = pacsv.CSVWriter(str(self.output.temp), schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _close(self) -> None:
        self._writer.close()
