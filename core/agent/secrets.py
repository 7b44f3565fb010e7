"""A starting attempt's secrets: asked of the control plane by the node that runs it, given to
its slice as files in ``$RUNINK_FILES`` (a tmpfs only that slice sees with the linux
executor) and, when the task asks, as environment variables. Values live only in the slice's
spec in memory on the way: never in a task record, a log line, a report or a handle."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from runink.core.errors import RuninkError
from runink.core.interfaces.executor import TaskSpec

_NOT_IN_ENV_NAME = re.compile(r"[^A-Z0-9]")


class SecretsRefused(RuninkError):
    """The control plane gives the attempt no secrets (not its current attempt, not placed on
    this node, a secret gone): the attempt fails, saying why."""


def env_name(secret: str) -> str:
    """The environment variable a secret is given as: ``db.password`` -> ``DB_PASSWORD``."""
    return _NOT_IN_ENV_NAME.sub("_", secret.upper())


def with_secrets(spec: TaskSpec, herd: str, values: Mapping[str, bytes], as_env: bool) -> TaskSpec:
    """``spec`` with the herd's secrets ``values`` (name -> value): a file each, and with
    ``as_env`` a variable each too. Raises RuninkError (naming the secret, never its value) for
    a value that is not UTF-8 text, a variable the task has already (PATH, HOME...), or a
    value with a NUL byte asked as a variable."""
    if not values:
        return spec
    files, env = dict(spec.files), dict(spec.env)
    for name, value in values.items():
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RuninkError(f"secret {name!r} of herd {herd!r} is not UTF-8 text") from None
        if name in files:
            raise RuninkError(f"secret {name!r} of herd {herd!r}: the task has a file of that name already")
        files[name] = text
        if as_env:
            variable = env_name(name)
            if variable in env:
                raise RuninkError(f"secret {name!r} of herd {herd!r}: the task has a variable {variable} already")
            if "\0" in text:  # (no variable can hold one: the slice failed, "exit code 126": a review)
                raise RuninkError(f"secret {name!r} of herd {herd!r} holds a NUL byte: it cannot be a variable")
            env[variable] = text
    return dataclasses.replace(spec, files=files, env=env)


#: a secret value shorter than this is not masked in what a task says: masking "a" or "42" in
#: every message and log would garble them and hide nothing worth hiding
MIN_MASKED = 4
MASK_BYTE = b"*"


def masks_of(values: Mapping[str, bytes]) -> tuple[bytes, ...]:
    """The values to mask in what an attempt given ``values`` says (its failure message, its
    output's copy on the servers), longest first (one holding another is masked whole)."""
    return tuple(sorted((v for v in values.values() if len(v) >= MIN_MASKED), key=len, reverse=True))


def masked(data: bytes, masks: tuple[bytes, ...]) -> bytes:
    """``data`` with each value of ``masks`` made as many ``*`` (same length: a log's offsets
    hold), found in ``data`` as it is (two values that overlap are both masked)."""
    spans = _spans(data, masks)
    if not spans:
        return data
    out = bytearray(data)
    for start, end in spans:
        out[start:end] = MASK_BYTE * (end - start)
    return bytes(out)


def _spans(data: bytes, masks: tuple[bytes, ...]) -> list[list[int]]:
    """Where the values of ``masks`` are in ``data``: [start, end) each, overlapping ones as one, in order."""
    found = []
    for value in masks:
        at = data.find(value)
        while at != -1:
            found.append((at, at + len(value)))
            at = data.find(value, at + 1)
    merged: list[list[int]] = []
    for start, end in sorted(found):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def masked_text(text: str, masks: tuple[bytes, ...]) -> str:
    """``text`` with each value of ``masks`` (as text) made ``****``: a step that raised with its
    password in the message put it in the task's record, the servers' logs and lineage (a review)."""
    for value in masks:
        shown = value.decode("utf-8", errors="replace")
        if shown in text:
            text = text.replace(shown, "****")
    return text


def cut_outside(data: bytes, masks: tuple[bytes, ...], cut: int) -> int:
    """``cut`` moved so that no value of ``masks`` in ``data`` spans it: to the start of the
    values (overlapping ones as one) that span it, sent whole, masked, with the next read; or,
    if they start ``data``, to their end (a value cut in two had its second half sent in clear)."""
    for start, end in _spans(data, masks):
        if start < cut < end:
            return start if start > 0 else end
    return cut
