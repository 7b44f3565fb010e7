"""CSV datasets: read in blocks of whole lines, parsed with pyarrow; malformed records are reported, not fatal.

A record is one line, unless a quoted value holds line breaks (RFC 4180): that record goes on
to the line that closes the value, if it is one well-formed record of the header's columns
within ``MAX_RECORD_BYTES``. A quote that does not close so (a stray quote: a CSV parser lets
it swallow the following lines into one value), a wrong column count, a line that is not
UTF-8 or one longer than ``MAX_LINE_BYTES`` is one malformed record at its line, and the lines
after it are read as usual.

The common case costs a count of the line breaks of each block: when the parser returns as
many records (valid and invalid) as the block has lines, no value spanned lines and no line
was blank, unless the last line left a quote open (it swallowed only the block's final break:
that line alone is checked). Any other block is looked at line by line: each line is checked
once, and the records found parsed once more, in pieces of at most ``MAX_MALFORMED`` lines
(time linear in the block, memory bounded).
"""

from __future__ import annotations

import csv as stdlib_csv
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from runink.core.datasets import AtomicFileWriter, DatasetError
from runink.core.interfaces.storage import MAX_LINE_BYTES, DatasetWriter, Malformed, ReadBatch, Storage
from runink.core.readahead import ahead
from runink.plugins.storage.doubles import as_doubles, may_lose_digits

# Bytes per parsed block, i.e. per batch. Peak memory is proportional to it (validation makes
# several column-sized intermediates): measured on 1M/10M-row orders, 2 MiB gives 291/320 MB
# peak at full speed; 4 MiB 324/443 MB (steady state reached only on long inputs); 1 MiB is flat
# but 40% slower.
BLOCK_SIZE = 2 << 20
#: a longer line is a malformed record, skipped in pieces, never held whole.
#: characters of a malformed record's text kept for its dead-letter row.
MAX_TEXT = 4096
#: bytes of a record whose quoted values hold line breaks, at most: a stray quote is looked past
#: this far at most for a line that closes its value (and the record is held whole).
MAX_RECORD_BYTES = 1 << 20
# A value may be as long as a line: Python's csv refused one of more than 128 KiB by default, and
# a well-formed record holding one was read as several (a review). (Process-wide, as it must be.)
stdlib_csv.field_size_limit(max(stdlib_csv.field_size_limit(), MAX_LINE_BYTES))
UNCLOSED = (
    f"a quoted value does not close: no later line within {MAX_RECORD_BYTES >> 20} MiB ends it as one "
    "well-formed record of the header's columns"
)
BOM = b"\xef\xbb\xbf"
#: malformed records in one batch at most: each is a Python object here and a dead-letter row
#: later, so a block of short malformed lines is read in pieces of this many lines (a 2 MiB
#: block of 1M lone quotes in one batch took 560 MB).
MAX_MALFORMED = 1 << 16
#: columns a CSV source may have: memory grows with them (a header of 1M columns took 12.7 GB).
MAX_COLUMNS = 10_000


def _lone_cr(line: bytes) -> int | None:
    """Where the first CR that ends ``line`` early is: outside quotes, not before LF, not last."""
    at, quotes, counted = line.find(b"\r"), 0, 0
    while at != -1:
        quotes += line.count(b'"', counted, at)  # (counted once: per CR from the start was quadratic)
        counted = at
        if quotes % 2 == 0:  # (outside a quoted value: a CR in one is its text)
            return at if line[at + 1 : at + 2] not in (b"\n", b"") else None
        at = line.find(b"\r", at + 1)
    return None


def _header(fh: IO[bytes], path: Path, delimiter: str) -> list[str]:
    start = fh.tell()
    line = fh.readline(MAX_LINE_BYTES)
    lone_cr = _lone_cr(line)
    if lone_cr is not None:
        # (lines that end with a lone CR, as the rows' reader takes them: readline splits at LF
        # only, and such a file failed at its header, a review)
        line = line[: lone_cr + 1]
        fh.seek(start + lone_cr + 1)
    if not line.removeprefix(BOM).strip():  # (a BOM alone was a header of one unnamed column)
        raise DatasetError(f"{path}: empty file (expected a header line)")
    try:
        text = line.removeprefix(BOM).decode("utf-8")
        row = next(stdlib_csv.reader([text], delimiter=delimiter, strict=True))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}:1: the header is not UTF-8: {exc}") from None
    except stdlib_csv.Error as exc:
        raise DatasetError(f"{path}:1: the header is not one CSV line: {exc}") from None
    if not line.endswith((b"\n", b"\r")) and len(line) >= MAX_LINE_BYTES:
        raise DatasetError(f"{path}:1: the header is longer than {MAX_LINE_BYTES} bytes")
    return row


