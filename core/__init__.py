"""Minimal core of Runink: hook specifications, plugin manager, driver interfaces, config, CLI.

Plugin authors need ``hookimpl`` (to mark hook implementations) and the interfaces in
``runink.core.interfaces``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (typed as what it is; at run time __getattr__ imports it when first asked)
    from runink.core.hookspecs import hookimpl as hookimpl

__all__ = ["hookimpl"]


def __getattr__(name: str) -> Any:
    # (pluggy is imported when a plugin asks for hookimpl, not by every `runink --help`)
    if name == "hookimpl":
        from runink.core.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'runink.core' has no attribute {name!r}")
