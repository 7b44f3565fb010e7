"""Storage drivers: streaming reads with positions and malformed records; atomic writes."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from runink.core.contracts import Contract, Field, validate
from runink.core.datasets import DatasetError, resolve_dataset
from runink.core.drivers import load_driver
from runink.core.interfaces import Storage
from runink.plugins.storage.csv import UNCLOSED, physical_lines

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
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf\n")  # (a header of one unnamed column, read 0 rows)
    with pytest.raises(DatasetError, match="empty file"):
        list(storage.read(tmp_path / "bom.csv"))


def test_jsonl_reports_bad_lines_and_keeps_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{oops\n[1, 2]\n{"a": 2, "n": {"x": 1}}\n')
    reads = list(load_driver(Storage, "jsonl").read(path, raw=True))
    rows = [r for read in reads for r in read.batch.to_pylist()]
    assert rows == [{"a": "1", "n": None}, {"a": "2", "n": '{"x":1}'}]
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


def test_csv_without_a_contract_a_value_not_utf8_in_the_first_block_is_a_dead_letter(tmp_path: Path) -> None:
    """Arrow typed the column as bytes: the line was kept, and a JSON Lines sink then crashed
    the slice (a polars panic, "exit code 1" and no reason)."""
    path = tmp_path / "x.csv"
    path.write_bytes(b"id,name\n1,ann\n2,b\xffob\n3,cat\n")
    reads = list(load_driver(Storage, "csv").read(path, raw=False))
    assert [str(t) for t in reads[0].batch.schema.types] == ["int64", "string"]
    assert [r for read in reads for r in read.batch.to_pylist()] == [
        {"id": 1, "name": "ann"},
        {"id": 3, "name": "cat"},
    ]
    assert [(m.position, m.reason) for read in reads for m in read.malformed] == [
        (3, "not UTF-8 text (invalid start byte at byte 3 of the line)")
    ]


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
    assert all(reason == UNCLOSED for _, reason, _ in bad)
    expected = [i for i in range(1, 200) if i not in (50, 150)]
    assert [int(r["a"]) for r in rows] == expected
    assert positions == [i + 1 for i in expected]  # the file line: header is line 1
    assert rows[expected.index(120)]["b"] == "closed on its line, with a comma"
    assert rows[expected.index(151)]["b"] == "and this quote would have closed it"


@pytest.mark.parametrize("block_size", [1 << 10, 1 << 20])
def test_csv_a_quoted_value_with_line_breaks_is_one_record_at_its_first_line(tmp_path: Path, block_size: int) -> None:
    """RFC 4180 values holding line breaks (as Arrow's CSV writer, a CSV sink, writes them) were
    dead letters, a line each: a scenario reading the one before it lost those rows."""
    values = ["two\nlines", "crlf\r\ninside", "cr\r", "blank\n\nline", 'quote ""\n"" inside', "plain"]
    lines = ["id,note,more"]
    for i in range(300):  # (records across the 1 KiB blocks' ends too)
        lines.append(f'{i},"{values[i % len(values)]}","x\ny"' if i % 2 else f"{i},{i},z")
    path = tmp_path / "x.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode())
    rows, positions, bad = _csv_read(path, block_size=block_size)
    assert bad == []
    assert [int(r["id"]) for r in rows] == list(range(300))
    expected = [values[i % len(values)].replace('""', '"') if i % 2 else str(i) for i in range(300)]
    assert [r["note"] for r in rows] == expected
    assert all(r["more"] == ("x\ny" if i % 2 else "z") for i, r in enumerate(rows))
    first_lines = [2]  # (each record's first line: the header is line 1)
    for line in lines[1:-1]:
        first_lines.append(first_lines[-1] + line.count("\n") + line.count("\r") - line.count("\r\n") + 1)
    assert positions == first_lines


@pytest.mark.parametrize("block_size", [1 << 10, 1 << 20])
def test_csv_a_stray_quote_that_a_later_line_closes_is_not_a_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_size: int
) -> None:
    """A value left open is one record with the lines up to the one closing it only if that is
    one well-formed record of the header's columns within MAX_RECORD_BYTES: else the line alone
    is a dead letter and every line after it a record of its own."""
    monkeypatch.setattr("runink.plugins.storage.csv.MAX_RECORD_BYTES", 2000)
    lines = ["a,b"] + [f"{i},v{i}" for i in range(1, 400)]
    lines[10] = '10,"opens'
    lines[12] = 'closes" here,x'  # (text after its closing quote: not well-formed; alone, a record)
    lines[20] = '20,"opens'
    lines[21] = 'closes",21,x'  # (3 columns)
    lines[30] = '30,"opens'
    lines[31] = '"closes on a second open quote","'
    lines[100] = '100,"opens a record that would be well-formed, but is past 2,000 bytes'
    lines[349] = 'ends"'
    lines[360] = '360,"opens, then the file ends'
    path = tmp_path / "x.csv"
    path.write_text("\n".join(lines) + "\n")
    rows, positions, bad = _csv_read(path, block_size=block_size)
    assert [(line, reason) for line, reason, _ in bad] == [
        (11, UNCLOSED),
        (21, UNCLOSED),
        (22, "expected 2 columns, got 3"),
        (31, UNCLOSED),
        (32, UNCLOSED),
        (101, UNCLOSED),
        (350, "expected 2 columns, got 1"),
        (361, UNCLOSED),
    ]
    assert positions == [n + 1 for n in range(1, 400) if n not in (10, 20, 21, 30, 31, 100, 349, 360)]
    assert {"a": 'closes" here', "b": "x"} in rows
    assert all(r["b"] == f"v{r['a']}" for r in rows if r["b"] != "x")


@pytest.mark.parametrize(("line", "last"), [('"x","y', {"a": "x", "b": "y\nx"}), ('a","', {"a": 'a"', "b": "\nx"})])
def test_csv_lines_that_each_leave_a_value_open_are_looked_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, last: dict[str, str]
) -> None:
    """Lines that each close a value left open and open another never end a record: a scan
    from every line to the next that does, or a parse of every candidate record, was quadratic
    in the block (a review: 195 KiB of 'a","' lines took 71 s)."""
    from runink.plugins.storage import csv as csv_module

    looked = 0
    look = csv_module._Inside._look

    def counting(self: object, i: int) -> object:
        nonlocal looked
        looked += 1
        return look(self, i)  # type: ignore[arg-type]

    monkeypatch.setattr(csv_module._Inside, "_look", counting)
    path = tmp_path / "x.csv"
    path.write_text("a,b\n" + f"{line}\n" * 20_000 + 'x"\n1,2\n')
    rows, positions, bad = _csv_read(path)
    # (only the last of them and the line closing its value make one well-formed record)
    assert rows == [last, {"a": "1", "b": "2"}] and positions == [20_001, 20_003]
    assert [(line, reason) for line, reason, _ in bad] == [(n, UNCLOSED) for n in range(2, 20_001)]
    assert looked <= 20_002  # (each line once)


def test_csv_a_value_of_several_lines_may_be_longer_than_python_csv_s_field_limit(tmp_path: Path) -> None:
    """Python's csv refuses a field past 128 KiB by default: a well-formed 140 KiB value was read
    as dead letters and a phantom row made of one of its lines (a review)."""
    note = "begin\n7,phantom row\n" + "z" * 300_000 + "\nend"
    path = tmp_path / "x.csv"
    path.write_text(f'id,note\n1,short\n2,"{note}"\n3,after\n')
    for block_size in (1 << 10, 1 << 20):
        rows, positions, bad = _csv_read(path, block_size=block_size)
        assert rows == [{"id": "1", "note": "short"}, {"id": "2", "note": note}, {"id": "3", "note": "after"}]
        assert positions == [2, 3, 7] and bad == []


def test_csv_the_first_block_s_dead_letters_come_once_when_its_types_are_found_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first block read in pieces, its first pieces all dead letters: when a later piece gave
    a column the type double, the block was read again from its start (a review: 131,082 dead
    letters for 65,546 bad lines). And a refused row's dead letter holds its whole record."""
    monkeypatch.setattr("runink.plugins.storage.csv.MAX_MALFORMED", 4)
    path = tmp_path / "x.csv"
    good = "".join(f"{i},{i}.5,n{i}\n" for i in range(1, 5))
    path.write_text("id,x,note\n" + "bad\n" * 6 + good + '5,9007199254740993,"two\nlines"\n6,6.5,n6\n')
    reads = list(load_driver(Storage, "csv").read(path))
    rows = [row for read in reads for row in read.batch.to_pylist()]
    assert rows == [{"id": i, "x": i + 0.5, "note": f"n{i}"} for i in (1, 2, 3, 4, 6)]
    bad = [(m.position, m.reason.split(":")[0], m.text) for read in reads for m in read.malformed]
    assert bad == [(line, "expected 3 columns, got 1", "bad") for line in range(2, 8)] + [
        (12, "column 'x'", '5,9007199254740993,"two\nlines"')
    ]


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


def test_csv_a_line_not_utf8_of_a_wrong_column_count_says_nothing_on_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Arrow could not pass its text to the invalid-row handler: "Exception ignored ...
    UnicodeDecodeError" went to the step's log for every such line."""
    path = tmp_path / "x.csv"
    path.write_bytes(b"a,b\n1,x\n\xff\n2,y\n")
    rows, positions, bad = _csv_read(path)
    assert rows == [{"a": "1", "b": "x"}, {"a": "2", "b": "y"}] and positions == [2, 4]
    assert [(line, reason.split(" (")[0]) for line, reason, _ in bad] == [(3, "not UTF-8 text")]
    assert capfd.readouterr().err == ""


def test_csv_lines_that_end_with_a_lone_cr_are_read_header_included(tmp_path: Path) -> None:
    """The rows' reader took them, the header's did not (it split at LF only): a review."""
    path = tmp_path / "x.csv"
    path.write_bytes(b"id,name\r1,a\r2,b\r")
    rows, positions, bad = _csv_read(path)
    assert rows == [{"id": "1", "name": "a"}, {"id": "2", "name": "b"}] and positions == [2, 3] and bad == []
    for eol in (b"\n", b"\r\n"):  # (a CR in a quoted header value is its text: the next review)
        path.write_bytes(b'"a\rb",c' + eol + b"1,2" + eol)
        rows, _, bad = _csv_read(path)
        assert rows == [{"a\rb": "1", "c": "2"}] and bad == [], eol


def test_csv_overlong_line_is_skipped_not_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runink.plugins.storage.csv.MAX_LINE_BYTES", 4096)
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,x\n2," + "y" * 20_000 + "\n3,z\n")
    rows, positions, bad = _csv_read(path, block_size=1024)
    assert rows == [{"a": "1", "b": "x"}, {"a": "3", "b": "z"}] and positions == [2, 4]
    assert [(line, reason) for line, reason, _ in bad] == [(3, "line longer than 4096 bytes")]


def _counted_parses(monkeypatch: pytest.MonkeyPatch, *, max_malformed: int) -> list[int]:
    """The CSV reader's MAX_MALFORMED set to ``max_malformed``, and its pyarrow parses counted
    (in the list's one item)."""
    from runink.plugins.storage import csv as csv_module

    monkeypatch.setattr(csv_module, "MAX_MALFORMED", max_malformed)
    parses = [0]
    read_csv = csv_module.pacsv.read_csv

    def counting(*args: object, **kwargs: object) -> object:
        parses[0] += 1
        return read_csv(*args, **kwargs)

    monkeypatch.setattr(csv_module.pacsv, "read_csv", counting)
    return parses


@pytest.mark.parametrize("bad_line", ['"', "1"])  # a quote left open; a wrong column count
def test_csv_many_malformed_lines_are_read_in_one_pass_and_bounded_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_line: str
) -> None:
    """Each record a quote swallowed was parsed again on its own, every piece kept for a concat:
    1M lines of a lone quote (2 MB) took 100 s and 1.8 GB. Now every line is looked at once,
    the block parsed again once per piece of MAX_MALFORMED lines, each piece its own batch."""
    parses = _counted_parses(monkeypatch, max_malformed=1000)
    lines = [f"{i},x" if i % 10 == 0 else bad_line for i in range(10_000)]
    path = tmp_path / "x.csv"
    path.write_text("a,b\n" + "\n".join(lines) + "\n")
    reads = list(load_driver(Storage, "csv").read(path, raw=True))
    # the block, then once per piece (was one per swallowed record), and the last line's open
    # quote twice more once the file ends (its record might have gone on in a next block)
    assert parses[0] <= 4 + len(lines) // 1000
    assert max(len(read.malformed) for read in reads) <= 1000 and len(reads) >= 9
    assert [p for read in reads for p in read.positions.to_pylist()] == list(range(2, 10_002, 10))
    assert [r["a"] for read in reads for r in read.batch.to_pylist()] == [str(i) for i in range(0, 10_000, 10)]
    bad = [m.position for read in reads for m in read.malformed]
    assert bad == [i + 2 for i in range(10_000) if i % 10]  # each at its own line, in order


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_csv_a_quote_left_open_on_the_last_line_of_a_block_or_file_is_malformed(tmp_path: Path, eol: str) -> None:
    """The record swallowed only the block's final line break, so the counts matched: a valid
    row with a line break appended to its value."""
    line = "{:04d},{}x" + eol  # 10 or 11 bytes; the first 1024-byte block ends with line 93 or 102
    last_of_block = 1024 // len(line.format(0, "xxx")) - 1
    lines = [line.format(i, '"xx' if i == last_of_block else "xxx") for i in range(200)]
    for end in ("", eol):  # the file's last line, with or without a final line break
        path = tmp_path / "x.csv"
        path.write_text("a,b" + eol + "".join(lines) + '0200,"unclosed' + end, newline="")
        rows, positions, bad = _csv_read(path, block_size=1024)
        assert [(line, reason) for line, reason, _ in bad] == [(last_of_block + 2, UNCLOSED), (202, UNCLOSED)]
        assert bad[1][2] == '0200,"unclosed'
        assert all("\n" not in r["b"] and "\r" not in r["b"] for r in rows)
        assert positions == [i + 2 for i in range(200) if i != last_of_block]


