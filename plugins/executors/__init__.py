"""Executor drivers (entry-point group ``runink.executors``)."""
