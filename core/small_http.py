"""Bounds for the small threaded HTTP servers beside the real ones: an agent's health probes
(``--health``) and the Prometheus metrics (``--metrics``).

Python's ``ThreadingHTTPServer`` (and wsgiref's) start a thread per connection and wait for
its request as long as the client likes: 300 half-sent requests held 300 threads, and 500
slow scrapes 455 MiB. ``Bounded`` serves at most ``max_clients`` connections at once (one past
it is closed at once) and gives each socket ``TIMEOUT`` seconds per read or write; a client
that goes away mid-answer is not worth a traceback.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from typing import Any

log = logging.getLogger(__name__)

MAX_CLIENTS = 32
TIMEOUT = 10.0  # seconds a client may take to send its request or read a piece of the answer


class Bounded(socketserver.ThreadingMixIn):
    """Put first in a threading server's bases: ``class S(Bounded, ThreadingHTTPServer)``."""

    max_clients = MAX_CLIENTS
    request_queue_size = 128  # (socketserver's 5: a burst of connections waited on SYN retries)
    _slots: threading.BoundedSemaphore | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        if self._slots is None:
            self._slots = threading.BoundedSemaphore(self.max_clients)
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # type: ignore[attr-defined]  # (full: the client tries again later)
            return
        if isinstance(request, socket.socket):
            request.settimeout(TIMEOUT)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self._slots is not None:
                self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("a request from %s ended in an error", client_address, exc_info=True)
