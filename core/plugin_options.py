"""The config's ``[plugin.NAME]`` tables checked against what the plugins declare.

A hook plugin declares the options of its table as ``options_schema`` (on its class, or in its
module for a module plugin), in the format drivers use (``runink.core.driverload.OptionsSchema``:
option -> type or types); a remote storage driver's ``[plugin.storage-NAME]`` table is checked
against the driver's own ``options_schema``. Checked when the plugin manager is built, before
any ``runink_configure``:

- a key the plugin does not declare, or a value of another type, fails that plugin as a raise in
  its ``runink_configure`` does (it is unregistered, ``runink plugins list`` shows why, a server
  refuses to start without its authenticator), with one line naming the table, the key, where
  it was set (FILE:LINE, ``$VAR``, ``--set``) and the options there are; in a storage driver's
  table it is a ConfigError (as a driver's wrong option is);
- text from ``--set`` or the environment is converted to the declared type, so a plugin reads
  ``port = 24224`` alike from the file and from ``RUNINK_PLUGIN__FLUENTD__PORT``;
- a table that no installed plugin or storage driver reads is a warning, not an error: a config
  file shared by several machines may configure a plugin that one of them has not installed.

A plugin that declares nothing keeps reading its table unchecked, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from runink.core.config import RuninkConfig
from runink.core.driverload import OptionsSchema, check_options, declared_schema, entry_points, import_driver
from runink.core.errors import ConfigError, PluginError

log = logging.getLogger("runink.config")

STORAGE_TABLE = "storage-"  # [plugin.storage-NAME]: the storage driver NAME's options
STORAGE_GROUP = "runink.storage"


def plugin_schema(plugin: object) -> OptionsSchema | None:
    """The ``options_schema`` a hook plugin declares (its class's or its module's), or None."""
    found = getattr(plugin, "options_schema", None)
    return found if isinstance(found, Mapping) else None


def check_plugin_tables(
    config: RuninkConfig, schemas: Mapping[str, OptionsSchema | None], known: Collection[str]
) -> dict[str, str]:
    """Check every ``[plugin.NAME]`` table of ``config``, converting its values in place (see the
    module's docstring). Returns the plugins whose table is wrong, each with the reason.

    ``schemas``: the registered plugins' declared schemas, by name (None: declares none);
    ``known``: every plugin name the manager has heard of, disabled and failed ones included
    (their tables are theirs, not typos)."""
    wrong: dict[str, str] = {}
    _hyphened_from_env(config, known)
    for table, options in sorted(config.plugin.items()):
        where = config.source_of(f"plugin.{table}")
        schema = schemas.get(table)
        storage = _storage_schema(table, where) if schema is None else None
        if storage is not None:
            config.plugin[table] = _checked(config, table, storage, options)  # a ConfigError, as a driver's
        elif schema is not None:
            try:
                config.plugin[table] = _checked(config, table, schema, options)
            except ConfigError as exc:
                wrong[table] = str(exc)
        elif table not in known and table not in _storage_tables():
            import difflib  # (only for a table nobody reads: ~6 ms of import)

            readers = sorted({name for name, declared in schemas.items() if declared is not None} | _storage_tables())
            close = difflib.get_close_matches(table, readers, n=1)
            hint = f"did you mean [plugin.{close[0]}]?" if close else f"tables read: {', '.join(readers)}"
            log.warning("[plugin.%s] (%s): no installed plugin reads this table; %s", table, where, hint)
    return wrong


def _hyphened_from_env(config: RuninkConfig, known: Collection[str]) -> None:
    """A variable's name cannot hold a hyphen: ``RUNINK_PLUGIN__LINEAGE_JSONL__PATH`` is the
    table of plugin ``lineage-jsonl`` when no plugin is named ``lineage_jsonl`` (it was read as
    a table nobody reads, and the option was lost)."""
    for table in [t for t in config.plugin if "_" in t and t not in known]:
        hyphened = table.replace("_", "-")
        options = config.plugin[table]
        if hyphened not in known or not all(config.source_of(f"plugin.{table}.{k}").startswith("$") for k in options):
            continue
        moved = config.plugin.pop(table)
        for key in moved:
            config.sources[f"plugin.{hyphened}.{key}"] = config.source_of(f"plugin.{table}.{key}")
        config.plugin[hyphened] = {**config.plugin.get(hyphened, {}), **moved}


def _checked(config: RuninkConfig, table: str, schema: OptionsSchema, options: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for key, value in options.items():
        where = f"[plugin.{table}] {key} ({config.source_of(f'plugin.{table}.{key}')})"
        if key not in schema:
            raise ConfigError(f"{where}: unknown option; the options are {', '.join(sorted(schema)) or 'none'}")
        converted = _convert(value, schema[key])
        if converted is None:
            # the kind only, never the value: the table may hold a credential
            raise ConfigError(f"{where}: must be {_kind_words(schema[key])}, got {_KINDS.get(type(value), 'a value')}")
        checked[key] = converted["value"]
    return checked


#: how a value's kind is said in messages (TOML's words)
_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a table"}


def _kind_words(expected: type | tuple[type, ...]) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(_KINDS.get(kind, getattr(kind, "__name__", str(kind))) for kind in kinds)


def _convert(value: Any, expected: type | tuple[type, ...]) -> dict[str, Any] | None:
    """``value`` as the declared type (text from --set or the environment converted), in a
    one-key dict (a value may be None); None when it is of another kind."""
    try:
        return check_options("plugin", "", {"value": expected}, {"value": value})
    except PluginError:
        return None


def _storage_tables() -> set[str]:
    """The tables of the installed storage drivers of remote schemes: only they get options
    (runink.core.slicetask; a local file's driver has none)."""
    from runink.core.datasets import REMOTE_SCHEMES

    return {f"{STORAGE_TABLE}{name}" for name in REMOTE_SCHEMES if name in entry_points(STORAGE_GROUP)}


def _storage_schema(table: str, where: str) -> OptionsSchema | None:
    """The options a remote storage driver declares; None when it is not one or declares none."""
    if table not in _storage_tables():
        return None
    name = table.removeprefix(STORAGE_TABLE)
    from runink.core.interfaces.storage import Storage

    try:
        factory = import_driver(Storage, name, f" ([plugin.{STORAGE_TABLE}{name}] at {where})")
    except PluginError as exc:
        raise ConfigError(str(exc)) from None
    return declared_schema(factory)
