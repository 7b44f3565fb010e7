"""Lineage sinks (hook plugins: every registered sink receives every event)."""