def physical_lines(records: np.ndarray, bad_lines: list[int]) -> np.ndarray:
    """1-based file line of each parsed record (1-based), given the malformed lines skipped so far.

    Line of record r = r + 1 (header) + the number of malformed lines before it. With the
    malformed lines b_0 < b_1 < ... the count is how many (b_i - i) are <= r + 1.
    """
    if not bad_lines:
        return records + 1
    adjusted = np.asarray(sorted(bad_lines), dtype=np.int64) - np.arange(len(bad_lines), dtype=np.int64)
    return records + 1 + np.searchsorted(adjusted, records + 1, side="right")


def _count_lines(data: bytes, end: int) -> int:
    """Line breaks in ``data[:end]`` as pyarrow ends records: \\r\\n, \\n or a lone \\r."""
    n = int(np.count_nonzero(np.frombuffer(data, np.uint8, end) == 10))  # 5x faster than bytes.count
    if data.find(b"\r", 0, end) >= 0:
        n += data.count(b"\r", 0, end) - data.count(b"\r\n", 0, end)
    return n


#: what a line of a chunk read line by line is (``_Lines.kind``)
BLANK, RECORD, CONTINUED, MALFORMED = 0, 1, 2, 3


class _Lines:
    """A chunk's lines (each ending with a break: \\r\\n, \\n or a lone \\r) as offsets, not
    one bytes object each, and what each line is (``kind``: blank or a record's first line to
    begin with)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        buf = np.frombuffer(data, np.uint8)
        lf, cr = buf == 10, buf == 13
        breaks = np.flatnonzero(lf | (cr & np.append(~lf[1:], True)))  # (the last byte of each break)
        self.ends = breaks - (lf[breaks] & cr[np.maximum(breaks - 1, 0)] & (breaks > 0))  # (its break left out)
        self.starts = np.concatenate(([0], breaks[:-1] + 1))[: len(breaks)].astype(np.int64)  # (none: no line)
        self.kind = np.where(self.ends == self.starts, BLANK, RECORD).astype(np.int8)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> bytes:
        """Line ``i``, without its break."""
        return self.data[self.starts[i] : self.ends[i]]

    def text(self, first: int, last: int, breaks: bool = False) -> bytes:
        """Lines ``first`` to ``last``, the breaks between them kept (and the last's: ``breaks``)."""
        end = (self.starts[last + 1] if last + 1 < len(self) else len(self.data)) if breaks else self.ends[last]
        return self.data[self.starts[first] : end]

    def size(self, first: int, end: int) -> int:
        """Bytes of lines ``first`` up to ``end`` (not included), breaks included."""
        return int((self.starts[end] if end < len(self) else len(self.data)) - self.starts[first])

    def record_end(self, first: int) -> int:
        """The last line of the record whose first line is ``first``."""
        last = first
        while last + 1 < len(self) and self.kind[last + 1] == CONTINUED:
            last += 1
        return last

    def quoted(self) -> np.ndarray:
        """The lines holding a quote."""
        quotes = np.flatnonzero(np.frombuffer(self.data, np.uint8) == 34)
        return np.unique(np.searchsorted(self.starts, quotes, side="right") - 1)

    def not_utf8(self) -> dict[int, str]:
        """The lines that are not UTF-8, each with why."""
        try:
            self.data.decode("utf-8")
            return {}
        except UnicodeDecodeError:
            pass
        found = {}
        for i in range(len(self)):
            if (reason := _not_utf8(self[i])) is not None:
                found[i] = reason
        return found


def _not_utf8(line: bytes) -> str | None:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line)"
    return None


def _text(line: bytes) -> str:
    return Malformed.text_of(line, MAX_TEXT)


def _size(fh: IO[bytes]) -> int | None:
    """The file's size, if it is a regular file (not a pipe or a device)."""
    try:
        info = os.fstat(fh.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) and info.st_size > 0 else None


