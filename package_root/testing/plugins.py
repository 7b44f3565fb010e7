"""Plugin managers for tests: fresh, for the duration of a ``with`` block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runink.core.config import RuninkConfig
from runink.core.plugins import PluginManager


@contextmanager
def plugin_manager(
    *plugins: Any, config: RuninkConfig | None = None, entrypoints: bool = True
) -> Iterator[PluginManager]:
    """A new plugin manager with the installed plugins (unless ``entrypoints=False``) plus
    ``plugins`` (objects or modules, or ``(name, plugin)`` pairs), configured.
    """
    config = config or RuninkConfig()
    manager = PluginManager(config.plugins)
    if entrypoints:
        manager.load_entrypoints()
    for plugin in plugins:
        name, obj = plugin if isinstance(plugin, tuple) else (None, plugin)
        manager.register(obj, name)
    manager.configure(config)
    try:
        yield manager
    finally:
        manager.unconfigure()


@contextmanager
def registered_plugin(manager: PluginManager, plugin: Any, name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` on ``manager`` for the block only; yields the name it got."""
    record = manager.register(plugin, name)
    if record.status != "loaded":
        raise AssertionError(f"plugin {record.name} did not register: {record.error}")
    try:
        yield record.name
    finally:
        manager.unregister(record.name)
