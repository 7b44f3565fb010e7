"""Bases for lineage sink plugins.

Lineage sinks are hook plugins, not drivers: every registered sink receives every event
through the ``runink_lineage_event`` hook. Subclass ``LineageSink`` and implement ``emit``, or
``QueuedLineageSink`` and implement ``deliver``, and register an instance through the ``runink``
entry-point group. It lives with the lineage plugins, not with the core's driver interfaces:
it is a hook plugin, not a driver.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from runink.core import metrics
from runink.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from collections.abc import Callable

    from runink.core.model import LineageEvent, MetricSample

log = logging.getLogger(__name__)

#: the events of a job run's states, which OpenLineage consumers take (``OTHER`` events carry
#: record annotations, for the catalog)
RUN_STATES = frozenset({"START", "COMPLETE", "FAIL", "ABORT"})


class LineageSink(ABC):
    @abstractmethod
    def emit(self, event: LineageEvent) -> None:
        """Write one event. Should not block for long: the runner calls sinks inline."""

    @hookimpl
    def runink_lineage_event(self, event: LineageEvent) -> None:
        self.emit(event)


class QueuedLineageSink(LineageSink):
    """A sink that never makes a run wait: ``emit`` queues the event, and one thread of the
    sink's own calls ``deliver`` for each, in the order they came (a consumer sees a run's
    START before its end). Past ``queue_size`` events waiting, new ones are dropped and
    counted (``dropped``); one that ``deliver`` fails on is logged and counted (``failed``).
    At ``runink_unconfigure`` (or the process's exit) what is queued is delivered, waiting
    at most ``flush_timeout`` seconds."""

    queue_size = 10_000
    flush_timeout = 10.0
    #: the event types it takes (None: all); the others are not even queued
    event_types: frozenset[str] | None = None
    #: the sink's name in its log lines
    label = "lineage sink"

    def __init__(self) -> None:
        self.delivered = self.failed = self.dropped = 0
        self._queue: queue.Queue[LineageEvent] = queue.Queue(self.queue_size)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._unregister: Callable[[], None] = lambda: None  # its drops' metric, once it delivers
        self._lock = threading.Lock()

    @abstractmethod
    def deliver(self, event: LineageEvent) -> None:
        """Send or write one event (in the sink's thread); raising counts it failed."""

    def active(self) -> bool:
        """False: the sink is not configured to send anywhere, events are not even queued."""
        return True

    def resize(self, size: int) -> None:
        """Bound the queue at ``size`` events (before the first event)."""
        self.queue_size = size
        self._queue = queue.Queue(size)

    def emit(self, event: LineageEvent) -> None:
        if not self.active() or (self.event_types is not None and event.event_type not in self.event_types):
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._deliver_forever, daemon=True, name=self.label)
                self._thread.start()
                atexit.register(self.close)  # (a library user that never unconfigures)
                self._unregister = metrics.register_gauges(self._dropped)
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._lock:
                self.dropped += 1
                dropped = self.dropped
            if dropped == 1 or dropped % 1000 == 0:
                log.warning("%s: %d event(s) dropped so far: it delivers slower than runs emit", self.label, dropped)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for what is queued to be delivered; True if it was."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        """Deliver what is queued (at most ``flush_timeout`` seconds), then ``closed()``, once
        (``runink_unconfigure`` and the process's exit both call it)."""
        with self._lock:
            if self._thread is None or self._closed:
                return
            self._closed = True
        self._unregister()
        if not self.flush(self.flush_timeout):
            waiting = self._queue.unfinished_tasks
            log.warning("%s: %d event(s) not delivered in %gs", self.label, waiting, self.flush_timeout)
        self.closed()

    def _dropped(self) -> list[MetricSample]:
        return [metrics.sample("runink_exporter_dropped_total", self.dropped, exporter=self.label)]

    def closed(self) -> None:
        """What is queued was delivered (or the flush timed out): release what the sink holds."""

    @hookimpl
    def runink_unconfigure(self) -> None:
        self.close()

    def _deliver_forever(self) -> None:
        # The lowest CPU priority (this thread only): the imports and writes of a delivery
        # (~0.5 s of CPU for the built-in sinks) take the cores the slices leave idle instead
        # of slowing them (bench/pipeline/lineage_sinks.py: +27% wall time without, none with).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            event = self._queue.get()
            try:
                self.deliver(event)
                with self._lock:
                    self.delivered += 1
            except Exception as exc:  # counted; the next event goes on
                with self._lock:
                    self.failed += 1
                log.warning("%s: an event was not delivered: %s: %s", self.label, type(exc).__name__, exc)
            finally:
                self._queue.task_done()
