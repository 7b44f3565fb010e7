"""Hook specifications: every extension point that many plugins answer at once.

A hook plugin is any module or object with functions marked ``@runink.core.hookimpl`` whose
names are listed here; it is registered through the ``runink`` entry-point group (see
docs/plugins.md). Implementing a name that is not listed here is an error at load: the
plugin is unregistered and shown as failed in ``runink plugins list``.

Each hook says when the core calls it, what it returns, and how several answers combine:

* ``firstresult``: plugins are called newest-registered first and the first non-``None``
  answer wins; the rest are not called.
* fan-out: every implementation is called; one that raises is logged and does not stop the
  others (for sinks: lineage, metrics, logs).
* combined: every implementation is called and the core merges the answers as described.

Drivers (executors, scheduler policies, secret backends, Barn backends, annotators,
storage) are not hooks: one is chosen by name, see ``runink.core.drivers``.

The core calls every hook through pluggy with the typed methods of ``runink.core.hooks.Hooks``
(``manager.hooks``), so wrapper implementations (``@hookimpl(wrapper=True)``) run around the
others on every hook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pluggy

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

PROJECT = "runink"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- configuration -----------------------------------------------------------------------


@hookspec(historic=True)
def runink_configure(config: RuninkConfig) -> None:
    """Receive the validated configuration, once, after every plugin is registered.

    Called by the CLI and servers at start-up, before any other hook. Historic: a plugin
    registered later receives the same configuration when it registers. A plugin reads its own
    options from ``config.plugin_options(NAME)`` (the ``[plugin.NAME]`` table of the config
    file). Fan-out; the return value is ignored. Raising here marks the plugin failed and
    unregisters it; start-up goes on.
    """


@hookspec
def runink_unconfigure() -> None:
    """The process is done with its plugins: send what is still buffered and close.

    Called once by the CLI as a command ends (whatever the way: a run, a server or agent
    stopping, an error), and by ``runink.testing.plugin_manager`` as its block ends. A sink that
    delivers from a thread of its own (the lineage sinks) waits here, bounded, for what it
    queued. Fan-out; one plugin raising is logged and does not stop the others.
    """


# --- authentication and authorization ---------------------------------------------------


@hookspec(firstresult=True)
def runink_authenticate(request: AuthRequest) -> Identity | None:
    """Turn a request's credentials into an identity.

    Called once per API request by ``runink.core.security.authenticate``. Return an
    ``Identity`` when this plugin recognises the credentials (a bearer token it can verify,
    a client certificate), or ``None`` to let the next plugin try. firstresult: the first
    identity wins. When every plugin returns ``None`` the request is rejected (401).
    A plugin that recognises the credentials but finds them invalid should raise
    ``runink.core.errors.AuthenticationError`` with the reason.
    """


@hookspec
def runink_authorize(
    identity: Identity, action: str, resource: str, herd: str, grants: Sequence[Grant]
) -> AuthzDecision | None:
    """Vote on whether ``identity`` may perform ``action`` (e.g. ``"jobs.submit"``) on ``resource`` in ``herd``.

    Called once per authorized operation by ``runink.core.security.authorize``. ``grants``:
    the roles the identity holds in ``herd`` and cluster-wide (its bindings in the Barn and
    what its token grants), read by the server; a plugin that needs them names the argument
    (pluggy passes an implementation only the arguments it names). Return an
    ``AuthzDecision`` to allow or deny, or ``None`` to abstain. Combined: any deny wins;
    otherwise at least one allow is needed; with no votes at all the answer is deny.
    """


@hookspec
def runink_admit(job: AdmissionRequest, identity: Identity | None) -> AdmissionDecision | None:
    """Admit or refuse a job before anything of it is stored (a server's submission).

    Called once per submission by ``runink.core.control.admission.Admission``, after the
    caller was authorized, with what each task asks for, the herd's effective per-job bounds,
    its submission rate bucket (refilled up to now), its budget and its bound on tasks not
    ended with their count, and who submits (None on a server
    that authenticates nobody). Return an ``AdmissionDecision`` to refuse (its ``status``,
    ``reason`` and ``retry_after`` become the answer: 422 for a bound, 429 for a rate or a full queue) or to
    allow, or ``None`` to abstain. Combined: any refusal wins; no refusal admits. The built-in
    ``admission`` plugin checks the bounds, the budget, the queue and the rate; a plugin adds its own rules ("no GPU
    jobs after 18:00"). Keep it pure and quick: it runs on every submission.
    """


# --- secrets ----------------------------------------------------------------------------


@hookspec(firstresult=True)
def runink_master_key(source: str) -> bytes | None:
    """The master key of herds' secrets that ``source`` names, from a key service (a KMS).

    Called once at a server's start (and by ``runink secret rotate-master-key``) for a source
    given as ``kms:...`` (``--secrets-key kms:aws/alias/runink``; a file path and
    ``env:NAME`` are read by the core) by ``runink.core.server.process.secret_backend``.
    Return the key's 32 bytes if this plugin knows the source, ``None`` to let the next one
    try. firstresult; when no plugin answers, the server refuses to start, naming the source.
    A plugin that knows the source but cannot get the key raises: the error names it. Never
    log the key.
    """


# --- scheduling -------------------------------------------------------------------------


@hookspec
def runink_filter_nodes(request: PlacementRequest, nodes: Sequence[Node]) -> Sequence[NodeRejection] | None:
    """Drop nodes that cannot take the task.

    Called once per placement with the whole candidate list (never once per node: per-node
    hook calls cost too much at scale) by ``runink.core.scheduling.place``. Return a
    rejection with a reason for each node to drop, or ``None``/empty to keep them all.
    Combined: a node survives only if no plugin rejects it; the reasons are shown when no
    node is left.
    """


@hookspec
def runink_score_nodes(request: PlacementRequest, nodes: Sequence[Node]) -> Mapping[str, float] | None:
    """Score the feasible nodes for the task, from 0 (worst) to 1 (best).

    Called once per placement, after filtering, with the nodes that survived. Return
    ``{node_id: score}`` (nodes left out score 0) or ``None`` to abstain. Combined: the
    configured scheduler policy driver ranks the nodes from its own score plus every
    plugin's scores (each plugin weighted by ``scheduler.weights[NAME]``, default 1).
    """


# --- the servers' REST API --------------------------------------------------------------


@hookspec
def runink_api_routes(router: APIRouter, guard: RouteGuard) -> None:
    """Add routes to every server's REST API (paths under ``/v1/``).

    Called once per server as its API is built (by ``runink.core.server.api.create_app``).
    Each route authenticates with ``guard.caller`` (a FastAPI dependency:
    ``identity: Identity = Depends(guard.caller)``), authorizes with
    ``guard.check`` or answers only with ``guard.herds(identity, action)``, and declares its
    action with ``openapi_extra=guard.declare(action)``. Built in: the ``catalog`` plugin's
    ``/v1/catalog/...`` routes. Fan-out; one plugin raising is logged and the server starts
    without its routes.
    """


@hookspec
def runink_herd_deleted(herd: str) -> None:
    """Forget what a plugin keeps of ``herd``: it was deleted (its jobs, secrets, bindings and
    tokens went with it), and a herd made later under its name must not read it.

    Called by a server's ``DELETE /v1/herds/NAME`` once the herd is gone from the Barn. Built
    in: the ``catalog`` plugin removes the herd's rows (its datasets, runs, lineage, drift and
    annotations). Fan-out; one plugin raising is logged and does not stop the others (nor undo
    the deletion).
    """


# --- lineage, metrics and logs ----------------------------------------------------------


@hookspec
def runink_lineage_event(event: LineageEvent) -> None:
    """Record a lineage event (a job run started, completed or failed, with its datasets; or
    ``OTHER``: what a running job made, such as record annotations, for the catalog).

    Called for every event by ``runink.core.events.emit_lineage``. Fan-out: every lineage
    sink receives every event; one sink raising is logged and does not stop the others.
    """


@hookspec
def runink_export_metrics(samples: Sequence[MetricSample]) -> None:
    """Export a batch of metric samples (to Prometheus, StatsD, a file...).

    Called by ``runink.core.metrics.report`` as things happen in any process: a counter
    sample's value is an increment, a gauge's the new value, a histogram's one observation
    (the catalog: ``runink.core.metrics.METRICS``). State gauges are read with
    ``runink.core.metrics.collect()`` when an exporter is asked. Fan-out, failures isolated as
    for lineage; called on request paths, so it must not block.
    """


@hookspec
def runink_export_log(entry: LogEntry) -> None:
    """Export one structured log record (platform or slice output) to a log system.

    Called by ``runink.core.events.export_log``: the runner's and nodes' messages, and every
    line a slice prints when ``[log] slice_output`` is on (source ``slice``). Fan-out, failures
    isolated as for lineage; called from a node's round, so it must not block.
    """


# --- CLI ---------------------------------------------------------------------------------


@hookspec
def runink_cli_commands(app: typer.Typer) -> None:
    """Add commands or command groups to the ``runink`` CLI (``app.command()``, ``app.add_typer()``).

    Called when one of the plugins' commands is run, by ``runink plugins list`` and when the
    CLI's command index is rebuilt (``runink --help`` lists from that index). Fan-out. A name
    a built-in command has is left out. A plugin that raises here is marked failed; the CLI
    still starts.
    """


# --- drivers -----------------------------------------------------------------------------


@hookspec
def runink_register_drivers() -> Sequence[DriverSpec] | None:
    """Register drivers from a hook plugin instead of entry points.

    Called when drivers are listed or loaded. Return ``DriverSpec(group, name, factory)``
    items; a driver is then selectable by name exactly like one from an entry-point group.
    Useful for drivers defined at run time (tests, notebooks). Combined: all specs are
    added; an entry-point driver of the same name wins.
    """