def test_csv_a_line_leaves_a_quote_open_exactly_when_pyarrow_would_read_on(tmp_path: Path) -> None:
    """The line-by-line check agrees with pyarrow on each line alone: a quote opens a value only
    at its start, "" is a quote inside one, text after the closing quote is part of the value."""
    from runink.plugins.storage.csv import _closed_line

    def records(data: str, delimiter: str) -> int:
        invalid = 0

        def skip(row: pacsv.InvalidRow) -> str:
            nonlocal invalid
            invalid += 1
            return "skip"

        table = pacsv.read_csv(
            pa.BufferReader(data.encode()),
            read_options=pacsv.ReadOptions(column_names=["c"]),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=skip),
        )
        return table.num_rows + invalid

    lines = ['a,"b"', '"a"b"c,d', 'a"b,c', '"a"",x', '"a""",x', '""""', '"', '" ', ' "a', 'x,"', 'x,""', '"a,b"c"']
    for delimiter in (",", ";", "\t", "|"):
        closed = _closed_line(delimiter)
        for line in (x.replace(",", delimiter) for x in lines):
            # the line and one more are two records, unless the line swallows the next
            assert bool(closed(line.encode())) == (records(line + "\nz\n", delimiter) == 2), (delimiter, line)


def test_csv_only_an_empty_value_is_null(tmp_path: Path) -> None:
    """pyarrow's default null values made "NA" (Namibia), "N/A", "null", "NaN" and "#N/A" null,
    and a quoted empty text read as null, so a CSV sink's "" failed a required field."""
    path = tmp_path / "x.csv"
    path.write_text('a,b,n\nNA,N/A,1\nnull,NaN,NA\n#N/A,,\n"",x,2\n')
    rows, _, bad = _csv_read(path)
    assert not bad
    assert [(r["a"], r["b"], r["n"]) for r in rows] == [
        ("NA", "N/A", "1"),
        ("null", "NaN", "NA"),
        ("#N/A", None, None),
        ("", "x", "2"),  # (an empty text, as Arrow's CSV writer writes one: a null is nothing)
    ]
    # Without a contract Arrow infers the types from the first block, and its null words stay
    # null: a later block's "NA" in a column of numbers failed the scenario (a review's run).
    later = tmp_path / "later.csv"
    later.write_text("n,c\n" + "".join(f"{i},x\n" for i in range(2000)) + "NA,null\n7,y\n")
    typed = [read.batch for read in load_driver(Storage, "csv").read(later, options={"block_size": 1024})]
    assert len(typed) > 1 and typed[-1].column("n").to_pylist()[-2:] == [None, 7]
    assert typed[-1].column("c").to_pylist()[-2:] == [None, "y"]


