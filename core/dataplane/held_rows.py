"""Rows held back until every column has a type.

A step's new column that is null in its first rows (a record step's ``"note": None``, an
empty list, a struct whose field is None) has Arrow's null type there, or holds it. A sink, or
a command step's input file, opened with that type refused the later rows whose values gave
the column its real type, and the run failed. So the first rows are held until every column
is typed, their names differ, or HOLD_BYTES of them are held; then they are written, the
first batch cast to the types found (a null part casts to any type without loss).
"""

from __future__ import annotations

import pyarrow as pa

from runink.core.lossless import cast_losing_nothing, untyped

#: buffers of rows held at most (counted whole: a small slice of a large batch holds it all)
HOLD_BYTES = 64 << 20


class HeldRows:
    """The first batches of one output, until ``add`` says they may be written."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self._bytes = 0
        self._names: list[str] | None = None
        self._untyped: set[str] = set()  # columns with no type yet
        self._types: dict[str, pa.DataType] = {}  # ...and those typed by a later batch
        self._mixed = False  # a batch named other columns (the write says how they differ)

    def add(self, batch: pa.RecordBatch) -> bool:
        """Hold ``batch``; whether the rows held may be written now. Each call costs the
        batch's own columns only (the held ones are not looked at again)."""
        self.batches.append(batch)
        self._bytes += batch.get_total_buffer_size()
        if self._names is None:
            self._names = batch.schema.names
            self._untyped = {f.name for f in batch.schema if untyped(f.type)}
        elif batch.schema.names != self._names:
            self._mixed = True
        else:
            for name in list(self._untyped):
                kind = batch.schema.field(name).type
                if not untyped(kind):
                    self._types[name] = kind
                    self._untyped.discard(name)
        return self._mixed or not self._untyped or self._bytes >= HOLD_BYTES

    def release(self) -> list[pa.RecordBatch]:
        """The rows held, in order, the first batch cast to the types later batches gave its
        untyped columns; none are held after."""
        batches, types = self.batches, self._types
        self._reset()
        if not batches or not types:
            return batches
        first = batches[0]
        schema = pa.schema(
            [f.with_type(types[f.name]) if f.name in types else f for f in first.schema], metadata=first.schema.metadata
        )
        return [cast_losing_nothing(first, schema), *batches[1:]]
