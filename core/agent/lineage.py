"""An agent's lineage: the events of the scenarios it runs go to the servers over its stream
(the servers own the catalog and run the lineage sinks); the agent writes none itself.

``LineageOutbox`` is the agent's one lineage sink (a hook plugin on its plugin manager): it
keeps the events in order, and the agent's rounds send them before their reports. Events wait
while the servers are away, up to a bound; past it the newest are dropped and counted.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from typing import Any, Protocol

from runink.core import metrics
from runink.core.errors import RuninkError
from runink.core.hookspecs import hookimpl
from runink.core.model import LineageEvent, MetricSample

log = logging.getLogger(__name__)

MAX_WAITING = 10_000
#: bytes of one event's facets (JSON) the servers take; a larger event is dropped here, counted
MAX_FACETS_BYTES = 64 * 1024
#: the built-in lineage sinks an agent leaves to the servers (they would write on the node)
SERVER_SINKS = ("catalog", "lineage-jsonl", "openlineage")


class LineageControl(Protocol):
    def lineage(self, event: LineageEvent, herd: str, task_id: str, attempt: int) -> bool: ...


class LineageOutbox:
    def __init__(self, limit: int = MAX_WAITING) -> None:
        self.limit = limit
        self.sent = self.refused = self.dropped = self.too_large = 0
        self._waiting: collections.deque[LineageEvent] = collections.deque()
        self._lock = threading.Lock()

    @hookimpl
    def runink_lineage_event(self, event: LineageEvent) -> None:
        if not isinstance(event.facets.get("task_id"), str) or type(event.facets.get("attempt")) is not int:
            return  # not a cluster task's scenario: nothing to send it as
        if len(facets_json(event)) > MAX_FACETS_BYTES:  # (the servers would refuse it for good)
            self.too_large += 1
            log.warning(
                "lineage: a %s event of task %s dropped: its facets are over %d bytes",
                event.event_type,
                event.facets["task_id"],
                MAX_FACETS_BYTES,
            )
            return
        with self._lock:
            if len(self._waiting) >= self.limit:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("lineage: %d event(s) dropped: the servers were away too long", self.dropped)
                return
            self._waiting.append(event)

    def dropped_samples(self) -> list[MetricSample]:
        """Its drops (servers away too long, an event too large), as the exporters' metric."""
        return [
            metrics.sample(
                "runink_exporter_dropped_total", self.dropped + self.too_large, exporter="lineage-to-servers"
            )
        ]

    def __len__(self) -> int:
        return len(self._waiting)

    def send(self, control: Any) -> bool:
        """Send the waiting events, in order; False when the servers could not take them now
        (the rest wait for the next round)."""
        while True:
            with self._lock:
                if not self._waiting:
                    return True
                event = self._waiting[0]
            facets: dict[str, Any] = dict(event.facets)
            try:
                accepted = control.lineage(event, event.herd, str(facets["task_id"]), int(facets["attempt"]))
            except (RuninkError, OSError) as exc:
                log.info("lineage: %d event(s) not sent yet: %s", len(self._waiting), exc)
                return False
            with self._lock:
                self._waiting.popleft()
                if accepted:
                    self.sent += 1
                else:  # no longer this node's attempt: nothing to retry
                    self.refused += 1


def facets_json(event: LineageEvent) -> str:
    """The event's facets as the stream carries them (values JSON cannot hold become strings)."""
    return json.dumps(dict(event.facets), default=str, separators=(",", ":"))