def test_csv_without_a_contract_a_number_a_double_cannot_hold_loses_no_digit(tmp_path: Path) -> None:
    """Typed double by Arrow's inference, 12345678901234567890 became 12345678901234567000 and
    123456789.123456789 123456789.12345679, silently (a review). In the first block such a value
    keeps its column text, as written; in a later one, its row is a dead letter."""
    path = tmp_path / "x.csv"
    lines = ["id,big,amt,f"]
    lines += [f"{i},1{i:019d},{i}.25, {i}.5" for i in range(2000)]  # (big: 20 digits; f: a blank before)
    lines[2] = "1,12345678901234567890,123456789.123456789,1e5"
    lines += ["2000,1,0.1,1e400", "2001,2,0.2,0.12345678901234567890", "2002,3,0.3,x", "2003,4,0.4,NaN"]
    path.write_text("\n".join(lines) + "\n")
    reads = list(load_driver(Storage, "csv").read(path, options={"block_size": 1024}))
    assert len(reads) > 2
    types = {str(t) for read in reads for t in read.batch.schema.types}
    assert [str(t) for t in reads[0].batch.schema.types] == ["int64", "string", "string", "double"] and len(types) == 3
    rows = [row for read in reads for row in read.batch.to_pylist()]
    assert rows[1] == {"id": 1, "big": "12345678901234567890", "amt": "123456789.123456789", "f": 100000.0}
    assert rows[0] == {"id": 0, "big": "10000000000000000000", "amt": "0.25", "f": 0.5}
    assert rows[-1] == {"id": 2003, "big": "4", "amt": "0.4", "f": None}
    assert [row["id"] for row in rows] == [*range(2000), 2003]
    bad = [(m.position, m.reason, m.text) for read in reads for m in read.malformed]
    assert bad == [
        (
            2002,
            "column 'f': a double cannot hold 1e400 exactly (the type the file's first rows gave it)",
            "2000,1,0.1,1e400",
        ),
        (
            2003,
            "column 'f': a double cannot hold 0.12345678901234567890 exactly (the type the file's first rows gave it)",
            "2001,2,0.2,0.12345678901234567890",
        ),
        (
            2004,
            "column 'f': conversion error to double: invalid value 'x' (the type the file's first rows gave it)",
            "2002,3,0.3,x",
        ),
    ]


