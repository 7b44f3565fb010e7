"""JSON Lines datasets: parsed in chunks of lines with pyarrow; an invalid line is reported, not fatal.

A chunk is at most ``CHUNK_LINES`` lines and about ``CHUNK_BYTES`` bytes. A chunk that pyarrow
cannot parse as one JSON object per line is re-read line by line only to find the bad lines;
the good ones still go through the vectorized parser. A line longer than ``MAX_LINE_BYTES`` or
nested deeper than ``MAX_DEPTH`` (which would crash the parser or exhaust the stack) is a
malformed record found before parsing; such lines are skipped in pieces, never held whole.

Without a contract a file is read twice: once for its columns and one type for each (every
line's keys, see ``_file_schema``), then for its rows, each chunk read with those types. Typed
chunk by chunk, a column of whole numbers that held a fraction 100,000 lines later, or a key
first seen there, changed the sink's schema mid-file and failed the run.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from runink.core.datasets import AtomicFileWriter, DatasetError
from runink.core.interfaces.storage import MAX_LINE_BYTES, DatasetWriter, Malformed, ReadBatch, Storage
from runink.plugins.storage.doubles import WIDE_NUMBER, exact, may_lose_digits, shortest_differs

T = TypeVar("T")

CHUNK_LINES = 65_536
#: a chunk also ends once its lines hold this many bytes: peak memory is a few times a chunk's
#: size (65,536 lines of 1 MiB would be one 64 GiB chunk).
CHUNK_BYTES = 4 << 20
#: deeper nesting is a malformed record (pyarrow's parser recurses: 100,000 levels crash it).
MAX_DEPTH = 512
MAX_TEXT = 1000
#: columns a source may have (as a CSV header), and values Arrow may build for one read: every
#: column gets a value in every line, so lines of keys all different cost lines x keys
MAX_COLUMNS = 10_000
MAX_CELLS = 1 << 22
#: a chunk's columns are found in pieces of this many lines and bytes at most (see _bounded_schema)
PIECE_LINES = 1024
PIECE_BYTES = 64 << 10
# A string, or an unclosed one up to the end of the line: each match succeeds where it starts,
# so the scan is linear (requiring the closing quote made each quote of an unclosed string
# rescan the rest of the line: quadratic, about an hour for 1 MB of \").
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?')


def _too_deep(line: bytes) -> bool:
    """Nested deeper than MAX_DEPTH? Cheap for almost every line: nesting needs that many brackets."""
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False
    # Brackets outside strings, as the parser sees them (it stops at an unclosed string, so the
    # brackets in one need no counting).
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
    if len(line) > WIDE_CHECK_BYTES and _too_wide(line):
        return f"more than {MAX_COLUMNS:,} different keys"
    return None


#: a line this long has its keys counted before it is parsed: one of 12 MB with 1,000,000 keys
#: took pyarrow 25 s and 2.9 GB before its columns could be refused
WIDE_CHECK_BYTES = 1 << 20
_KEY = re.compile(rb'"((?:[^"\\]|\\.){0,256})"\s*:')


def _too_wide(line: bytes) -> bool:
    """Whether the line names more than MAX_COLUMNS different keys (nested ones too: a
    struct's fields are columns for Arrow). A key longer than 256 bytes is not counted."""
    keys: set[bytes] = set()
    for found in _KEY.finditer(line):
        keys.add(found.group(1))
        if len(keys) > MAX_COLUMNS:
            return True
    return False


def _text(line: bytes) -> str:
    return Malformed.text_of(line, MAX_TEXT)


def _stringify(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Every column as text (nested values as JSON), so the contract does the typing."""
    arrays = []
    for column in batch.columns:
        if pa.types.is_string(column.type):
            arrays.append(column)
        elif pa.types.is_nested(column.type):
            arrays.append(pa.array([None if v is None else _json_text(v) for v in column.to_pylist()], pa.string()))
        else:
            arrays.append(column.cast(pa.string()))
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


#: how JSON numbers a contract wants exactly (its Decimal fields, read option ``exact``) are read
#: again: Arrow converts a number to a decimal exactly (a float64 kept 17 digits:
#: 999999.999999999999 became 1000000.00), and refuses one that needs more scale or precision
EXACT_NUMBER = pa.decimal128(38, 18)


def _read_json(
    lines: list[bytes], raw: bool, exact: Sequence[str] = (), schema: pa.Schema | None = None
) -> pa.Table | None:
    """The lines as pyarrow reads them, one row for each; None if it cannot read them so (it
    makes two rows of two objects on one line). The columns pyarrow typed otherwise than they
    are written are read again, once, all of them together: strings that look like a timestamp
    as text (JSON has no timestamps: "2026-01-01" became 2026-01-01 00:00:00, written back as
    "2026-01-01T00:00:00+00:00"; a contract types them), and for a contract (``raw``) the
    numbers of ``exact`` as decimals (ArrowInvalid if one needs more digits than EXACT_NUMBER
    has: the caller reads its lines one by one). ``schema``: the file's (``_file_schema``),
    every line read with it, nothing inferred."""
    if schema is None and len(lines) > 1 and (len(lines) > PIECE_LINES or sum(map(len, lines)) > PIECE_BYTES):
        schema, table = _bounded_schema(lines, raw, exact)
        if schema is None:
            return None
        if table is not None:
            return table if table.num_rows == len(lines) else None
    data = pa.py_buffer(b"".join(lines))
    # a block must hold the longest line: pyarrow fails on one that straddles two blocks
    options = pajson.ReadOptions(block_size=max(1 << 20, max(map(len, lines)) + 1))
    try:
        if schema is not None:
            _check_size(_width(schema), len(lines))
            parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
            table = pajson.read_json(pa.BufferReader(data), read_options=options, parse_options=parse)
            return table if table.num_rows == len(lines) else None
        table = pajson.read_json(pa.BufferReader(data), read_options=options)
        _check_size(_width(table.schema), len(lines))  # (read already: a piece, at most PIECE_LINES)
        again = _timestamps_as_text(table.schema)
        if raw and exact:
            floats = (f for f in table.schema if f.name in exact and pa.types.is_floating(f.type))
            again += [pa.field(f.name, EXACT_NUMBER) for f in floats]
        if again:
            parse = pajson.ParseOptions(explicit_schema=pa.schema(again), unexpected_field_behavior="ignore")
            read = pajson.read_json(pa.BufferReader(data), read_options=options, parse_options=parse)
            for field in again:
                table = table.set_column(table.schema.get_field_index(field.name), field, read.column(field.name))
    except pa.ArrowInvalid:
        return None
    return table if table.num_rows == len(lines) else None


def _as_written(batch: pa.RecordBatch, lines: list[bytes], written: frozenset[str]) -> pa.RecordBatch:
    """The columns of ``written`` (a contract's str and int fields) that pyarrow read as floats
    or nested values, read again from ``lines`` (one per row) as written: a float column made
    text gave 9007199254740993 as '9.007199254740992e+15' and 12.0 as '12', an int field took
    3.0 and 1e3, and an object took other lines' keys (the merged struct's). Only then: Python
    reads those lines, the usual chunk has none."""
    redo = [
        i
        for i, field in enumerate(batch.schema)
        if field.name in written and (pa.types.is_floating(field.type) or pa.types.is_nested(field.type))
    ]
    if not redo or batch.num_rows != len(lines):
        return batch
    names = [batch.schema.field(i).name for i in redo]
    values: dict[str, list[str | None]] = {name: [] for name in names}
    for line in lines:
        row = json.loads(line, parse_float=_Written, parse_int=_Written)
        for name in names:
            values[name].append(_as_text(row.get(name)))
    for i, name in zip(redo, names, strict=True):
        batch = batch.set_column(i, pa.field(name, pa.string()), pa.array(values[name], pa.string()))
    return batch


def _pieces(lines: list[bytes]) -> Iterator[list[bytes]]:
    """The lines in pieces of at most PIECE_LINES lines and about PIECE_BYTES bytes."""
    piece: list[bytes] = []
    held = 0
    for line in lines:
        if piece and (len(piece) >= PIECE_LINES or held + len(line) > PIECE_BYTES):
            yield piece
            piece, held = [], 0
        piece.append(line)
        held += len(line)
    if piece:
        yield piece


def _width(kind: pa.DataType | pa.Schema) -> int:
    """Columns, counting each field of a struct (those are columns too, for Arrow)."""
    if isinstance(kind, pa.Schema):
        return sum(1 + _width(field.type) for field in kind)
    if pa.types.is_struct(kind):
        return sum(1 + _width(field.type) for field in kind)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _width(kind.value_type)
    return 0


def _bounded_schema(lines: list[bytes], raw: bool, exact: Sequence[str]) -> tuple[pa.Schema | None, pa.Table | None]:
    """The lines' columns, found without building more than MAX_CELLS values at once: Arrow
    makes a value of every column for every line, so 20,000 lines of a key each (220 KB) took
    95 s and 5.5 GB to read in one piece. The first piece's columns, if every line has only
    those, of those types (one read, the common case); else every piece's, merged. More than
    MAX_COLUMNS columns, or more than MAX_CELLS values for the lines: DatasetError. With the
    lines read if the first piece's columns did (else None: the caller reads them with the
    schema); no schema if a piece cannot be read as one row a line (the caller reads the lines
    one by one)."""
    pieces = _pieces(lines)
    head = _read_json(next(pieces), raw, exact)
    if head is None:
        return None, None
    found = head.schema
    if _width(found) * len(lines) <= MAX_CELLS:
        data = pa.py_buffer(b"".join(lines))
        options = pajson.ReadOptions(block_size=max(1 << 20, max(map(len, lines)) + 1))
        parse = pajson.ParseOptions(explicit_schema=found, unexpected_field_behavior="error")
        try:
            return found, pajson.read_json(pa.BufferReader(data), read_options=options, parse_options=parse)
        except pa.ArrowInvalid:
            pass  # another column, or another type: every piece's columns
    for piece in pieces:
        table = _read_json(piece, raw, exact)
        if table is None:
            return None, None
        found = _merged(found, table.schema)
        _check_size(_width(found), 0)
    _check_size(_width(found), len(lines))
    return found, None


class _TooSparse(DatasetError):
    """More than MAX_CELLS values for the lines read at once: read them in fewer lines each."""

    def __init__(self, columns: int) -> None:
        super().__init__(f"{columns:,} columns")
        self.columns = columns


def _check_size(columns: int, lines: int) -> None:
    """DatasetError past MAX_COLUMNS columns; _TooSparse past MAX_CELLS values for ``lines``."""
    if columns > MAX_COLUMNS:
        raise DatasetError(f"its lines have more than {MAX_COLUMNS:,} different keys (columns)")
    if columns * lines > MAX_CELLS:
        raise _TooSparse(columns)


def _step(columns: int) -> int:
    """Lines read at once for ``columns`` columns: at most MAX_CELLS values."""
    return max(1, MAX_CELLS // max(1, columns))


def _timestamps_as_text(schema: pa.Schema) -> list[pa.Field]:
    """The fields holding a timestamp (nested ones too), with each timestamp as a string."""

    def as_text(kind: pa.DataType) -> pa.DataType:
        if pa.types.is_timestamp(kind):
            return pa.string()
        if pa.types.is_struct(kind):
            return pa.struct([field.with_type(as_text(field.type)) for field in kind])
        if pa.types.is_list(kind):
            return pa.list_(kind.value_field.with_type(as_text(kind.value_type)))
        return kind

    return [field.with_type(text) for field in schema if (text := as_text(field.type)) != field.type]


def _chunk_schema(lines: list[bytes]) -> pa.Schema | None:
    """The columns of a chunk's valid lines and their types as pyarrow infers them (a string
    that looks like a timestamp as text); a column whose values are of different kinds
    (numbers in some lines, strings in others) as text. None if no line is valid."""
    table = _read_json(lines, False)
    if table is None or any(_non_finite(column) for column in table.columns):
        lines = [line for line in lines if _invalid(line) is None]
        table = _read_json(lines, False) if lines else None
        if table is None and lines:  # kinds that differ: each column typed alone
            columns: dict[str, list[bytes]] = {}
            for line in lines:
                for name, value in json.loads(line).items():
                    columns.setdefault(name, []).append(json.dumps({name: value}).encode() + b"\n")
            _check_size(len(columns), 0)
            fields = []
            for name, values in columns.items():
                alone = _read_json(values, False)
                fields.append(pa.field(name, pa.string() if alone is None else alone.schema.field(name).type))
            return pa.schema(fields)
    return None if table is None else table.schema


def _inexact_numbers(lines: list[bytes]) -> set[str]:
    """The keys of the lines' top-level numbers that a double cannot hold exactly: such a
    column, if typed double (12345678901234567890, or a fraction elsewhere in it), is text, each
    value as written (a double lost digits: 9007199254740993 became 9007199254740992)."""
    data = b"".join(lines)
    if not may_lose_digits(data):
        return set()
    table = _read_json(lines, False)
    if table is None:
        return _inexact_one_by_one(lines)
    keys: set[str] = set()
    floats = []
    for field in table.schema:
        if pa.types.is_integer(field.type):  # (exact as int64; not as a double, if others make it one)
            if pc.any(pc.greater(pc.abs(table.column(field.name)), 2**53)).as_py():
                keys.add(field.name)
        elif pa.types.is_floating(field.type):
            floats.append(field.name)
    if not floats:
        return keys
    try:
        # the numbers read again exactly (as decimals), against the shortest text of their
        # double (what a sink writes): vectorized, where Python took 4.6x the whole read
        parse = pajson.ParseOptions(
            explicit_schema=pa.schema([(name, WIDE_NUMBER) for name in floats]), unexpected_field_behavior="ignore"
        )
        options = pajson.ReadOptions(block_size=max(1 << 20, max(map(len, lines)) + 1))
        written = pajson.read_json(pa.BufferReader(data), read_options=options, parse_options=parse)
        keys.update(name for name in floats if pc.any(shortest_differs(written[name], table[name])).as_py())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # (a number past WIDE_NUMBER)
        return keys | _inexact_one_by_one(lines)
    return keys


def _inexact_one_by_one(lines: list[bytes]) -> set[str]:
    """_inexact_numbers, line by line in Python."""
    keys: set[str] = set()
    for line in lines:
        if not may_lose_digits(line):
            continue
        try:
            value = json.loads(line, parse_float=_Written, parse_int=_Written, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            continue  # (not a valid line: a dead letter, it types nothing)
        if isinstance(value, dict):
            keys.update(k for k, v in value.items() if isinstance(v, _Written) and not _holds(v))
    return keys


def _holds(number: str) -> bool:
    """Whether a double holds the JSON number ``number`` exactly."""
    return exact(number, float(number))


def _merged(schema: pa.Schema | None, more: pa.Schema) -> pa.Schema:
    """The two chunks' columns in the order first seen; a column typed differently in each
    gets the type both fit (whole numbers and fractions: float64; a struct's fields: all of
    them), or text if there is none (a number and a string)."""
    if schema is None:
        return more
    fields = {field.name: field for field in schema}
    for field in more:
        known = fields.get(field.name)
        if known is None:
            fields[field.name] = field
        elif known.type != field.type:
            try:
                both = pa.unify_schemas([pa.schema([known]), pa.schema([field])], promote_options="permissive")
                fields[field.name] = both.field(0)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                fields[field.name] = pa.field(field.name, pa.string())
    return pa.schema(list(fields.values()))


def _without_null_types(kind: pa.DataType) -> pa.DataType:
    """A column null in every line is text (a null column would refuse the values of a later
    file appended to the same sink); inside lists and structs too."""
    if pa.types.is_null(kind):
        return pa.string()
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(_without_null_types(field.type)) for field in kind])
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.list_(kind.value_field.with_type(_without_null_types(kind.value_type)))
    return kind


def _as_typed(lines: list[bytes], schema: pa.Schema) -> tuple[pa.Table, list[int]]:
    """Valid lines pyarrow cannot read with the file's types (a text column holding a number
    in some lines): each value as ``_as_text`` gives it for a text column, as JSON has it for
    the others. Also the indexes of the lines whose values still do not fit (none, as the
    types were found in the same lines; kept as dead letters, never dropped)."""
    rows: list[dict[str, Any]] = []
    unfit: list[int] = []
    text = {field.name for field in schema if pa.types.is_string(field.type)}
    # (an int in a float column, as Arrow reads it: pyarrow refuses a Python int past 2**53 there)
    floats = {field.name for field in schema if pa.types.is_floating(field.type)}
    for line in lines:  # (a row holds its own keys only: the others are null, Arrow's to fill)
        value = json.loads(line, parse_float=_Written, parse_int=_Written)
        rows.append(
            {
                k: _as_text(v) if k in text else float(v) if k in floats and isinstance(v, _Written) else _numbers(v)
                for k, v in value.items()
                if k in schema.names
            }
        )
    try:
        return pa.Table.from_pylist(rows, schema=schema), unfit
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        kept = []
        for i, row in enumerate(rows):
            try:
                pa.Table.from_pylist([row], schema=schema)
                kept.append(row)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                unfit.append(i)
        return pa.Table.from_pylist(kept, schema=schema), unfit


def _non_finite(array: pa.Array | pa.ChunkedArray) -> bool:
    """Holds a NaN or an infinity: pyarrow reads NaN and Infinity, which are no JSON, as numbers."""
    if pa.types.is_floating(array.type):
        return bool(pc.any(pc.invert(pc.is_finite(array))).as_py())
    if isinstance(array, pa.ChunkedArray):
        return any(_non_finite(chunk) for chunk in array.chunks)
    if pa.types.is_struct(array.type):
        return any(_non_finite(child) for child in array.flatten())
    if pa.types.is_list(array.type):
        return _non_finite(array.flatten())
    return False


def _utf8(lines: list[bytes]) -> bool:
    """Whether the lines are UTF-8, as JSON is: pyarrow's reader does not check, and took a
    line of other bytes as a valid row (its strings then unreadable, in every output)."""
    try:
        b"".join(lines).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _invalid(line: bytes) -> str | None:
    """Why a line is not one JSON object (as Python's parser reads it), if it is not."""
    try:
        value = json.loads(line, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # (pyarrow made a row of each value)
            return f"text after the JSON value, at character {exc.colno} (a line holds one JSON object)"
        return exc.msg
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting, if MAX_DEPTH is raised
        return str(exc)
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}"
    if b"\\u" in line:
        # A \u escape of half a UTF-16 pair is no character: no text can hold it (pyarrow refuses it).
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            return f"a string holds a lone UTF-16 surrogate, \\u{ord(exc.object[exc.start]):04x}"
    return None


class _Written(str):
    """A JSON number as it is written (a float in between would keep 17 digits of it)."""


def _as_text(value: Any) -> str | None:
    """A top-level JSON value as the text a contract types: a number as written, a nested one
    as JSON (its numbers as written too)."""
    if value is None or isinstance(value, str):
        return None if value is None else str(value)
    return _json_text(value)


def _json_text(value: Any) -> str:
    """An object or array as the JSON text a contract's ``str`` field gets: compact, its keys in
    their order, its characters as they are (as a JSON Lines sink writes it), its numbers as
    written when read so (``_Written``: as a float, 123456789.123456789 lost digits)."""
    if isinstance(value, _Written):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json_text(str(k))}:{_json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _numbers(value: Any) -> Any:
    if isinstance(value, _Written):
        return float(value) if any(c in value for c in ".eE") else int(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: a key given twice is ambiguous (Python's parser
    kept the last value, silently, where pyarrow's refused the chunk)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key!r} is given twice in one object")
            seen.add(key)
    return value


def _chunks(
    fh: io.BufferedReader, chunk_lines: int, chunk_bytes: int, end: int | None = None
) -> Iterator[tuple[list[bytes], list[int], list[Malformed]]]:
    """The file from where ``fh`` is (up to offset ``end``, if given), in chunks: the lines to
    parse, the file line of each, and the lines that are malformed before any parse (too
    long, nested too deep)."""
    readline, limit = fh.readline, MAX_LINE_BYTES
    line_no = 0
    while True:
        lines: list[bytes] = []
        numbers: list[int] = []
        skipped: list[Malformed] = []
        held = 0  # bytes of the chunk's lines (and dead letters' texts)
        while (end is None or fh.tell() < end) and (raw_line := readline(limit)):
            line_no += 1
            # only a line longer than MAX_DEPTH bytes can be too deep or too long
            if len(raw_line) > MAX_DEPTH and (reason := _oversized(raw_line, fh)):
                skipped.append(Malformed(line_no, reason, _text(raw_line)))
                held += len(skipped[-1].text)
                if len(skipped) >= chunk_lines or held >= chunk_bytes:
                    break
            elif raw_line.strip():
                lines.append(raw_line if raw_line.endswith(b"\n") else raw_line + b"\n")
                numbers.append(line_no)
                held += len(raw_line)
                if len(lines) >= chunk_lines or held >= chunk_bytes:
                    break
        if not lines and not skipped:
            return
        yield lines, numbers, skipped


def _in_steps(path: Path, numbers: list[int], step: int | None, read: Callable[[slice, bool], T]) -> Iterator[T]:
    """``read(part, first)`` over a chunk's lines in parts of ``step`` (all at once if None),
    in fewer lines each when a part holds more than MAX_CELLS values (_TooSparse); at least
    once (a chunk of no lines has its malformed ones). Errors name the file and the lines."""
    start, step = 0, step or max(1, len(numbers))
    while True:
        part = slice(start, start + step)
        try:
            found = read(part, start == 0)
        except _TooSparse as wide:
            if step == 1:
                raise DatasetError(f"{path}: line {numbers[start]}: {wide}: too many") from None
            step = min(step - 1, _step(wide.columns))
            continue
        except DatasetError as exc:
            raise DatasetError(f"{path}: lines {numbers[0]}-{numbers[-1]}: {exc}") from None
        yield found
        start += step
        if start >= len(numbers):
            return


def _part_schema(lines: list[bytes], part: slice, _first: bool) -> pa.Schema | None:
    return _chunk_schema(lines[part])


class JsonlStorage(Storage):
    name = "jsonl"
    position_unit = "line"
    extensions = (".jsonl", ".ndjson")

    def read(self, path: Path, *, raw: bool = False, options: Mapping[str, Any] | None = None) -> Iterator[ReadBatch]:
        chunk_lines = int((options or {}).get("chunk_lines", CHUNK_LINES))
        chunk_bytes = int((options or {}).get("chunk_bytes", CHUNK_BYTES))
        # (the slice's, not the pipeline's: the contract's fields whose numbers must stay exact)
        exact = [str(name) for name in (options or {}).get("exact", ())]
        # (and those whose JSON numbers are read as written, as text: its str and int fields)
        written = frozenset(str(name) for name in (options or {}).get("written", ()))
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed in finally, across yields
        except FileNotFoundError:
            raise DatasetError(f"source {path} does not exist") from None
        info = os.fstat(fh.fileno())
        size = info.st_size if stat.S_ISREG(info.st_mode) else 0  # how far the read is, in bytes
        try:
            schema, end = None, None
            if not raw and stat.S_ISREG(info.st_mode):  # (a file read once cannot be read again)
                schema = self._file_schema(path, fh, chunk_lines, chunk_bytes)
                # the rows read up to where the types were found: a line appended since would
                # have its unknown keys dropped
                end = fh.tell()
                fh.seek(0)
            step = None if schema is None else _step(_width(schema))
            for lines, numbers, skipped in _chunks(fh, chunk_lines, chunk_bytes, end):
                numbered = (path, lines, numbers)
                steps = self._parse_in_steps(
                    *numbered, raw=raw, skipped=skipped, exact=exact, written=written, schema=schema, step=step
                )
                for read in steps:
                    yield dataclasses.replace(read, fraction=min(1.0, fh.tell() / size) if size else None)
        finally:
            fh.close()

    def _parse_in_steps(
        self,
        path: Path,
        lines: list[bytes],
        numbers: list[int],
        *,
        raw: bool,
        skipped: list[Malformed],
        exact: list[str],
        written: frozenset[str],
        schema: pa.Schema | None,
        step: int | None,
    ) -> Iterator[ReadBatch]:
        """A chunk's batches: one, or one per ``step`` lines when its columns x lines would pass
        MAX_CELLS (a wide line's keys are every line's columns: Arrow gives each a value)."""

        def parse(part: slice, first: bool) -> ReadBatch:
            return self._parse(
                lines[part], numbers[part], raw, skipped if first else [], exact, written=written, schema=schema
            )

        return _in_steps(path, numbers, step, parse)

    @staticmethod
    def _file_schema(path: Path, fh: io.BufferedReader, chunk_lines: int, chunk_bytes: int) -> pa.Schema | None:
        """Every column of the file's valid lines, in the order first seen, with one type that
        fits all its values (``_merged``; text where none does, and where all are null)."""
        schema = None
        inexact: set[str] = set()
        for lines, numbers, _skipped in _chunks(fh, chunk_lines, chunk_bytes):
            if not lines:
                continue
            inexact |= _inexact_numbers(lines)
            for found in _in_steps(path, numbers, None, functools.partial(_part_schema, lines)):
                if found is not None:
                    schema = _merged(schema, found)
                    if _width(schema) > MAX_COLUMNS:
                        raise DatasetError(
                            f"{path}: lines {numbers[0]}-{numbers[-1]}: its lines have more than "
                            f"{MAX_COLUMNS:,} different keys (columns)"
                        )
        if schema is None:
            return None
        return pa.schema(
            [
                field.with_type(pa.string())
                if pa.types.is_floating(field.type) and field.name in inexact
                else field.with_type(_without_null_types(field.type))
                for field in schema
            ]
        )

    def _parse(
        self,
        lines: list[bytes],
        numbers: list[int],
        raw: bool,
        skipped: list[Malformed],
        exact: list[str],
        *,
        written: frozenset[str] = frozenset(),
        schema: pa.Schema | None = None,
    ) -> ReadBatch:
        if not lines:
            empty = pa.RecordBatch.from_pylist([], schema=schema)
            return ReadBatch(empty, pa.array([], pa.int64()), skipped)
        read = self._parse_lines(lines, numbers, raw, exact, schema, written=written)
        if skipped:
            read = ReadBatch(read.batch, read.positions, sorted([*skipped, *read.malformed], key=lambda m: m.position))
        return read

    def _parse_lines(
        self,
        lines: list[bytes],
        numbers: list[int],
        raw: bool,
        exact: list[str],
        schema: pa.Schema | None = None,
        *,
        written: frozenset[str] = frozenset(),
    ) -> ReadBatch:
        malformed: list[Malformed] = []
        table = _read_json(lines, raw, exact, schema)
        if table is None or not _utf8(lines) or any(_non_finite(column) for column in table.columns):
            good_lines, good_numbers = [], []
            for line, number in zip(lines, numbers, strict=True):
                if (reason := _invalid(line)) is not None:
                    malformed.append(Malformed(number, f"invalid JSON: {reason}", _text(line).rstrip("\n")))
                    continue
                good_lines.append(line)
                good_numbers.append(number)
            lines, numbers = good_lines, good_numbers
            if not lines:
                return ReadBatch(pa.RecordBatch.from_pylist([], schema=schema), pa.array([], pa.int64()), malformed)
            table = _read_json(lines, raw, exact, schema)
            if table is None and schema is not None:
                table, unfit = _as_typed(lines, schema)
                for i in unfit:  # (cannot be: the types were found in these lines)
                    why = "a value that does not fit the column types of the file's other lines"
                    malformed.append(Malformed(numbers[i], why, _text(lines[i]).rstrip("\n")))
                dropped = set(unfit)
                numbers = [n for i, n in enumerate(numbers) if i not in dropped]
            elif table is None:
                # Valid JSON whose types conflict between lines, or a number too long to be read
                # exactly: Python for this chunk, each number kept as it is written.
                rows = [
                    {k: _as_text(v) for k, v in json.loads(x, parse_float=_Written, parse_int=_Written).items()}
                    for x in lines
                ]
                names = dict.fromkeys(name for row in rows for name in row)  # every row's keys, not the first's
                _check_size(len(names), len(rows))
                table = pa.Table.from_pylist(rows, schema=pa.schema([(name, pa.string()) for name in names]))
        if table.num_rows:
            batch = table.combine_chunks().to_batches()[0]
        else:
            batch = pa.RecordBatch.from_pylist([], schema=schema)
        if raw:
            batch = _stringify(_as_written(batch, lines, written))
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

        frame = pl.DataFrame(pl.from_arrow(_json_types(_utc_timestamps(batch))))
        frame.write_ndjson(self._fh)

    def _close(self) -> None:
        self._fh.close()


def _json_types(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Columns polars cannot write as JSON, as text (it panicked on them, a Rust panic no
    ``except Exception`` catches): a decimal256 as its exact digits, bytes as base64."""
    for i, field in enumerate(batch.schema):
        kind = field.type
        if pa.types.is_decimal256(kind):
            batch = batch.set_column(i, field.with_type(pa.string()), batch.column(i).cast(pa.string()))
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
            values = [None if v is None else base64.b64encode(v).decode() for v in batch.column(i).to_pylist()]
            batch = batch.set_column(i, field.with_type(pa.string()), pa.array(values, pa.string()))
    return batch


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
