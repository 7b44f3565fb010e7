"""Steps: user functions over record batches, adapted to one calling convention.

A step is ``module:function``. It receives and returns:

* a ``pyarrow.RecordBatch`` (the default), or
* a ``polars.DataFrame`` when its first parameter is annotated as one (converted once per
  batch: zero-copy for numbers, strings are copied), or
* one record (a ``dict``) when decorated with ``@record_step``: return a dict, or None to
  drop the record. Simple, but a Python call per record: prefer batches for volume.

A step may also return a ``pyarrow.Table``. String columns come back as ``string`` (polars
hands out ``large_string``), so every step sees the same types.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pyarrow as pa

StepFunction = Callable[[pa.RecordBatch], pa.RecordBatch]


def record_step(function: Callable[[dict[str, Any]], dict[str, Any] | None]) -> Callable[..., Any]:
    """Mark ``function`` as a per-record step: ``dict -> dict | None``."""
    function.__runink_step_mode__ = "record"  # type: ignore[attr-defined]
    return function


def import_reference(ref: str) -> Any:
    module_name, _, attribute = ref.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ImportError(f"{ref}: module {module_name!r} has no attribute {attribute!r}") from None


def step_mode(function: Callable[..., Any]) -> str:
    mode = getattr(function, "__runink_step_mode__", None)
    if mode:
        return str(mode)
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return "batch"
    if parameters:
        annotation = parameters[0].annotation
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        if "DataFrame" in str(text):
            return "polars"
    return "batch"


def normalise(batch: pa.RecordBatch) -> pa.RecordBatch:
    """large_string -> string, large_binary -> binary: one type per kind between steps."""
    fields = []
    changed = False
    for f in batch.schema:
        if pa.types.is_large_string(f.type):
            fields.append(f.with_type(pa.string()))
            changed = True
        elif pa.types.is_large_binary(f.type):
            fields.append(f.with_type(pa.binary()))
            changed = True
        else:
            fields.append(f)
    return batch.cast(pa.schema(fields)) if changed else batch


def _to_batch(result: Any, ref: str) -> pa.RecordBatch:
    if isinstance(result, pa.RecordBatch):
        return normalise(result)
    if isinstance(result, pa.Table):
        combined = result.combine_chunks()
        batches = combined.to_batches()
        return normalise(batches[0] if batches else pa.RecordBatch.from_pylist([], schema=combined.schema))
    to_arrow = getattr(result, "to_arrow", None)  # polars.DataFrame
    if callable(to_arrow):
        return _to_batch(to_arrow(), ref)
    raise TypeError(f"step {ref} returned {type(result).__name__}; expected a RecordBatch, Table or polars DataFrame")


def _string_views(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with its string columns as string views: polars keeps strings as views, so it
    takes these as they are, where it would build views from plain strings itself (about half
    the cost of a batch's way into polars, measured on the bench's orders)."""
    if not any(pa.types.is_string(t) for t in batch.schema.types):
        return batch
    columns = [c.cast(pa.string_view()) if pa.types.is_string(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def records_batch(rows: list[dict[str, Any]], given: pa.Schema) -> pa.RecordBatch:
    """A record step's rows as a batch: a column for every key of any row (in the order first
    seen; a row without it holds null), typed by its values; a column named as one of the
    step's input columns takes the input's type when its values are of the same kind and keep
    every value in it (a decimal(3,2) of this batch as the input's decimal(12,2); all null as
    the input's type). ``from_pylist`` took the first row's keys only, dropping a key the step
    added to later rows, and typed each batch on its own, which no sink could take; forcing the
    input's type on any value made 1.5 an int 1 and an epoch-seconds int a 1970 timestamp."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    arrays = []
    for name in names:
        array = pa.array([row.get(name) for row in rows])
        index = given.get_field_index(name)
        if index >= 0 and array.type != (target := given.field(index).type):
            array = _as_input_type(array, target)
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _kind(kind: pa.DataType) -> str:
    """A type's kind, for a record step's values: those of one kind may take the input's type."""
    for test, name in (
        (pa.types.is_integer, "int"),
        (pa.types.is_floating, "float"),
        (pa.types.is_decimal, "decimal"),
        (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t), "text"),
        (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), "binary"),
        (pa.types.is_timestamp, "timestamp"),
        (pa.types.is_date, "date"),
    ):
        if test(kind):
            return name
    return str(kind)  # (nested and the rest: only the very same type)


def _as_input_type(array: pa.Array, target: pa.DataType) -> pa.Array:
    if _kind(array.type) != _kind(target) and not pa.types.is_null(array.type):
        return array  # (the step changed the value's kind: typed as it comes)
    from runink.core.lossless import cast_if_lossless

    cast = cast_if_lossless(array, target)
    return array if cast is None else cast


def _in_microseconds(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Nanosecond timestamps, durations and times as microseconds for a record step, whose
    values are Python's (which hold microseconds: ``to_pylist`` failed on them without pandas);
    ValueError naming the column when that would drop nanoseconds."""
    for index, field in enumerate(batch.schema):
        kind = field.type
        if getattr(kind, "unit", None) != "ns" or not (
            pa.types.is_timestamp(kind) or pa.types.is_duration(kind) or pa.types.is_time64(kind)
        ):
            continue
        micro = (
            pa.timestamp("us", kind.tz)
            if pa.types.is_timestamp(kind)
            else pa.duration("us")
            if pa.types.is_duration(kind)
            else pa.time64("us")
        )
        try:
            column = batch.column(index).cast(micro)  # (safe: refused where nanoseconds would go)
        except pa.ArrowInvalid:
            raise ValueError(
                f"column {field.name!r} holds nanoseconds, which a record step's Python values cannot "
                "(microseconds): use a batch or polars step for it"
            ) from None
        batch = batch.set_column(index, pa.field(field.name, micro), column)
    return batch


def adapt(ref: str, function: Callable[..., Any]) -> StepFunction:
    """The step as a RecordBatch -> RecordBatch function."""
    mode = step_mode(function)
    if mode == "record":

        def run_records(batch: pa.RecordBatch) -> pa.RecordBatch:
            rows = [out for row in _in_microseconds(batch).to_pylist() if (out := function(row)) is not None]
            if not rows:
                return pa.RecordBatch.from_pylist([], schema=batch.schema)
            return normalise(records_batch(rows, batch.schema))

        return run_records
    if mode == "polars":
        import polars as pl  # imported in the slice, only when a step uses it

        def run_polars(batch: pa.RecordBatch) -> pa.RecordBatch:
            return _to_batch(function(pl.from_arrow(_string_views(batch), rechunk=False)), ref)

        return run_polars

    def run_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
        return _to_batch(function(batch), ref)

    return run_batch
