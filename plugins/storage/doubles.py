"""Numbers written as text, read as doubles only where a double holds them exactly.

Without a contract a column of numbers with a fraction (or a whole number past int64) is typed
double, as Arrow, polars and DuckDB type it. A double holds about 15-17 significant digits:
12345678901234567890 became 12345678901234567000 and 0.12345678901234567890 lost its last
digits, silently. Here such a value is found, so that the reader can keep its column as text or
make its row a dead letter instead.
"""

from __future__ import annotations

import decimal
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: a number written in at most this many characters and no exponent is within a double's range
#: and precision (DBL_DIG digits): no need to look at it
SAFE_DIGITS = 15
#: the decimal a number's text and its double are compared in: 38 digits either side of the
#: point hold the shortest text of every double from 1e-21 to 1e38 (a double's 17 digits)
WIDE_NUMBER = pa.decimal256(76, 38)


#: bytes as may_lose_digits sees them: d for a digit or a point, e for an exponent's letter
_NUMBER_CHARS = bytes(
    ord("d") if chr(c) in "0123456789." else ord("e") if chr(c) in "eE" else ord(" ") for c in range(256)
)


def may_lose_digits(data: bytes | memoryview) -> bool:
    """Whether ``data`` (a file's bytes) may hold a number a double cannot hold exactly: 16
    digits and points in a row, or a digit before an e (an exponent: past a double's range?).
    A pre-filter, ~1 ms per MiB: where it says no, every number of ``data`` is a double as it
    is written (where it says yes, a string may have matched, looked at for nothing)."""
    chars = bytes(data).translate(_NUMBER_CHARS)
    return b"d" * 16 in chars or b"de" in chars


def as_doubles(text: pa.Array) -> tuple[pa.Array, dict[int, str]]:
    """``text`` (a string column; blanks around a value are ignored, as Arrow's CSV reader
    ignores them) as doubles, and the rows whose value is no number or one a double cannot
    hold exactly, each with why (its value is then null)."""
    text = pc.utf8_trim_whitespace(text)
    refused: dict[int, str] = {}
    try:
        values = pc.cast(text, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values, refused = _one_by_one(text)
    # (its length, not its digits: counting them by regex took 13x the whole read)
    unsure = pc.or_(pc.match_substring(text, "e", ignore_case=True), pc.greater(pc.utf8_length(text), SAFE_DIGITS))
    rows = np.flatnonzero(pc.fill_null(unsure, False).to_numpy(zero_copy_only=False))
    rows = rows[~np.isin(rows, list(refused))]
    if rows.size:
        at = pa.array(rows)
        try:  # (vectorized: Python took 33x the whole read of a column of 17-digit doubles)
            differs = shortest_differs(pc.cast(pc.take(text, at), WIDE_NUMBER), pc.take(values, at))
            lost = rows[differs.to_numpy(zero_copy_only=False)].tolist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # (a value past WIDE_NUMBER)
            lost = [row for row in rows.tolist() if not exact(text[row].as_py(), values[row].as_py())]
        refused.update({row: f"a double cannot hold {text[row].as_py()} exactly" for row in lost})
    if refused:
        keep = np.ones(len(text), dtype=bool)
        keep[list(refused)] = False
        values = pc.if_else(pa.array(keep), values, pa.scalar(None, pa.float64()))
    return values, refused


def shortest_differs(written: pa.Array, values: pa.Array) -> pa.Array:
    """Per value, whether the shortest text of the double in ``values`` (what a sink writes) has
    another value than the number ``written`` (as WIDE_NUMBER); ArrowInvalid if one of them is
    past WIDE_NUMBER."""
    shortest = pc.cast(pc.cast(values, pa.string()), WIDE_NUMBER)
    return pc.fill_null(pc.not_equal(written, shortest), False)


def _one_by_one(text: pa.Array) -> tuple[pa.Array, dict[int, str]]:
    """(some value is no number) Each value cast on its own, as Arrow reads numbers."""
    values: list[float | None] = []
    refused: dict[int, str] = {}
    for row, value in enumerate(text.to_pylist()):
        try:
            values.append(None if value is None else pc.cast(pa.array([value]), pa.float64())[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values.append(None)
            refused[row] = f"conversion error to double: invalid value {value!r}"
    return pa.array(values, pa.float64()), refused


def exact(text: str, value: float) -> bool:
    """Whether the double ``value`` read from ``text`` is the number ``text`` writes: its
    shortest form (what a sink writes) has the same value."""
    if math.isnan(value):  # (nothing to lose)
        return True
    try:
        return decimal.Decimal(text) == decimal.Decimal(repr(value))
    except decimal.InvalidOperation:
        return False
