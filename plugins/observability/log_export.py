"""Log exporter hook: hands every structured log record to Python's ``logging`` (logger ``runink.export``).

That makes slice and platform records visible wherever the process's logging goes (stderr by
default, journald under systemd) with no extra service; Fluentd and other exporters are
plugins implementing the same hook.
"""

from __future__ import annotations

import logging

from runink.core.hookspecs import hookimpl
from runink.core.model import LogEntry

logger = logging.getLogger("runink.export")
_LEVELS = logging.getLevelNamesMapping()


@hookimpl
def runink_export_log(entry: LogEntry) -> None:
    level = _LEVELS.get(entry.level.upper(), logging.INFO)
    if logger.isEnabledFor(level):
        context = " ".join(f"{key}={value}" for key, value in sorted(entry.fields.items()))
        logger.log(level, "[%s] %s%s", entry.source, entry.message, f" ({context})" if context else "")