def _blocks(fh: IO[bytes], block_size: int, line: int) -> Iterator[tuple[memoryview, int, int] | Malformed]:
    """Chunks of whole lines (each ending with a line break) with the line number of their first
    line and their number of lines, and a Malformed for each line longer than MAX_LINE_BYTES
    (skipped)."""
    limit = max(MAX_LINE_BYTES, block_size)
    seekable = fh.seekable()
    carry = b""
    while True:
        data = fh.read(block_size)
        if not data:
            if carry:
                chunk = carry if carry.endswith(b"\n") else carry + b"\n"
                yield memoryview(chunk), line, _count_lines(chunk, len(chunk))
            return
        if carry:
            data, carry = carry + data, b""
        cut = data.rfind(b"\n") + 1 or data.rfind(b"\r", 0, len(data) - 1) + 1  # a lone \r: old Mac files
        if cut == 0:
            carry = data
            if len(carry) > limit:
                yield Malformed(line, f"line longer than {limit} bytes", _text(carry))
                carry = _skip_line(fh, block_size)
                line += 1
            continue
        if cut < len(data):
            if seekable:  # the partial last line is read again with the next block: no copying
                fh.seek(cut - len(data), 1)
            else:
                carry = data[cut:]
        count = _count_lines(data, cut)
        yield memoryview(data)[:cut], line, count
        line += count


def _skip_line(fh: IO[bytes], block_size: int) -> bytes:
    """Read up to the end of the current line; return what follows it in the last read."""
    while data := fh.read(block_size):
        end = data.find(b"\n")
        if end >= 0:
            return data[end + 1 :]
    return b""


#: the rest of a quoted value, up to its closing quote ("" is a quote inside it)
VALUE_END = re.compile(rb'(?:[^"]++|"")*+"').match


def _closed_line(delimiter: str) -> Callable[[bytes], object]:
    """A test of whether a line (without its break) leaves no quote open, as pyarrow parses it:
    a quote opens a value only at its start; inside, "" is a quote; after the closing quote the
    value goes on as text to the delimiter. Possessive repeats: linear in the line's length."""
    d = re.escape(delimiter.encode())
    field = rb'(?:"(?:[^"]++|"")*+"[^%b]*+|[^"%b][^%b]*+|)' % (d, d, d)
    return re.compile(rb"%b(?:%b%b)*+" % (field, d, field)).fullmatch


def _last_line(chunk: memoryview | bytes) -> bytes:
    """The chunk's last line, without its break (the chunk ends with one)."""
    view = memoryview(chunk)
    end = len(view) - 1
    if end > 0 and view[end] == 10 and view[end - 1] == 13:
        end -= 1
    start, step = end, 256
    while start > 0:  # back from the end in growing windows: the line may be long, the chunk longer
        low = max(0, start - step)
        window = bytes(view[low:start])
        cut = max(window.rfind(b"\n"), window.rfind(b"\r"))
        if cut >= 0:
            start = low + cut + 1
            break
        start, step = low, step * 2
    return bytes(view[start:end])


#: a parsed piece of a chunk: its batch, the file line of each row, its malformed records
Parsed = tuple[pa.RecordBatch, np.ndarray, list[Malformed], "_Lines | None"]


#: what a line does inside a quoted value left open by an earlier line (``_Inside``)
GOES_ON, REOPENS, CLOSES, STOPS = 0, 1, 2, 3


