"""Drivers: one implementation per group, chosen by name in configuration.

Entry-point groups (public API):

=============================  =======================================================
``runink.executors``           ``Executor``: how a node runs slices (``process``...)
``runink.scheduler_policies``  ``SchedulerPolicy``: ranks feasible nodes (``spread``...)
``runink.secret_backends``     ``SecretBackend``: herd-scoped secrets
``runink.barn_backends``       ``BarnBackend``: the cluster state store
``runink.annotators``          ``Annotator``: LLM annotations of datasets
``runink.storage``             ``Storage``: dataset sources/sinks, one per URI scheme
``runink.scalers``             ``Scaler``: starts and stops worker nodes for the autoscaler
=============================  =======================================================

The group of each is its interface's ``GROUP`` (the only place it is written). Loading goes
through ``runink.core.driverload`` (also the slice's way) and imports only that driver's
module (a worker never imports the others); a driver may declare ``options_schema``, checked
before it is built. Hook plugins may add drivers at run time through ``runink_register_drivers``.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar, cast

from runink.core.config import RuninkConfig
from runink.core.driverload import (
    FALSE_WORDS,
    TRUE_WORDS,
    Interface,
    check_class,
    construct,
    declared_schema,
    entry_points,
    group_of,
    import_driver,
    load_quietly,
    package_of,
)
from runink.core.errors import DriverLoadError, DriverNotFoundError, RuninkError
from runink.core.interfaces import Annotator, BarnBackend, Executor, Scaler, SchedulerPolicy, SecretBackend, Storage
from runink.core.model import DriverSpec  # re-exported: plugins and tests import it from here
from runink.core.plugins import PluginManager, PluginRecord, describe_exception, is_allowed, is_disabled, source_of

T = TypeVar("T")

#: The driver interfaces; each names its entry-point group in ``GROUP``.
DRIVER_INTERFACES: tuple[type, ...] = (
    Executor,
    SchedulerPolicy,
    SecretBackend,
    BarnBackend,
    Annotator,
    Storage,
    Scaler,
)
#: entry-point group -> interface, derived from the interfaces' GROUP
DRIVER_GROUPS: dict[str, type] = {group_of(interface): interface for interface in DRIVER_INTERFACES}


def _check_group(group: str) -> type:
    try:
        return DRIVER_GROUPS[group]
    except KeyError:
        raise DriverNotFoundError(
            f"unknown driver group {group!r} (groups: {', '.join(sorted(DRIVER_GROUPS))})"
        ) from None


def _runtime_specs(manager: PluginManager | None, group: str) -> dict[str, tuple[str, DriverSpec]]:
    """Drivers that hook plugins register, by name: (plugin name, spec)."""
    if manager is None:
        return {}
    found: dict[str, tuple[str, DriverSpec]] = {}
    for answer in manager.hooks.register_drivers():  # a plugin that raises is marked failed
        for spec in answer.value:
            if spec.group == group:
                found.setdefault(spec.name, (answer.plugin, spec))
    return found


def driver_names(interface: Interface[Any], manager: PluginManager | None = None) -> list[str]:
    group = group_of(interface)
    _check_group(group)
    return sorted(set(entry_points(group)) | set(_runtime_specs(manager, group)))


def load_driver(
    interface: Interface[T],
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    manager: PluginManager | None = None,
    origin: str | None = None,
    extra: Mapping[str, Any] = {},
) -> T:
    """Import and build the driver ``name`` of ``interface`` (``Executor``...) with ``options``.

    ``origin`` says where the name was chosen (``runink.toml:7``) for error messages.
    ``extra``: options added only if the driver declares them (see ``configured_driver``).
    Raises DriverNotFoundError (listing the available names) or DriverLoadError.
    """
    group = group_of(interface)
    _check_group(group)
    where = f" (set at {origin})" if origin and origin != "default" else ""
    settings = manager.settings if manager is not None else None
    options = dict(options or {})
    eps = entry_points(group)
    if settings is not None and is_disabled(name, group, settings):
        raise DriverLoadError(f"{group} driver {name!r} is disabled by plugins.disable{where}")
    factory: Callable[..., Any]
    if name in eps:
        ep = eps[name]
        package, _ = package_of(ep)
        if settings is not None and not is_allowed(name, group, package, settings):
            raise DriverLoadError(f"{group} driver {name!r} from {package} is not in plugins.load{where}")
        factory = import_driver(interface, name, where)
    else:
        runtime = _runtime_specs(manager, group)
        if name not in runtime:
            available = ", ".join(driver_names(interface, manager)) or "none installed"
            raise DriverNotFoundError(f"no {group} driver named {name!r}{where}; available: {available}")
        factory = runtime[name][1].factory
    check_class(interface, name, factory, where)
    declared = declared_schema(factory) or {}
    options.update({key: value for key, value in extra.items() if key in declared})
    if cast(type, interface) is Executor:
        options["degrade"] = _degrade_option(options.get("degrade", False), name, where)
        if declared_schema(factory) is None and not _accepts(factory, "degrade"):
            raise DriverLoadError(
                f"{group} driver {name!r} does not take the 'degrade' option every executor driver takes "
                f"(see docs/plugins.md){where}"
            )
    return construct(interface, name, factory, options, where)


def _degrade_option(value: Any, name: str, where: str) -> bool:
    """``degrade`` as a bool: from a file it is one, from ``--set``/the environment it is text
    (where ``bool("false")`` would be True)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise DriverLoadError(
        f"runink.executors driver {name!r}: option degrade must be true or false, got {value!r}{where}"
    )