def test_csv_a_header_of_too_many_columns_fails_at_once(tmp_path: Path) -> None:
    """A 13.9 MB file whose header named 1M columns took 12.7 GB."""
    path = tmp_path / "x.csv"
    path.write_text(",".join(f"c{i}" for i in range(10_001)) + "\n" + ",".join(["1"] * 10_001) + "\n")
    with pytest.raises(DatasetError, match=rf"^{path}:1: the header has 10,001 columns, more than 10,000$"):
        list(load_driver(Storage, "csv").read(path))


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


def _jsonl_read(
    path: Path, *, raw: bool = True, **options: object
) -> tuple[list[dict], list[int], list[tuple[int, str]]]:
    reads = list(load_driver(Storage, "jsonl").read(path, raw=raw, options=options or None))
    rows = [r for read in reads for r in read.batch.to_pylist()]
    positions = [p for read in reads for p in read.positions.to_pylist()]
    bad = [(m.position, m.reason) for read in reads for m in read.malformed]
    return rows, positions, bad


def test_jsonl_depth_check_is_linear_in_the_line(tmp_path: Path) -> None:
    """600 '[' then an unclosed string of escaped quotes: the check's string pattern rescanned the
    rest of the line from each quote (32 KB took 3.3 s, 1 MB about an hour: the run hung)."""
    import time

    from runink.plugins.storage.jsonl import _too_deep

    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"[" * 600 + b'"' + b'\\"' * 32_000 + b'\n{"a": 2}\n')
    start = time.monotonic()
    rows, positions, bad = _jsonl_read(path)
    assert time.monotonic() - start < 2  # (seconds: about 13 before; milliseconds now)
    assert (rows, positions, bad) == ([{"a": "1"}, {"a": "2"}], [1, 3], [(2, "nested deeper than 512 levels")])
    # the same answers as before for lines that parse: brackets in strings (escaped quotes too) do not count
    assert not _too_deep(b'{"s": "\\"' + b"[" * 600 + b'", "t": ["\\\\"]}')
    assert _too_deep(b'{"s": "\\\\", "a": ' + b"[" * 600 + b"]" * 600 + b"}")
    assert not _too_deep(b'[[["' + b"[" * 600)  # an unclosed string: the parser stops there


