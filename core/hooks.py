"""The typed face of the hooks: ``manager.hooks.lineage_event(event)``, not hook names in strings.

Every call goes through pluggy (``pm.hook.<name>(...)``), so wrapper implementations
(``@hookimpl(wrapper=True)``), historic hooks, tracing and call monitoring work as pluggy
documents them. What pluggy does not give is added at registration, per implementation
(``guard_implementations``), never by calling implementations one by one:

* on the fan-out hooks (configure, CLI commands, driver registration, lineage, metrics, logs)
  an implementation that raises is logged with its plugin's name and answers a
  ``HookFailure`` instead, so the others are still called (one broken sink must not lose
  data for the rest or fail a run);
* on the combined hooks (authorize, filter, score, driver registration) each answer is an
  ``Answer`` carrying the plugin's name (rejections and scores are reported per plugin), and
  an implementation that raises on a deciding hook is a ``PluginError`` naming the plugin.

Wrapper implementations are left as they are: they run around the guarded ones and see the
list of ``Answer``/``HookFailure`` results.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import pluggy

from runink.core.errors import PluginError, describe_exception

if TYPE_CHECKING:
    import typer
    from fastapi import APIRouter

    from runink.core.config import RuninkConfig
    from runink.core.model import (
        AdmissionDecision,
        AdmissionRequest,
        AuthRequest,
        AuthzDecision,
        DriverSpec,
        Grant,
        Identity,
        LineageEvent,
        LogEntry,
        MetricSample,
        Node,
        NodeRejection,
        PlacementRequest,
    )
    from runink.core.security import RouteGuard

log = logging.getLogger("runink.plugins")
trace_log = logging.getLogger("runink.plugins.trace")

T = TypeVar("T")

# An implementation that raises is logged and the others still run.
ISOLATED = frozenset(
    {
        "runink_configure",
        "runink_unconfigure",
        "runink_api_routes",
        "runink_cli_commands",
        "runink_register_drivers",
        "runink_lineage_event",
        "runink_export_metrics",
        "runink_export_log",
    }
)
# Each non-None answer is tagged with the plugin that gave it.
TAGGED = frozenset(
    {"runink_authorize", "runink_admit", "runink_filter_nodes", "runink_score_nodes", "runink_register_drivers"}
)


@dataclass(frozen=True)
class HookFailure:
    """What a guarded fan-out implementation answers when it raised (already logged)."""

    plugin: str
    hook: str
    error: Exception


@dataclass(frozen=True)
class Answer(Generic[T]):
    """One plugin's non-``None`` answer to a combined hook."""

    plugin: str
    value: T


def _shape(value: object) -> str:
    """What a hook returned, for the trace, without its value: a master key, a token, a
    configuration's credentials are hooks' results too."""
    if value is None or isinstance(value, bool):
        return repr(value)
    size = f" of {len(value)}" if isinstance(value, list | tuple | dict | bytes | str) else ""
    return f"a {type(value).__name__}{size}"


def _guard(
    function: Callable[..., object], plugin: str, hook: str, tracing: Callable[[], bool]
) -> Callable[..., object]:
    isolate, tag = hook in ISOLATED, hook in TAGGED

    @functools.wraps(function)
    def guarded(*args: object) -> object:
        if tracing():
            trace_log.info("call %s from %s", hook, plugin)
        try:
            result = function(*args)
        except Exception as exc:
            if not isolate:
                raise PluginError(f"plugin {plugin} failed in {hook}: {describe_exception(exc)}") from exc
            log.warning("plugin %s raised in %s: %s", plugin, hook, describe_exception(exc))
            return HookFailure(plugin, hook, exc)
        if tracing():
            trace_log.info("%s from %s returned %s", hook, plugin, _shape(result))
        return Answer(plugin, result) if tag and result is not None else result

    return guarded


def guard_implementations(pm: pluggy.PluginManager, plugin: object, tracing: Callable[[], bool]) -> None:
    """Guard the plain implementations ``plugin`` just registered (wrappers are left alone).

    pluggy calls ``HookImpl.function`` with the arguments it computed from the original
    signature (kept in ``argnames``), so swapping in a guard of the same arity is invisible to
    it; pluggy has no public way to wrap one implementation.
    """
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.name not in ISOLATED | TAGGED:
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not impl.wrapper and not impl.hookwrapper:
                setattr(impl, "function", _guard(impl.function, impl.plugin_name, caller.name, tracing))  # noqa: B010


def _answers(results: Sequence[object]) -> list[Answer[Any]]:
    # A wrapper may have added or replaced results: keep only what guarded implementations gave.
    return [result for result in results if isinstance(result, Answer)]


def _typed(answers: list[Answer[Any]], hook: str, expected: str, fits: Callable[[Any], bool]) -> list[Answer[Any]]:
    """``answers``, each of the type the hook asks for; PluginError naming the plugin and what
    it gave otherwise, as a raise in the hook is (it crashed the command, "internal error")."""
    for answer in answers:
        if not fits(answer.value):
            got = type(answer.value).__name__
            raise PluginError(f"plugin {answer.plugin} failed in {hook}: it returned a {got}, not {expected}")
    return answers


def _list_of(kind: type) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, (list, tuple)) and all(isinstance(item, kind) for item in value)


def _scores(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for k, v in value.items()
    )


def _failed(results: Sequence[object]) -> list[HookFailure]:
    return [result for result in results if isinstance(result, HookFailure)]


class Manager(Protocol):
    """What the facade needs of ``runink.core.plugins.PluginManager`` (no import: plugins imports this)."""

    pm: pluggy.PluginManager

    def mark_failed(self, name: str, error: str) -> None: ...


