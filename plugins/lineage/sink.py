"""LineageSink: a convenience base for lineage sink plugins.

Lineage sinks are hook plugins, not drivers: every registered sink receives every event
through the ``runink_lineage_event`` hook. Subclass ``LineageSink``, implement ``emit`` and
register an instance through the ``runink`` entry-point group. It lives with the lineage
plugins, not with the core's driver interfaces: it is a hook plugin, not a driver.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from runink.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from runink.core.model import LineageEvent


class LineageSink(ABC):
    @abstractmethod
    def emit(self, event: LineageEvent) -> None:
        """Write one event. Should not block for long: the runner calls sinks inline."""

    @hookimpl
    def runink_lineage_event(self, event: LineageEvent) -> None:
        self.emit(event)
