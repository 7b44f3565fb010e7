"""The one way a driver is found and built: the interface's ``GROUP`` names its entry-point group.

Cheap to import on purpose (the errors only: no pydantic, stevedore or pluggy, and
importlib.metadata when entry points are first read), so a slice loads its storage drivers
through it too. ``runink.core.drivers`` builds
on it and adds what configuration brings: plugin allow/deny lists, drivers that hook plugins
register at run time, and where a name was set.

A driver may declare its options (as Nomad drivers do) in a class attribute::

    options_schema: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"timeout_grace": float}

The loader checks the options against it before constructing the driver, so a wrong option is
one line naming the driver, the option and the expected type. Text (from ``--set`` or the
environment) is converted for bool, int, float and list options. A driver without a schema of
its own (a subclass does not inherit its base's) is called with the options as keyword
arguments, a TypeError reported as bad options.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from runink.core.errors import DriverLoadError, DriverNotFoundError, describe_exception

if TYPE_CHECKING:
    import importlib.metadata

T = TypeVar("T")

#: A driver's ``options_schema``: option name -> the type (or types) its value must have.
OptionsSchema = Mapping[str, type | tuple[type, ...]]

#: An interface class (``Executor``, ``Storage``...). Spelled as a callable returning T, not
#: ``type[T]``: mypy refuses an abstract class where ``type[T]`` is expected (mypy#4717).
Interface = Callable[..., T]

log = logging.getLogger(__name__)

#: (group, sys.path) -> name -> entry point. Keyed by sys.path so a distribution put on the path
#: later (a test's, a plugin folder) is seen; scanning every distribution costs milliseconds.
_CACHE: dict[tuple[str, tuple[str, ...]], dict[str, importlib.metadata.EntryPoint]] = {}
#: (group, name) of drivers that two installed packages (neither Runink) register with different targets
_AMBIGUOUS: set[tuple[str, str]] = set()
OWN_PACKAGE = "runink"  # the distribution whose drivers win a name over another package's

TRUE_WORDS = ("true", "1", "yes", "on")  # how --set and the environment write a bool
FALSE_WORDS = ("false", "0", "no", "off", "")


def group_of(interface: Interface[Any]) -> str:
    group = getattr(interface, "GROUP", None)
    if not isinstance(group, str):
        raise DriverNotFoundError(f"{getattr(interface, '__name__', interface)!r} is not a driver interface (no GROUP)")
    return group


#: every installed entry point, per import path (SelectableGroups before Python 3.12, EntryPoints after)
_ALL: dict[tuple[str, ...], Any] = {}


def installed_entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The entry points of ``group`` in every installed package. Every package's metadata is
    read once per import path, for all groups (each read is a scan of every package: ~25 ms)."""
    import importlib.metadata  # (~10 ms: not for a slice given its drivers' targets, import_target)

    key = tuple(sys.path)
    every = _ALL.get(key)
    if every is None:
        every = _ALL[key] = importlib.metadata.entry_points()
    return list(every.select(group=group))


#: distribution -> (name, version): a distribution's ``name`` and ``version`` each parse its
#: whole METADATA file again (runink's, with its long description: ~1 ms a parse)
_PACKAGES: dict[int, tuple[importlib.metadata.Distribution, str | None, str | None]] = {}


