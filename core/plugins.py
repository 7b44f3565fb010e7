"""The plugin manager: loads hook plugins from the ``runink`` entry-point group, never fatally.

A plugin that raises on import, on registration, or implements a hook name that is not in
``runink.core.hookspecs`` is recorded as failed with its error and unregistered; everything
else keeps working. ``RUNINK_DISABLE_PLUGINS`` / ``plugins.disable`` skips plugins by name,
``RUNINK_LOAD_PLUGINS`` / ``plugins.load`` is an allow-list for third-party plugins (the
built-in ones always load unless disabled), ``RUNINK_TRACE_PLUGINS`` / ``plugins.trace`` logs
every hook call. Hooks are called through ``manager.hooks`` (``runink.core.hooks``).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pluggy

from runink.core import hookspecs
from runink.core.config import PluginsConfig, RuninkConfig
from runink.core.driverload import installed_entry_points, load_quietly, package_of
from runink.core.errors import describe_exception as describe_exception  # noqa: PLC0414  (re-exported: it moved)
from runink.core.hooks import Hooks, guard_implementations

log = logging.getLogger("runink.plugins")
trace_log = logging.getLogger("runink.plugins.trace")

HOOK_GROUP = "runink"
BUILTIN_PACKAGE = "runink"

Status = Literal["loaded", "disabled", "failed"]
Source = Literal["builtin", "third-party", "runtime"]


@dataclass(frozen=True)
class PluginRecord:
    """One row of ``runink plugins list``: a hook plugin or a driver."""

    name: str
    kind: str  # "hook" or "driver"
    group: str
    package: str | None
    version: str | None
    source: Source
    hooks: tuple[str, ...] = ()
    status: Status = "loaded"
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "group": self.group,
            "package": self.package,
            "version": self.version,
            "source": self.source,
            "hooks": list(self.hooks),
            "status": self.status,
            "error": self.error,
            **({"details": self.details} if self.details else {}),
        }


def source_of(package: str | None) -> Source:
    if package is None:
        return "runtime"
    return "builtin" if package == BUILTIN_PACKAGE else "third-party"


def is_disabled(name: str, group: str, settings: PluginsConfig) -> bool:
    """Whether ``plugins.disable`` names this plugin, by name or ``group:name``."""
    return name in settings.disable or f"{group}:{name}" in settings.disable


def is_allowed(name: str, group: str, package: str | None, settings: PluginsConfig) -> bool:
    """The allow-list only restricts third-party plugins."""
    if settings.load is None or source_of(package) != "third-party":
        return True
    return name in settings.load or f"{group}:{name}" in settings.load


class PluginManager:
    """Runink's view of pluggy: hook plugins with their load status, plus helpers to call hooks."""

    def __init__(self, settings: PluginsConfig | None = None) -> None:
        self.settings = settings or PluginsConfig()
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._records: dict[str, PluginRecord] = {}
        self._lock = threading.RLock()
        self.hooks = Hooks(self)
        self._unconfigured = False
        if self.settings.trace:
            self.enable_tracing()

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # --- loading ---------------------------------------------------------------------

    def load_entrypoints(self, group: str = HOOK_GROUP) -> None:
        """Load and register every hook plugin of the entry-point group, recording each outcome."""

        # Runink's own first: a name is the first plugin's, and another package's of the same
        # name (an "rbac" of its own) took the built-in authorizer's place when listed first
        def builtin_first(ep: importlib.metadata.EntryPoint) -> tuple[bool, str]:
            return source_of(package_of(ep)[0]) != "builtin", ep.name

        for ep in sorted(installed_entry_points(group), key=builtin_first):
            package, version = package_of(ep)
            base = PluginRecord(ep.name, "hook", group, package, version, source_of(package))
            if ep.name in self._records:
                self._records[f"{ep.name}@{package}"] = replace(
                    base, status="failed", error=f"name already used by package {self._records[ep.name].package}"
                )
                continue
            if is_disabled(ep.name, group, self.settings):
                self._records[ep.name] = replace(base, status="disabled", error="disabled by plugins.disable")
                continue
            if not is_allowed(ep.name, group, package, self.settings):
                self._records[ep.name] = replace(base, status="disabled", error="not in plugins.load")
                continue
            try:
                obj = load_quietly(ep)
                if inspect.isclass(obj):
                    obj = obj()
            except Exception as exc:  # a broken plugin must never stop start-up
                log.warning("plugin %s failed to load: %s", ep.name, describe_exception(exc))
                self._records[ep.name] = replace(base, status="failed", error=describe_exception(exc))
                continue
            self._register(obj, base)

    def register(self, plugin: Any, name: str | None = None, *, package: str | None = None) -> PluginRecord:
        """Register an object or module as a hook plugin at run time (tests, notebooks, embedding)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        version = None
        if package:
            try:
                version = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                version = None
        base = PluginRecord(name, "hook", HOOK_GROUP, package, version, source_of(package))
        return self._register(plugin, base)

    def _register(self, plugin: Any, base: PluginRecord) -> PluginRecord:
        with self._lock:
            try:
                self.pm.register(plugin, name=base.name)
            except Exception as exc:
                error = describe_exception(exc)
                if self.pm.get_plugin(base.name) is plugin:
                    # pluggy validates before registering, so only the replay of the historic
                    # runink_configure (user code) can fail with the plugin half registered.
                    self.pm.unregister(plugin)
                    error = f"runink_configure raised {error}"
                record = replace(base, status="failed", error=error)
                self._records[base.name] = record
                log.warning("plugin %s failed to register: %s", base.name, record.error)
                return record
            unknown = sorted(caller.name for caller in (self.pm.get_hookcallers(plugin) or []) if caller.spec is None)
            if unknown:
                self.pm.unregister(plugin)
                record = replace(base, status="failed", error=f"implements unknown hook(s): {', '.join(unknown)}")
                log.warning("plugin %s: %s", base.name, record.error)
            else:
                guard_implementations(self.pm, plugin, lambda: self.settings.trace)
                hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []))
                record = replace(base, hooks=hooks)
            self._records[base.name] = record
            return record

    def unregister(self, name: str) -> None:
        with self._lock:
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                self.pm.unregister(plugin)
            self._records.pop(name, None)

    def mark_failed(self, name: str, error: str) -> None:
        """Unregister a plugin that misbehaved after loading, keeping it listed with the reason."""
        with self._lock:
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                self.pm.unregister(plugin)
            record = self._records.get(name) or PluginRecord(name, "hook", HOOK_GROUP, None, None, "runtime")
            # (details keeps the hooks it had: a server refuses to start without its authorizer)
            details = {**record.details, "hooks": list(record.hooks)}
            self._records[name] = replace(record, status="failed", error=error, hooks=(), details=details)
        log.warning("plugin %s failed: %s", name, error)

    def records(self) -> list[PluginRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.name)

    # --- calling hooks ---------------------------------------------------------------

    def configure(self, config: RuninkConfig) -> None:
        """Check the config's ``[plugin.NAME]`` tables against what the plugins declare
        (runink.core.plugin_options), then call ``runink_configure`` (historic: later plugins
        get it at registration); a plugin whose table is wrong, or that raises, is marked failed."""
        from runink.core.plugin_options import check_plugin_tables, plugin_schema

        with self._lock:
            schemas = {name: plugin_schema(plugin) for name, plugin in self.pm.list_name_plugin()}
            known = set(self._records) | set(schemas)
        for name, error in check_plugin_tables(config, schemas, known).items():
            self.mark_failed(name, error)  # as if its runink_configure had raised: never called
        self.hooks.configure(config)

    def unconfigure(self) -> None:
        """Call ``runink_unconfigure`` once: plugins send what they buffer and close."""
        if not self._unconfigured:
            self._unconfigured = True
            self.hooks.unconfigure()

    def enable_tracing(self) -> None:
        self.settings = self.settings.model_copy(update={"trace": True})
        self.pm.trace.root.setwriter(_trace_line)
        self.pm.enable_tracing()

    def implementers(self, hook_name: str) -> list[str]:
        return [impl.plugin_name for impl in getattr(self.pm.hook, hook_name).get_hookimpls()]


def _trace_line(message: str) -> None:
    """pluggy's trace of a call, without its arguments (the config, a request's credentials)
    nor its result (a master key): the hook's name alone."""
    first = (message.strip().splitlines() or [""])[0]
    trace_log.info(first.split(" --> ", 1)[0] if first.startswith("finish ") else first)


def create_plugin_manager(
    config: RuninkConfig | None = None, *, extra: Iterable[tuple[str, Any]] = ()
) -> PluginManager:
    """A plugin manager with every entry-point plugin loaded and configured."""
    config = config or RuninkConfig()
    manager = PluginManager(config.plugins)
    manager.load_entrypoints()
    for name, plugin in extra:
        manager.register(plugin, name)
    manager.configure(config)
    return manager


def hook_names() -> Sequence[str]:
    return sorted(name for name in dir(hookspecs) if name.startswith("runink_"))
