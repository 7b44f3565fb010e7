"""Drivers: one implementation per group, chosen by name in configuration and loaded with stevedore.

Entry-point groups (public API):

=============================  =======================================================
``runink.executors``           ``Executor``: how a node runs slices (``process``...)
``runink.scheduler_policies``  ``SchedulerPolicy``: ranks feasible nodes (``spread``...)
``runink.secret_backends``     ``SecretBackend``: herd-scoped secrets
``runink.barn_backends``       ``BarnBackend``: the cluster state store
``runink.annotators``          ``Annotator``: LLM annotations of datasets
``runink.storage``             ``Storage``: dataset sources/sinks, one per URI scheme
=============================  =======================================================

Loading a driver imports only that driver's module (a worker never imports the others).
Hook plugins may add drivers at run time through ``runink_register_drivers``.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from stevedore import driver as stevedore_driver
from stevedore import exception as stevedore_exception
from stevedore.extension import ExtensionManager

from runink.core.config import RuninkConfig
from runink.core.errors import DriverLoadError, DriverNotFoundError, RuninkError
from runink.core.interfaces import Annotator, BarnBackend, Executor, SchedulerPolicy, SecretBackend, Storage
from runink.core.model import DriverSpec  # re-exported: plugins and tests import it from here
from runink.core.plugins import PluginManager, PluginRecord, describe_exception, is_allowed, is_disabled, source_of

DRIVER_GROUPS: dict[str, type] = {
    "runink.executors": Executor,
    "runink.scheduler_policies": SchedulerPolicy,
    "runink.secret_backends": SecretBackend,
    "runink.barn_backends": BarnBackend,
    "runink.annotators": Annotator,
    "runink.storage": Storage,
}


def _check_group(group: str) -> type:
    try:
        return DRIVER_GROUPS[group]
    except KeyError:
        raise DriverNotFoundError(
            f"unknown driver group {group!r} (groups: {', '.join(sorted(DRIVER_GROUPS))})"
        ) from None


def _entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


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


def driver_names(group: str, manager: PluginManager | None = None) -> list[str]:
    _check_group(group)
    return sorted(set(_entry_points(group)) | set(_runtime_specs(manager, group)))


def load_driver(
    group: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    manager: PluginManager | None = None,
    origin: str | None = None,
) -> Any:
    """Import and construct the driver ``name`` of ``group`` with ``options`` as keyword arguments.

    ``origin`` says where the name was chosen (``runink.toml:7``) for error messages.
    Raises DriverNotFoundError (listing the available names) or DriverLoadError.
    """
    interface = _check_group(group)
    where = f" (set at {origin})" if origin and origin != "default" else ""
    settings = manager.settings if manager is not None else None
    options = dict(options or {})
    eps = _entry_points(group)
    if settings is not None and is_disabled(name, group, settings):
        raise DriverLoadError(f"{group} driver {name!r} is disabled by plugins.disable{where}")
    if name in eps:
        ep = eps[name]
        package = ep.dist.name if ep.dist else None
        if settings is not None and not is_allowed(name, group, package, settings):
            raise DriverLoadError(f"{group} driver {name!r} from {package} is not in plugins.load{where}")
        # stevedore keeps a per-process list of each group's entry points; drop it so a driver
        # installed since (or a test's) is found, consistently with importlib.metadata above.
        ExtensionManager.ENTRY_POINT_CACHE.pop(group, None)
        try:
            manager_ = stevedore_driver.DriverManager(
                namespace=group,
                name=name,
                invoke_on_load=False,
                on_load_failure_callback=_raise_load_failure,
            )
            factory = manager_.driver
        except stevedore_exception.MultipleMatches:
            raise DriverLoadError(f"{group} driver {name!r} is registered by more than one package{where}") from None
        except _LoadFailure as failure:
            raise DriverLoadError(
                f"{group} driver {name!r} ({ep.value}) failed to import: {describe_exception(failure.error)}{where}"
            ) from failure.error
    else:
        runtime = _runtime_specs(manager, group)
        if name not in runtime:
            available = ", ".join(driver_names(group, manager)) or "none installed"
            raise DriverNotFoundError(f"no {group} driver named {name!r}{where}; available: {available}")
        factory = runtime[name][1].factory
    if inspect.isclass(factory) and not issubclass(factory, interface):
        raise DriverLoadError(f"{group} driver {name!r} is a {factory.__name__}, not a {interface.__name__}{where}")
    given = sorted(options)
    if interface is Executor:
        options["degrade"] = _degrade_option(options.get("degrade", False), name, where)
    try:
        instance = factory(**options)
    except TypeError as exc:
        if interface is Executor and not _accepts(factory, "degrade"):
            raise DriverLoadError(
                f"{group} driver {name!r} does not take the 'degrade' option every executor driver takes "
                f"(see docs/plugins.md){where}: {exc}"
            ) from exc
        raise DriverLoadError(f"{group} driver {name!r}: bad options {given}{where}: {exc}") from exc
    except Exception as exc:
        raise DriverLoadError(f"{group} driver {name!r} failed to start{where}: {describe_exception(exc)}") from exc
    if not isinstance(instance, interface):
        raise DriverLoadError(
            f"{group} driver {name!r} is a {type(instance).__name__}, not a {interface.__name__}{where}"
        )
    return instance


def _degrade_option(value: Any, name: str, where: str) -> bool:
    """``degrade`` as a bool: from a file it is one, from ``--set``/the environment it is text
    (where ``bool("false")`` would be True)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
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


