"""The few config values the commands that talk to a cluster need, kept between runs.

``runink exec``, ``status``, ``jobs list`` ... need four values of the config (the cluster's
address and CA, the default herd, the data dir) and its log settings. Loading the config to
get them means importing msgspec and the config's models: ~17 ms of a command that otherwise
takes ~100 (it was ~150 ms with pydantic's). So the values a full load found are kept in an
index (``$XDG_CACHE_HOME/runink/settings.json``, see ``index_store``) under the config's
fingerprint: the config files that could apply and their mtimes, every ``RUNINK_*`` variable,
every ``--set``, runink's version and interpreter, and the mtime of the module that defines
the config's defaults. Anything else, and the config is loaded in full as before (and the
values kept again). An invalid config is never kept: its error is raised as before. (The
folder the command runs in, the home folder and ``$XDG_DATA_HOME`` are part of the
fingerprint too: they name ``./runink.toml`` and the data dir's default.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from runink.core.cli import index_store

if TYPE_CHECKING:
    from runink.core.config import RuninkConfig

NAME = "settings"  # the index's file: index_store.cache_file(NAME)


class ClusterSettings(NamedTuple):
    """What a cluster command takes from the config. (A NamedTuple: ``dataclasses`` costs
    ~13 ms of ``runink exec``'s start, which reads only this.)"""

    server: str | None  # [cluster] server
    ca: str | None  # [cluster] ca
    herd: str  # the default herd
    data_dir: str  # where `runink run` keeps its runs (status and logs read them too)
    log_level: str
    log_format: str
    trace: bool  # [plugins] trace

    @classmethod
    def of(cls, config: RuninkConfig) -> ClusterSettings:
        return cls(
            server=config.cluster.server,
            ca=config.cluster.ca,
            herd=config.herd,
            data_dir=str(config.data_dir),
            log_level=config.log.level,
            log_format=config.log.format,
            trace=config.plugins.trace,
        )

    @classmethod
    def from_json(cls, raw: Any) -> ClusterSettings:
        return index_store.typed_entry(cls, raw, _TYPES)


_TYPES: dict[str, tuple[type, ...]] = {
    "server": (str, type(None)),
    "ca": (str, type(None)),
    "herd": (str,),
    "data_dir": (str,),
    "log_level": (str,),
    "log_format": (str,),
    "trace": (bool,),
}


def fingerprint(config_path: Path | None, overrides: dict[str, str]) -> str:
    """What the values depend on outside the config module's own file, as one hash."""
    # (the folder names ./runink.toml and relative paths; the data dir's default is under
    # $XDG_DATA_HOME or the home folder)
    where = {"cwd": os.getcwd(), "home": str(Path.home()), "data": os.environ.get("XDG_DATA_HOME")}
    return index_store.fingerprint(config_path, overrides, "RUNINK_", **where)


def load(key: str) -> ClusterSettings | None:
    """The values kept under ``key``, or None when there are none or they are stale or unreadable."""
    stored = index_store.load(NAME, key)
    if stored is None:
        return None
    try:
        return ClusterSettings.from_json(stored)
    except (ValueError, KeyError, TypeError):  # edited by hand: load the config in full
        return None


def save(key: str, settings: ClusterSettings) -> None:
    """Keep ``settings`` under ``key``, valid while the config module (its defaults) is unchanged."""
    import runink.core.config

    index_store.save(NAME, key, settings._asdict(), {runink.core.config.__file__})
