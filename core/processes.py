"""Naming one process across time: its pid and its start time, as /proc gives them."""

from __future__ import annotations


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc's), or None if there is no
    such process or it has ended (a zombie): with the pid it names one process, not whichever
    reuses the pid later."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as file:
            text = file.read(4096)
    except (OSError, ValueError):
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: fields count from its end
        fields = text[text.rindex(b")") + 2 :].split()
        return None if fields[0] == b"Z" else int(fields[19])
    except (ValueError, IndexError):
        return None
