"""Fingerprinted indexes in the user's cache: what a slow listing found, kept to answer the next
one at once while nothing it was built from has changed.

An index lives in ``$XDG_CACHE_HOME/runink/<name>.json`` (default ``~/.cache/runink/``). It
holds up to MAX_FINGERPRINTS entries, one per fingerprint (interpreter, import path, config:
several projects and venvs share the cache), each with the files it was built from and their
mtimes. An entry is used only while its fingerprint matches and none of its files changed;
anything else (missing, cut, a link, edited by hand) reads as no entry, and the caller builds
in full and stores again. Writes are atomic (a reader sees the old file or the new one); a
cache that cannot be written leaves the CLI working, only slower.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import runink

T = TypeVar("T")
MAX_BYTES = 1 << 20  # an index larger than this is not read (a few KiB is usual)
MAX_FINGERPRINTS = 16  # (one per interpreter, import path and config: several projects, venvs)


def typed_entry(cls: type[T], raw: Any, kinds: Mapping[str, tuple[type, ...]]) -> T:
    """``cls`` (a dataclass or a NamedTuple) from a stored JSON object, each field in ``kinds``
    checked to be of one of its types: ValueError (or KeyError, TypeError) when the index was
    edited by hand."""
    if not isinstance(raw, dict):
        raise ValueError("an entry is not an object")
    fields = getattr(cls, "_fields", None) or cls.__dataclass_fields__  # type: ignore[attr-defined]
    entry = cls(**{name: raw[name] for name in fields})
    for name, allowed in kinds.items():
        if not isinstance(getattr(entry, name), allowed):
            raise ValueError(f"bad {name}")
    return entry


def cache_file(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runink" / f"{name}.json"


def mtime(path: str | os.PathLike[str]) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def fingerprint(config_path: Path | None, overrides: dict[str, str], env_prefix: str, **more: Any) -> str:
    """One hash of what a listing depends on outside its own files: runink's version and
    interpreter, the mtimes of the import path's folders (installing or removing a package
    changes its folder), of the config files that could apply, the ``RUNINK_*`` variables and
    ``--set`` overrides whose names start with ``env_prefix`` (upper case; "RUNINK_" for all),
    and ``more`` (JSON-able facts of the caller's)."""
    candidates = [
        str(config_path) if config_path is not None else "",
        os.environ.get("RUNINK_CONFIG", ""),
        os.path.join(os.getcwd(), "runink.toml"),
        os.path.join(os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config"), "runink", "config.toml"),
        # (whether ./runink.toml may be read: core/config_trust.py)
        os.path.join(os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config"), "runink", "trusted.json"),
    ]
    # sys.path[0] is the script's folder or, with `python -m`, the current one: left out, or
    # every file written there would throw the index away (entry points come from site dirs)
    paths = [p for p in sys.path[1:] if p and os.path.isdir(p)]
    set_prefix = env_prefix.removeprefix("RUNINK_").replace("__", ".").lower()
    facts = {
        "runink": runink.__version__,
        "python": [sys.executable, sys.version],
        "paths": [[p, mtime(p)] for p in paths],
        "config": [[p, mtime(p)] for p in candidates if p],
        "env": sorted([k, v] for k, v in os.environ.items() if k.upper().startswith(env_prefix)),
        "set": sorted([k, v] for k, v in overrides.items() if k.startswith(set_prefix)),
        "more": more,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def _read_fingerprints(name: str) -> dict[str, Any]:
    """The stored fingerprints (a link, a FIFO, a file another user owns or one past MAX_BYTES
    is not read: OSError). (Another user's file could name another cluster to send tokens to,
    were $XDG_CACHE_HOME a shared folder.)"""
    fd = os.open(cache_file(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        found = os.fstat(handle.fileno())
        if not stat.S_ISREG(found.st_mode):
            raise OSError("not a file")
        if found.st_uid != os.geteuid():
            raise OSError("another user's file")
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise OSError("too large")
    fingerprints = json.loads(data)["fingerprints"]
    if not isinstance(fingerprints, dict):
        raise ValueError("fingerprints is not an object")
    return fingerprints


def load(name: str, key: str) -> Any | None:
    """What index ``name`` stores under ``key``, or None when nothing is or it is stale or unreadable."""
    try:
        stored = _read_fingerprints(name)[key]
        files = stored["files"]
        if not isinstance(files, list) or any(mtime(path) != stamp for path, stamp in files):
            return None
        return stored["entries"]
    except (OSError, ValueError, KeyError, TypeError):  # missing, cut, edited by hand: build in full
        return None


def save(name: str, key: str, entries: Any, files: set[str]) -> None:
    """Store ``entries`` (JSON-able) under ``key``, valid while ``files`` keep their mtimes."""
    import tempfile  # (~5 ms: only a listing that was built in full writes)

    path = cache_file(name)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fingerprints = _read_fingerprints(name)
        except (OSError, ValueError, KeyError, TypeError):
            fingerprints = {}
        fingerprints.pop(key, None)
        while len(fingerprints) >= MAX_FINGERPRINTS:  # the oldest go first (dicts keep order)
            fingerprints.pop(next(iter(fingerprints)))
        fingerprints[key] = {"files": sorted([f, mtime(f)] for f in files), "entries": entries}
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"fingerprints": fingerprints}, handle)
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError:  # a read-only home: the CLI works, only its listings stay slow
        return
