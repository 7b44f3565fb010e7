"""Runink: data pipelines in isolated slices on one Linux machine, built as a small core plus plugins.

The package root holds only the version and ``run``; the code lives in ``runink.core`` (the
minimal core) and ``runink.plugins`` (the default plugins), and ``runink.testing``
has helpers for plugin authors.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def run(pipeline: Any, **options: Any) -> dict[str, Any]:
    """Run a pipeline on this machine, as `runink run --json` does, and return that summary.

    ``pipeline``: a ``.dsl`` path or ``PipelineBuilder(...).build()``; options: ``config``,
    ``config_path``, ``overrides`` (see ``runink.core.runner.run_pipeline``).
    """
    from runink.core.runner import run_pipeline

    return run_pipeline(pipeline, **options)