def test_jsonl_chunks_are_bounded_in_bytes_and_keep_positions(tmp_path: Path) -> None:
    """A chunk was 65,536 lines whatever their size: a 400 MB file of 1 MiB lines was read whole
    (1.9 GB, killed). Lines longer than pyarrow's 1 MiB block went through the Python fallback
    (every value as text); they are read as the other lines are."""
    from runink.plugins.storage.jsonl import CHUNK_BYTES

    line = 300 << 10
    path = tmp_path / "x.jsonl"
    with path.open("w") as fh:
        for i in range(1, 41):
            fh.write("\n" if i % 10 == 0 else "{oops\n" if i % 10 == 5 else f'{{"id": {i}, "s": "{"x" * line}"}}\n')
        fh.write('{"id": 41, "s": "' + "y" * (3 << 19) + '"}\n')  # 1.5 MiB
    reads = list(load_driver(Storage, "jsonl").read(path))
    held = [sum(len(row["s"]) for row in read.batch.to_pylist()) for read in reads]
    assert len(reads) >= 3 and max(held) <= CHUNK_BYTES + (3 << 19), held
    expected = [i for i in range(1, 42) if i % 10 not in (0, 5)]
    assert [p for read in reads for p in read.positions.to_pylist()] == expected
    assert [row["id"] for read in reads for row in read.batch.to_pylist()] == expected  # ints: pyarrow's reading
    assert [m.position for read in reads for m in read.malformed] == [5, 15, 25, 35]
    small = list(load_driver(Storage, "jsonl").read(path, options={"chunk_bytes": 1}))
    assert [read.positions.to_pylist() for read in small if read.batch.num_rows][:3] == [[1], [2], [3]]


@pytest.mark.parametrize("others", [False, True])
def test_jsonl_a_line_of_more_than_one_json_value_is_one_dead_letter(tmp_path: Path, others: bool) -> None:
    """pyarrow reads two objects on a line as two rows: the positions were one short (the row of
    line 3 said line 4) or the read failed (ArrowIndexError). ``others``: the chunk has other bad
    lines and a type conflict too (pyarrow fails on it and it is read line by line)."""
    path = tmp_path / "x.jsonl"
    path.write_text(
        '{"a": 1}\n{"a": 2} {"a": 3}\n{"a": 4}\n' + ('{"a": 5}x\n[1] [2]\n{"a": "six"}\n' if others else "")
    )
    rows, positions, bad = _jsonl_read(path)
    assert [r["a"] for r in rows] == ["1", "4"] + (["six"] if others else [])
    assert positions == [1, 3] + ([6] if others else [])
    after = "invalid JSON: text after the JSON value, at character {} (a line holds one JSON object)"
    assert bad == [(2, after.format(10))] + ([(4, after.format(9)), (5, after.format(5))] if others else [])


@pytest.mark.parametrize("conflict", [False, True])
def test_jsonl_a_lone_surrogate_is_a_dead_letter(tmp_path: Path, conflict: bool) -> None:
    """A \\ud800 escape is half a UTF-16 pair, no character: pyarrow refuses it, Python's parser
    takes it, and the batch failed with UnicodeEncodeError. A whole pair is a character, kept."""
    path = tmp_path / "x.jsonl"
    path.write_text(
        '{"a": "ok"}\n{"a": "\\ud800"}\n{"a": "\\ud83d\\ude00"}\n{"\\udfff": 1}\n{"a": "\\\\ud800"}\n'
        + ('{"a": 7}\n' if conflict else "")
    )
    rows, positions, bad = _jsonl_read(path)
    assert rows == [{"a": "ok"}, {"a": "\U0001f600"}, {"a": "\\ud800"}] + ([{"a": "7"}] if conflict else [])
    assert positions == [1, 3, 5] + ([6] if conflict else [])
    assert bad == [
        (2, "invalid JSON: a string holds a lone UTF-16 surrogate, \\ud800"),
        (4, "invalid JSON: a string holds a lone UTF-16 surrogate, \\udfff"),
    ]


@pytest.mark.parametrize("raw", [True, False])
def test_jsonl_a_line_that_is_not_utf8_is_a_dead_letter(tmp_path: Path, raw: bool) -> None:
    """pyarrow's JSON reader does not check UTF-8: a line of other bytes was a valid row, and its
    string unreadable in every output (a review's run)."""
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"id": 1, "name": "ok"}\n{"id": 2, "name": "bad \xff\xfe"}\n{"id": 3, "name": "\xc3\xa9"}\n')
    rows, positions, bad = _jsonl_read(path, raw=raw)
    assert [r["name"] for r in rows] == ["ok", "\u00e9"] and positions == [1, 3]
    assert [(p, why.split(":")[0]) for p, why in bad] == [(2, "invalid JSON")], bad
    assert "utf-8" in bad[0][1]


def test_jsonl_numbers_and_objects_of_written_fields_are_read_as_written(tmp_path: Path) -> None:
    """A chunk whose values of a contract's str field were all numbers typed it float64: made
    text, 9007199254740993 gave '9.007199254740992e+15' and 12.0 gave '12'; an int field took
    3.0 as 3; an object took other lines' keys (a review's runs)."""
    path = tmp_path / "x.jsonl"
    lines = [
        '{"ref": 9007199254740993, "n": 3.0, "meta": {"a": 1}, "f": 12.0}',
        '{"ref": 12.0, "n": 1e3, "meta": {"b": "x"}, "f": 1e2}',
        '{"ref": 1e2, "n": 4, "meta": {"b": "y", "a": 2}, "f": 0.5}',
        '{"ref": 7, "n": 5, "meta": {"é": ["ü", null]}, "f": 1}',
        '{"ref": 8, "n": 6, "meta": {"big": [12345678901234567890, 123456789.123456789]}, "f": 2}',
    ]
    path.write_text("\n".join(lines) + "\n")
    rows, positions, bad = _jsonl_read(path, written=["ref", "n", "meta"])
    assert positions == [1, 2, 3, 4, 5] and bad == []
    assert [r["ref"] for r in rows] == ["9007199254740993", "12.0", "1e2", "7", "8"]
    assert [r["n"] for r in rows] == ["3.0", "1e3", "4", "5", "6"]  # (the contract refuses 3.0 for an int, as in CSV)
    # an object or array is its JSON text, compact, its characters and numbers as written (as a
    # sink writes it; its float lost digits: a review)
    assert [r["meta"] for r in rows] == [
        '{"a":1}',
        '{"b":"x"}',
        '{"b":"y","a":2}',
        '{"é":["ü",null]}',
        '{"big":[12345678901234567890,123456789.123456789]}',
    ]
    assert [r["f"] for r in rows] == ["12", "100", "0.5", "1", "2"]  # (not a written field: Arrow's text)