class Hooks:
    """Typed calls of every hook (as tox 4's ``tox.plugin.manager.Plugin``)."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    @property
    def _hook(self) -> pluggy.HookRelay:
        return self.manager.pm.hook

    def _fan_out(self, hook: str, call: Callable[[], Sequence[object]]) -> list[str]:
        """Call a fan-out hook; the names of the sinks that failed."""
        try:
            return [failure.plugin for failure in _failed(call())]
        except Exception as exc:  # implementations are guarded: only a wrapper can get here
            log.warning("a wrapper of %s raised: %s", hook, describe_exception(exc))
            return []

    def _mark_failed(self, failures: Sequence[HookFailure]) -> list[str]:
        for failure in failures:
            self.manager.mark_failed(failure.plugin, f"{failure.hook} raised {describe_exception(failure.error)}")
        return [failure.plugin for failure in failures]

    # --- configuration ----------------------------------------------------------------

    def configure(self, config: RuninkConfig) -> list[str]:
        """Historic: plugins registered later get ``config`` at registration. Returns the plugins failed."""
        failures: list[HookFailure] = []

        def collect(result: object) -> None:
            if isinstance(result, HookFailure):
                failures.append(result)

        # a copy: a plugin that set config.executor.driver = "process" ran every slice of the
        # process unconfined, whatever the user's --set said (a review's run)
        view = copy.deepcopy(config)
        self._hook.runink_configure.call_historic(result_callback=collect, kwargs={"config": view})
        return self._mark_failed(failures)

    # --- authentication and authorization -----------------------------------------------

    def authenticate(self, request: AuthRequest) -> Identity | None:
        identity: Identity | None = self._hook.runink_authenticate(request=request)
        return identity

    def authorize(
        self, identity: Identity, action: str, resource: str, herd: str, grants: Sequence[Grant] = ()
    ) -> list[Answer[AuthzDecision]]:
        return _answers(
            self._hook.runink_authorize(identity=identity, action=action, resource=resource, herd=herd, grants=grants)
        )

    def admit(self, job: AdmissionRequest, identity: Identity | None) -> list[Answer[AdmissionDecision]]:
        return _answers(self._hook.runink_admit(job=job, identity=identity))

    # --- secrets ------------------------------------------------------------------------

    def master_key(self, source: str) -> bytes | None:
        key: bytes | None = self._hook.runink_master_key(source=source)
        return key

    # --- scheduling ---------------------------------------------------------------------

    def filter_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> list[Answer[Sequence[NodeRejection]]]:
        from runink.core.model import NodeRejection

        answers = _answers(self._hook.runink_filter_nodes(request=request, nodes=nodes))
        return _typed(answers, "runink_filter_nodes", "a list of NodeRejection", _list_of(NodeRejection))

    def score_nodes(self, request: PlacementRequest, nodes: Sequence[Node]) -> list[Answer[Mapping[str, float]]]:
        answers = _answers(self._hook.runink_score_nodes(request=request, nodes=nodes))
        return _typed(answers, "runink_score_nodes", "a mapping of node id to a finite number", _scores)

    def unconfigure(self) -> list[str]:
        """Returns the plugins that raised."""
        return self._fan_out("runink_unconfigure", self._hook.runink_unconfigure)

    def api_routes(self, router: APIRouter, guard: RouteGuard) -> list[str]:
        """Returns the plugins that raised (the server starts without their routes)."""
        return self._fan_out("runink_api_routes", lambda: self._hook.runink_api_routes(router=router, guard=guard))

    def herd_deleted(self, herd: str) -> list[str]:
        """Returns the plugins that raised."""
        return self._fan_out("runink_herd_deleted", lambda: self._hook.runink_herd_deleted(herd=herd))

    # --- lineage, metrics and logs: return the names of the sinks that failed -------------

    def lineage_event(self, event: LineageEvent) -> list[str]:
        return self._fan_out("runink_lineage_event", lambda: self._hook.runink_lineage_event(event=event))

    def export_metrics(self, samples: Sequence[MetricSample]) -> list[str]:
        return self._fan_out("runink_export_metrics", lambda: self._hook.runink_export_metrics(samples=samples))

    def export_log(self, entry: LogEntry) -> list[str]:
        return self._fan_out("runink_export_log", lambda: self._hook.runink_export_log(entry=entry))

    # --- CLI and drivers: a plugin that raises is marked failed --------------------------

    def cli_commands(self, make_app: Callable[[], typer.Typer]) -> list[tuple[str, typer.Typer]]:
        """Each plugin's ``runink_cli_commands`` on an app of its own (``make_app``), so one that
        raises leaves nothing half-added and the caller can build each apart: (plugin, app)
        for those that did not raise (those are marked failed)."""
        apps = []
        for impl in self._hook.runink_cli_commands.get_hookimpls():
            app = make_app()
            result = impl.function(app)  # (guarded: a HookFailure instead of raising)
            if isinstance(result, HookFailure):
                self._mark_failed([result])
            else:
                apps.append((impl.plugin_name, app))
        return apps

    def register_drivers(self) -> list[Answer[Sequence[DriverSpec]]]:
        from runink.core.model import DriverSpec

        results = self._hook.runink_register_drivers()
        self._mark_failed(_failed(results))
        kept = []
        for answer in _answers(results):  # (a plugin that gave something else is failed, naming it)
            if _list_of(DriverSpec)(answer.value):
                kept.append(answer)
            else:
                got = type(answer.value).__name__
                self.manager.mark_failed(
                    answer.plugin, f"runink_register_drivers returned a {got}, not a list of DriverSpec"
                )
        return kept
