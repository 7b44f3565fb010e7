"""The ``runink`` command line."""

from runink.core.cli.app import build_app, main

__all__ = ["build_app", "main"]
