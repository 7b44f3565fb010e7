"""The raft plugin's ``runink barn`` commands, added through ``runink_cli_commands``.

This module is the hook plugin (entry point ``runink: barn-raft``); it is imported with every
plugin, so the commands (typer) load only when the CLI is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runink.core import hookimpl

if TYPE_CHECKING:
    import typer


@hookimpl
def runink_cli_commands(app: typer.Typer) -> None:
    from runink.plugins.barn.raft.commands import app as barn_app

    app.add_typer(barn_app, name="barn")
