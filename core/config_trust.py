"""Which project config files the user trusts (``runink config trust``).

A ``runink.toml`` found in the current folder comes with the project, and a project may come
from anyone: its config could choose the ``process`` executor (the project's code then runs
unconfined, as the user, root included), allow paths outside the project (its sinks then
overwrite them), or name a cluster server (the CLI then sends the user's token there). So such
a file is read only once the user trusted it as it is now: its path as found (absolute, a link
not resolved) and the SHA-256 of its bytes, kept in ``$XDG_CONFIG_HOME/runink/trusted.json``;
a change to the file (a pull) needs trusting again. A file named with ``--config`` or
``$RUNINK_CONFIG``, and the user's own ``~/.config/runink/config.toml``, are the user's choice
and need no trust (as direnv's ``allow`` and mise's ``trust``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

from runink.core.errors import ConfigError, RuninkError
from runink.core.fstree import replace_file
from runink.core.project_files import read_regular

STORE_NAME = "trusted.json"
MAX_TRUSTED = 10_000  # files kept, at most (the oldest go)
MAX_CONFIG_BYTES = 4 << 20  # a config file, at most


def store_path() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "runink" / STORE_NAME


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _key(file: Path) -> str:
    """The file as found (absolute, links not resolved: a project's runink.toml linked to a
    trusted one elsewhere borrowed its trust)."""
    return os.path.abspath(file)


def is_trusted(file: Path, data: bytes) -> bool:
    """Whether the user trusted ``file`` with exactly these bytes."""
    return _read_store().get(_key(file)) == digest(data)


def check_trusted(file: Path, data: bytes) -> None:
    """ConfigError unless the user trusted ``file`` (found in the current folder) as it is."""
    if is_trusted(file, data):
        return
    was = _key(file) in _read_store()
    why = "changed since you trusted it" if was else "a project's config, not trusted yet"
    raise ConfigError(
        f"{file}: {why}: it can choose how isolated the project's code runs, which paths it may "
        f"write and where the CLI sends your token. Read it, then run `runink config trust` "
        f"(or name it with --config {file})"
    )


def trust(file: Path) -> str:
    """Trust ``file`` as it is now; its SHA-256."""
    try:
        data = read_regular(file, "config file", limit=MAX_CONFIG_BYTES)
    except RuninkError as exc:
        raise ConfigError(str(exc)) from None
    try:  # (a file that is no TOML was trusted, and the next run failed on it: a review)
        tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: not trusted: not a TOML file: {exc}") from None
    store = _read_store()
    store.pop(_key(file), None)  # (trusted again: the newest, the last to go)
    store[_key(file)] = digest(data)
    kept = dict(list(store.items())[-MAX_TRUSTED:])
    _write_store(kept)
    return kept[_key(file)]


def _read_store() -> dict[str, str]:
    path = store_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror} (the list of trusted config files)") from None
    with os.fdopen(fd, "rb") as source:
        data = source.read(16 << 20)
    try:
        stored = json.loads(data)
        files = stored["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ValueError("files")
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: not a list of trusted config files (remove it and trust them again)") from None
    return {str(k): str(v) for k, v in files.items()}


def _write_store(files: dict[str, str]) -> None:
    path = store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": 1, "files": files}, indent=1)  # (in the order trusted: the oldest go first)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_file(folder, path.name, text.encode(), 0o600)
    finally:
        os.close(folder)
