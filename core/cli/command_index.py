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

import hashlib
import json
import os
import stat
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import runink

#: where a command comes from: a module of runink.core.cli, or the plugins' hook
BUILTIN, PLUGIN = "builtin", "plugin"
MAX_BYTES = 1 << 20  # an index larger than this is not read (a few KiB is usual)
MAX_FINGERPRINTS = 16  # (one per interpreter, import path and config: several projects, venvs)


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
        if not isinstance(raw, dict):
            raise ValueError("an entry is not an object")
        entry = cls(**{name: raw[name] for name in cls.__dataclass_fields__})
        for name, kinds in _ENTRY_TYPES.items():
            if not isinstance(getattr(entry, name), kinds):
                raise ValueError(f"entry {entry.name!r}: bad {name}")
        return entry


_ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "source": (str,),
    "module": (str,),
    "help": (str, type(None)),
    "short_help": (str, type(None)),
    "hidden": (bool,),
    "deprecated": (bool,),
}


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runink" / "commands.json"


def _mtime(path: str | os.PathLike[str]) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def fingerprint(config_path: Path | None, overrides: dict[str, str]) -> str:
    """What the listing depends on, outside the command modules' own files, as one hash."""
    candidates = [
        str(config_path) if config_path is not None else "",
        os.environ.get("RUNINK_CONFIG", ""),
        os.path.join(os.getcwd(), "runink.toml"),
        os.path.join(os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config"), "runink", "config.toml"),
    ]
    # sys.path[0] is the script's folder or, with `python -m`, the current one: left out, or
    # every file written there would throw the index away (entry points come from site dirs)
    paths = [p for p in sys.path[1:] if p and os.path.isdir(p)]
    facts = {
        "runink": runink.__version__,
        "python": [sys.executable, sys.version],
        "paths": [[p, _mtime(p)] for p in paths],
        "config": [[p, _mtime(p)] for p in candidates if p],
        "env": sorted([k, v] for k, v in os.environ.items() if k.upper().startswith("RUNINK_PLUGINS")),
        "set": sorted([k, v] for k, v in overrides.items() if k.startswith("plugins.")),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _read_fingerprints() -> dict[str, Any]:
    """The stored fingerprints (a link, a FIFO or a file past MAX_BYTES is not read: OSError)."""
    fd = os.open(cache_file(), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError("not a file")
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise OSError("too large")
    fingerprints = json.loads(data)["fingerprints"]
    if not isinstance(fingerprints, dict):
        raise ValueError("fingerprints is not an object")
    return fingerprints


def load(key: str) -> list[CommandEntry] | None:
    """The entries stored under ``key``, or None when there are none or they are stale or unreadable."""
    try:
        stored = _read_fingerprints()[key]
        files = stored["files"]
        if not isinstance(files, list) or any(_mtime(path) != mtime for path, mtime in files):
            return None
        return [CommandEntry.from_json(raw) for raw in stored["entries"]]
    except (OSError, ValueError, KeyError, TypeError):  # missing, cut, edited by hand: build in full
        return None


def save(key: str, entries: list[CommandEntry], files: set[str]) -> None:
    """Store ``entries`` under ``key`` (atomically: a reader sees the old file or the new one)."""
    path = cache_file()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fingerprints = _read_fingerprints()
        except (OSError, ValueError, KeyError, TypeError):
            fingerprints = {}
        fingerprints.pop(key, None)
        while len(fingerprints) >= MAX_FINGERPRINTS:  # the oldest go first (dicts keep order)
            fingerprints.pop(next(iter(fingerprints)))
        fingerprints[key] = {
            "files": sorted([f, _mtime(f)] for f in files),
            "entries": [asdict(entry) for entry in entries],
        }
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".commands-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"fingerprints": fingerprints}, handle)
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError:  # a read-only home: the CLI works, only its --help stays slow
        return