class _Inside:
    """What each line holding a quote does inside a value left open on an earlier line, found
    once for each (in the order the scan reaches them): whether the value goes on past it, and
    the delimiters it adds to the record, kept as running sums so that whether a line's record
    is well-formed is known in constant time (a parse of every candidate record was quadratic:
    lines that each close a value and open another, a review's 195 KiB file took 71 s)."""

    def __init__(self, parser: _ChunkParser, lines: _Lines, special: list[int], why: dict[int, str]) -> None:
        self.parser, self.lines, self.special, self.why = parser, lines, special, why
        self.state = [-1] * len(special)
        # running sums over the special lines looked at, from the start of their run: delimiters
        # added, and lines that are not strict CSV
        self.delimiters = [0] * (len(special) + 1)
        self.crooked = [0] * (len(special) + 1)
        self.looked = -1  # the last special line looked at

    def goes_on(self, at: int) -> bool:
        """Whether the value is still open after ``special[at]`` (it goes on, or reopens)."""
        if at > self.looked:
            state, added = self._look(self.special[at])
            if at != self.looked + 1:  # (a new run: lines in between were never inside a value)
                self.delimiters[at] = self.crooked[at] = 0
            self.state[at] = state
            self.delimiters[at + 1] = self.delimiters[at] + (added or 0)
            self.crooked[at + 1] = self.crooked[at] + (added is None)
            self.looked = at
        return self.state[at] in (GOES_ON, REOPENS)

    def one_record(self, first: int, stop: int) -> bool:
        """Whether the lines from ``special[first]`` (which leaves a value open) to
        ``special[stop]`` (which closes it) are one well-formed record of the header's columns."""
        if self.state[stop] != CLOSES or self.crooked[stop + 1] != self.crooked[first + 1]:
            return False
        opened = self.parser.strict_fields(self.lines[self.special[first]] + b'"')  # (its value closed)
        added = self.delimiters[stop + 1] - self.delimiters[first + 1]
        return opened is not None and opened + added == len(self.parser.names)

    def _look(self, i: int) -> tuple[int, int | None]:
        """Line ``i``'s state inside a value, and the delimiters it adds (None: not strict CSV)."""
        if i in self.why:
            return STOPS, None  # (not UTF-8)
        line = self.lines[i]
        end = VALUE_END(line)
        if end is None:
            return GOES_ON, 0  # (the whole line is inside the value: "" is a quote there)
        rest = line[end.end() :]
        if not rest:
            return CLOSES, 0
        delimiter = self.parser.delimiter.encode()
        if not rest.startswith(delimiter):
            return STOPS, None  # (text after the closing quote: no well-formed record goes on past it)
        rest = rest[len(delimiter) :]
        if self.parser.closed(rest):
            return CLOSES, self.parser.strict_fields(rest)
        return REOPENS, self.parser.strict_fields(rest + b'"')  # (a value opens again: closed here to count)


