"""Lineage sinks (hook plugins: every registered sink receives every event)."""

from runink.plugins.lineage.sink import LineageSink, QueuedLineageSink

__all__ = ["LineageSink", "QueuedLineageSink"]
