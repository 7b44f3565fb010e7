"""A source without a contract: later batches held to the first rows' columns and types
(runink.core.dataplane.conform); the run through `runink run` is in test_pipeline_run.py."""

from __future__ import annotations

import pyarrow as pa

from runink.core.dataplane.conform import MAX_SHOWN, conform

FIRST = pa.schema([("id", pa.int64()), ("day", pa.timestamp("s")), ("note", pa.string())])


def test_a_batch_of_the_first_schema_passes_as_it_is() -> None:
    batch = pa.RecordBatch.from_pydict({"id": [1], "day": pa.array([0], pa.timestamp("s")), "note": ["a"]})
    fitted = conform(batch, FIRST)
    assert fitted.batch is batch and fitted.kept is None and fitted.invalid is None


def test_values_cast_to_the_first_types_and_the_ones_that_do_not_are_dead_letters() -> None:
    ids = [str(i) for i in range(1000)]
    for bad in (3, 500, 999):
        ids[bad] = f"bad{bad}"
    batch = pa.RecordBatch.from_pydict({"id": ids, "day": ["2026-01-01"] * 999 + ["never"], "note": ["n"] * 1000})
    fitted = conform(batch, FIRST)
    assert fitted.batch.schema == FIRST and fitted.batch.num_rows == 997
    assert fitted.batch.column("id").to_pylist()[:4] == [0, 1, 2, 4]
    assert fitted.index is not None and fitted.index.to_pylist() == [3, 500, 999]
    assert fitted.kept is not None and fitted.kept.to_pylist().count(False) == 3
    assert fitted.invalid is not None and fitted.invalid.column("id").to_pylist() == ["bad3", "bad500", "bad999"]
    assert fitted.reasons is not None
    reasons = fitted.reasons.to_pylist()
    assert reasons[0].startswith("column 'id': 'bad3' is not int64, the type its first rows gave it")
    assert reasons[2].startswith("column 'id': 'bad999'")  # (its first failing column's reason)


def test_a_missing_column_is_null_and_one_the_first_rows_lacked_fails_only_where_it_has_a_value() -> None:
    batch = pa.RecordBatch.from_pydict({"id": [1, 2], "extra": [None, "x" * 200]})
    fitted = conform(batch, FIRST)
    assert fitted.batch.to_pylist() == [{"id": 1, "day": None, "note": None}]
    assert fitted.reasons is not None
    (reason,) = fitted.reasons.to_pylist()
    assert reason.startswith("column 'extra' is not one of the source's columns (its first rows': id, day, note;")


def test_a_type_with_no_cast_at_all_fails_every_value_and_a_long_value_is_cut_in_the_reason() -> None:
    schema = pa.schema([("payload", pa.struct([("k", pa.int64())]))])
    batch = pa.RecordBatch.from_pydict({"payload": ["{" + "x" * 500 + "}", None]})
    fitted = conform(batch, schema)
    assert fitted.index is not None and fitted.index.to_pylist() == [0]  # (the null one fits)
    assert fitted.reasons is not None
    (reason,) = fitted.reasons.to_pylist()
    shown = reason.split(": ", 1)[1].split(" is not ")[0]
    assert len(shown) == MAX_SHOWN and shown.endswith("...")
