"""Runink's metrics: what each one is (its kind, help and labels), and how a process reports them.

Two ways in, one catalog (``METRICS``, listed in docs/operations.md; tests check both agree):

* **Events** (counters, histograms, and gauges set when something happens) go to every exporter
  through the ``runink_export_metrics`` hook (``report``): a counter sample's value is an
  increment, a gauge's the new value, a histogram's one observation.
* **State** (gauges of how things are now: the Barn's term, the slices running; and counters a
  component keeps as totals, such as an exporter's drops) is read when an exporter is scraped:
  a component registers a ``GaugeSource`` for as long as it runs, and an exporter calls
  ``collect()``. Nothing is computed while nobody asks.

Labels are bounded: herd, pipeline, scenario, step, node, route, never a run, job or task id.
The core exports nothing itself: an exporter is a plugin (plugins/observability/prometheus.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from runink.core.model import MetricSample

if TYPE_CHECKING:
    from runink.core.plugins import PluginManager

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]
#: seconds, for what takes milliseconds (a request, a placement, a slice's start)
LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: seconds, for what takes minutes (a scenario)
DURATION = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)

SCENARIO = ("herd", "pipeline", "scenario")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None  # a histogram's
    where: str = ""  # which processes report it (docs/operations.md)


_SPECS = (
    # servers: the REST API and the scheduler
    MetricSpec(
        "runink_api_requests_total",
        "counter",
        "REST API requests answered, by route template, method and status code.",
        ("route", "method", "status"),
        where="server",
    ),
    MetricSpec(
        "runink_api_request_seconds",
        "histogram",
        "REST API request latency (until the answer's headers), by route template and method.",
        ("route", "method"),
        LATENCY,
        where="server",
    ),
    MetricSpec(
        "runink_scheduler_pending_tasks",
        "gauge",
        "Tasks waiting for a node after the leader's last scheduling pass, per herd.",
        ("herd",),
        where="server (the leader)",
    ),
    MetricSpec(
        "runink_scheduler_placements_total",
        "counter",
        "Tasks placed on a node, per herd.",
        ("herd",),
        where="server (the leader)",
    ),
    MetricSpec(
        "runink_scheduler_placement_seconds",
        "histogram",
        "From a task's submission (or its retry) to its placement, per herd.",
        ("herd",),
        LATENCY,
        where="server (the leader)",
    ),
    MetricSpec(
        "runink_scheduler_pass_seconds",
        "histogram",
        "One scheduling pass of the leader (reads, placement, writes).",
        (),
        LATENCY,
        where="server (the leader)",
    ),
    # Barn members
    MetricSpec("runink_barn_leader", "gauge", "1 when this member leads its raft group, else 0.", (), where="barn"),
    MetricSpec("runink_barn_term", "gauge", "The member's raft term.", (), where="barn"),
    MetricSpec(
        "runink_barn_commit_index", "gauge", "The raft log's commit index, as this member knows it.", (), where="barn"
    ),
    MetricSpec("runink_barn_applied_index", "gauge", "The last log entry this member applied.", (), where="barn"),
    MetricSpec(
        "runink_barn_apply_lag",
        "gauge",
        "Entries committed but not yet applied by this member (commit index - applied index).",
        (),
        where="barn",
    ),
    MetricSpec("runink_barn_peers_connected", "gauge", "Other members this member is connected to.", (), where="barn"),
    MetricSpec(
        "runink_barn_proposals_total",
        "counter",
        "Writes this member proposed to the raft log, by result (committed, failed).",
        ("result",),
        where="barn",
    ),
    MetricSpec(
        "runink_barn_proposal_seconds",
        "histogram",
        "From a write's proposal to its commit and apply on this member.",
        (),
        LATENCY,
        where="barn",
    ),
    # agents: the node and its slices
    MetricSpec("runink_node_cpus", "gauge", "CPUs the node offers.", ("node",), where="agent"),
    MetricSpec("runink_node_memory_bytes", "gauge", "Memory the node offers.", ("node",), where="agent"),
    MetricSpec(
        "runink_node_cpus_used",
        "gauge",
        "Cores its slices used between the agent's last two usage samples (cgroup accounting).",
        ("node",),
        where="agent",
    ),
    MetricSpec(
        "runink_node_memory_used_bytes",
        "gauge",
        "Memory its slices use, at the agent's last usage sample (cgroup accounting).",
        ("node",),
        where="agent",
    ),
    MetricSpec(
        "runink_slices_running", "gauge", "Slices running on the node, per herd.", ("node", "herd"), where="agent"
    ),
    MetricSpec(
        "runink_slices_cpus_used",
        "gauge",
        "Cores a herd's running slices used between the agent's last two usage samples (cgroup accounting).",
        ("node", "herd"),
        where="agent",
    ),
    MetricSpec(
        "runink_slices_memory_bytes",
        "gauge",
        "Memory a herd's running slices use, at the agent's last usage sample (cgroup accounting).",
        ("node", "herd"),
        where="agent",
    ),
    MetricSpec(
        "runink_slice_start_seconds",
        "histogram",
        "From an attempt's start to its slice running (isolation set up, process started).",
        ("node",),
        LATENCY,
        where="agent, runner",
    ),
    MetricSpec(
        "runink_slice_cpu_seconds_total",
        "counter",
        "CPU time its ended slices used (cgroup accounting), per herd.",
        ("node", "herd"),
        where="agent, runner",
    ),
    MetricSpec(
        "runink_slice_memory_peak_bytes",
        "histogram",
        "Peak memory of each ended slice (cgroup accounting), per herd.",
        ("node", "herd"),
        (16e6, 64e6, 128e6, 256e6, 512e6, 1e9, 2e9, 4e9, 8e9, 16e9, 64e9),
        where="agent, runner",
    ),
    MetricSpec(
        "runink_slices_ended_total",
        "counter",
        "Slices that ended, per herd and end state (SUCCEEDED, FAILED, OOMKILLED...).",
        ("node", "herd", "state"),
        where="agent, runner",
    ),
    # pipelines (the node that ran the scenario: a cluster's agent or the embedded run)
    MetricSpec(
        "runink_rows_in_total", "counter", "Rows a scenario read from its source.", SCENARIO, where="agent, runner"
    ),
    MetricSpec(
        "runink_rows_valid_total", "counter", "Rows that met the source's contract.", SCENARIO, where="agent, runner"
    ),
    MetricSpec(
        "runink_rows_invalid_total",
        "counter",
        "Rows that failed the contract or could not be parsed (dead-lettered).",
        SCENARIO,
        where="agent, runner",
    ),
    MetricSpec("runink_rows_out_total", "counter", "Rows written to the valid sinks.", SCENARIO, where="agent, runner"),
    MetricSpec(
        "runink_step_rows_total",
        "counter",
        "Rows out of each step of a scenario.",
        (*SCENARIO, "step"),
        where="agent, runner",
    ),
    MetricSpec(
        "runink_schema_drift_total",
        "counter",
        "Schema drift seen against a contract (one per difference per run).",
        SCENARIO,
        where="agent, runner",
    ),
    MetricSpec(
        "runink_scenario_runs_total",
        "counter",
        "Scenario runs that ended, by end state.",
        (*SCENARIO, "state"),
        where="agent, runner",
    ),
    MetricSpec(
        "runink_scenario_seconds",
        "histogram",
        "A scenario run's duration, from its first attempt's start to its end.",
        SCENARIO,
        DURATION,
        where="agent, runner",
    ),
    # exporters and LLM steps
    MetricSpec(
        "runink_exporter_dropped_total",
        "counter",
        "Events an exporter dropped (its bounded queue or buffer full), by exporter.",
        ("exporter",),
        where="every process",
    ),
    MetricSpec(
        "runink_llm_tokens_total",
        "counter",
        "Tokens an @annotate step's model used (prompt and completion).",
        (*SCENARIO, "model"),
        where="agent, runner",
    ),
    MetricSpec(
        "runink_llm_cost_total",
        "counter",
        "What an @annotate step's requests cost (the annotator's prices).",
        (*SCENARIO, "model"),
        where="agent, runner",
    ),
    MetricSpec(
        "runink_llm_requests_total",
        "counter",
        "Requests an @annotate step sent to its model.",
        (*SCENARIO, "model"),
        where="agent, runner",
    ),
)
METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}


def sample(name: str, value: float, **labels: str) -> MetricSample:
    """A sample of the catalog's metric ``name`` (its kind from the catalog)."""
    spec = METRICS[name]
    return MetricSample(name, float(value), spec.kind, {key: str(labels[key]) for key in spec.labels})


def report(manager: PluginManager, samples: Sequence[MetricSample]) -> None:
    """Hand ``samples`` to the exporters (the ``runink_export_metrics`` hook); nothing is
    called when no plugin exports metrics."""
    if samples and manager.pm.hook.runink_export_metrics.get_hookimpls():
        manager.hooks.export_metrics(list(samples))


GaugeSource = Callable[[], Sequence[MetricSample]]
_sources: dict[int, GaugeSource] = {}
_lock = threading.Lock()


def register_gauges(source: GaugeSource) -> Callable[[], None]:
    """Read ``source`` whenever an exporter collects, until the returned function is called."""
    key = id(source)
    with _lock:
        _sources[key] = source

    def unregister() -> None:
        with _lock:
            _sources.pop(key, None)

    return unregister


def collect() -> list[MetricSample]:
    """The gauges every registered source reports now (a source that raises is logged, skipped)."""
    with _lock:
        sources = list(_sources.values())
    found: list[MetricSample] = []
    for source in sources:
        try:
            found.extend(source())
        except Exception as exc:  # a gauge must never break a scrape
            log.warning("metrics: a gauge source failed: %s: %s", type(exc).__name__, exc)
    return found
