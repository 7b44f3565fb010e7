"""An HTTP client whose every answer comes within a deadline and a size, for the model server.

httpx's timeouts bound each read, not a request: a server sending a byte every half second
kept a request open for as long as it went on, and the openai client reads an answer whole, so
a 100 MB answer was held and parsed. Here the client's network streams (httpcore's, under each
of its transports, env proxies included) read at most until the calling thread's deadline and
at most its byte budget (``limits``); redirects are not followed (a 307 re-sent the records to
another host). The client is of the library the installed openai uses: httpx2 (on httpcore2)
from openai 3 on, httpx (on httpcore) before.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import Iterator
from typing import Any

_bounds = threading.local()  # the calling thread's deadline, budget and bytes read, while ``limits`` holds


class AnswerTooLarge(ValueError):
    """The answer passed the byte budget of its request (not retried: it would again)."""


@contextlib.contextmanager
def limits(seconds: float, max_bytes: int) -> Iterator[None]:
    """Within this block, this thread's requests through a ``bounded_client`` must be answered
    within ``seconds`` from now and in at most ``max_bytes`` (headers included)."""
    _bounds.deadline, _bounds.budget, _bounds.read = time.monotonic() + seconds, max_bytes, 0
    try:
        yield
    finally:
        _bounds.deadline = _bounds.budget = None


def libraries() -> tuple[Any, Any]:
    """(httpx, httpcore) as the installed openai client uses them."""
    from openai import _base_client

    if hasattr(_base_client, "httpx2"):
        return importlib.import_module("httpx2"), importlib.import_module("httpcore2")
    return importlib.import_module("httpx"), importlib.import_module("httpcore")


def _cut(core: Any, timeout: float | None) -> float | None:
    """A read or write timeout cut to what is left before the deadline (``core``'s ReadTimeout
    past it: its client maps it to its own timeout error, openai's to APITimeoutError)."""
    deadline: float | None = getattr(_bounds, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise core.ReadTimeout("the answer did not come within the request's timeout")
    return left if timeout is None else min(timeout, left)


class _BoundedStream:
    """A network stream (httpcore's interface) whose reads and writes end at the deadline."""

    def __init__(self, inner: Any, core: Any) -> None:
        self._inner = inner
        self._core = core

    def _timeout(self, timeout: float | None) -> float | None:
        return _cut(self._core, timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = self._inner.read(max_bytes, self._timeout(timeout))
        budget = getattr(_bounds, "budget", None)
        if budget is not None:
            _bounds.read += len(data)
            if _bounds.read > budget:
                raise AnswerTooLarge(f"the answer passed {budget:,} bytes")
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._timeout(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return _BoundedStream(self._inner.start_tls(ssl_context, server_hostname, self._timeout(timeout)), self._core)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _BoundedBackend:
    """A network backend (httpcore's interface) whose streams are bounded."""

    def __init__(self, inner: Any, core: Any) -> None:
        self._inner = inner
        self._core = core

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> _BoundedStream:
        inner = self._inner.connect_tcp(host, port, _cut(self._core, timeout), local_address, socket_options)
        return _BoundedStream(inner, self._core)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> _BoundedStream:
        inner = self._inner.connect_unix_socket(path, _cut(self._core, timeout), socket_options)
        return _BoundedStream(inner, self._core)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def bounded_client(timeout: float) -> Any:
    """A client of the openai client's HTTP library (env proxies and certificates as its
    defaults) whose reads obey ``limits`` and which follows no redirect. Raises RuntimeError
    if that library keeps its connections elsewhere than this module knows (answers could not
    be bounded)."""
    http, core = libraries()
    client = http.Client(timeout=timeout, follow_redirects=False)
    transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:
            client.close()
            raise RuntimeError(f"{http.__name__} {http.__version__}: its transports cannot be bounded")
        pool._network_backend = _BoundedBackend(backend, core)  # type: ignore[union-attr]
    return client
