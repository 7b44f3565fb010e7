"""Lineage sink hook: appends every lineage event as one JSON line to a local file.

Default file: ``<data_dir>/lineage/events.jsonl``; set ``[plugin.lineage-jsonl] path = ...``
to change it. The line layout follows OpenLineage's RunEvent (eventType, eventTime, run,
job, inputs, outputs), but it is not valid OpenLineage yet (no schemaURL, a producer that is
not a URI, a run id that is not a UUID): a backend such as Marquez would refuse it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from runink.core.config import RuninkConfig
from runink.core.hookspecs import hookimpl
from runink.core.model import LineageEvent
from runink.plugins.lineage.sink import LineageSink


def to_openlineage(event: LineageEvent) -> dict[str, Any]:
    namespace = f"runink/{event.herd}"
    return {
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat(),
        "run": {"runId": event.run_id, "facets": dict(event.facets)},
        "job": {"namespace": namespace, "name": event.job},
        "inputs": [{"namespace": namespace, "name": uri} for uri in event.inputs],
        "outputs": [{"namespace": namespace, "name": uri} for uri in event.outputs],
        "producer": "runink",
    }


class JsonlLineageSink(LineageSink):
    def __init__(self) -> None:
        self.path: Path | None = None
        self._lock = threading.Lock()

    @hookimpl
    def runink_configure(self, config: RuninkConfig) -> None:
        option = config.plugin_options("lineage-jsonl").get("path")
        self.path = Path(option) if option else Path(config.data_dir) / "lineage" / "events.jsonl"

    def emit(self, event: LineageEvent) -> None:
        path = self.path or Path(".runink") / "lineage" / "events.jsonl"
        line = json.dumps(to_openlineage(event), default=str, sort_keys=True) + "\n"
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line)
