"""Runink: data pipelines in isolated slices on one Linux machine, built as a small core plus plugins.

The package root holds only the version; the code lives in ``runink.core`` (the
minimal core) and ``runink.plugins`` (the default plugins), and ``runink.testing``
has helpers for plugin authors.
"""

__version__ = "0.1.0"