class _ChunkParser:
    """Parses chunks of whole lines: a batch, the file line of each of its rows, the malformed records."""

    def __init__(self, path: Path, names: list[str], delimiter: str, raw: bool) -> None:
        self.path = path
        self.names = names
        self.delimiter = delimiter
        self.closed = _closed_line(delimiter)
        #: a record open at the end of the last chunk: its bytes, file line and number of lines
        self.leftover: tuple[bytes, int, int] | None = None
        # raw: every column as text. Otherwise the types pyarrow infers on the first rows are kept
        # for the rest of the file, as pyarrow's own streaming reader does.
        self.types: dict[str, pa.DataType] | None = dict.fromkeys(names, pa.string()) if raw else None
        #: (no contract) the columns typed double. In a chunk that may hold a number a double
        #: cannot hold exactly (``may_lose_digits``), they are read as text and made doubles
        #: here (``as_text``): such a value's row is a dead letter; in the first rows, its column
        #: stays text (``deciding`` until they are seen). Elsewhere Arrow reads them, as fast.
        self.doubles: list[str] = []
        self.as_text = False
        self.deciding = False
        # With a contract only an empty value is null: "NA" (Namibia), "null", "N/A"... are text
        # the contract checks, as any other, and "" is an empty text (Arrow's CSV writer writes
        # a null as nothing, an empty string as ""). Without one, Arrow's null words stay null
        # (quoted too): the column types it infers from the first block would refuse them in a
        # later one.
        self.raw = raw

    def parse(self, chunk: memoryview, first_line: int, count: int, last: bool = False) -> Iterator[ReadBatch]:
        """The chunk's batch; several if it is looked at line by line and holds more than
        MAX_MALFORMED lines (each batch then has at most that many malformed records). A record
        still open at its end is kept in ``leftover`` (unless ``last``: no chunk follows)."""
        if self.types is None:  # (no contract, the file's first rows)
            yield from self._first(chunk, first_line, count, last)
            return
        self.as_text = bool(self.doubles) and may_lose_digits(chunk)
        for parsed in self._parse(chunk, first_line, count, last):
            yield self._read_batch(parsed, chunk, first_line)

    def _first(self, chunk: memoryview, first_line: int, count: int, last: bool) -> Iterator[ReadBatch]:
        """The chunk holding the file's first rows: the column types Arrow infers from them are
        kept for the rest of the file. A column empty in all of them is text (typed null, it
        refused every value after). If a double column may hold a number a double cannot hold
        exactly (``may_lose_digits``), the chunk is parsed again, those columns as text
        (``as_text``), its pieces yielded only from that parse (a piece yielded before was
        yielded twice: a review)."""
        pieces = self._parse(chunk, first_line, count, last)
        before: list[Parsed] = []  # (pieces of dead letters only: no row to type)
        for parsed in pieces:
            typed = parsed
            if self.types is None and parsed[0].num_rows:
                schema = parsed[0].schema
                self.types = {f.name: pa.string() if pa.types.is_null(f.type) else f.type for f in schema}
                self.doubles = [name for name, kind in self.types.items() if pa.types.is_floating(kind)]
                if self.doubles and may_lose_digits(chunk):
                    self.types.update(dict.fromkeys(self.doubles, pa.float64()))
                    self.as_text, self.deciding, self.leftover = True, True, None
                    for again in self._parse(chunk, first_line, count, last):
                        yield self._read_batch(again, chunk, first_line)
                    return
                typed = (parsed[0].cast(pa.schema(list(self.types.items()))), *parsed[1:])
            if self.types is None:
                before.append(parsed)
                continue
            for piece in (*before, typed):
                yield self._read_batch(piece, chunk, first_line)
            before = []
        for piece in before:
            yield self._read_batch(piece, chunk, first_line)

    def _read_batch(self, parsed: Parsed, chunk: memoryview, first_line: int) -> ReadBatch:
        """A parsed piece, its columns of ``doubles`` made doubles: a row with a value a double
        cannot hold exactly (or no number) is a dead letter, its record's text as it is."""
        batch, positions, bad, lines = parsed
        if self.as_text and batch.num_rows:
            batch, refused = self._as_doubles(batch, self.deciding)
            self.deciding = False
            if refused:
                lines = lines or _Lines(bytes(chunk))  # (the fast path's lines: one record each)
                for row, why in refused.items():
                    at = int(positions[row]) - first_line
                    bad.append(Malformed(int(positions[row]), why, _text(lines.text(at, lines.record_end(at)))))
                keep = np.ones(batch.num_rows, dtype=bool)
                keep[list(refused)] = False
                batch, positions = batch.filter(pa.array(keep)), positions[keep]
        bad.sort(key=lambda m: m.position)
        return ReadBatch(batch, pa.array(positions, pa.int64()), bad)

    def _as_doubles(self, batch: pa.RecordBatch, first: bool) -> tuple[pa.RecordBatch, dict[int, str]]:
        """``batch`` with its columns of ``doubles`` as doubles, and the rows refused, with why."""
        refused: dict[int, str] = {}
        for name in list(self.doubles):
            at = batch.schema.get_field_index(name)
            values, wrong = as_doubles(batch.column(at))
            if first and wrong:
                self.doubles.remove(name)  # (kept as written: 12345678901234567890 is no double)
                assert self.types is not None
                self.types[name] = pa.string()
                continue
            batch = batch.set_column(at, pa.field(name, pa.float64()), values)
            for row, why in wrong.items():
                refused.setdefault(row, f"column {name!r}: {why} (the type the file's first rows gave it)")
        return batch, refused

    @property
    def convert(self) -> pacsv.ConvertOptions:
        types = self.types
        if self.as_text and types is not None:
            types = {**types, **dict.fromkeys(self.doubles, pa.string())}
        if self.raw:
            return pacsv.ConvertOptions(
                column_types=types, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False
            )
        return pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)

    def _read(self, chunk: memoryview | bytes, invalid: list[pacsv.InvalidRow]) -> pa.RecordBatch:
        """The chunk's records as a batch, the ones with a wrong column count in ``invalid``.
        More than MAX_MALFORMED of those: ArrowInvalid (the caller reads the chunk in pieces)."""

        def on_invalid(row: pacsv.InvalidRow) -> str:
            invalid.append(row)
            return "skip" if len(invalid) <= MAX_MALFORMED else "error"

        table = pacsv.read_csv(
            pa.BufferReader(chunk),
            # one block for the whole chunk: one batch, and row numbers counted from its start
            read_options=pacsv.ReadOptions(column_names=self.names, use_threads=False, block_size=len(chunk) + 1),
            parse_options=pacsv.ParseOptions(delimiter=self.delimiter, invalid_row_handler=on_invalid),
            convert_options=self.convert,
        )
        if table.num_rows == 0:
            return pa.RecordBatch.from_pylist([], schema=table.schema)
        batches = table.to_batches()
        return batches[0] if len(batches) == 1 else table.combine_chunks().to_batches()[0]

    def _parse(self, chunk: memoryview, first_line: int, count: int, last: bool) -> Iterator[Parsed]:
        """``count``: the chunk's lines."""
        try:
            # A line not UTF-8 is a dead letter, found line by line: Arrow would type its column
            # as bytes (no contract, the first block), or fail to pass its text to on_invalid
            # (a wrong column count: "Exception ignored" on stderr, and then the parse fails).
            str(chunk, "utf-8")
        except UnicodeDecodeError:
            yield from self._by_line(chunk, first_line, last)
            return
        invalid: list[pacsv.InvalidRow] = []
        try:
            batch = self._read(chunk, invalid)
        except pa.ArrowInvalid:  # many malformed lines, lines swallowed into a typed value...
            yield from self._by_line(chunk, first_line, last)
            return
        # As many records as lines: no value spans lines, no line is blank (the common case),
        # unless a quote left open on the last line swallowed only the chunk's final break.
        if batch.num_rows + len(invalid) == count and self.closed(_last_line(chunk)):
            numbers = [int(row.number) for row in invalid]
            rows = np.arange(1, batch.num_rows + 1, dtype=np.int64)
            lines = physical_lines(rows, [n + 1 for n in numbers]) + (first_line - 2)
            bad = [_wrong_count(row, first_line - 1 + n) for row, n in zip(invalid, numbers, strict=True)]
            yield batch, lines, bad, None
        else:
            del batch, invalid  # (freed before the chunk is parsed again)
            yield from self._by_line(chunk, first_line, last)

    def _by_line(self, chunk: memoryview, first_line: int, last: bool) -> Iterator[Parsed]:
        """The chunk's records found line by line, parsed in pieces of about MAX_MALFORMED lines.
        Linear in the chunk's size whatever its lines hold (a parse per swallowed record was
        not: 80 s and 1 GB per MB of lines holding a lone quote); only the lines holding a quote
        (or not UTF-8) are looked at one by one, each at most twice.

        A line that leaves a quote open starts a record that goes on to the first later line
        closing that value, if that record is one well-formed CSV record (RFC 4180, strict) of
        the header's columns within MAX_RECORD_BYTES; else the line alone is malformed and
        the next line is read as a record. A record still open at the chunk's end is kept in
        ``self.leftover`` for the next chunk, unless ``last``."""
        lines = _Lines(bytes(chunk))
        why = lines.not_utf8()  # a malformed line's reason, by its index
        special = np.union1d(lines.quoted(), np.fromiter(why, np.int64, len(why))).tolist()
        inside = _Inside(self, lines, special, why)
        end = len(lines)  # the lines from here on go to the next chunk (a record still open)
        stop_at = 0  # in ``special``: the lines before it go on inside a value left open
        taken = -1  # the lines up to here are in a record of several lines
        for at, i in enumerate(special):
            if i <= taken or i in why or self.closed(lines[i]):
                continue
            # A quoted value left open: the lines after it go on with it up to the first that
            # closes it, or that cannot be inside it (each line is looked at once: stop_at only
            # moves on).
            stop_at = max(stop_at, at + 1)
            while stop_at < len(special) and inside.goes_on(stop_at):
                stop_at += 1
            stop = special[stop_at] if stop_at < len(special) else len(lines)
            if stop == len(lines) and not last and lines.size(i, stop) <= MAX_RECORD_BYTES:
                end = i
                break
            if stop < len(lines) and lines.size(i, stop + 1) <= MAX_RECORD_BYTES and inside.one_record(at, stop_at):
                lines.kind[i + 1 : stop + 1] = CONTINUED
                taken = stop
            else:
                why[i] = UNCLOSED
        lines.kind[list(why)] = MALFORMED
        low = 0
        while low < end:  # pieces of about MAX_MALFORMED lines, each ending where a record does
            high = min(low + MAX_MALFORMED, end)
            while high < end and lines.kind[high] == CONTINUED:
                high += 1
            yield self._records(lines, low, high, why, first_line)
            low = high
        if end < len(lines):
            self.leftover = (lines.data[lines.starts[end] :], first_line + end, len(lines) - end)

    def strict_fields(self, text: bytes) -> int | None:
        """How many fields the line ``text`` holds, read as strict CSV (RFC 4180: nothing after a
        closing quote but a delimiter); None if it is not so."""
        if not text:
            return 1
        try:
            row = next(stdlib_csv.reader([text.decode("utf-8")], delimiter=self.delimiter, strict=True))
        except (stdlib_csv.Error, StopIteration, UnicodeDecodeError):
            return None
        return len(row)

    def _records(self, lines: _Lines, low: int, high: int, why: dict[int, str], first_line: int) -> Parsed:
        """Lines ``low`` to ``high`` parsed once, as they are but for the malformed ones (a value's
        line breaks kept): a batch with the file line of each row, and the malformed records
        (the ones with a wrong column count too)."""
        kind = lines.kind[low:high]
        skipped = (np.flatnonzero(kind == MALFORMED) + low).tolist()
        bad = [Malformed(first_line + i, why[i], _text(lines[i])) for i in skipped]
        cuts = [low, *(x for i in skipped for x in (i, i + 1)), high]
        pieces = (lines.text(a, b - 1, breaks=True) for a, b in zip(cuts[::2], cuts[1::2], strict=True) if a < b)
        text = b"".join(pieces) or b"\n"  # (no record: Arrow's empty table, not "Empty CSV file")
        starts = np.flatnonzero(kind == RECORD) + low  # each record's first line
        numbers = (starts + first_line).tolist()
        invalid: list[pacsv.InvalidRow] = []
        try:
            batch = self._read(text, invalid)
        except pa.ArrowInvalid as exc:
            if self.raw or self.types is None:
                raise self._error(first_line + low, numbers, exc) from None
            # (no contract) a value the types of the first rows refuse: that record is a dead
            # letter, found by halves with the same converter; the others read as before (the
            # scenario failed, or, read as text and cast, " 5" failed as an int too)
            records = [lines.text(i, lines.record_end(i)) for i in starts.tolist()]
            refused = self._refused(records, 0, len(records))
            bad.extend(Malformed(numbers[i], why, _text(records[i])) for i, why in refused.items())
            records = [r for i, r in enumerate(records) if i not in refused]
            numbers = [n for i, n in enumerate(numbers) if i not in refused]
            invalid = []
            try:
                batch = self._read(b"\n".join(records) + b"\n", invalid)
            except pa.ArrowInvalid:
                raise self._error(first_line + low, numbers, exc) from None
        found = batch.num_rows + len(invalid)
        if found != len(numbers):  # cannot be, as long as closed() and _Inside read lines as pyarrow does
            raise self._error(first_line + low, numbers, f"{found} records in {len(numbers)}")
        wrong = np.asarray([int(row.number) - 1 for row in invalid], dtype=np.int64)
        bad.extend(_wrong_count(row, numbers[n]) for row, n in zip(invalid, wrong, strict=True))
        return batch, np.delete(np.asarray(numbers, dtype=np.int64), wrong), bad, lines

    def _refused(self, lines: list[bytes], low: int, high: int) -> dict[int, str]:
        """The lines in ``lines[low:high]`` that the first rows' column types refuse, each with
        why (halves that convert cost one parse: a few bad lines, a few dozen parses)."""
        if not any(lines[low:high]):
            return {}
        try:
            self._read(b"\n".join(lines[low:high]) + b"\n", [])
            return {}
        except pa.ArrowInvalid as exc:
            if high - low == 1:
                return {low: self._why_refused(str(exc))}
        middle = (low + high) // 2
        return {**self._refused(lines, low, middle), **self._refused(lines, middle, high)}

    def _why_refused(self, message: str) -> str:
        """Arrow's "In CSV column #1: Row #1: CSV conversion error to int64: invalid value 'x'"
        as "column 'qty': ..." (the type is the one the file's first rows gave the column)."""
        found = re.match(r"In CSV column #(\d+): (?:Row #\d+: )?(.*)", message, re.DOTALL)
        if found is None or int(found.group(1)) >= len(self.names):
            return f"a value the column types of the file's first rows refuse: {message.splitlines()[0]}"
        name = self.names[int(found.group(1))]
        return f"column {name!r}: {found.group(2).splitlines()[0]} (the type the file's first rows gave it)"

    def _error(self, first_line: int, numbers: list[int], exc: Exception | str) -> DatasetError:
        return DatasetError(f"{self.path}: lines {first_line}-{max(numbers, default=first_line)}: {exc}")


