"""The index of the ``runink`` CLI's top-level commands: name, help and where each comes from.

``runink --help`` (and shell completion) list every command, built-in and added by plugins,
and building them all means importing every command module, loading the config and every
plugin: ~0.3-0.6 s. The index keeps what the listing needs, from one full build, in
``$XDG_CACHE_HOME/runink/commands.json``. It is used only while nothing it was built from has
changed (its fingerprint): runink's version and interpreter, the mtimes of the import path's
folders (installing or removing a package changes its folder), of the config files that
could name plugins to load or disable (and of ``RUNINK_PLUGINS__*``, ``--set plugins.*``),
and of every module a command or its help comes from. Anything else, or a file that cannot
be read, and the CLI builds in full as before and writes the index again.

The index never decides what runs: a command is always built from its module, or from the
plugins' ``runink_cli_commands``, when it is invoked. It lists names and help texts only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runink.core.cli import index_store

NAME = "commands"  # the index's file: index_store.cache_file(NAME)
#: where a command comes from: a module of runink.core.cli, or the plugins' hook
BUILTIN, PLUGIN = "builtin", "plugin"


@dataclass(frozen=True)
class CommandEntry:
    """One top-level command as ``--help`` lists it."""

    name: str
    source: str  # BUILTIN or PLUGIN
    module: str  # the runink.core.cli module whose register() adds it ("" for a plugin's)
    help: str | None
    short_help: str | None
    hidden: bool
    deprecated: bool

    @classmethod
    def from_json(cls, raw: Any) -> CommandEntry:
        return index_store.typed_entry(cls, raw, _ENTRY_TYPES)


_ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "source": (str,),
    "module": (str,),
    "help": (str, type(None)),
    "short_help": (str, type(None)),
    "hidden": (bool,),
    "deprecated": (bool,),
}


def fingerprint(config_path: Path | None, overrides: dict[str, str]) -> str:
    """What the listing depends on, outside the command modules' own files, as one hash."""
    return index_store.fingerprint(config_path, overrides, "RUNINK_PLUGINS")


def load(key: str) -> list[CommandEntry] | None:
    """The entries stored under ``key``, or None when there are none or they are stale or unreadable."""
    stored = index_store.load(NAME, key)
    if stored is None:
        return None
    try:
        return [CommandEntry.from_json(raw) for raw in stored]
    except (ValueError, KeyError, TypeError):  # edited by hand: build in full
        return None


def save(key: str, entries: list[CommandEntry], files: set[str]) -> None:
    """Store ``entries`` under ``key`` (atomically: a reader sees the old file or the new one)."""
    index_store.save(NAME, key, [asdict(entry) for entry in entries], files)
