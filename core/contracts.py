"""Contracts: typed record schemas with constraints, validated vectorized over Arrow batches.

A contract is a class with annotated fields::

    from datetime import datetime
    from runink.core.contracts import Contract, Field

    class Order(Contract):
        order_id: str = Field(regex=r"O-\\d+")
        amount: float = Field(ge=0, le=1_000_000)
        currency: str = Field(enum=["EUR", "USD"])
        email: str | None = Field(pii=True, mask=True, max_length=200)
        created_at: datetime

A field is required unless its type admits None. Types: str, int, float, bool, datetime,
date, and ``Decimal`` with its precision and scale (``amount: Decimal = Field(precision=12,
scale=2, gt=0)``: Arrow's decimal128, exact; a value with more digits than that is invalid,
never rounded, and bounds compare exactly). Validation converts raw (string) columns to the
contract's Arrow schema and checks every constraint with ``pyarrow.compute`` — no Python
loop per record — and returns the valid rows typed plus, for each invalid row, every reason
it failed.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ARROW_TYPES: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    dt.datetime: pa.timestamp("us"),
    dt.date: pa.date32(),
    decimal.Decimal: pa.decimal128(38, 0),  # (each field's own precision and scale: ContractField.arrow_type)
}
TYPE_NAMES = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    dt.datetime: "datetime",
    dt.date: "date",
    decimal.Decimal: "decimal",
}
MAX_DECIMAL_PRECISION = 38  # decimal128's

_INT_RE = r"^[+-]?0*\d{1,19}$"  # (19 digits: int64's; past its range the cast refuses the value)
_FLOAT_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(?i:nan|inf|infinity)$"
_DECIMAL_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# years 0001-9999, as Python's dates (Arrow reads year 0000, which no output can write back)
_YEAR = r"(000[1-9]|00[1-9]\d|0[1-9]\d{2}|[1-9]\d{3})"
_DATE_RE = rf"^{_YEAR}-\d{{2}}-\d{{2}}$"
_DATETIME_RE = rf"^{_YEAR}-\d{{2}}-\d{{2}}([T ]\d{{2}}(:\d{{2}}(:\d{{2}}(\.\d{{1,9}})?)?)?)?(Z|[+-]\d{{2}}:?\d{{2}})?$"
# fraction digits past the microseconds that are zeros (…00:00.123456000Z, as Go, Java and
# pandas write nanoseconds): dropped, nothing lost; other digits there are refused (lost)
_NANO_ZEROS = r"(\.\d{6})0{1,3}((Z|[+-]\d{2}:?\d{2})?)$"
_WRITTEN_INF = r"^\s*[+-]?(?i:inf|infinity)\s*$"
#: a decimal's text longer than this may hold more digits than decimal128 has, which Arrow's
#: cast wraps without a word (12.5000...0001 became 0.00; -9 39 times a positive value): such
#: values are read exactly, in Python. 38 digits always fit; every wrap found had 39 or more.
MAX_DECIMAL_TEXT = 38
_EPOCH = dt.datetime(1970, 1, 1)
_FIRST_MICROSECOND = (dt.datetime(1, 1, 1) - _EPOCH) // dt.timedelta(microseconds=1)
_LAST_MICROSECOND = (dt.datetime(9999, 12, 31, 23, 59, 59, 999999) - _EPOCH) // dt.timedelta(microseconds=1)
_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]


class ContractError(Exception):
    """A contract class is malformed (unsupported type, bad constraint)."""


@dataclass(frozen=True)
class Field:
    """Constraints of one contract field (all optional)."""

    ge: float | decimal.Decimal | None = None
    gt: float | decimal.Decimal | None = None
    le: float | decimal.Decimal | None = None
    lt: float | decimal.Decimal | None = None
    enum: Sequence[Any] | None = None
    regex: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    pii: bool = False
    mask: bool = False
    description: str = ""
    precision: int | None = None  # a Decimal field's digits in all (1-38)...
    scale: int | None = None  # ...and after the point (0-precision)


@dataclass(frozen=True)
class ContractField:
    name: str
    type: type
    required: bool
    constraints: Field

    @property
    def arrow_type(self) -> pa.DataType:
        if self.type is decimal.Decimal:
            return pa.decimal128(self.constraints.precision or MAX_DECIMAL_PRECISION, self.constraints.scale or 0)
        return ARROW_TYPES[self.type]

    @property
    def type_name(self) -> str:
        """``decimal(12,2)`` for a Decimal, else the type's name."""
        if self.type is decimal.Decimal:
            return f"decimal({self.constraints.precision},{self.constraints.scale})"
        return TYPE_NAMES[self.type]

    def describe(self) -> dict[str, Any]:
        constraints = {
            key: (list(value) if key == "enum" else value)
            for key, value in vars(self.constraints).items()
            if value is not None and value is not False and value != ""
        }
        constraints = {k: _plain(v) for k, v in constraints.items()}  # (exact bounds as text, JSON-safe)
        return {"name": self.name, "type": TYPE_NAMES[self.type], "required": self.required, **constraints}


