"""Runink: data pipelines on a pool of Linux machines, built as a small core plus plugins.

The package root holds only the version; the code lives in ``runink.core`` (the
minimal core) and ``runink.plugins`` (the default plugins), and ``runink.testing``
has helpers for plugin authors.
"""

__version__ = "0.1.0"
