"""Output helpers: rich tables for people, JSON for scripts, one-line errors."""

from __future__ import annotations

import json
import math
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (rich is imported when something is printed with it: --help does not)
    from rich.console import Console


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output keeps whole rows instead of wrapping at 80 columns.
    width = None if stream.isatty() else 240
    return Console(file=stream, width=width, soft_wrap=not stream.isatty())


def print_json(data: Any) -> None:
    """``data`` as JSON a strict parser reads: a NaN or an infinity (a config's ``nan``, a
    contract's ``gt=inf``) is written as a string, not as JSON's missing NaN/Infinity."""
    sys.stdout.write(json.dumps(_finite(data), indent=2, default=str) + "\n")


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from runink.core.report import terminal_safe

    table = Table(title=title, show_lines=False, header_style="bold", title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # (no cell reaches the terminal with an escape sequence: a review's audit record cleared
        # an admin's screen and printed rows of its own)
        table.add_row(*("" if cell is None else escape(terminal_safe(str(cell))) for cell in row))
    console().print(table)


def print_error(message: str) -> None:
    from rich.markup import escape

    console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


def exit_status(exc: BaseException, debug: bool) -> int:
    """Say in one line why a command failed (the traceback too with ``debug``) and return its
    exit status: a RuninkError's own, 130 for an interrupt, 1 for anything else (our bug)."""
    from runink.core.errors import RuninkError

    if isinstance(exc, KeyboardInterrupt):
        print_error("interrupted")
        return 130
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, RuninkError):
        print_error(str(exc))
        return exc.exit_code
    from runink.core.plugins import describe_exception

    print_error(f"internal error: {describe_exception(exc)} (run with --debug for the traceback)")
    return 1
