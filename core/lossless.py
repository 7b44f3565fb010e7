"""Arrow casts that change no value: Arrow's own cast (safe or not) rounds 1.239 into a
decimal(10,2), reads "007" as 7, makes 1e300 a float32 inf and drops a struct's fields the
type has not, all without a word. Each cast here is cast back and compared."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def same_values(before: pa.Array, after: pa.Array) -> bool:
    """Equal value for value, nulls where the other has them, NaN for NaN (``equals`` takes no
    NaN for equal)."""
    if not pa.types.is_floating(before.type):
        return bool(before.equals(after))
    nulls_kept = pc.all(pc.equal(pc.is_null(before), pc.is_null(after))).as_py() is not False
    equal = pc.or_(pc.equal(before, after), pc.and_(pc.is_nan(before), pc.is_nan(after)))
    return nulls_kept and pc.all(pc.fill_null(equal, True)).as_py() is not False


def untyped(kind: pa.DataType) -> bool:
    """Whether ``kind`` is Arrow's null type or holds one (``list<null>``, ``struct<a: null>``):
    the type of values all null so far, which later values may type."""
    if pa.types.is_null(kind):
        return True
    return any(untyped(kind.field(i).type) for i in range(kind.num_fields))


def cast_if_lossless(array: pa.Array, target: pa.DataType) -> pa.Array | None:
    """``array`` as ``target`` if every value stays as it is, else None."""
    if array.type == target or pa.types.is_null(array.type):
        return array.cast(target)
    try:
        cast = array.cast(target)
        if untyped(array.type):  # (nothing casts back to a null part: compared as Python values)
            return cast if cast.to_pylist() == array.to_pylist() else None
        back = cast.cast(array.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    return cast if same_values(array, back) else None


def cast_losing_nothing(batch: pa.RecordBatch, expected: pa.Schema) -> pa.RecordBatch:
    """``batch`` as ``expected``; ValueError naming the first column whose values would change."""
    if batch.schema.names != expected.names:
        raise ValueError("the columns differ")
    columns = []
    for column, wanted in zip(batch.columns, expected, strict=True):
        cast = cast_if_lossless(column, wanted.type)
        if cast is None:
            raise ValueError(f"column {wanted.name!r}: its {column.type} values would change as {wanted.type}")
        columns.append(cast)
    return pa.RecordBatch.from_arrays(columns, schema=expected)
