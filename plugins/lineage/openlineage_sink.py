"""The OpenLineage sink: every lineage event, as an OpenLineage run event, through the
openlineage-python client's transports (HTTP, file, console, Kafka, ...).

Configured in ``[plugin.openlineage]``::

    [plugin.openlineage]
    transport = { type = "http", url = "http://marquez:5000", endpoint = "api/v1/lineage", timeout = 5 }
    queue = 10000          # events waiting while the transport is slow or away; past it, dropped
    flush_timeout = 10     # as the command ends: how long waiting events may still take

``transport`` is the client's own transport configuration (as in its openlineage.yml). With
none, the client's standard environment (``OPENLINEAGE_URL``, ``OPENLINEAGE_CONFIG``,
``OPENLINEAGE__TRANSPORT__...``) is used if set; otherwise the sink sends nothing.

A run never waits for the transport: events are sent in order by the sink's own thread
(``QueuedLineageSink``). A failed send is logged and counted, not retried here (the HTTP
transport retries by its own ``retry`` settings).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

from runink.core.config import RuninkConfig
from runink.core.errors import RuninkError
from runink.core.hookspecs import hookimpl
from runink.core.model import LineageEvent
from runink.plugins.lineage.sink import RUN_STATES, QueuedLineageSink

if TYPE_CHECKING:
    from runink.core.driverload import OptionsSchema

#: the client's own environment: one of these set means "send", even without [plugin.openlineage]
CLIENT_ENVIRONMENT = ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "OPENLINEAGE__TRANSPORT__TYPE")


class OpenLineageSink(QueuedLineageSink):
    #: [plugin.openlineage] (checked by runink.core.plugin_options before runink_configure)
    options_schema: ClassVar[OptionsSchema] = {"transport": dict, "queue": int, "flush_timeout": float}
    label = "openlineage"
    event_types = RUN_STATES

    def __init__(self) -> None:
        super().__init__()
        self.transport: dict[str, Any] | None = None
        self.enabled = False
        self._client: Any = None

    @hookimpl
    def runink_configure(self, config: RuninkConfig) -> None:
        options = config.plugin_options("openlineage")
        transport = options.get("transport")
        if transport is not None and not (isinstance(transport, dict) and isinstance(transport.get("type"), str)):
            raise RuninkError("[plugin.openlineage] transport: expected a table with a type, e.g. {type = 'http', ...}")
        size, flush = options.get("queue", self.queue_size), options.get("flush_timeout", self.flush_timeout)
        if type(size) is not int or size < 1:
            raise RuninkError(f"[plugin.openlineage] queue: expected a positive integer, got {size!r}")
        if type(flush) not in (int, float) or flush < 0:
            raise RuninkError(f"[plugin.openlineage] flush_timeout: expected seconds, got {flush!r}")
        self.resize(size)
        self.flush_timeout = float(flush)
        self.transport = transport
        self.enabled = transport is not None or any(os.environ.get(name) for name in CLIENT_ENVIRONMENT)

    def active(self) -> bool:
        return self.enabled

    def deliver(self, event: LineageEvent) -> None:
        if self._client is None:  # built in this thread, by the first event: a run never waits for its import
            from openlineage.client import OpenLineageClient

            self._client = OpenLineageClient(config=None if self.transport is None else {"transport": self.transport})
        self._client.emit(to_run_event(event))

    def closed(self) -> None:
        if self._client is not None:
            self._client.close(timeout=1.0)


def to_run_event(event: LineageEvent) -> Any:
    """``event`` as the client's RunEvent, which its ``emit`` takes: the event's dict
    (``openlineage_events.to_dict``) in the client's classes, each facet kept as a dict (the
    client serializes them as they are)."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState

    from runink.plugins.lineage.openlineage_events import to_dict

    found = to_dict(event)
    return RunEvent(
        eventType=RunState(found["eventType"]),
        eventTime=found["eventTime"],
        run=Run(runId=found["run"]["runId"], facets=found["run"]["facets"]),
        job=Job(namespace=found["job"]["namespace"], name=found["job"]["name"], facets=found["job"]["facets"]),
        producer=found["producer"],
        inputs=[
            InputDataset(namespace=d["namespace"], name=d["name"], facets=d["facets"], inputFacets=d["inputFacets"])
            for d in found["inputs"]
        ],
        outputs=[
            OutputDataset(namespace=d["namespace"], name=d["name"], facets=d["facets"], outputFacets=d["outputFacets"])
            for d in found["outputs"]
        ],
    )
