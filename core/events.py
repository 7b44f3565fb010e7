"""Fan-out of lineage events, metrics and log records to every registered sink plugin.

A sink that raises is logged (without the event's payload) and the others still receive
the event: one broken exporter must never lose data for the rest or fail a run.
"""

from __future__ import annotations

from collections.abc import Sequence

from runink.core.model import LineageEvent, LogEntry, MetricSample
from runink.core.plugins import PluginManager


def emit_lineage(manager: PluginManager, event: LineageEvent) -> list[str]:
    """Send ``event`` to every lineage sink; returns the names of sinks that failed."""
    return manager.hooks.lineage_event(event)


def export_metrics(manager: PluginManager, samples: Sequence[MetricSample]) -> list[str]:
    """Send ``samples`` to every metrics exporter; returns the names of exporters that failed."""
    return manager.hooks.export_metrics(list(samples))


def export_log(manager: PluginManager, entry: LogEntry) -> list[str]:
    """Send ``entry`` to every log exporter; returns the names of exporters that failed."""
    return manager.hooks.export_log(entry)


def herd_deleted(manager: PluginManager, herd: str) -> list[str]:
    """Tell every plugin that ``herd`` was deleted; returns the names of those that failed."""
    return manager.hooks.herd_deleted(herd)
