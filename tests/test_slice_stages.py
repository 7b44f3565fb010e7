"""A slice's stages on threads of their own: the contract's checks one batch ahead of the
steps (runink.core.readahead.ahead), and a writer thread for each kind of rows (valid rows,
dead letters). Order is kept, a failure of any stage fails the slice, nothing is left running."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from runink.core.dataplane.slice import Counters, SinkSlot, SinkWriters
from runink.core.readahead import ahead


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_ahead_keeps_the_order_and_produces_off_the_callers_thread() -> None:
    produced_on: set[str] = set()

    def items() -> Iterator[int]:
        for i in range(1000):
            produced_on.add(threading.current_thread().name)
            yield i

    assert list(ahead(items(), "runink-test-ahead")) == list(range(1000))
    assert produced_on == {"runink-test-ahead"} and not _threads("runink-test-ahead")


def test_ahead_raises_the_producers_error_where_its_item_would_have_been() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("batch 3 is bad")

    got: list[int] = []

    def take() -> None:
        for item in ahead(items(), "runink-test-ahead"):
            got.append(item)

    with pytest.raises(ValueError, match="batch 3 is bad"):
        take()
    assert got == [1, 2] and not _threads("runink-test-ahead")


def test_closing_ahead_early_stops_its_producer() -> None:
    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(10**9):
            made.append(i)
            yield i

    stream = ahead(items(), "runink-test-ahead")
    assert next(stream) == 0
    stream.close()
    assert not _threads("runink-test-ahead")
    assert len(made) <= 3  # the one taken, the one in the slot, the one being put


class _Writer:
    def __init__(self, log: list[tuple[str, int]], name: str, fail_at: int | None) -> None:
        self.log, self.name, self.fail_at = log, name, fail_at

    def write(self, batch: pa.RecordBatch) -> None:
        if self.fail_at is not None and batch.column(0)[0].as_py() == self.fail_at:
            raise OSError(28, "No space left on device")
        self.log.append((self.name, batch.column(0)[0].as_py()))


class _Driver:
    def __init__(self, log: list[tuple[str, int]], name: str, fail_at: int | None = None) -> None:
        self.writer_made = _Writer(log, name, fail_at)

    def writer(self, path: Path, schema: pa.Schema, *, options: Any = None) -> _Writer:
        return self.writer_made


def _slots(log: list[tuple[str, int]], fail_invalid_at: int | None = None) -> list[SinkSlot]:
    return [
        SinkSlot("x", Path("/nowhere/valid"), "valid", {}, _Driver(log, "valid")),  # type: ignore[arg-type]
        SinkSlot("x", Path("/nowhere/dlq"), "invalid", {}, _Driver(log, "dlq", fail_invalid_at)),  # type: ignore[arg-type]
    ]


def _batch(i: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"n": [i]})


def test_each_kind_of_rows_is_written_in_order_on_its_own_thread() -> None:
    log: list[tuple[str, int]] = []
    counters = Counters()
    writers = SinkWriters(_slots(log), counters)
    assert sorted(t.thread.name for t in writers.threads.values()) == ["runink-sink-invalid", "runink-sink-valid"]
    for i in range(200):
        writers.submit("valid", _batch(i))
        writers.submit("invalid", _batch(i))
    writers.finish()
    assert [n for kind, n in log if kind == "valid"] == list(range(200))
    assert [n for kind, n in log if kind == "dlq"] == list(range(200))
    assert counters.sinks == {"/nowhere/valid": 200, "/nowhere/dlq": 200}
    assert not _threads("runink-sink-valid") and not _threads("runink-sink-invalid")


def test_a_dead_letter_sinks_error_fails_the_next_submit_of_valid_rows_and_the_finish() -> None:
    log: list[tuple[str, int]] = []
    writers = SinkWriters(_slots(log, fail_invalid_at=3), Counters())
    for i in range(4):
        writers.submit("invalid", _batch(i))
    writers.threads["invalid"].close()  # (its queue drained: the error is known)
    with pytest.raises(Exception, match="No space left on device"):
        writers.submit("valid", _batch(0))
    with pytest.raises(Exception, match="No space left on device"):
        writers.finish()
    assert [n for kind, n in log if kind == "dlq"] == [0, 1, 2]