def _accepts(factory: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True  # cannot tell: report the TypeError as it is
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def list_drivers(manager: PluginManager | None = None, groups: Mapping[str, type] | None = None) -> list[PluginRecord]:
    """One record per installed driver, with its status; imports each (not instantiating it) to check it loads."""
    records: list[PluginRecord] = []
    for group, interface in (groups or DRIVER_GROUPS).items():
        for _name, ep in sorted(entry_points(group).items()):
            records.append(_installed_record(ep, group, interface, manager))
        for name, (plugin, _spec) in sorted(_runtime_specs(manager, group).items()):
            if name in entry_points(group):
                continue
            records.append(
                PluginRecord(name, "driver", group, None, None, "runtime", details={"registered_by": plugin})
            )
    return records


def driver_record(interface: type, name: str, manager: PluginManager | None = None) -> PluginRecord | None:
    """The record of driver ``name`` of ``interface``'s group as ``list_drivers`` has it, or
    None if there is none: only that driver is imported, not the rest of its group."""
    group = group_of(interface)
    ep = entry_points(group).get(name)
    if ep is not None:
        return _installed_record(ep, group, interface, manager)
    runtime = _runtime_specs(manager, group).get(name)
    if runtime is None:
        return None
    return PluginRecord(name, "driver", group, None, None, "runtime", details={"registered_by": runtime[0]})


def _installed_record(
    ep: importlib.metadata.EntryPoint, group: str, interface: type, manager: PluginManager | None
) -> PluginRecord:
    """An installed driver's record: disabled, failed to load (or not the interface's), or loaded."""
    settings = manager.settings if manager is not None else None
    package, version = package_of(ep)
    record = PluginRecord(ep.name, "driver", group, package, version, source_of(package))
    if settings is not None and is_disabled(ep.name, group, settings):
        return replace(record, status="disabled", error="disabled by plugins.disable")
    if settings is not None and not is_allowed(ep.name, group, package, settings):
        return replace(record, status="disabled", error="not in plugins.load")
    try:
        target = load_quietly(ep)
    except Exception as exc:
        return replace(record, status="failed", error=describe_exception(exc))
    if inspect.isclass(target) and not issubclass(target, interface):
        return replace(record, status="failed", error=f"not a {interface.__name__} subclass")
    return record


#: config section -> the interface of the driver it chooses (its ``driver`` key names it,
#: its ``options`` table builds it)
CONFIGURED_DRIVERS: dict[str, type] = {
    "executor": Executor,
    "scheduler": SchedulerPolicy,
    "barn": BarnBackend,
    "secrets": SecretBackend,
    "annotator": Annotator,
    "scaling": Scaler,
}


def configured_driver(
    config: RuninkConfig, section: str, manager: PluginManager | None = None, *, extra: Mapping[str, Any] = {}
) -> Any:
    """The driver a config section names (``[executor] driver = "process"``), built with its options.

    Returns None when the section names no driver (optional ones: secrets, annotator).
    ``extra``: objects the caller has for a driver that declares an option of that name in
    its ``options_schema`` (the server's Barn for the ``barn`` secret backend), never a file's.
    """
    try:
        interface = CONFIGURED_DRIVERS[section]
    except KeyError:
        raise DriverNotFoundError(
            f"no driver section {section!r} (sections: {', '.join(CONFIGURED_DRIVERS)})"
        ) from None
    settings = getattr(config, section)
    name = settings.driver
    if name is None:
        return None
    origin = config.source_of(f"{section}.driver")
    if not origin.startswith(("--set ", "$")):  # those name the key already; a file line does not
        origin = f"{origin}: {section}.driver"
    return load_driver(interface, name, settings.options, manager=manager, origin=origin, extra=extra)


def auto_executor(config: RuninkConfig, manager: PluginManager | None = None) -> tuple[Any, RuninkConfig, str]:
    """``executor.driver = "auto"``: the first driver of ``executor.prefer`` that says, through
    its own fingerprint and capabilities, that it is healthy and isolates here; else the first
    healthy one there, which isolates nothing. The core names no driver: the order is config.

    Returns (the isolating executor chosen or None, a config naming the chosen driver, a one-line
    note saying why slices are not isolated) so callers can say it: a slice never runs unconfined
    without a word. Raises DriverLoadError if no preferred driver can run here.
    """
    config = config.model_copy(deep=True)
    reasons: list[str] = []
    fallback: str | None = None
    for name in config.executor.prefer:
        try:
            executor = load_driver(
                Executor, name, dict(config.executor.options), manager=manager, origin="executor.prefer"
            )
        except RuninkError as exc:
            reasons.append(f"{name} executor: {exc}")
            continue
        fingerprint = executor.fingerprint()
        isolates = executor.capabilities().isolation != "none"
        if fingerprint.healthy and isolates:
            config.executor.driver = name
            return executor, config, ""
        executor.close()
        if not fingerprint.healthy:
            reasons.append(f"{name} executor: {fingerprint.health_description or 'unhealthy'}")
        elif fallback is None:
            fallback = name
    if fallback is None:
        raise DriverLoadError(
            f"executor.driver = auto: no executor of executor.prefer ({', '.join(config.executor.prefer)}) "
            f"can run here: {'; '.join(reasons) or 'none isolates'}"
        )
    config.executor.driver = fallback
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return None, config, f"note: scenarios run as plain processes, not isolated{why}"


def pipeline_executor(
    config: RuninkConfig, limits_asked: Sequence[str], manager: PluginManager, quiet: bool = False
) -> Any:
    """The configured executor. The embedded default runs on the plain process executor, which
    cannot enforce limits: unless ``executor.options.degrade`` is set explicitly, it runs the
    scenarios without them and says so once on stderr. The same holds for any executor driver
    that isolates nothing (``capabilities().isolation == "none"``, a third party's included);
    an isolating one refuses what it cannot enforce unless ``degrade`` is set. ``limits_asked``:
    what the pipeline's scenarios ask for (``CompiledPipeline.limits_asked``), named in that note.
    """
    isolates: bool | None = None  # not known until a driver is built
    if config.executor.driver == "auto":
        isolating, config, note = auto_executor(config, manager)
        if isolating is not None:
            return isolating
        isolates = False  # auto's fallback: a driver that said it isolates nothing
        if not quiet:
            print(note, file=sys.stderr)
    if "degrade" not in config.executor.options:
        if isolates is None:
            executor = configured_driver(config, "executor", manager)
            if executor.capabilities().isolation != "none":
                return executor
            executor.close()
        wanted = list(limits_asked)
        if wanted and not quiet:
            print(
                f"warning: executor {config.executor.driver!r} does not enforce {', '.join(wanted)} limits; "
                "scenarios run without them (set executor.options.degrade=false to refuse instead)",
                file=sys.stderr,
            )
        config = config.model_copy(deep=True)
        config.executor.options["degrade"] = True
    return configured_driver(config, "executor", manager)