def _wrong_count(row: pacsv.InvalidRow, line: int) -> Malformed:
    text = row.text or ""
    return Malformed(line, f"expected {row.expected_columns} columns, got {row.actual_columns}", text[:MAX_TEXT])


def _rest(parser: _ChunkParser) -> Iterator[ReadBatch]:
    """The record left open at the last chunk's end, now that no line follows it: malformed,
    and the lines after its first read again as records."""
    if parser.leftover is not None:
        left, line, count = parser.leftover
        parser.leftover = None
        yield from parser.parse(memoryview(left), line, count, last=True)


def _parsed(fh: IO[bytes], parser: _ChunkParser, block_size: int) -> Iterator[ReadBatch]:
    """The file's batches, from its blocks of whole lines, in order."""
    names = parser.names
    pending: list[Malformed] = []
    size, consumed = _size(fh), fh.tell()  # bytes parsed so far: how far the read is
    fraction = None
    for block in _blocks(fh, block_size, 2):
        if isinstance(block, Malformed):  # (a line too long for a record: one still open ends before it)
            for read in _rest(parser):
                yield ReadBatch(read.batch, read.positions, [*pending, *read.malformed], fraction)
                pending = []
            pending.append(block)
            continue
        chunk, line, count = block
        consumed += len(chunk)
        fraction = min(1.0, consumed / size) if size else None
        if parser.leftover is not None:  # (a record whose values span lines goes on in this block)
            left, line, lines = parser.leftover
            chunk, count, parser.leftover = memoryview(left + bytes(chunk)), count + lines, None
        for read in parser.parse(chunk, line, count):
            yield ReadBatch(read.batch, read.positions, [*pending, *read.malformed], fraction)
            pending = []
    for read in _rest(parser):
        yield ReadBatch(read.batch, read.positions, [*pending, *read.malformed], fraction)
        pending = []
    if pending:
        schema = pa.schema([pa.field(n, (parser.types or {}).get(n, pa.string())) for n in names])
        yield ReadBatch(pa.RecordBatch.from_pylist([], schema=schema), pa.array([], pa.int64()), pending)


