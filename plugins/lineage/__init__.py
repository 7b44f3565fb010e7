"""Lineage sinks (hook plugins: every registered sink receives every event)."""

from runink.plugins.lineage.sink import LineageSink

__all__ = ["LineageSink"]
