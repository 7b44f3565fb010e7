"""``runink run``'s head start: before the config is loaded and the pipeline compiled (~0.3 s
of imports), the executor driver its last run with the same config used is asked to
``prestart`` (``Executor.prestart``: the ``linux`` driver starts its launcher, which imports
the slices' runtime meanwhile). The instance built later takes over what was started.

The guess is kept in an index (``index_store``, ``$XDG_CACHE_HOME/runink/executors.json``)
under the config's fingerprint: the config files and their mtimes, every ``RUNINK_*``
variable, every ``--set``, the folder, home and data dir, runink's version and interpreter
and the mtimes of the import path's folders, so installing or removing a package drops it
(``cluster_settings.fingerprint``). With the driver's name it keeps the driver's light
prestart function and its arguments where the driver has one (``Executor.prestart_entry``,
a function of a module of runink's own): that function is called without importing the
driver or reading entry points, ~55 ms sooner. The index only chooses which installed code
is asked; what is started is that code's. A wrong guess costs only the work started for
nothing, which ends with the command.
"""

from __future__ import annotations

import importlib
import logging
import re
from typing import Any, NamedTuple

from runink.core.cli import cluster_settings, index_store
from runink.core.cli.state import CliState, _command_words

NAME = "executors"  # the index's file: index_store.cache_file(NAME)
PRESTART_MARK = "__runink_prestart__"  # set by prestart_function on what the index may name


def prestart_function(function: Any) -> Any:
    """Mark ``function`` as a driver's light prestart function (``Executor.prestart_entry``):
    the only kind ``runink run`` calls from its index."""
    setattr(function, PRESTART_MARK, True)
    return function


log = logging.getLogger(__name__)

_guessed: dict[str, Entry | None] = {}  # fingerprint -> the entry read or kept (this process)


def _key(state: CliState) -> str:
    return cluster_settings.fingerprint(state.config_path, state.overrides)  # (the same facts as the config's values)


def for_argv(argv: list[str]) -> None:
    """Prestart the executor ``runink run ARGV`` is likely to use (a run, not a dry run or help)."""
    if _command_words(argv)[:1] != ["run"] or {"--dry-run", "--help", "-h"} & set(argv):
        return
    prestart(CliState.from_argv(argv))


def prestart(state: CliState) -> None:
    key = _key(state)
    entry = _entry(index_store.load(NAME, key))
    _guessed[key] = entry
    if entry is None:
        return
    try:
        if entry.start is not None:  # the driver's light function: no import of the driver itself
            module, _, function = entry.start.partition(":")
            found = getattr(importlib.import_module(module), function)
            # only a function made to be one (prestart_function): an index edited by hand
            # named runink.core.history:_remove_tree, and the run removed the folder it gave
            if getattr(found, PRESTART_MARK, False) is not True:
                log.debug("prestarting executor %r: %s is no prestart function", entry.driver, entry.start)
                return
            found(*entry.args)
            return
        from runink.core.driverload import import_driver
        from runink.core.interfaces.executor import Executor

        factory = import_driver(Executor, entry.driver)
        start = getattr(factory, "prestart", None)
        if callable(start):
            start()
    except Exception as exc:  # a guess: the run goes on as if none was made
        log.debug("prestarting executor %r: %s", entry.driver, exc)


def remember(state: CliState, executor: Any) -> None:
    """Keep the driver ``executor`` is (its ``name``, and its ``prestart_entry``) for the next
    run with this config."""
    driver = type(executor)
    name = getattr(driver, "name", "")
    if not isinstance(name, str) or not name:
        return
    key = _key(state)
    guessed = _guessed.get(key)
    if guessed is not None and guessed.driver == name and guessed.start is not None:
        return  # (kept already: the entry is the same while the key is)
    entry_of = getattr(driver, "prestart_entry", None)
    found = entry_of() if callable(entry_of) else None
    start, args = found if found is not None else (None, [])
    entry = _entry({"driver": name, "start": start, "args": list(args)})
    if entry is not None and entry != guessed:
        index_store.save(NAME, key, entry._asdict(), set())
        _guessed[key] = entry


class Entry(NamedTuple):
    """What the index keeps for a config: the executor driver its last run used and, if the
    driver has one, its light prestart function (``"MODULE:FUNCTION"``) and its arguments."""

    driver: str
    start: str | None
    args: list[str]


#: a light prestart function: of a module of runink's own (the CLI imports no other module an
#: index names, though only its user can write it: index_store)
_FUNCTION = re.compile(r"runink(\.[A-Za-z_][A-Za-z0-9_]*)+:[A-Za-z_][A-Za-z0-9_]*")
MAX_ARGS = 256


def _entry(raw: Any) -> Entry | None:
    """An index entry, checked (one edited by hand, or of an older runink: None, no guess)."""
    if isinstance(raw, str):  # (runink before prestart_entry kept the name only)
        raw = {"driver": raw, "start": None, "args": []}
    try:
        entry = index_store.typed_entry(Entry, raw, {"driver": (str,), "start": (str, type(None)), "args": (list,)})
    except (ValueError, KeyError, TypeError):
        return None
    if not entry.driver or (entry.start is not None and not _FUNCTION.fullmatch(entry.start)):
        return None
    if len(entry.args) > MAX_ARGS or not all(isinstance(a, str) and len(a) <= 1024 for a in entry.args):
        return None
    return entry
