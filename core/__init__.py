"""Minimal core of Runink: hook specifications, plugin manager, driver interfaces, config, CLI.

Plugin authors need ``hookimpl`` (to mark hook implementations) and the interfaces in
``runink.core.interfaces``.
"""

from runink.core.hookspecs import hookimpl

__all__ = ["hookimpl"]
