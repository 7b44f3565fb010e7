"""Storage drivers: streaming reads with positions and malformed records; atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from runink.core.datasets import DatasetError, resolve_dataset
from runink.core.drivers import load_driver
from runink.core.interfaces import Storage
from runink.plugins.storage.csv import physical_lines

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])
BATCH = pa.RecordBatch.from_pydict({"id": [1, 2], "name": ["a", "b"]}, schema=SCHEMA)


def test_resolve_dataset(tmp_path: Path) -> None:
    assert resolve_dataset("csv://data/x.csv", tmp_path).path == tmp_path / "data" / "x.csv"
    assert resolve_dataset("out/x.parquet", tmp_path).format == "parquet"
    assert resolve_dataset("file:///abs/x.ndjson", tmp_path).path == Path("/abs/x.ndjson")
    assert resolve_dataset("jsonl:///abs/x.txt", tmp_path).format == "jsonl"
    with pytest.raises(DatasetError, match="cannot tell the format"):
        resolve_dataset("x.txt", tmp_path)


@pytest.mark.parametrize(
    "uri", ["s3://home//other/x.parquet", "s3://home/../other/x.parquet", "s3://home/a/../../other/x.parquet",
            "s3://home/./x.parquet", "s3://home/a//x.parquet"],
)  # fmt: skip
def test_an_object_store_key_stays_in_its_bucket(tmp_path: Path, uri: str) -> None:
    """A leading / replaced the bucket (s3://home//other/x wrote to bucket other), .. climbed
    out of it, and the write-conflict check saw two names for one object."""
    with pytest.raises(DatasetError, match=r"must not start with /, hold // or name \. or \.\."):
        resolve_dataset(uri, tmp_path)
    ref = resolve_dataset("s3://home/a/b..c/x.parquet", tmp_path)
    assert ref.remote and str(ref.path) == "home/a/b..c/x.parquet"


def test_physical_lines_skip_malformed() -> None:
    # records 1..4 with lines 3 and 5 malformed: header 1, r1=2, bad 3, r2=4, bad 5, r3=6, r4=7
    assert physical_lines(np.arange(1, 5), [3, 5]).tolist() == [2, 4, 6, 7]
    assert physical_lines(np.arange(1, 3), []).tolist() == [2, 3]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_round_trip_and_atomic_commit(tmp_path: Path, fmt: str) -> None:
    storage = load_driver(Storage, fmt)
    path = tmp_path / "out" / f"data.{fmt}"
    writer = storage.writer(path, SCHEMA)
    writer.write(BATCH)
    assert not path.exists(), "nothing is visible before commit"
    writer.commit()
    rows = [row for read in storage.read(path) for row in read.batch.to_pylist()]
    assert [(int(r["id"]), r["name"]) for r in rows] == [(1, "a"), (2, "b")]
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_abort_keeps_the_previous_output(tmp_path: Path, fmt: str) -> None:
    storage = load_driver(Storage, fmt)
    path = tmp_path / f"data.{fmt}"
    path.write_text("previous")
    writer = storage.writer(path, SCHEMA)
    writer.write(BATCH)
    writer.abort()
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_csv_raw_read_reports_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n3\n4,5\n6,7,8\n9,10\n")
    reads = list(load_driver(Storage, "csv").read(path, raw=True))
    rows = [r for read in reads for r in read.batch.to_pylist()]
    assert rows == [{"a": "1", "b": "2"}, {"a": "4", "b": "5"}, {"a": "9", "b": "10"}]
    assert [p for read in reads for p in read.positions.to_pylist()] == [2, 4, 6]
    bad = [(m.position, m.text) for read in reads for m in read.malformed]
    assert bad == [(3, "3"), (5, "6,7,8")]


def test_csv_errors(tmp_path: Path) -> None:
    storage = load_driver(Storage, "csv")
    with pytest.raises(DatasetError, match="does not exist"):
        list(storage.read(tmp_path / "none.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="empty file"):
        list(storage.read(tmp_path / "empty.csv"))
    (tmp_path / "dup.csv").write_text("a,a\n1,2\n")
    with pytest.raises(DatasetError, match="duplicate column names"):
        list(storage.read(tmp_path / "dup.csv"))


def test_jsonl_reports_bad_lines_and_keeps_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{oops\n[1, 2]\n{"a": 2, "n": {"x": 1}}\n')
    reads = list(load_driver(Storage, "jsonl").read(path, raw=True))
    rows = [r for read in reads for r in read.batch.to_pylist()]
    assert rows == [{"a": "1", "n": None}, {"a": "2", "n": '{"x": 1}'}]
    assert [p for read in reads for p in read.positions.to_pylist()] == [1, 5]
    bad = [(m.position, m.reason) for read in reads for m in read.malformed]
    assert bad[0][0] == 3 and bad[0][1].startswith("invalid JSON: Expecting property name")
    assert bad[1] == (4, "invalid JSON: expected a JSON object, got list")


def test_unwritable_destination(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="cannot create the folder"):
        load_driver(Storage, "csv").writer(tmp_path / "file" / "x.csv", SCHEMA)


def _csv_read(path: Path, **options: object) -> tuple[list[dict[str, str]], list[int], list[tuple[int, str, str]]]:
    reads = list(load_driver(Storage, "csv").read(path, raw=True, options=options))
    rows = [r for read in reads for r in read.batch.to_pylist()]
    positions = [p for read in reads for p in read.positions.to_pylist()]
    bad = [(m.position, m.reason, m.text) for read in reads for m in read.malformed]
    return rows, positions, bad


@pytest.mark.parametrize("block_size", [1 << 10, 1 << 20])
def test_csv_unclosed_quote_is_one_dead_letter_not_a_merge(tmp_path: Path, block_size: int) -> None:
    # An unclosed quote used to swallow every following line into one value (or, across a
    # block boundary, fail the whole read); the lines after it are records of their own.
    lines = ["a,b"] + [f"{i},v{i}" for i in range(1, 200)]
    lines[50] = '50,"never closed'
    lines[120] = '120,"closed on its line, with a comma"'
    lines[150] = '150,"opens here'
    lines[151] = '151,"and this quote would have closed it"'
    path = tmp_path / "x.csv"
    path.write_text("\n".join(lines) + "\n")
    rows, positions, bad = _csv_read(path, block_size=block_size)
    assert [(line, text) for line, _, text in bad] == [(51, '50,"never closed'), (151, '150,"opens here')]
    assert all("does not close on its line" in reason for _, reason, _ in bad)
    expected = [i for i in range(1, 200) if i not in (50, 150)]
    assert [int(r["a"]) for r in rows] == expected
    assert positions == [i + 1 for i in expected]  # the file line: header is line 1
    assert rows[expected.index(120)]["b"] == "closed on its line, with a comma"
    assert rows[expected.index(151)]["b"] == "and this quote would have closed it"


def test_csv_blank_lines_non_utf8_and_crlf_keep_positions(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"a,b\r\n1,x\r\n\r\n2,\xff\xfeoops\r\n3,y\r\n4\r\n\r\n5,z")
    rows, positions, bad = _csv_read(path)
    assert rows == [{"a": "1", "b": "x"}, {"a": "3", "b": "y"}, {"a": "5", "b": "z"}]
    assert positions == [2, 5, 8]
    assert [(line, reason.split(" (")[0]) for line, reason, _ in bad] == [
        (4, "not UTF-8 text"),
        (6, "expected 2 columns, got 1"),
    ]
    assert "at byte 2 of the line" in bad[0][1]


def test_csv_overlong_line_is_skipped_not_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runink.plugins.storage.csv.MAX_LINE_BYTES", 4096)
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,x\n2," + "y" * 20_000 + "\n3,z\n")
    rows, positions, bad = _csv_read(path, block_size=1024)
    assert rows == [{"a": "1", "b": "x"}, {"a": "3", "b": "z"}] and positions == [2, 4]
    assert [(line, reason) for line, reason, _ in bad] == [(3, "line longer than 4096 bytes")]


def test_jsonl_deep_nesting_and_overlong_lines_are_dead_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2,000 levels used to raise RecursionError (the whole read failed); 100,000 crash pyarrow's parser.
    monkeypatch.setattr("runink.plugins.storage.jsonl.MAX_LINE_BYTES", 1 << 20)
    deep = '{"a": ' + "[" * 2000 + "]" * 2000 + "}"
    crash = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    wide = '{"a": [' + "[1]," * 2000 + '[2]], "s": "' + "[" * 2000 + '"}'  # many brackets, shallow
    huge = '{"a": "' + "x" * (2 << 20) + '"}'
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(['{"a": 1}', deep, crash, wide, huge, '{"a": 2}']) + "\n")
    reads = list(load_driver(Storage, "jsonl").read(path, raw=True))
    rows = [r for read in reads for r in read.batch.to_pylist()]
    assert [p for read in reads for p in read.positions.to_pylist()] == [1, 4, 6]
    assert [r["a"] for r in rows][::2] == ["1", "2"] and rows[1]["s"] == "[" * 2000
    bad = [(m.position, m.reason) for read in reads for m in read.malformed]
    assert bad == [
        (2, "nested deeper than 512 levels"),
        (3, "nested deeper than 512 levels"),
        (5, f"line longer than {1 << 20} bytes"),
    ]


READ_IN_PIECES = [("csv", {"block_size": 1024}), ("jsonl", {"chunk_lines": 100}), ("parquet", {"batch_rows": 100})]


@pytest.mark.parametrize(("fmt", "options"), READ_IN_PIECES)
def test_each_batch_says_how_much_of_the_file_is_read(tmp_path: Path, fmt: str, options: dict[str, int]) -> None:
    storage = load_driver(Storage, fmt)
    path = tmp_path / f"data.{fmt}"
    writer = storage.writer(path, SCHEMA)
    writer.write(pa.RecordBatch.from_pydict({"id": list(range(1000)), "name": ["n" * 10] * 1000}, schema=SCHEMA))
    writer.commit()
    reads = list(storage.read(path, options=options))
    fractions = [read.fraction for read in reads]
    assert len(reads) >= 5 and all(f is not None for f in fractions), fractions
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 < fractions[0] < 0.5
    rows = 0
    for read in reads:  # (rows and bytes grow together in these files: the share read is the share of rows)
        rows += read.batch.num_rows
        assert read.fraction == pytest.approx(rows / 1000, abs=0.05)


def test_jsonl_writes_timestamps_in_iso_8601_with_their_offset(tmp_path: Path) -> None:
    """Naive timestamps are UTC (contracts convert offsets to UTC, take naive values as UTC):
    written with T and +00:00, read back as the same instant; zoned ones keep their zone."""
    import datetime as dt

    from runink.plugins.storage.jsonl import JsonlWriter

    path = tmp_path / "out.jsonl"
    batch = pa.record_batch(
        {
            "at": pa.array(
                [dt.datetime(2026, 3, 2, 8, 15), dt.datetime(2026, 3, 2, 8, 15, 1, 500), None], pa.timestamp("us")
            ),
            "zoned": pa.array([dt.datetime(2026, 3, 2, 8, 15, tzinfo=dt.UTC)] * 3, pa.timestamp("ms", "UTC")),
            "day": pa.array([dt.date(2026, 3, 2)] * 3),
        }
    )
    writer = JsonlWriter(path)
    writer.write(batch)
    writer.commit()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["at"] for r in rows] == ["2026-03-02T08:15:00+00:00", "2026-03-02T08:15:01.000500+00:00", None]
    assert rows[0]["zoned"] == "2026-03-02T08:15:00+00:00" and rows[0]["day"] == "2026-03-02"
    for text in rows[0]["at"], rows[1]["at"]:
        assert dt.datetime.fromisoformat(text).tzinfo == dt.UTC


def test_csv_is_parsed_one_batch_ahead_and_a_reader_dropped_early_leaves_nothing_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next block is parsed (off the caller's thread) while the caller holds this batch, in
    order; a reader closed after one batch stops its thread and closes the file."""
    import os
    import threading
    import time

    path = tmp_path / "in.csv"
    path.write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(20_000)))
    from runink.plugins.storage import csv as csv_module

    parsed_on: set[str] = set()
    parse = csv_module._ChunkParser.parse

    def recording(self: object, *args: object) -> object:
        parsed_on.add(threading.current_thread().name)
        return parse(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(csv_module._ChunkParser, "parse", recording)
    csv = load_driver(Storage, "csv")
    rows = [int(v) for batch in csv.read(path, options={"block_size": 4096}) for v in batch.batch.column("id")]
    assert rows == list(range(20_000))  # in order, none lost or repeated
    assert parsed_on == {"runink-csv-read"}

    fds = len(os.listdir("/proc/self/fd"))
    reader = csv.read(path, options={"block_size": 4096})
    first = next(reader)
    deadline = time.monotonic() + 5
    while not any(t.name == "runink-csv-read" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(t.name == "runink-csv-read" for t in threading.enumerate())
    assert first.batch.column("id")[0].as_py() == 0
    reader.close()
    assert not any(t.name == "runink-csv-read" for t in threading.enumerate())
    assert len(os.listdir("/proc/self/fd")) == fds


def test_parquet_keeps_dictionaries_for_few_distinct_values_only(tmp_path: Path) -> None:
    """Columns whose first batch has few distinct values are dictionary-encoded, the others
    plain; every value round-trips; an output with no row is still a Parquet file."""
    import decimal

    import pyarrow.parquet as pq

    n = 5_000
    batch = pa.record_batch(
        {
            "id": pa.array([f"order-{i:06d}" for i in range(n)]),
            "currency": pa.array(["EUR", "USD", "GBP"][i % 3] for i in range(n)),
            "amount": pa.array([decimal.Decimal(i) / 100 for i in range(n)], pa.decimal128(12, 2)),
            "quantity": pa.array([i % 7 for i in range(n)], pa.int64()),
            "note": pa.array([None] * n, pa.string()),
        }
    )
    parquet = load_driver(Storage, "parquet")
    writer = parquet.writer(tmp_path / "out.parquet", batch.schema)
    writer.write(batch)
    writer.write(batch)
    writer.commit()
    file = pq.ParquetFile(tmp_path / "out.parquet")
    assert file.read().equals(pa.Table.from_batches([batch, batch])) and file.metadata.num_rows == 2 * n
    group = file.metadata.row_group(0)
    dictionary = {
        group.column(i).path_in_schema: any("DICTIONARY" in e for e in group.column(i).encodings)
        for i in range(group.num_columns)
    }
    assert dictionary == {"id": False, "currency": True, "amount": False, "quantity": True, "note": True}

    empty = parquet.writer(tmp_path / "empty.parquet", batch.schema)
    empty.commit()
    assert pq.read_table(tmp_path / "empty.parquet").schema.equals(batch.schema)


def test_a_corrupt_parquet_page_is_an_error_naming_the_file_and_where(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": list(range(5000)), "name": [f"n{i}" for i in range(5000)]}), path)
    data = bytearray(path.read_bytes())
    data[100:114] = b"garbagegarbage"  # (inside the first column chunk's pages)
    path.write_bytes(bytes(data))
    storage = load_driver(Storage, "parquet")
    with pytest.raises(DatasetError, match=rf"^{path}: not readable past row 0: "):
        list(storage.read(path))
