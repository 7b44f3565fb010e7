"""The ``runink`` command line.

``main`` answers ``runink --version`` before anything else is imported, and imports the
commands (``runink.core.cli.app``) only for a command: a CLI that starts fast.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runink.core.cli.app import RootGroup
    from runink.core.cli.state import CliState


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``runink`` script (see ``runink.core.cli.app.main``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        import runink

        print(f"runink {runink.__version__}")
        sys.exit(0)
    if args[:1] == ["exec"]:  # (its common forms without building the CLI: exec_fast)
        from runink.core.cli import exec_fast

        status = exec_fast.main(args[1:])
        if status is not None:
            if argv is None:  # (the `runink` script: the process ends here)
                from runink.core.process_end import end_now

                end_now(status)
            sys.exit(status)
    from runink.core.cli import prestart

    prestart.for_argv(args)  # (before the commands' imports: what `runink run` waits for first)
    from runink.core.cli.app import main as run

    run(argv)


def build_app(state: CliState) -> RootGroup:
    from runink.core.cli.app import build_app as build

    return build(state)


__all__ = ["build_app", "main"]
