"""A step's batch on its way in and out of polars (core/steps.py): every column and value
arrives as Arrow had it, and the step's output leaves in the types the next step and the
sinks expect (string, not large_string or string views)."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pyarrow as pa

from runink.core.steps import adapt

BATCH = pa.RecordBatch.from_pydict(
    {
        "short": ["a", None, "", "ÄÖü"],
        "long": ["a string well past twelve bytes", None, "x" * 100, "日本語のテキストは長い"],
        "number": [1.5, None, -0.0, 1e300],
        "count": pa.array([1, 2, None, 4], pa.int64()),
        "flag": [True, None, False, True],
        "at": pa.array([dt.datetime(2026, 1, 1), None, dt.datetime(1970, 1, 1), dt.datetime(2262, 4, 11)]),
        "words": pa.array([["a", "b"], None, [], ["ü"]], pa.list_(pa.string())),
        "raw": pa.array([b"\x00\xff", None, b"", b"x"], pa.binary()),
    }
)


def test_a_polars_step_sees_every_value_and_returns_plain_types() -> None:
    seen: list[pl.DataFrame] = []

    def identity(frame: pl.DataFrame) -> pl.DataFrame:
        seen.append(frame)
        return frame

    out = adapt("steps:identity", identity)(BATCH)
    assert seen[0].to_dicts() == BATCH.to_pylist()
    assert out.to_pylist() == BATCH.to_pylist()
    assert out.schema.field("short").type == pa.string() and out.schema.field("long").type == pa.string()


def test_a_polars_steps_string_work_is_right_on_long_and_missing_values() -> None:
    def upper(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.select(pl.col("long").str.to_uppercase(), pl.col("short").str.len_chars().alias("n"))

    out = adapt("steps:upper", upper)(BATCH)
    assert out.to_pydict() == {
        "long": ["A STRING WELL PAST TWELVE BYTES", None, "X" * 100, "日本語のテキストは長い"],
        "n": [1, None, 0, 3],
    }
    assert out.schema.field("long").type == pa.string()


def test_a_record_steps_output_keeps_every_key_and_its_input_types() -> None:
    """from_pylist took the first row's keys only (a key the step added to later rows was
    dropped) and typed each batch on its own: a decimal(12,2) came out decimal(3,2) in one batch
    and decimal(9,2) in the next, and a column null in the first batch as null: the sink failed
    (a review's runs)."""
    from decimal import Decimal

    from runink.core.steps import record_step

    @record_step
    def flag(row: dict) -> dict:
        return {**row, "big": True} if row["amount"] > Decimal(100) else row

    schema = pa.schema([("amount", pa.decimal128(12, 2)), ("note", pa.string())])
    step = adapt("steps:flag", flag)
    small = step(pa.RecordBatch.from_pylist([{"amount": Decimal("1.50"), "note": None}], schema=schema))
    large = step(
        pa.RecordBatch.from_pylist(
            [{"amount": Decimal("2.00"), "note": None}, {"amount": Decimal("1234567.89"), "note": "x"}], schema=schema
        )
    )
    assert small.schema.field("amount").type == large.schema.field("amount").type == pa.decimal128(12, 2)
    assert small.schema.field("note").type == pa.string()
    assert large.to_pylist() == [
        {"amount": Decimal("2.00"), "note": None, "big": None},
        {"amount": Decimal("1234567.89"), "note": "x", "big": True},
    ]

    @record_step
    def retyped(row: dict) -> dict:
        return {**row, "amount": str(row["amount"])}  # (a new kind of value: typed as it comes)

    out = adapt("steps:retyped", retyped)(pa.RecordBatch.from_pylist([{"amount": Decimal("1.50")}], schema=schema))
    assert out.schema.field("amount").type == pa.string() and out.column("amount").to_pylist() == ["1.50"]


def test_a_record_step_value_of_another_kind_keeps_its_own_type() -> None:
    """The input's type was forced on whatever the step returned: 1.5 became an int 1, a
    datetime in a date column lost its time, an epoch-seconds int became a 1970 timestamp, a
    key added inside a struct was dropped (a review's runs)."""
    from runink.core.steps import record_step

    @record_step
    def change(row: dict) -> dict:
        return {
            "qty": row["qty"] / 2,
            "day": dt.datetime(2026, 1, 2, 3, 4, 5),
            "at": 1_700_000_000,
            "place": {**row["place"], "geo": "x"},
        }

    schema = pa.schema(
        [
            ("qty", pa.int64()),
            ("day", pa.date32()),
            ("at", pa.timestamp("us")),
            ("place", pa.struct([("city", pa.string())])),
        ]
    )
    batch = pa.RecordBatch.from_pylist(
        [{"qty": 3, "day": dt.date(2026, 1, 1), "at": dt.datetime(2026, 1, 1), "place": {"city": "a"}}], schema=schema
    )
    out = adapt("steps:change", change)(batch).to_pylist()
    assert out == [
        {"qty": 1.5, "day": dt.datetime(2026, 1, 2, 3, 4, 5), "at": 1_700_000_000, "place": {"city": "a", "geo": "x"}}
    ]


def test_a_sink_refuses_a_later_batch_whose_values_its_types_would_change() -> None:
    """Arrow's cast to the sink's types rounded 1.239 into a decimal(10,2), read "007" as 7,
    made 1e300 a float32 inf and dropped a struct's new field, all without a word."""
    import pytest

    from runink.core.lossless import cast_losing_nothing

    cases = [
        (pa.array([1.25, 1.239]), pa.decimal128(10, 2)),
        (pa.array(["7", "007"]), pa.int64()),
        (pa.array([1.5, 1e300]), pa.float32()),
        (pa.array([{"a": 1, "extra": "IMPORTANT"}]), pa.struct([("a", pa.int64())])),
    ]
    for values, kind in cases:
        with pytest.raises(ValueError, match=r"column 'c': its .* values would change"):
            cast_losing_nothing(pa.RecordBatch.from_arrays([values], names=["c"]), pa.schema([("c", kind)]))
    fine = [
        (pa.array([1.25, None, float("nan")]), pa.float32()),
        (pa.array([1, 2]), pa.float64()),
        (pa.array([None, None]), pa.string()),
        (pa.array(["a", "b"]).dictionary_encode(), pa.string()),
    ]
    for values, kind in fine:
        batch = cast_losing_nothing(pa.RecordBatch.from_arrays([values], names=["c"]), pa.schema([("c", kind)]))
        assert batch.schema.field("c").type == kind


def test_a_record_step_takes_nanosecond_columns_that_hold_microseconds_and_names_one_that_does_not() -> None:
    """to_pylist failed on any nanosecond timestamp without pandas ("Install pandas")."""
    import pytest

    from runink.core.steps import record_step

    @record_step
    def keep(row: dict) -> dict:
        return row

    whole = pa.RecordBatch.from_pydict({"ts": pa.array([1_700_000_000_000_000_000], pa.timestamp("ns"))})
    out = adapt("steps:keep", keep)(whole)
    assert out.schema.field("ts").type == pa.timestamp("ns") and out.column("ts").equals(whole.column("ts"))
    fine = pa.RecordBatch.from_pydict({"ts": pa.array([1_700_000_000_000_000_123], pa.timestamp("ns"))})
    with pytest.raises(ValueError, match="column 'ts' holds nanoseconds"):
        adapt("steps:keep", keep)(fine)


def test_rows_are_held_until_every_column_has_a_type_and_no_longer() -> None:
    """(core/dataplane/held_rows.py) A column null, an empty list or a struct of None so far
    waits for a value to type it; other columns' values still cast only without loss."""
    import pytest

    from runink.core.dataplane.held_rows import HeldRows
    from runink.core.lossless import cast_if_lossless, cast_losing_nothing

    held = HeldRows()
    assert not held.add(pa.RecordBatch.from_pydict({"id": [1], "tags": pa.array([[]], pa.list_(pa.null()))}))
    assert not held.add(pa.RecordBatch.from_pydict({"id": [2], "tags": pa.array([None], pa.list_(pa.null()))}))
    assert held.add(pa.RecordBatch.from_pydict({"id": [3], "tags": [[3]]}))
    first, second, third = held.release()
    assert third.column("tags").to_pylist() == [[3]]
    assert first.schema.field("tags").type == pa.list_(pa.int64()) and first.column("tags").to_pylist() == [[]]
    assert second.schema.field("tags").type == pa.list_(pa.null())  # (the sink casts it, as any later batch)
    assert held.release() == []  # (none held after)
    assert held.add(pa.RecordBatch.from_pydict({"x": [1]}))  # typed at once
    held.release()
    assert not held.add(pa.RecordBatch.from_pydict({"x": [None]}))
    assert held.add(pa.RecordBatch.from_pydict({"y": [1]}))  # other names: the write says how they differ
    # a struct with a null part casts where its other parts keep their values, not where they change
    loose = pa.array([{"a": None, "b": "007"}], pa.struct([("a", pa.null()), ("b", pa.string())]))
    assert cast_if_lossless(loose, pa.struct([("a", pa.int64()), ("b", pa.string())])) is not None
    assert cast_if_lossless(loose, pa.struct([("a", pa.int64()), ("b", pa.int64())])) is None
    wanted = pa.schema([("s", pa.struct([("a", pa.int64()), ("b", pa.int64())]))])
    with pytest.raises(ValueError, match="would change"):
        cast_losing_nothing(pa.RecordBatch.from_arrays([loose], names=["s"]), wanted)
