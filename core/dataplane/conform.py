"""A source without a contract: its later batches held to the columns its first rows gave it.

Without a contract a reader infers the types (CSV from its first block, JSON Lines chunk by
chunk), so a later batch may differ: a column of numbers meets ``x``, a JSON field appears
that the first lines did not have. Its sinks were opened with the first schema (a Parquet file
cannot change its columns), and a JSON Lines sink would write one field as a number on some
lines and as text on others. So the first schema stays; a later batch is cast to it, and a row
that cannot be (a value of another type, a value in a column the first rows did not have) is
a dead letter naming the column and its value, with its position: nothing lost, nothing mixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

MAX_SHOWN = 60  # characters of a value quoted in a reason
MAX_NAMED = 10  # of the first rows' columns, named in a reason


@dataclass(frozen=True)
class Conformed:
    """A batch held to a schema: ``batch`` (its rows that fit, ``kept`` of the batch read when
    not all), and the others as ``invalid`` (as read), with ``reasons`` (one each) and their
    ``index`` in the batch read."""

    batch: pa.RecordBatch
    kept: pa.Array | None = None
    invalid: pa.RecordBatch | None = None
    reasons: pa.Array | None = None
    index: pa.Array | None = None


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> Conformed:
    """``batch`` with ``schema``'s columns and types (a column it lacks is null)."""
    if batch.schema == schema:
        return Conformed(batch)
    reasons: dict[int, str] = {}  # row -> why it does not fit (its first column's reason)
    columns = []
    for field in schema:
        index = _first_index(batch.schema, field.name)
        if index < 0:
            columns.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(index)
        if column.type == field.type:
            columns.append(column)
            continue
        failing = _failing(column, field.type)
        for row in failing:
            reasons.setdefault(
                row,
                f"column {field.name!r}: {_shown(column[row])} is not {field.type}, the type its first rows gave it "
                "(a contract on the source would type it)",
            )
        if failing:  # (null there: those rows are dead letters, the rest is cast)
            column = pc.if_else(pa.array(_marks(batch.num_rows, failing)), pa.scalar(None, column.type), column)
        try:
            columns.append(column.cast(field.type))
        except pa.ArrowNotImplementedError:  # (no such cast: every value there failed above)
            columns.append(pa.nulls(batch.num_rows, field.type))
    known = set(schema.names)
    named = ", ".join(schema.names[:MAX_NAMED]) + (", ..." if len(schema.names) > MAX_NAMED else "")
    for index, field in enumerate(batch.schema):
        if field.name in known:
            continue
        for row in pc.indices_nonzero(pc.is_valid(batch.column(index))).to_pylist():
            reasons.setdefault(
                row,
                f"column {field.name!r} is not one of the source's columns (its first rows': {named}; "
                "a contract on the source would name it)",
            )
    fitted = pa.RecordBatch.from_arrays(columns, schema=schema)
    if not reasons:
        return Conformed(fitted)
    bad = sorted(reasons)
    good = pa.array([not marked for marked in _marks(batch.num_rows, bad)])
    return Conformed(
        fitted.filter(good),
        good,
        batch.take(pa.array(bad, pa.int64())),
        pa.array([reasons[row] for row in bad], pa.string()),
        pa.array(bad, pa.int64()),
    )


def _first_index(schema: pa.Schema, name: str) -> int:
    found = schema.get_all_field_indices(name)
    return found[0] if found else -1


def _failing(column: pa.Array, kind: pa.DataType) -> list[int]:
    """The rows of ``column`` that do not cast to ``kind`` (found by halves: a clean half costs
    one cast, so a batch with a few bad values costs a few dozen)."""
    try:
        column.cast(kind)
        return []
    except pa.ArrowNotImplementedError:  # no such cast at all: every value that is there fails
        return [int(row) for row in pc.indices_nonzero(pc.is_valid(column)).to_pylist()]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    if len(column) == 1:
        return [0]
    middle = len(column) // 2
    low, high = column.slice(0, middle), column.slice(middle)
    return _failing(low, kind) + [middle + row for row in _failing(high, kind)]


def _marks(length: int, rows: list[int]) -> list[bool]:
    marks = [False] * length
    for row in rows:
        marks[row] = True
    return marks


def _shown(value: pa.Scalar) -> str:
    text = repr(value.as_py())
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