def package_of(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    """The name and version of the package that installed ``ep`` (None, None: not known).
    Its metadata is read once per distribution."""
    dist = ep.dist
    if dist is None:
        return None, None
    known = _PACKAGES.get(id(dist))
    if known is None or known[0] is not dist:  # (the distribution kept: its id stays its own)
        metadata = dist.metadata
        known = _PACKAGES[id(dist)] = (dist, metadata["Name"], metadata["Version"])
    return known[1], known[2]


def entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The installed drivers of an entry-point group, by name. A name two packages register:
    Runink's own if it is one of them (the other is ignored, with a warning: installing a
    package that names a driver `csv` took `csv` away from every pipeline), else neither
    (``import_driver`` says so)."""
    key = (group, tuple(sys.path))
    found = _CACHE.get(key)
    if found is None:
        found = {}
        for ep in installed_entry_points(group):
            kept = found.setdefault(ep.name, ep)
            if kept.value == ep.value:
                continue
            own = [e for e in (kept, ep) if package_of(e)[0] == OWN_PACKAGE]
            if len(own) != 1:
                _AMBIGUOUS.add((group, ep.name))
                continue
            found[ep.name] = own[0]
            ignored = package_of(ep if own[0] is kept else kept)[0] or "a package"
            log.warning("%s driver %r of %s is ignored: Runink's own driver has that name", group, ep.name, ignored)
        _CACHE[key] = found
    return found


#: an entry point's target as ``target_of`` writes it: MODULE:ATTRIBUTE (dotted names)
_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def target_of(interface: Interface[Any], name: str) -> str:
    """Installed driver ``name``'s target, ``MODULE:ATTRIBUTE``, for a process that will build it
    with ``import_target`` (a slice: no scan of every package's entry points there)."""
    group = group_of(interface)
    ep = entry_points(group).get(name)
    if ep is None or (group, name) in _AMBIGUOUS or not _TARGET.fullmatch(ep.value):
        import_driver(interface, name)  # (raises the error that says why)
        raise DriverLoadError(
            f"{group} driver {name!r}: entry point {ep.value if ep else None!r} is not MODULE:ATTRIBUTE"
        )
    return ep.value


def import_target(interface: Interface[Any], name: str, target: str) -> Callable[..., Any]:
    """Driver ``name``'s factory from its ``target`` (``target_of``'s), imported but not built."""
    group = group_of(interface)
    if not _TARGET.fullmatch(target):
        raise DriverLoadError(f"{group} driver {name!r}: {target!r} is not MODULE:ATTRIBUTE")
    module, _, attribute = target.partition(":")
    try:
        return cast(Callable[..., Any], getattr(importlib.import_module(module), attribute))
    except Exception as exc:
        raise DriverLoadError(
            f"{group} driver {name!r} ({target}) failed to import: {describe_exception(exc)}"
        ) from exc


def import_driver(interface: Interface[Any], name: str, where: str = "") -> Callable[..., Any]:
    """The factory (usually the class) of installed driver ``name``, imported but not built."""
    group = group_of(interface)
    ep = entry_points(group).get(name)
    if ep is None:
        available = ", ".join(sorted(entry_points(group))) or "none installed"
        raise DriverNotFoundError(f"no {group} driver named {name!r}{where}; available: {available}")
    if (group, name) in _AMBIGUOUS:
        raise DriverLoadError(f"{group} driver {name!r} is registered by more than one package{where}")
    try:
        factory = load_quietly(ep)
    except Exception as exc:
        raise DriverLoadError(
            f"{group} driver {name!r} ({ep.value}) failed to import: {describe_exception(exc)}{where}"
        ) from exc
    return cast(Callable[..., Any], factory)


def construct(
    interface: Interface[T], name: str, factory: Callable[..., Any], options: Mapping[str, Any], where: str = ""
) -> T:
    """Check ``options`` against the factory's ``options_schema`` (if it has one), build the driver
    and check that it is an instance of the interface."""
    cls = cast(type, interface)
    group = group_of(interface)
    check_class(interface, name, factory, where)
    schema = declared_schema(factory)
    if schema is not None:
        options = check_options(group, name, schema, options, where)
    if inspect.isclass(factory) and inspect.isabstract(factory):  # (it was "bad options [...]")
        missing = ", ".join(sorted(getattr(factory, "__abstractmethods__", ())))
        raise DriverLoadError(f"{group} driver {name!r} does not implement {missing}{where}")
    try:
        instance = factory(**options)
    except TypeError as exc:
        if schema is not None:  # the options were checked: this is the driver's own bug
            raise DriverLoadError(f"{group} driver {name!r} failed to start{where}: {describe_exception(exc)}") from exc
        raise DriverLoadError(f"{group} driver {name!r}: bad options {sorted(options)}{where}: {exc}") from exc
    except Exception as exc:
        raise DriverLoadError(f"{group} driver {name!r} failed to start{where}: {describe_exception(exc)}") from exc
    if not isinstance(instance, cls):
        raise DriverLoadError(f"{group} driver {name!r} is a {type(instance).__name__}, not a {cls.__name__}{where}")
    return cast(T, instance)


def declared_schema(factory: Callable[..., Any]) -> OptionsSchema | None:
    """The ``options_schema`` the factory itself declares. Not an inherited one: a subclass that
    adds constructor options (a third party's executor built on ProcessExecutor) would be
    refused options its base does not know, so it falls back to its constructor's signature."""
    found = (
        vars(factory).get("options_schema") if inspect.isclass(factory) else getattr(factory, "options_schema", None)
    )
    return cast("OptionsSchema | None", found)


def check_class(interface: Interface[Any], name: str, factory: Callable[..., Any], where: str = "") -> None:
    """A driver that is a class must subclass its interface (checked before it is built)."""
    cls = cast(type, interface)
    if inspect.isclass(factory) and not issubclass(factory, cls):
        raise DriverLoadError(
            f"{group_of(interface)} driver {name!r} is a {factory.__name__}, not a {cls.__name__}{where}"
        )


def load_installed(
    interface: Interface[T], name: str, options: Mapping[str, Any] | None = None, target: str | None = None
) -> T:
    """An installed driver built with ``options``, without configuration's plugin rules (the
    slice's way); ``target``: its entry point's (``target_of``), to import without a scan."""
    factory = import_driver(interface, name) if target is None else import_target(interface, name, target)
    return construct(interface, name, factory, dict(options or {}))


def check_options(
    group: str, name: str, schema: Mapping[str, Any], options: Mapping[str, Any], where: str = ""
) -> dict[str, Any]:
    """The options with text converted to the declared types; DriverLoadError on the first wrong one."""
    unknown = sorted(set(options) - set(schema))
    if unknown:
        raise DriverLoadError(
            f"{group} driver {name!r}: bad options {unknown}: not options of this driver "
            f"(it takes: {', '.join(sorted(schema)) or 'none'}){where}"
        )
    checked: dict[str, Any] = {}
    for key, value in options.items():
        expected = schema[key]
        types = expected if isinstance(expected, tuple) else (expected,)
        converted = _convert(value, types)
        if converted is _WRONG:
            names = " or ".join(getattr(t, "__name__", str(t)) for t in types)
            raise DriverLoadError(
                f"{group} driver {name!r}: option {key} must be {names}, got {type(value).__name__} {value!r}{where}"
            )
        checked[key] = converted
    return checked


_WRONG = object()


def _convert(value: Any, types: tuple[type, ...]) -> Any:
    # bool is an int in Python: an int option given True is a mistake, a float option given 2 is not
    if isinstance(value, bool):
        return value if bool in types or object in types else _WRONG
    if isinstance(value, types):
        return value
    if isinstance(value, int) and float in types:
        return float(value)
    if not isinstance(value, str):
        return _WRONG
    text = value.strip()
    for kind in types:  # text from --set or the environment
        if kind is bool and text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        if kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                continue
        if kind in (list, tuple):
            return [part.strip() for part in text.split(",") if part.strip()]
    return _WRONG


def load_quietly(ep: Any) -> Any:
    """``ep.load()`` with what its import prints sent to stderr: a plugin that printed at
    import broke every ``--json`` answer of the CLI."""
    with contextlib.redirect_stdout(sys.stderr):
        return ep.load()
