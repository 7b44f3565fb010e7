"""The Fluentd exporter: every log record (``runink_export_log``: control-plane events, and
every line a slice prints when ``[log] slice_output`` is on) to a Fluentd or Fluent Bit
``forward`` input, over the forward protocol with acknowledgements.

    [plugin.fluentd]
    host = "127.0.0.1"       # the collector; the plugin is off without it
    port = 24224
    tag = "runink"           # records go as <tag>.<source> (runink.slice, runink.runner, ...)
    buffer = 10000           # records held while the collector is slow or away
    chunk = 500              # records per message at most
    ack_timeout = 5.0        # seconds to wait for a message's ack before sending it again

fluent-logger's sender writes and forgets: a record it sent to a collector that died before
storing it is lost, silently. So this plugin speaks the protocol itself (msgpack, fluent-logger's
``EventTime`` for timestamps): each message is Forward mode, ``[tag, [[time, record], ...],
{"chunk": ID}]``, and a record counts as shipped only when the collector answers ``{"ack": ID}``.
Until then it stays buffered and is sent again, with the same chunk id, after a backoff (0.2 s
doubling to 10 s): a collector that stored a chunk whose ack was lost sees the id again and
can drop the repeat (Fluentd's ``forward`` input does not, so a repeat may be stored twice).
A record never waits on the collector in the caller (a slice's runner, a server): past
``buffer`` records waiting, new ones are dropped and counted
(``runink_exporter_dropped_total{exporter="fluentd"}``).
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

from runink.core import metrics
from runink.core.errors import ConfigError
from runink.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from runink.core.config import RuninkConfig
    from runink.core.driverload import OptionsSchema
    from runink.core.model import LogEntry, MetricSample

log = logging.getLogger(__name__)

MAX_ANSWER = 4096  # bytes of an ack
BACKOFF = (0.2, 10.0)
# the buffer's records in memory, at most (with ``buffer``, their count): 10,000 records of 16
# KiB lines that decode to wide characters once took 640 MB
BUFFER_BYTES = 64 << 20


class FluentdExporter:
    #: [plugin.fluentd] (checked by runink.core.plugin_options before runink_configure)
    options_schema: ClassVar[OptionsSchema] = {
        "host": str,
        "port": int,
        "tag": str,
        "buffer": int,
        "buffer_bytes": int,
        "chunk": int,
        "ack_timeout": float,
    }

    def __init__(self) -> None:
        self.address: tuple[str, int] | None = None
        self.tag = "runink"
        self.capacity = 10_000
        self.capacity_bytes = BUFFER_BYTES
        self._bytes = 0  # what the buffered records take (``_size``)
        self._sizes: collections.deque[int] = collections.deque()  # each one's, as counted when it came
        self.chunk = 500
        self.ack_timeout = 5.0
        self.dropped = self.shipped = self.resent = 0
        self._waiting: collections.deque[tuple[str, float, dict[str, Any]]] = collections.deque()
        self._lock = threading.Lock()
        self._more = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._unregister: Any = None

    @hookimpl
    def runink_configure(self, config: RuninkConfig) -> None:
        options = dict(config.plugin_options("fluentd"))
        if not options.get("host"):
            return
        where = "[plugin.fluentd]"
        try:
            self.address = (str(options["host"]), int(options.get("port", 24224)))
            self.tag = str(options.get("tag", "runink"))
            self.capacity = int(options.get("buffer", 10_000))
            self.capacity_bytes = int(options.get("buffer_bytes", BUFFER_BYTES))
            self.chunk = int(options.get("chunk", 500))
            self.ack_timeout = float(options.get("ack_timeout", 5.0))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not (
            0 < self.address[1] < 65536 and min(self.capacity, self.capacity_bytes, self.chunk, self.ack_timeout) > 0
        ):
            raise ConfigError(
                f"{where}: port, buffer, buffer_bytes, chunk and ack_timeout must be positive (port < 65536)"
            )
        self._unregister = metrics.register_gauges(self._dropped)

    def _dropped(self) -> list[MetricSample]:
        return [metrics.sample("runink_exporter_dropped_total", self.dropped, exporter="fluentd")]

    @hookimpl
    def runink_export_log(self, entry: LogEntry) -> None:
        if self.address is None:
            return
        record = {"message": entry.message, "level": entry.level, **{k: str(v) for k, v in entry.fields.items()}}
        size = _size(record)
        with self._lock:
            if len(self._waiting) >= self.capacity or self._bytes + size > self.capacity_bytes:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("fluentd: %d record(s) dropped: the collector is away or slow", self.dropped)
                return
            self._waiting.append((f"{self.tag}.{entry.source}", entry.timestamp.timestamp(), record))
            self._sizes.append(size)
            self._bytes += size
            if self._thread is None:
                self._thread = threading.Thread(target=self._ship_forever, daemon=True, name="fluentd")
                self._thread.start()
        self._more.set()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every buffered record to be acknowledged."""
        deadline = time.monotonic() + timeout
        while self._waiting and time.monotonic() < deadline:
            self._more.set()
            time.sleep(0.01)
        return not self._waiting

    @hookimpl
    def runink_unconfigure(self) -> None:
        if self._thread is not None and not self.flush(self.ack_timeout):
            log.warning("fluentd: %d record(s) not acknowledged at exit", len(self._waiting))
        self._stop.set()
        self._more.set()
        if self._unregister is not None:
            self._unregister()
        self._close()

    # --- the sender's thread ---------------------------------------------------------------

    def _ship_forever(self) -> None:
        delay = BACKOFF[0]
        # the chunk being sent: sent again as it was, records and id, until acknowledged
        batch: list[tuple[str, float, dict[str, Any]]] = []
        chunk_id = b""
        while not self._stop.is_set():
            if not batch:
                batch, chunk_id = self._next_chunk(), base64.b64encode(os.urandom(16))
            if not batch:
                self._more.wait(1.0)
                self._more.clear()
                continue
            try:
                self._send(batch, chunk_id)
            except Exception as exc:
                # any failure is this attempt's (a collector's garbage raised msgpack's BufferFull):
                # the thread, the only sender, must live on, else every later record is dropped
                self._close()
                self.resent += 1
                log.info("fluentd: %d record(s) not acknowledged (%s); again in %.1fs", len(batch), exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            with self._lock:  # acknowledged: those leave the buffer
                for _ in batch:
                    self._waiting.popleft()
                    self._bytes -= self._sizes.popleft()  # (a string's size grows once encoded: its UTF-8 is kept)
            self.shipped += len(batch)
            batch, delay = [], BACKOFF[0]

    def _next_chunk(self) -> list[tuple[str, float, dict[str, Any]]]:
        """The oldest records of one tag, at most ``chunk`` of them (a message has one tag)."""
        with self._lock:
            if not self._waiting:
                return []
            tag = self._waiting[0][0]
            batch: list[tuple[str, float, dict[str, Any]]] = []
            for item in self._waiting:
                if item[0] != tag or len(batch) >= self.chunk:
                    break
                batch.append(item)
            return batch

    def _send(self, batch: list[tuple[str, float, dict[str, Any]]], chunk_id: bytes) -> None:
        import msgpack
        from fluent.sender import EventTime

        entries = [[EventTime(moment), record] for _tag, moment, record in batch]
        message = msgpack.packb([batch[0][0], entries, {"chunk": chunk_id.decode(), "size": len(batch)}])
        connection = self._connect()
        connection.sendall(message)
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_ANSWER)
        deadline = time.monotonic() + self.ack_timeout
        while True:
            connection.settimeout(max(0.01, deadline - time.monotonic()))
            data = connection.recv(MAX_ANSWER)
            if not data:
                raise ConnectionError("the collector closed the connection before its ack")
            unpacker.feed(data)
            for answer in unpacker:
                if isinstance(answer, dict) and answer.get("ack") == chunk_id.decode():
                    return
                raise ValueError(f"an answer that is not this chunk's ack: {str(answer)[:100]}")

    def _connect(self) -> socket.socket:
        if self._socket is None:
            assert self.address is not None
            self._socket = socket.create_connection(self.address, timeout=self.ack_timeout)
        return self._socket

    def _close(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            finally:
                self._socket = None


def _size(record: dict[str, str]) -> int:
    """What a buffered record's strings take in memory (a wide character is 4 bytes there)."""
    return sum(sys.getsizeof(value) for value in record.values())