@pytest.mark.parametrize("raw", [True, False])
def test_jsonl_a_key_given_twice_is_a_malformed_line(tmp_path: Path, raw: bool) -> None:
    """pyarrow refused the chunk, and Python's parser, reading it line by line, kept the last
    value: {"amount": 5, "amount": 500} was a valid row of 500."""
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": 1, "amount": 5, "amount": 500}\n{"id": 2, "m": {"k": 1, "k": 2}}\n{"id": 3, "amount": 7}\n')
    rows, positions, bad = _jsonl_read(path, raw=raw)
    assert positions == [3] and [int(r["id"]) for r in rows] == [3]
    assert bad == [
        (1, "invalid JSON: the key 'amount' is given twice in one object"),
        (2, "invalid JSON: the key 'k' is given twice in one object"),
    ]


def test_jsonl_without_a_contract_a_big_int_in_a_float_column_is_a_value(tmp_path: Path) -> None:
    """Read in Python because another column mixes kinds, an int past 2**53 in a float column
    made its line a dead letter "that does not fit the column types" (a review's run); then it
    lost its last digit as a double (the next review): its column is text, as written."""
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": 1, "v": 9007199254740993, "k": 1}\n{"id": 2, "v": 1.5, "k": "x"}\n')
    rows, positions, bad = _jsonl_read(path, raw=False)
    assert bad == [] and positions == [1, 2]
    assert [r["v"] for r in rows] == ["9007199254740993", "1.5"] and [r["k"] for r in rows] == ["1", "x"]


def test_jsonl_without_a_contract_a_number_a_double_cannot_hold_keeps_its_column_text(tmp_path: Path) -> None:
    """Typed double, 12345678901234567890 became 1.2345678901234567e+19 and 123456789.123456789
    123456789.12345679, silently (a review); a column of doubles that hold their values stays
    double, and a number in a string or nested is left as it is."""
    path = tmp_path / "x.jsonl"
    lines = [{"big": 1, "amt": 0.5, "f": 0.25, "s": "12345678901234567890", "n": {"x": 1}}] * 3000
    lines += [{"big": 12345678901234567890, "amt": 1, "f": 1e300, "n": {"x": 0.1}}]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    path.write_text(text.replace("1e+300", "1e300") + '{"amt": 123456789.123456789}\n{"amt": 1e400}\n')
    reads = list(load_driver(Storage, "jsonl").read(path, raw=False, options={"chunk_lines": 1000}))
    assert {str(t) for read in reads for t in read.batch.schema.types} == {"string", "double", "struct<x: double>"}
    rows = [row for read in reads for row in read.batch.to_pylist()]
    assert [str(read.batch.schema.field(n).type) for n in ("big", "amt", "f") for read in reads[:1]] == [
        "string",
        "string",
        "double",
    ]
    assert (rows[0]["big"], rows[0]["amt"], rows[0]["f"], rows[0]["s"]) == ("1", "0.5", 0.25, "12345678901234567890")
    assert (rows[3000]["big"], rows[3000]["amt"], rows[3000]["f"]) == ("12345678901234567890", "1", 1e300)
    assert [row["amt"] for row in rows[-2:]] == ["123456789.123456789", "1e400"]
    assert [m.position for read in reads for m in read.malformed] == []


