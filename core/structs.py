"""What the config's sections and the cluster's records (both msgspec Structs) share: reading
msgspec's one-line validation errors, and finding the fields that map names to Structs.

msgspec says ``what is wrong - at `$.a.b[0]```, and ``Object contains unknown field `x``` (or
``missing required field``) with the object's path, not the field's; a dict's key it names
``[...]``. So a caller that wants the key named checks such a table's entries one by one
first (``table_of`` finds those fields).
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any

import msgspec

AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_FIELD_NAMED = re.compile(r"^Object (?P<kind>missing required|contains unknown) field `(?P<name>[^`]*)`$")


def split(exc: msgspec.ValidationError | str) -> tuple[str, list[str | int | None]]:
    """msgspec's error as (what is wrong, where): field names, list positions, None for a
    dict's key (msgspec does not say which)."""
    found = AT.match(str(exc))
    assert found is not None  # (the pattern matches any text)
    where: list[str | int | None] = []
    for name, index in _PART.findall(found["path"] or ""):
        where.append(name if name else None if index == "..." else int(index))
    return found["message"], where


def field_named(message: str) -> tuple[str, bool] | None:
    """(the field, whether it is unknown rather than missing) of an error about one field of
    an object, which msgspec places at the object."""
    found = _FIELD_NAMED.match(message)
    return None if found is None else (found["name"], found["kind"] == "contains unknown")


def table_of(kind: Any, base: type) -> type | None:
    """The ``base`` subclass of a field of type ``dict[str, THAT]`` (``Annotated`` or not), else None."""
    while typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    value = typing.get_args(kind)[1] if typing.get_origin(kind) is dict else None
    return value if isinstance(value, type) and issubclass(value, base) else None


def json_schema(kind: type) -> dict[str, Any]:
    """``kind``'s JSON Schema with its nested Structs written in place (no ``$ref``), for a
    document that has no ``$defs`` of its own (FastAPI's OpenAPI). A pattern's ``\\Z`` (the
    end of the text in Python's ``re``; ``$`` also matches before a final line break) is
    written ``$``, which means the end in the ECMA dialect OpenAPI uses."""
    found = msgspec.json.schema(kind)
    defs = found.pop("$defs", {})

    def resolved(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolved(defs[ref.removeprefix("#/$defs/")])
            return {k: ecma_pattern(v) if k == "pattern" else resolved(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolved(item) for item in node]
        return node

    inlined: dict[str, Any] = resolved(found)
    return inlined


def ecma_pattern(pattern: Any) -> Any:
    """A record's pattern for an ECMA or Rust regex dialect (OpenAPI's, pydantic's): its
    closing ``\\Z`` (Python's end of the text) written ``$`` (theirs)."""
    return pattern[:-2] + "$" if isinstance(pattern, str) and pattern.endswith("\\Z") else pattern