class CsvStorage(Storage):
    name = "csv"
    position_unit = "line"
    extensions = (".csv",)

    def read(self, path: Path, *, raw: bool = False, options: Mapping[str, Any] | None = None) -> Iterator[ReadBatch]:
        options = dict(options or {})
        delimiter = options.get("delimiter", ",")
        block_size = max(1 << 10, int(options.get("block_size", BLOCK_SIZE)))
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the with below, across yields
        except FileNotFoundError:
            raise DatasetError(f"source {path} does not exist") from None
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc}") from None
        with fh:
            names = _header(fh, path, delimiter)
            if len(names) > MAX_COLUMNS:
                raise DatasetError(f"{path}:1: the header has {len(names):,} columns, more than {MAX_COLUMNS:,}")
            if len(set(names)) != len(names):
                raise DatasetError(f"{path}:1: duplicate column names in header: {names}")
            # Parsed on a thread one batch ahead: pyarrow parses without the GIL, so the next
            # block is parsed while the caller validates and transforms this one.
            yield from ahead(_parsed(fh, _ChunkParser(path, names, delimiter, raw), block_size), "runink-csv-read")

    def writer(self, path: Path, schema: pa.Schema, *, options: Mapping[str, Any] | None = None) -> DatasetWriter:
        return CsvWriter(path, schema)


class CsvWriter(AtomicFileWriter):
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        super().__init__(path)
        # Arrow's CSV writer has no string or binary views ("Unsupported Type"): their plain
        # types are the file's (the runner casts each batch to ``schema``, losing nothing)
        self.schema = pa.schema(
            [
                f.with_type(pa.string())
                if pa.types.is_string_view(f.type)
                else f.with_type(pa.binary())
                if pa.types.is_binary_view(f.type)
                else f
                for f in schema
            ],
            metadata=schema.metadata,
        )
        self._writer = pacsv.CSVWriter(str(self.output.temp), self.schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _close(self) -> None:
        self._writer.close()
