"""Lineage sink hook: appends every lineage event as one line of OpenLineage JSON to a local file.

Default file: ``<data_dir>/lineage/events.jsonl``; set ``[plugin.lineage-jsonl] path = ...``
to change it. Each line is a valid OpenLineage run event, the same one the ``openlineage``
sink sends (see ``openlineage_events``), so a consumer such as Marquez takes the file as is.
Lines are written by the sink's own thread (``QueuedLineageSink``): a run never waits for
the disk. The events are built without the OpenLineage client (``openlineage_events``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from runink.core.config import RuninkConfig
from runink.core.hookspecs import hookimpl
from runink.core.model import LineageEvent
from runink.plugins.lineage.sink import RUN_STATES, QueuedLineageSink

if TYPE_CHECKING:
    from runink.core.driverload import OptionsSchema


class JsonlLineageSink(QueuedLineageSink):
    #: [plugin.lineage-jsonl] (checked by runink.core.plugin_options before runink_configure)
    options_schema: ClassVar[OptionsSchema] = {"path": str}
    label = "lineage-jsonl"
    event_types = RUN_STATES

    def __init__(self) -> None:
        super().__init__()
        self.path: Path | None = None

    @hookimpl
    def runink_configure(self, config: RuninkConfig) -> None:
        option = config.plugin_options("lineage-jsonl").get("path")
        self.path = Path(option) if option else Path(config.data_dir) / "lineage" / "events.jsonl"

    def deliver(self, event: LineageEvent) -> None:
        from runink.plugins.lineage.openlineage_events import to_json

        if self.path is None:  # (never configured: the default data dir's)
            from runink.core.config import default_data_dir

            self.path = default_data_dir() / "lineage" / "events.jsonl"
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # readable by its owner only (every herd's lineage is in it); a link is never followed
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "a", encoding="utf-8") as fh:
            fh.write(to_json(event) + "\n")