class Contract:
    """Base class of contracts; subclasses declare annotated fields."""

    __contract_fields__: ClassVar[dict[str, ContractField]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:
            raise ContractError(f"contract {cls.__name__}: cannot read field types: {exc}") from exc
        fields: dict[str, ContractField] = {}
        for name, hint in hints.items():
            if name.startswith("__") or typing.get_origin(hint) is ClassVar:
                continue
            # (a name that starts with one _ is a column: `_id` was skipped, unchecked, and left
            # out of the output, a review; Runink's own columns are _runink_*, and a field named
            # as a Contract method hid it: `schema` broke every run with a TypeError)
            if name.startswith("_runink") or hasattr(Contract, name):
                why = "Runink's own columns start with _runink" if name.startswith("_runink") else "a Contract method's"
                raise ContractError(f"contract {cls.__name__}.{name}: a name Runink uses ({why}): rename the field")
            base, optional = _unwrap_optional(hint)
            if base not in ARROW_TYPES:
                raise ContractError(
                    f"contract {cls.__name__}.{name}: unsupported type {hint!r} "
                    f"(use {', '.join(TYPE_NAMES.values())}, optionally | None)"
                )
            default = cls.__dict__.get(name, Field())
            if default is None:  # `field: str | None = None`: optional, no constraints
                default, optional = Field(), True
            if not isinstance(default, Field):
                raise ContractError(f"contract {cls.__name__}.{name}: default must be Field(...), got {default!r}")
            _check_constraints(cls.__name__, name, base, default)
            fields[name] = ContractField(name, base, not optional, default)
            _check_enum(cls.__name__, fields[name])
        if not fields:
            raise ContractError(f"contract {cls.__name__} declares no fields")
        cls.__contract_fields__ = fields

    @classmethod
    def fields(cls) -> list[ContractField]:
        return list(cls.__contract_fields__.values())

    @classmethod
    def schema(cls) -> pa.Schema:
        return pa.schema([pa.field(f.name, f.arrow_type, nullable=not f.required) for f in cls.fields()])

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"name": cls.__name__, "fields": [f.describe() for f in cls.fields()]}

    @classmethod
    def contract_hash(cls) -> str:
        """A stable hash of the fields, types and constraints (not of the module or docstring)."""
        canonical = json.dumps(cls.describe(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _exact(value: Any) -> decimal.Decimal:
    """A bound or enum value of a Decimal field, exactly as written (0.1 is 0.1, not a float's digits)."""
    return value if isinstance(value, decimal.Decimal) else decimal.Decimal(str(value))


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _check_re2(where: str, regex: str) -> None:
    """A contract's regex is run by Arrow (RE2): one Python takes and RE2 does not (a lookahead,
    a backreference) failed the run's first batch instead of the contract."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        pc.match_substring_regex(pa.array([""], pa.string()), f"^(?:{regex})$")
    except pa.ArrowInvalid as exc:
        why = str(exc).removeprefix("Invalid regular expression: ")
        raise ContractError(
            f"{where}: regex {regex!r} is not RE2 syntax ({why}): lookarounds and backreferences are not supported"
        ) from None


def _number(value: object) -> bool:
    return isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool)


def _check_constraints(contract: str, name: str, base: type, spec: Field) -> None:
    where = f"contract {contract}.{name}"
    # each constraint of its kind (gt="abc" or enum=5 reached Arrow's kernels, or crashed
    # `contract show`, with no contract nor field named)
    for key in ("ge", "gt", "le", "lt"):
        bound = getattr(spec, key)
        if bound is not None and not (_number(bound) or (base is decimal.Decimal and isinstance(bound, str))):
            raise ContractError(f"{where}: {key}={bound!r} is not a number")
    for key in ("min_length", "max_length", "precision", "scale"):
        count = getattr(spec, key)
        if count is not None and (type(count) is not int or count < 0):
            raise ContractError(f"{where}: {key}={count!r} is not a whole number >= 0")
    if spec.enum is not None and (isinstance(spec.enum, str | bytes) or not isinstance(spec.enum, Sequence)):
        raise ContractError(f"{where}: enum={spec.enum!r} is not a list of values")
    if spec.regex is not None and not isinstance(spec.regex, str):
        raise ContractError(f"{where}: regex={spec.regex!r} is not text")
    numeric = base in (int, float, decimal.Decimal)
    if any(v is not None for v in (spec.ge, spec.gt, spec.le, spec.lt)) and not numeric:
        raise ContractError(f"{where}: ge/gt/le/lt apply to int, float and Decimal fields, not {TYPE_NAMES[base]}")
    if base is decimal.Decimal:
        if spec.precision is None or spec.scale is None:
            raise ContractError(
                f"{where}: a Decimal field needs Field(precision=P, scale=S), e.g. precision=12, scale=2"
            )
        if not 1 <= spec.precision <= MAX_DECIMAL_PRECISION or not 0 <= spec.scale <= spec.precision:
            raise ContractError(
                f"{where}: precision must be 1-{MAX_DECIMAL_PRECISION} and scale 0-precision, "
                f"got precision={spec.precision}, scale={spec.scale}"
            )
        for key in ("ge", "gt", "le", "lt"):
            bound = getattr(spec, key)
            if bound is not None:
                try:
                    _exact(bound)
                except decimal.InvalidOperation:
                    raise ContractError(f"{where}: {key}={bound!r} is not a number") from None
    elif spec.precision is not None or spec.scale is not None:
        raise ContractError(f"{where}: precision/scale apply to Decimal fields")
    if (spec.regex or spec.min_length is not None or spec.max_length is not None) and base is not str:
        raise ContractError(f"{where}: regex/min_length/max_length apply to str fields")
    if spec.regex == "":  # (it would refuse every value but "", and `contract show` and the hash left it out)
        raise ContractError(f"{where}: regex='' is empty")
    if spec.regex is not None:
        try:
            re.compile(spec.regex)
        except re.error as exc:
            raise ContractError(f"{where}: invalid regex {spec.regex!r}: {exc}") from None
        _check_re2(where, spec.regex)
    if spec.mask and base is not str:
        raise ContractError(f"{where}: mask applies to str fields")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)  # (NaN is no value equal to itself)


def _check_enum(contract: str, spec: ContractField) -> None:
    """``enum``'s values are values of the field's type, each as written: `enum=[1.5, 2.5]` on
    an int field was [1, 2], and `enum=["a"]` failed every run with Arrow's error, naming no
    contract (a review)."""
    listed = spec.constraints.enum
    if listed is None:
        return
    wrong = ContractError(
        f"contract {contract}.{spec.name}: enum={list(listed)!r} holds a value that is not of type {spec.type_name}"
    )
    try:
        values = [_exact(v) for v in listed] if spec.type is decimal.Decimal else list(listed)
        typed = pa.array(values, spec.arrow_type).to_pylist()
    except (pa.ArrowException, decimal.InvalidOperation, TypeError, ValueError, OverflowError):
        raise wrong from None
    same = all(t == v or (_is_nan(t) and _is_nan(v)) for t, v in zip(typed, values, strict=True))
    if not same or any(isinstance(v, bool) != (spec.type is bool) for v in values if v is not None):
        raise wrong


# --- validation -----------------------------------------------------------------------


@dataclass
class ValidationResult:
    """``valid``: the rows that passed, typed to the contract. ``invalid``: the raw rows that did not,
    with ``reasons`` (one string per invalid row) and ``invalid_index`` (their positions in the input).
    """

    valid: pa.RecordBatch
    invalid: pa.RecordBatch
    reasons: pa.Array
    invalid_index: pa.Array
    drift: list[str] = field(default_factory=list)


def detect_drift(contract: type[Contract], schema: pa.Schema) -> list[str]:
    """Columns added, missing or retyped in ``schema`` against the contract (empty: no drift)."""
    drift = []
    names = set(schema.names)
    for f in contract.fields():
        if f.name not in names:
            drift.append(f"column {f.name!r} is missing")
            continue
        _once(schema, f.name)
        actual = schema.field(f.name).type
        if not pa.types.is_string(actual) and not pa.types.is_large_string(actual) and not _compatible(actual, f):
            drift.append(f"column {f.name!r} is {actual}, contract says {f.arrow_type}")
    expected = {f.name for f in contract.fields()}
    drift.extend(f"column {name!r} is not in the contract" for name in schema.names if name not in expected)
    return drift


def _once(schema: pa.Schema, name: str) -> None:
    """ContractError unless the contract's column ``name`` is in ``schema`` at most once."""
    if len(schema.get_all_field_indices(name)) > 1:
        raise ContractError(f"the source has {name!r} more than once among its columns")


def _compatible(actual: pa.DataType, spec: ContractField) -> bool:
    if actual == spec.arrow_type:
        return True
    if spec.type is float and (pa.types.is_integer(actual) or pa.types.is_floating(actual)):
        return True
    if spec.type is int and pa.types.is_integer(actual):
        return True
    return spec.type is dt.datetime and pa.types.is_timestamp(actual)


def validate(contract: type[Contract], batch: pa.RecordBatch) -> ValidationResult:
    """Convert and check ``batch`` against ``contract``, vectorized.

    Every check yields a boolean mask; reason strings are built only for the rows that
    failed (usually a few percent), which keeps the common case to a handful of passes.
    """
    n = batch.num_rows
    columns: list[pa.Array] = []
    failures: list[tuple[pa.Array, str]] = []
    names = set(batch.schema.names)
    for spec in contract.fields():
        _once(batch.schema, spec.name)
        raw = batch.column(spec.name) if spec.name in names else pa.nulls(n, pa.string())
        value, conversion_failed = _convert(raw, spec)
        if conversion_failed is not None:
            failures.append((conversion_failed, f"{spec.name}: not a valid {spec.type_name}"))
        if spec.required:
            missing = pc.is_null(value)
            if spec.type is float and (nan := _nan(value)) is not None:  # (no value: JSON writes it null)
                missing = pc.or_(missing, nan)
            if conversion_failed is not None:
                missing = pc.and_(missing, pc.invert(conversion_failed))
            failures.append((missing, f"{spec.name}: required"))
        failures.extend(_constraint_failures(value, spec))
        columns.append(value)
    typed = pa.RecordBatch.from_arrays(columns, schema=contract.schema().with_metadata(None))
    bad = _any(failures, n)
    invalid_index = pc.indices_nonzero(bad)
    if len(invalid_index):
        reasons = _join_reasons([(mask.take(invalid_index), text) for mask, text in failures], len(invalid_index))
        valid = typed.filter(pc.invert(bad))
        invalid = batch.filter(bad)
    else:
        reasons, valid, invalid = pa.array([], pa.string()), typed, batch.slice(0, 0)
    return ValidationResult(_mask_pii(contract, valid), _mask_pii(contract, invalid), reasons, invalid_index)


def _any(failures: list[tuple[pa.Array, str]], n: int) -> pa.Array:
    combined = pa.array(np.zeros(n, dtype=bool))
    for mask, _text in failures:
        combined = pc.or_(combined, mask)
    return combined


def _join_reasons(parts: list[tuple[pa.Array, str]], n: int) -> pa.Array:
    """Per row, the texts of the failed checks joined with "; ".

    Not binary_join_element_wise(null_handling="skip"): in pyarrow 26 it drops the rows
    where every part is null, returning a shorter array.
    """
    joined = pa.nulls(n, pa.string())
    for mask, text in parts:
        part = _reason(mask, text)
        both = pc.binary_join_element_wise(joined, part, "; ")
        joined = pc.if_else(pc.is_null(joined), part, pc.if_else(pc.is_null(part), joined, both))
    return joined


def _reason(mask: pa.Array, text: str) -> pa.Array:
    return pc.if_else(mask, pa.scalar(text), pa.scalar(None, pa.string()))


def _convert(raw: pa.Array, spec: ContractField) -> tuple[pa.Array, pa.Array | None]:
    """The column as the contract type, and a mask of non-null values that could not be converted."""
    target = spec.arrow_type
    if raw.type == target:
        return _within_years(raw, None, spec)
    if not (pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type)):
        if _compatible(raw.type, spec) and spec.type is not decimal.Decimal:
            try:
                return _within_years(pc.cast(raw, target), None, spec)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                if pa.types.is_timestamp(raw.type):  # (nanoseconds: invalid only where some are lost)
                    value = pc.cast(raw, target, safe=False)
                    lost = pc.fill_null(pc.not_equal(pc.cast(value, raw.type, safe=False), raw), False)
                    return _within_years(pc.if_else(lost, pa.scalar(None, target), value), lost, spec)
                # (a uint64 past int64, an int past 2**53 for a float): value by value, as text
        try:
            raw = pc.cast(raw, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # (a struct, a list): no value is one
            return pa.nulls(len(raw), target), pc.is_valid(raw)
    text = raw.cast(pa.string())
    if spec.type is str:  # (as written, as a `string` column is: large_string, string_view, dictionary)
        return text, None
    long = None
    if spec.type is decimal.Decimal:
        long = pc.fill_null(pc.greater(pc.utf8_length(text), MAX_DECIMAL_TEXT), False)
        if not pc.any(long).as_py():
            long = None
    if spec.type is not str and spec.type is not bool and long is None:
        # Fast path: the whole column converts as it is (the usual case). A timestamp with a
        # zone (Z, +02:00) makes this cast fail ("expected no zone offset"; tested), so it
        # reaches _cast_text, which converts it to UTC: no pass over the column looks first.
        try:
            value = pc.cast(text, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # some value does not: find which, value by value below
        else:
            if _cast_as_written(text, spec):
                failed = pa.array(np.zeros(len(text), dtype=bool))
                if (outside := _outside_years(value, spec)) is not None:
                    value, failed = pc.if_else(outside, pa.scalar(None, value.type), value), outside
                if (overflow := _overflow(text, value, spec)) is not None:
                    value, failed = pc.if_else(overflow, pa.scalar(None, value.type), value), pc.or_(failed, overflow)
                return value, failed
    text = pc.utf8_trim_whitespace(text)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    present = pc.is_valid(text)
    if spec.type is bool:
        lowered = pc.utf8_lower(text)
        is_true, is_false = pc.is_in(lowered, pa.array(_TRUE)), pc.is_in(lowered, pa.array(_FALSE))
        ok = pc.or_(is_true, is_false)
        value = pc.if_else(ok, is_true, pa.scalar(None, pa.bool_()))
        return value, pc.and_(present, pc.invert(ok))
    pattern = {
        int: _INT_RE,
        float: _FLOAT_RE,
        dt.date: _DATE_RE,
        dt.datetime: _DATETIME_RE,
        decimal.Decimal: _DECIMAL_RE,
    }[spec.type]
    ok = pc.fill_null(pc.match_substring_regex(text, pattern), False)
    if long is not None:
        ok = pc.and_(ok, pc.invert(long))
    candidates = pc.if_else(ok, text, pa.scalar(None, pa.string()))
    try:
        value = _cast_text(candidates, spec)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
        # A value matched the pattern but is still invalid (2024-02-30, int overflow):
        # convert this batch element by element to find which.
        value, ok = _cast_each(candidates, spec, ok)
    if long is not None:
        exact, read = _long_decimals(text, long, spec)
        value, ok = pc.if_else(long, exact, value), pc.or_(ok, read)
    if (outside := _outside_years(value, spec)) is not None:  # (an offset moves 0001-01-01T00:00+01:00 to year 0)
        value, ok = pc.if_else(outside, pa.scalar(None, value.type), value), pc.and_(ok, pc.invert(outside))
    if (overflow := _overflow(text, value, spec)) is not None:
        value, ok = pc.if_else(overflow, pa.scalar(None, value.type), value), pc.and_(ok, pc.invert(overflow))
    return value, pc.and_(present, pc.invert(ok))


def _overflow(text: pa.Array, value: pa.Array, spec: ContractField) -> pa.Array | None:
    """For a float field, the mask of the values read as infinite that were not written so
    (1e400: past a double's range, which Arrow reads as inf without a word); None when there
    are none (one pass finds that)."""
    if spec.type is not float:
        return None
    infinite = pc.fill_null(pc.is_inf(value), False)
    if not pc.any(infinite).as_py():
        return None
    written = pc.fill_null(pc.match_substring_regex(text, _WRITTEN_INF), False)
    return pc.and_(infinite, pc.invert(written))


def _nan(value: pa.Array) -> pa.Array | None:
    """The mask of the NaN values of a float column, None when it has none (the usual case:
    no mask to combine)."""
    nan = pc.fill_null(pc.is_nan(value), False)
    return nan if pc.any(nan).as_py() else None


def _cast_as_written(text: pa.Array, spec: ContractField) -> bool:
    """Whether the fast path's cast read every value as the contract's type reads it: Arrow
    also takes an int written in hex (0x10 became 16)."""
    if spec.type is int:  # (digits only, the usual case, is one cheap pass; ignore_case is a regex)
        plain = pc.all(pc.ascii_is_decimal(text)).as_py() is not False
        return plain or not any(pc.any(pc.match_substring(text, x)).as_py() for x in ("x", "X"))
    return True


def _within_years(value: pa.Array, failed: pa.Array | None, spec: ContractField) -> tuple[pa.Array, pa.Array | None]:
    """A typed date or datetime column with its values outside years 0001-9999 made null and
    counted as failed: only text was checked, and a Parquet source's passed a contract that the
    next scenario, reading its output, refused (and `runink test --update` crashed on it; a review)."""
    outside = _outside_years(value, spec)
    if outside is None:
        return value, failed
    value = pc.if_else(outside, pa.scalar(None, value.type), value)
    return value, outside if failed is None else pc.or_(failed, outside)


def _outside_years(value: pa.Array, spec: ContractField) -> pa.Array | None:
    """For a date or datetime field, the mask of the values outside years 0001-9999 (which Arrow
    reads, and Python, so no output, cannot hold); None when there are none (one pass finds that)."""
    if spec.type not in (dt.date, dt.datetime) or value.null_count == len(value):
        return None
    micros = value.cast(pa.timestamp("us")).cast(pa.int64())  # (as_py of year 0 raises)
    extremes = pc.min_max(micros)
    if extremes["min"].as_py() >= _FIRST_MICROSECOND and extremes["max"].as_py() <= _LAST_MICROSECOND:
        return None
    before, after = pc.less(micros, _FIRST_MICROSECOND), pc.greater(micros, _LAST_MICROSECOND)
    return pc.fill_null(pc.or_(before, after), False)


def _long_decimals(text: pa.Array, long: pa.Array, spec: ContractField) -> tuple[pa.Array, pa.Array]:
    """The values of the ``long`` texts read exactly (Python's decimal), None where one has
    more digits than the field's precision or scale holds; and which were read."""
    precision, scale = spec.arrow_type.precision, spec.arrow_type.scale
    step = decimal.Decimal(1).scaleb(-scale)
    values: list[decimal.Decimal | None] = [None] * len(text)
    read = [False] * len(text)
    for index in pc.indices_nonzero(long).to_pylist():
        written = text[index].as_py().strip()
        if not re.fullmatch(_DECIMAL_RE, written) or len(written) > 4096:
            continue
        with decimal.localcontext() as context:
            context.prec = 4200
            try:
                number = decimal.Decimal(written)
                exact = number.quantize(step)
            except decimal.InvalidOperation:
                continue
            if exact != number or (exact and exact.adjusted() + 1 + scale > precision):
                continue  # (digits past its scale would be lost; past its precision it does not fit)
        values[index], read[index] = exact, True
    return pa.array(values, spec.arrow_type), pa.array(read)


def _cast_text(text: pa.Array, spec: ContractField) -> pa.Array:
    if spec.type is dt.datetime:
        try:
            return _cast_datetimes(text)
        except pa.ArrowInvalid:  # (a pass more only then: the usual batch has no such fraction)
            if not pc.any(pc.match_substring_regex(text, r"\.\d{7}")).as_py():
                raise
            return _cast_datetimes(pc.replace_substring_regex(text, _NANO_ZEROS, r"\1\2"))
    if spec.type is int:  # (Arrow refuses "+5", which a float and a decimal field take)
        text = pc.replace_substring_regex(text, r"^\+", "")
    return pc.cast(text, spec.arrow_type)


def _cast_datetimes(text: pa.Array) -> pa.Array:
    """Datetime texts as UTC timestamps: offsets are converted to UTC; naive values are taken
    as UTC."""
    zoned = pc.fill_null(pc.match_substring_regex(text, r"(Z|[+-]\d{2}:?\d{2})$"), False)
    if not pc.any(zoned).as_py():
        return pc.cast(text, pa.timestamp("us"))
    normalised = pc.replace_substring_regex(text, r"Z$", "+00:00")
    aware = pc.cast(pc.if_else(zoned, normalised, pa.scalar(None, pa.string())), pa.timestamp("us", "UTC"))
    naive = pc.cast(pc.if_else(zoned, pa.scalar(None, pa.string()), normalised), pa.timestamp("us"))
    return pc.if_else(zoned, pc.cast(aware, pa.timestamp("us")), naive)


def _cast_each(text: pa.Array, spec: ContractField, ok: pa.Array) -> tuple[pa.Array, pa.Array]:
    values: list[Any] = []
    oks: list[bool] = []
    for item, was_ok in zip(text.to_pylist(), ok.to_pylist(), strict=True):
        if item is None:
            values.append(None)
            oks.append(was_ok and item is not None)
            continue
        try:
            values.append(_cast_text(pa.array([item]), spec)[0].as_py())
            oks.append(True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError, ValueError):
            values.append(None)  # (OverflowError: a date Arrow reads and Python cannot hold)
            oks.append(False)
    return pa.array(values, spec.arrow_type), pa.array(oks)


def _constraint_failures(value: pa.Array, spec: ContractField) -> list[tuple[pa.Array, str]]:
    c, name = spec.constraints, spec.name
    parts: list[tuple[pa.Array, str]] = []
    for bound, compare, word in (
        (c.ge, pc.less, "<"),
        (c.gt, pc.less_equal, "<="),
        (c.le, pc.greater, ">"),
        (c.lt, pc.greater_equal, ">="),
    ):
        if bound is None:
            continue
        if spec.type is decimal.Decimal:  # exact: the bound as written, compared as a decimal
            exact = _exact(bound)
            parts.append((pc.fill_null(compare(value, pa.scalar(exact)), False), f"{name}: {word} {exact}"))
        else:
            parts.append((pc.fill_null(compare(value, bound), False), f"{name}: {word} {bound:g}"))
    bounded = any(b is not None for b in (c.ge, c.gt, c.le, c.lt))
    if spec.type is float and bounded and (nan := _nan(value)) is not None:
        parts.append((nan, f"{name}: NaN, within no bound"))  # (every comparison with NaN is false)
    if c.enum is not None:
        listed = [_exact(v) for v in c.enum] if spec.type is decimal.Decimal else list(c.enum)
        allowed = pa.array(listed, spec.arrow_type)
        outside = pc.and_(pc.is_valid(value), pc.invert(pc.is_in(value, allowed)))
        parts.append((outside, f"{name}: not one of {', '.join(map(str, c.enum))}"))
    if c.regex is not None:
        mismatch = pc.invert(pc.fill_null(pc.match_substring_regex(value, f"^(?:{c.regex})$"), True))
        parts.append((mismatch, f"{name}: does not match {c.regex}"))
    if c.max_length is not None:
        parts.append(
            (
                pc.fill_null(pc.greater(pc.utf8_length(value), c.max_length), False),
                f"{name}: longer than {c.max_length}",
            )
        )
    if c.min_length is not None:
        parts.append(
            (
                pc.fill_null(pc.less(pc.utf8_length(value), c.min_length), False),
                f"{name}: shorter than {c.min_length}",
            )
        )
    return parts


def _mask_pii(contract: type[Contract], batch: pa.RecordBatch) -> pa.RecordBatch:
    """Replace masked fields by ``****`` plus their last 4 characters (enough to check, not to use)."""
    masked = [f.name for f in contract.fields() if f.constraints.mask and f.name in batch.schema.names]
    if not masked or batch.num_rows == 0:
        return batch
    arrays, fields = [], []
    for kept in batch.schema:
        column = batch.column(kept.name)
        if kept.name in masked:  # (text whatever it was: "****0004" is no int64, as an invalid row's may be)
            kept = kept.with_type(pa.string())  # noqa: PLW2901 - the field as it is kept
            try:
                text = column.cast(pa.string())
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # (a struct, a list: none of it kept)
                text = pa.nulls(len(column), pa.string())
            tail = pc.utf8_slice_codeunits(text, start=-4)
            column = pc.binary_join_element_wise(pa.scalar("****"), tail, "")
        arrays.append(column)
        fields.append(kept)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=batch.schema.metadata))


def contract_diff(old: type[Contract], new: type[Contract]) -> list[dict[str, Any]]:
    """Field-level changes from ``old`` to ``new``, each marked breaking or not."""
    before = {f.name: f.describe() for f in old.fields()}
    after = {f.name: f.describe() for f in new.fields()}
    changes: list[dict[str, Any]] = []
    for name in before.keys() - after.keys():
        changes.append({"field": name, "change": "removed", "breaking": True, "detail": before[name]})
    for name in after.keys() - before.keys():
        changes.append({"field": name, "change": "added", "breaking": after[name]["required"], "detail": after[name]})
    for name in before.keys() & after.keys():
        if before[name] != after[name]:
            keys = sorted(set(before[name]) | set(after[name]))
            detail = {
                k: [before[name].get(k), after[name].get(k)] for k in keys if before[name].get(k) != after[name].get(k)
            }
            breaking = "type" in detail or any(k != "description" for k in detail)
            changes.append({"field": name, "change": "changed", "breaking": breaking, "detail": detail})
    for change in changes:
        change["summary"] = _in_words(change)
    return sorted(changes, key=lambda c: (c["field"], c["change"]))


def _in_words(change: dict[str, Any]) -> str:
    """A change as a person says it: ``nullable -> required; type float -> int; ge 0 -> 1``."""
    detail = change["detail"]
    if change["change"] in ("added", "removed"):
        kind = "required" if detail.get("required") else "nullable"
        rules = [f"{k} {_word(v)}" for k, v in detail.items() if k not in {"name", "type", "required"}]
        said = f"{change['change']}: {kind} {detail.get('type')}" + (f" ({', '.join(rules)})" if rules else "")
        if change["change"] == "added" and detail.get("required"):
            said += "; rows written before have none"
        return said
    words = []
    for key, (before, after) in detail.items():
        if key == "required":
            words.append(f"{'required' if before else 'nullable'} -> {'required' if after else 'nullable'}")
        elif before is None:
            words.append(f"{key} {_word(after)} added")
        elif after is None:
            words.append(f"{key} {_word(before)} dropped")
        else:
            words.append(f"{key} {_word(before)} -> {_word(after)}")
    return "; ".join(words)


def _word(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_word(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
