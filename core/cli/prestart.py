"""``runink run``'s head start: before the config is loaded and the pipeline compiled (~0.3 s
of imports), the executor driver its last run with the same config used is asked to
``prestart`` (``Executor.prestart``: the ``linux`` driver starts its launcher, which imports
the slices' runtime meanwhile). The instance built later takes over what was started.

The guess is kept in an index (``index_store``, ``$XDG_CACHE_HOME/runink/executors.json``)
under the config's fingerprint: the config files and their mtimes, every ``RUNINK_*``
variable, every ``--set``, the folder, home and data dir, runink's version and interpreter
(``cluster_settings.fingerprint``). It only chooses which installed driver is asked; what
that driver starts is its own code. A wrong guess costs only the work started for nothing,
which ends with the command.
"""

from __future__ import annotations

import logging
from typing import Any

from runink.core.cli import cluster_settings, index_store
from runink.core.cli.state import CliState, _command_words

NAME = "executors"  # the index's file: index_store.cache_file(NAME)

log = logging.getLogger(__name__)

_guessed: dict[str, str | None] = {}  # fingerprint -> the driver asked to prestart (this process)


def _key(state: CliState) -> str:
    return cluster_settings.fingerprint(state.config_path, state.overrides)  # (the same facts as the config's values)


def for_argv(argv: list[str]) -> None:
    """Prestart the executor ``runink run ARGV`` is likely to use (a run, not a dry run or help)."""
    if _command_words(argv)[:1] != ["run"] or {"--dry-run", "--help", "-h"} & set(argv):
        return
    prestart(CliState.from_argv(argv))


def prestart(state: CliState) -> None:
    key = _key(state)
    name = index_store.load(NAME, key)
    _guessed[key] = name if isinstance(name, str) else None
    if not isinstance(name, str):
        return
    try:
        from runink.core.driverload import import_driver
        from runink.core.interfaces.executor import Executor

        factory = import_driver(Executor, name)
        start = getattr(factory, "prestart", None)
        if callable(start):
            start()
    except Exception as exc:  # a guess: the run goes on as if none was made
        log.debug("prestarting executor %r: %s", name, exc)


def remember(state: CliState, executor: Any) -> None:
    """Keep the driver ``executor`` is (its ``name``) for the next run with this config."""
    name = getattr(type(executor), "name", "")
    if not isinstance(name, str) or not name:
        return
    key = _key(state)
    if _guessed.get(key) != name:
        index_store.save(NAME, key, name, set())
        _guessed[key] = name