def test_jsonl_strings_keep_their_text(tmp_path: Path) -> None:
    """pyarrow makes timestamps of strings that look like one: a str field "2026-01-01T00:00:00"
    reached the contract as "2026-01-01 00:00:00" (and "...Z" lost its Z)."""
    path = tmp_path / "x.jsonl"
    lines = [
        {"code": "2026-01-01T00:00:00", "day": "2026-01-01", "z": "2026-03-02T08:15:00Z", "r": "NaN"},
        {"code": "2026-03-01 12:30", "day": "2026-01-02", "n": {"at": "2026-01-01T00:00:00"}, "l": ["2026-01-01"]},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows, positions, bad = _jsonl_read(path)
    assert positions == [1, 2] and bad == []
    assert [{k: v for k, v in row.items() if v is not None} for row in rows] == [
        {"code": "2026-01-01T00:00:00", "day": "2026-01-01", "z": "2026-03-02T08:15:00Z", "r": "NaN"},
        {"code": "2026-03-01 12:30", "day": "2026-01-02", "n": '{"at":"2026-01-01T00:00:00"}', "l": '["2026-01-01"]'},
    ]


def test_jsonl_without_a_contract_every_chunk_has_the_file_s_columns_and_types(tmp_path: Path) -> None:
    """Typed chunk by chunk, a sink got int64 then double (or a new column) mid-file and the
    run failed. Read once for the file's types first: every chunk has every column, each with
    one type all its values fit; a line that is no JSON types nothing."""
    path = tmp_path / "x.jsonl"
    lines = [{"id": i, "n": 1, "s": {"a": 1}, "e": None, "l": []} for i in range(5)]
    lines += [{"id": 5, "n": 1.5, "s": {"b": "x"}, "k": "late"}]
    lines += [{"id": 6, "n": 2, "m": 1}, {"id": 7, "n": 3, "m": "seven"}, {"id": 8, "n": 4, "m": {"x": 1}}]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"id": NaN}\n{"id": "nine"\n'
    path.write_text(text)
    reads = list(load_driver(Storage, "jsonl").read(path, raw=False, options={"chunk_lines": 3}))
    assert len(reads) == 4
    expected = pa.schema(
        [
            ("id", pa.int64()),
            ("n", pa.float64()),  # whole numbers and a fraction
            ("s", pa.struct([("a", pa.int64()), ("b", pa.string())])),  # both structs' fields
            ("e", pa.string()),  # null in every line: text
            ("l", pa.list_(pa.string())),  # lists with no item: of text
            ("k", pa.string()),  # first seen in line 6
            ("m", pa.string()),  # a number, a string and an object in one chunk: text
        ]
    )
    assert [read.batch.schema for read in reads] == [expected] * 4
    rows = [row for read in reads for row in read.batch.to_pylist()]
    assert [row["id"] for row in rows] == list(range(9))  # (not made float by the NaN line)
    assert [row["n"] for row in rows] == [1.0] * 5 + [1.5, 2.0, 3.0, 4.0]
    assert [row["m"] for row in rows[6:]] == ["1", "seven", '{"x":1}']  # numbers as written, objects as JSON
    assert rows[0]["s"] == {"a": 1, "b": None} and rows[5]["s"] == {"a": None, "b": "x"}
    assert rows[5]["k"] == "late" and rows[0]["k"] is None
    assert [m.position for read in reads for m in read.malformed] == [10, 11]


@pytest.mark.parametrize("raw", [True, False])
def test_jsonl_lines_of_keys_all_different_are_refused_not_read_into_gigabytes(tmp_path: Path, raw: bool) -> None:
    """Arrow builds a value of every column for every line: 20,000 lines of one key each
    (220 KB) took 95 s and 5.5 GB to read, and 200,000 got the slice OOM-killed. Past 10,000
    columns (as a CSV header) the source is refused, naming the file and the lines."""
    import resource

    from runink.plugins.storage.jsonl import MAX_COLUMNS

    path = tmp_path / "x.jsonl"
    path.write_bytes(b"".join(b'{"k%d": 1}\n' % i for i in range(2 * MAX_COLUMNS)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DatasetError, match=rf"^{path}: lines 1-20000: its lines have more than 10,000 different keys"):
        list(load_driver(Storage, "jsonl").read(path, raw=raw))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: it built no 3 GB table
    one = tmp_path / "one.jsonl"  # one line of 1,000,000 keys: a dead letter, found before it is parsed
    one.write_text('{"a": 1}\n{' + ",".join(f'"k{i}": 1' for i in range(1_000_000)) + '}\n{"a": 2}\n')
    rows, positions, bad = _jsonl_read(one, raw=raw)
    assert positions == [1, 3] and bad == [(2, "more than 10,000 different keys")]
    fewer = tmp_path / "y.jsonl"  # sparse but within bounds: read, every column in every row
    fewer.write_bytes(b"".join(b'{"id": %d, "k%d": 1}\n' % (i, i % 2000) for i in range(3000)))
    rows, positions, bad = _jsonl_read(fewer, raw=raw)
    assert len(rows) == 3000 and len(rows[0]) == 2001 and bad == []


@pytest.mark.parametrize("raw", [True, False])
def test_jsonl_a_wide_line_makes_smaller_batches_not_a_table_of_every_column_for_every_line(
    tmp_path: Path, raw: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line of 3,000 keys then 65,536 lines of one: read with the file's columns, the second
    chunk was 65,536 x 3,002 values (4 GB, a review's run). A batch holds at most MAX_CELLS
    values (here 1,000); no line is lost or read twice."""
    from runink.plugins.storage import jsonl

    monkeypatch.setattr(jsonl, "MAX_CELLS", 1000)
    path = tmp_path / "x.jsonl"
    lines = [json.dumps({f"k{i}": i for i in range(20)})] + [json.dumps({"x": i}) for i in range(2000)]
    path.write_text("\n".join(lines) + "\n")
    reads = list(load_driver(Storage, "jsonl").read(path, raw=raw, options={"chunk_lines": 700}))
    assert all(r.batch.num_rows * max(1, r.batch.num_columns) <= 1000 for r in reads), [
        (r.batch.num_rows, r.batch.num_columns) for r in reads
    ]
    assert [p for r in reads for p in r.positions.to_pylist()] == list(range(1, 2002))
    rows = [row for r in reads for row in r.batch.to_pylist()]
    assert [row.get("x") for row in rows[1:]] == ([str(i) for i in range(2000)] if raw else list(range(2000)))


def test_jsonl_lines_appended_while_it_is_read_are_not_read_with_their_keys_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The columns come from a first pass: a line appended after it had its new keys dropped,
    silently. The rows are those of the file the first pass read."""
    from runink.plugins.storage.jsonl import JsonlStorage

    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n')
    first_pass = JsonlStorage._file_schema

    def then_append(*args: object) -> object:
        found = first_pass(*args)  # type: ignore[arg-type]
        with path.open("a") as fh:
            fh.write('{"a": 2, "secret": "lost"}\n')
        return found

    monkeypatch.setattr(JsonlStorage, "_file_schema", staticmethod(then_append))
    reads = list(JsonlStorage().read(path))
    assert [row for r in reads for row in r.batch.to_pylist()] == [{"a": 1}]


@pytest.mark.parametrize("raw", [True, False])
def test_jsonl_nan_and_infinity_are_no_json(tmp_path: Path, raw: bool) -> None:
    """pyarrow reads NaN, Infinity and Inf, which JSON has not, as numbers (raw: the text "nan"
    reached the contract): each line is a dead letter, the others keep pyarrow's types."""
    path = tmp_path / "x.jsonl"
    path.write_text('{"r": 1.5}\n{"r": NaN}\n{"n": {"x": [-Infinity]}}\n{"r": Inf}\n{"r": 2.5, "n": {"x": [1.0]}}\n')
    rows, positions, bad = _jsonl_read(path, raw=raw)
    assert positions == [1, 5] and [row["r"] for row in rows] == (["1.5", "2.5"] if raw else [1.5, 2.5])
    assert [(line, reason.split(":")[0]) for line, reason in bad] == [
        (2, "invalid JSON"),
        (3, "invalid JSON"),
        (4, "invalid JSON"),
    ]
    assert [reason for _, reason in bad][:2] == [
        "invalid JSON: NaN is not a JSON value",
        "invalid JSON: -Infinity is not a JSON value",
    ]


def test_jsonl_numbers_a_contract_wants_exact_keep_every_digit(tmp_path: Path) -> None:
    """A JSON number went through a float64 (17 digits): 999999.999999999999 was published as
    1000000.00 and 12.3400000000000000001 as 12.34, both valid (a review's run). Read for a
    contract's Decimal fields (``exact``), each keeps its digits, and the contract decides."""

    class Money(Contract):
        amount: Decimal = Field(precision=12, scale=2)
        ratio: float

    path = tmp_path / "m.jsonl"
    fast = ['{"amount": 999999.999999999999, "ratio": 0.5}', '{"amount": 12.34, "ratio": 0.25}']
    path.write_text("\n".join(fast) + "\n")
    jsonl = load_driver(Storage, "jsonl")
    (read,) = jsonl.read(path, raw=True, options={"exact": ["amount"]})
    result = validate(Money, read.batch)
    assert result.valid.column("amount").to_pylist() == [Decimal("12.34")]
    assert result.reasons.to_pylist() == ["amount: not a valid decimal(12,2)"]
    assert result.valid.column("ratio").to_pylist() == [0.25]
    # past what a decimal(38, 18) holds: read line by line, each number as it is written
    path.write_text('{"amount": 12.3400000000000000001, "ratio": 1}\n{"amount": 7, "ratio": 2}\n')
    (read,) = jsonl.read(path, raw=True, options={"exact": ["amount"]})
    assert read.batch.column("amount").to_pylist() == ["12.3400000000000000001", "7"]
    assert validate(Money, read.batch).reasons.to_pylist() == ["amount: not a valid decimal(12,2)"]
    (plain,) = jsonl.read(path, raw=True)  # (without it, as before: a float's text)
    assert plain.batch.column("amount").to_pylist()[0] == "12.34"


def test_sinks_write_columns_their_library_cannot(tmp_path: Path) -> None:
    """polars panicked writing a decimal256 or a binary column as JSON (a Rust panic that no
    `except Exception` catches), and Arrow's CSV writer refused string_view (a review's runs)."""
    from decimal import Decimal

    from runink.core.lossless import cast_losing_nothing
    from runink.plugins.storage.csv import CsvWriter
    from runink.plugins.storage.jsonl import JsonlWriter

    batch = pa.RecordBatch.from_pydict(
        {
            "d": pa.array([Decimal("123456789012345678901234567890.12"), None], pa.decimal256(40, 2)),
            "b": pa.array([b"\x00\xff", None], pa.binary()),
        }
    )
    jsonl = JsonlWriter(tmp_path / "o.jsonl")
    jsonl.write(batch)
    jsonl.commit()
    assert [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()] == [
        {"d": "123456789012345678901234567890.12", "b": "AP8="},
        {"d": None, "b": None},
    ]
    views = pa.RecordBatch.from_pydict({"s": pa.array(["x", None], pa.string_view())})
    csv = CsvWriter(tmp_path / "o.csv", views.schema)
    csv.write(cast_losing_nothing(views, csv.schema))
    csv.commit()
    assert (tmp_path / "o.csv").read_text().splitlines() == ['"s"', '"x"', ""]


def test_csv_the_first_block_s_dead_letters_come_once_without_a_double_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(no double column: the chunk is parsed once, its pieces of dead letters only held until
    a row types the columns)"""
    parses = _counted_parses(monkeypatch, max_malformed=4)
    path = tmp_path / "x.csv"
    path.write_text("id,n\n" + "bad\n" * 6 + "".join(f"{i},{i}\n" for i in range(4)))
    reads = list(load_driver(Storage, "csv").read(path))
    assert [row for read in reads for row in read.batch.to_pylist()] == [{"id": i, "n": i} for i in range(4)]
    assert [m.position for read in reads for m in read.malformed] == list(range(2, 8))
    assert parses[0] == 4  # (the block, then its 3 pieces: none twice)