class _LoadFailure(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _raise_load_failure(_manager: Any, _entrypoint: Any, exc: BaseException) -> None:
    raise _LoadFailure(exc)


def list_drivers(manager: PluginManager | None = None, groups: Mapping[str, type] | None = None) -> list[PluginRecord]:
    """One record per installed driver, with its status; imports each (not instantiating it) to check it loads."""
    records: list[PluginRecord] = []
    settings = manager.settings if manager is not None else None
    for group, interface in (groups or DRIVER_GROUPS).items():
        for name, ep in sorted(_entry_points(group).items()):
            package = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            record = PluginRecord(name, "driver", group, package, version, source_of(package))
            if settings is not None and is_disabled(name, group, settings):
                records.append(replace(record, status="disabled", error="disabled by plugins.disable"))
                continue
            if settings is not None and not is_allowed(name, group, package, settings):
                records.append(replace(record, status="disabled", error="not in plugins.load"))
                continue
            try:
                target = ep.load()
            except Exception as exc:
                records.append(replace(record, status="failed", error=describe_exception(exc)))
                continue
            if inspect.isclass(target) and not issubclass(target, interface):
                records.append(replace(record, status="failed", error=f"not a {interface.__name__} subclass"))
                continue
            records.append(record)
        for name, (plugin, _spec) in sorted(_runtime_specs(manager, group).items()):
            if name in _entry_points(group):
                continue
            records.append(
                PluginRecord(name, "driver", group, None, None, "runtime", details={"registered_by": plugin})
            )
    return records


#: config section -> (entry-point group, key holding the driver name)
CONFIGURED_DRIVERS: dict[str, tuple[str, str]] = {
    "executor": ("runink.executors", "driver"),
    "scheduler": ("runink.scheduler_policies", "policy"),
    "barn": ("runink.barn_backends", "backend"),
    "secrets": ("runink.secret_backends", "backend"),
    "annotator": ("runink.annotators", "driver"),
}


def configured_driver(config: RuninkConfig, section: str, manager: PluginManager | None = None) -> Any:
    """The driver a config section names (``[executor] driver = "process"``), built with its options.

    Returns None when the section names no driver (optional ones: secrets, annotator).
    """
    try:
        group, key = CONFIGURED_DRIVERS[section]
    except KeyError:
        raise DriverNotFoundError(
            f"no driver section {section!r} (sections: {', '.join(CONFIGURED_DRIVERS)})"
        ) from None
    settings = getattr(config, section)
    name = getattr(settings, key)
    if name is None:
        return None
    origin = config.source_of(f"{section}.{key}")
    if not origin.startswith(("--set ", "$")):  # those name the key already; a file line does not
        origin = f"{origin}: {section}.{key}"
    return load_driver(group, name, settings.options, manager=manager, origin=origin)


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
                Executor.GROUP, name, dict(config.executor.options), manager=manager, origin="executor.prefer"
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
