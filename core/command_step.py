"""Command steps (``@run("sort -k2 {input}")``): a program's command line, checked and built.

Shared by the compiler (which checks a command where it is written) and the slice (which
builds the argv it runs), so both read a command the same way:

- The command is split like a POSIX shell would split words (``shlex``), and no shell runs
  it unless ``shell=True``: ``;``, ``|``, ``$(...)`` or ``*`` are passed to the program as
  they are written.
- ``{input}`` and ``{output}`` are the only placeholders; ``{{`` and ``}}`` are literal braces
  (Python's ``str.format`` rules). They are replaced after the split, so a path is always one
  argument; with ``shell=True`` they are replaced by shell-quoted paths.
"""

from __future__ import annotations

import os
import shlex
import string

PLACEHOLDERS = ("input", "output")
SHELL = "/bin/sh"


class CommandError(ValueError):
    """A command a command step cannot run; the message says what is wrong in it."""


def placeholders(command: str) -> set[str]:
    """The placeholders ``command`` uses; raises CommandError for an unknown or malformed one."""
    used: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(command))
    except ValueError as exc:  # a lone "{" or "}"
        raise CommandError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
    for _text, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise CommandError(
                f"unknown placeholder {written} (known: {{input}}, {{output}}; write {{{{ and }}}} for literal braces)"
            )
        used.add(name)
    return used


def check(command: str, shell: bool) -> None:
    """Raise CommandError unless ``command`` can be run: not empty, quotes closed, placeholders known."""
    if not isinstance(command, str) or not command.strip():
        raise CommandError("the command is empty")
    placeholders(command)
    if not shell:
        try:
            words = shlex.split(command)
        except ValueError as exc:  # "No closing quotation", "No escaped character"
            raise CommandError(f"cannot split the command into arguments: {exc}") from None
        if not words:
            raise CommandError("the command is empty")


def argv(command: str, shell: bool, *, input_path: str, output_path: str) -> list[str]:
    """The argv that runs ``command`` with its placeholders replaced by the two paths."""
    if shell:
        return [SHELL, "-c", command.format(input=shlex.quote(input_path), output=shlex.quote(output_path))]
    return [word.format(input=input_path, output=output_path) for word in shlex.split(command)]


def step_name(command: str, shell: bool = False) -> str:
    """How the step is named in counters, logs and messages: ``run:`` and its program's name
    (``run:sh`` for a command the shell runs)."""
    if shell:
        return "run:sh"
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    program = os.path.basename(words[0]) if words else ""
    return f"run:{program or 'command'}"
