"""Runink's own log lines: human-readable on a terminal, one JSON object per line for a
collector, with the ids that tie a line to what it is about (request, job, task, run).

``correlation(job=..., task=...)`` sets ids for the code it wraps (contextvars: a thread or a
request handler sees its own); every record logged meanwhile carries them, in a JSON line as
fields and in a text line as ``[job=... task=...]``. ``setup(format, daemon)`` installs the
formatter on the process's stderr handlers: ``[log] format`` is ``text``, ``json``, or ``auto``
(the default): JSON for the long-running processes (``runink server``, ``agent``, ``barn
serve``) when their stderr is not a terminal, text otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

IDS = ("request", "job", "task", "run")
_ids: ContextVar[dict[str, str]] = ContextVar("runink_log_ids", default={})  # noqa: B039 (never mutated)


@contextlib.contextmanager
def correlation(**ids: str | None) -> Iterator[None]:
    """Records logged inside carry these ids (beside those already set outside)."""
    token = _ids.set({**_ids.get(), **{k: str(v) for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _ids.reset(token)


def current_ids() -> dict[str, str]:
    return dict(_ids.get())


class _Ids(logging.Filter):
    """Copies the current ids onto each record (as ``runink_ids``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.runink_ids = _ids.get()
        return True


# the password of a URL (``scheme://user:PASSWORD@host``): a library logs the URL it sends to
# (openlineage's HTTP transport, at debug level), and logs go to terminals and collectors
URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*(?P<at>@)", re.IGNORECASE)
MASK = "********"


def redact(text: str) -> str:
    """``text`` with the password of each URL in it masked."""
    return URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", text) if "@" in text else text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            **getattr(record, "runink_ids", {}),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        ids = getattr(record, "runink_ids", None)
        return f"{text} [{' '.join(f'{k}={v}' for k, v in ids.items())}]" if ids else text


def setup(format: str, daemon: bool) -> str:
    """Format the process's stderr handlers as ``format`` says (``auto``: JSON for a daemon
    whose stderr is not a terminal); which was chosen."""
    chosen = format
    if format == "auto":
        chosen = "json" if daemon and not sys.stderr.isatty() else "text"
    formatter = JsonFormatter() if chosen == "json" else TextFormatter()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
            sys.stderr,
            sys.__stderr__,
        ):
            handler.setFormatter(formatter)
            if not any(isinstance(f, _Ids) for f in handler.filters):
                handler.addFilter(_Ids())
    return chosen
