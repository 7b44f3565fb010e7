"""An httpx client whose every answer comes within a deadline and a size, for the model server.

httpx's timeouts bound each read, not a request: a server sending a byte every half second
kept a request open for as long as it went on, and the openai client reads an answer whole, so
a 100 MB answer was held and parsed. Here the client's network streams (httpcore's, under each
of its transports, env proxies included) read at most until the calling thread's deadline and
at most its byte budget (``limits``); redirects are not followed (a 307 re-sent the records to
another host).
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import typing
from collections.abc import Iterator

import httpcore
import httpx

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


def _timeout(timeout: float | None) -> float | None:
    """The read or write timeout, cut to what is left before the deadline."""
    deadline = getattr(_bounds, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the answer did not come within the request's timeout")
    return left if timeout is None else min(timeout, left)


class _BoundedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, _timeout(timeout))
        budget = getattr(_bounds, "budget", None)
        if budget is not None:
            _bounds.read += len(data)
            if _bounds.read > budget:
                raise AnswerTooLarge(f"the answer passed {budget:,} bytes")
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _timeout(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _BoundedStream(self._inner.start_tls(ssl_context, server_hostname, _timeout(timeout)))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _BoundedBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _BoundedStream(self._inner.connect_tcp(host, port, _timeout(timeout), local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Iterable[typing.Any] | None = None
    ) -> httpcore.NetworkStream:
        return _BoundedStream(self._inner.connect_unix_socket(path, _timeout(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def bounded_client(timeout: float) -> httpx.Client:
    """An httpx client (env proxies and certificates as httpx's defaults) whose reads obey
    ``limits`` and which follows no redirect. Raises RuntimeError if this httpx keeps its
    connections elsewhere than this module knows (answers could not be bounded)."""
    client = httpx.Client(timeout=timeout, follow_redirects=False)
    transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:
            client.close()
            raise RuntimeError(f"httpx {httpx.__version__}: its transports cannot be bounded (no network backend)")
        pool._network_backend = _BoundedBackend(backend)  # type: ignore[union-attr]
    return client
