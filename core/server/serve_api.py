"""The REST API served by uvicorn in a background thread, on an address bound before it starts.

Until authentication lands the API listens on loopback only: another address is refused
unless ``insecure_bind`` is given, so a server is never reachable from the network by accident.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from runink.core.fd_limits import max_connections, raise_fd_limit
from runink.core.server import pki
from runink.core.server.tls import TlsFiles
from runink.core.tls_accept import TlsAcceptor, client_key
from runink.core.units import is_loopback

START_TIMEOUT = 10.0  # seconds for uvicorn to start accepting connections
HEADER_TIMEOUT = 10.0  # seconds from a connection, or a request's first byte, to the end of its headers
MAX_HEAD_BYTES = 64 * 1024  # a request's line and headers, at most (431 beyond)
LINGER = 1.0  # seconds a refused client's input is still read (and dropped) before closing
BODY_TIMEOUT = 60.0  # seconds from the end of a request's headers to the end of its body
HANDSHAKE_TIMEOUT = 10.0  # seconds for a client's TLS handshake
MAX_PER_ADDRESS = 256  # connections open at once from one client address or IPv6 /64 (503 beyond)


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits the Barn's own server keeps: a request's
    line and headers come whole within HEADER_TIMEOUT of the connection or of the request's
    first byte, and in at most MAX_HEAD_BYTES; its body within BODY_TIMEOUT of them. (uvicorn
    has none of them, and all come before any token is checked: 2,000 connections sending a
    byte a second all stayed open, 12 requests of 96 MB headers took a server from 178 MB to
    1.1 GB, slow bodies held every connection slot, a review's runs.)"""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._refused = False
        # the request last read: its body whole, its answer sent (both: what comes next is a new head)
        self._message_done = self._response_done = True
        self._heading = True  # reading a request's line and headers (or waiting for the first)
        # the head's deadline, then the body's until it is whole (None: neither is being read)
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(HEADER_TIMEOUT, self._too_slow)
        # one address may not take every connection slot (limit_concurrency) from the others
        self._address = client_key(self.client[0]) if self.client else None
        if self._address is not None:
            counts = _connections_by_address(self.server_state)
            counts[self._address] += 1
            if counts[self._address] > MAX_PER_ADDRESS:
                self._refuse(b"503 Service Unavailable", f"more than {MAX_PER_ADDRESS} connections from one address")

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # (read and dropped until the connection closes: see _refuse)
        if self._heading and self._timer is None:  # a new request on a kept-alive connection
            self._timer = self.loop.call_later(HEADER_TIMEOUT, self._too_slow)
        super().data_received(data)
        if self._heading and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(b"431 Request Header Fields Too Large", f"request headers past {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._heading, self._head_bytes = False, 0
        self._message_done = self._response_done = False
        self._stop_timer()
        super().on_headers_complete()
        if not self.transport.is_closing():
            self._timer = self.loop.call_later(BODY_TIMEOUT, self._body_too_slow)

    def on_message_complete(self) -> None:
        self._stop_timer()
        self._message_done = True
        super().on_message_complete()
        if self._response_done and not self.pipeline:  # (answered before its body was read: a 413)
            self._heading = True

    def _body_too_slow(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:  # (answering already: only close)
            self.transport.close()
        else:
            self._refuse(b"408 Request Timeout", f"no whole request body within {BODY_TIMEOUT:g} s")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._response_done = True
        # the next bytes are a new request's head only once this one's body is all read (a 413
        # answered at once counted the rest of its body as headers); a pipelined request's
        # headers are in already
        if self._message_done and not self.pipeline:
            self._heading = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._address is not None:
            counts = _connections_by_address(self.server_state)
            counts[self._address] -= 1
            if counts[self._address] <= 0:
                del counts[self._address]
            self._address = None
        super().connection_lost(exc)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if self._heading and not self.transport.is_closing():
            self._refuse(b"408 Request Timeout", f"no whole request headers within {HEADER_TIMEOUT:g} s")

    def _refuse(self, status: bytes, message: str) -> None:
        """Answer ``status`` and close, reading and dropping what the client still sends for a
        moment first: closing with its bytes unread resets the connection, and the client
        would lose the answer."""
        body = message.encode()
        head = b"HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % (status, len(body))
        self.transport.write(head + b"connection: close\r\n\r\n" + body)
        self._refused, self._heading = True, False
        self._stop_timer()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)


def _connections_by_address(state: ServerState) -> collections.Counter[str]:
    """The open connections of one server (its uvicorn state), by client address."""
    counts: collections.Counter[str] | None = getattr(state, "runink_by_address", None)
    if counts is None:
        counts = collections.Counter()
        state.runink_by_address = counts  # type: ignore[attr-defined]
    return counts


class GuardedServer(uvicorn.Server):
    """uvicorn's server with our TLS (``tls``: the context, TLS 1.2 at least, its files read
    without following a link, where uvicorn would open them again by path) whose handshakes end
    within HANDSHAKE_TIMEOUT (asyncio's 60 s held a connection slot a minute for each client that
    only opened a connection), accepted by TlsAcceptor (connections counted per client from
    their accept, their handshake included)."""

    def __init__(self, config: uvicorn.Config, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(config)
        self.tls = tls

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        self.config.load()
        if self.tls is not None:
            self.config.ssl = self.tls
        make_loop = self.config.get_loop_factory() or asyncio.new_event_loop

        def guarded_loop() -> asyncio.AbstractEventLoop:
            loop = make_loop()
            create_server = loop.create_server

            async def create_guarded_server(protocol_factory: Any, *args: Any, **kwargs: Any) -> asyncio.Server:
                tls, sock = kwargs.pop("ssl", None), kwargs.get("sock")
                if tls is None:
                    return await create_server(protocol_factory, *args, **kwargs)
                if sock is None:  # (serve_api always gives its bound socket)
                    raise RuntimeError("TLS is served on a bound socket only")
                # asyncio's server, never serving: uvicorn closes it, which stops the acceptor's
                # reader on the same socket and closes the socket
                server = await create_server(protocol_factory, *args, start_serving=False, **kwargs)
                limit = self.config.limit_concurrency or 1024
                TlsAcceptor(
                    loop,
                    sock,
                    protocol_factory,
                    tls,
                    handshake_timeout=HANDSHAKE_TIMEOUT,
                    per_client=MAX_PER_ADDRESS,
                    # handshakes and open connections together: silent clients past their
                    # handshake took every descriptor when only handshakes counted (a review)
                    full=lambda handshaking: handshaking + len(self.server_state.connections) >= limit,
                ).start()
                return server

            loop.create_server = create_guarded_server  # type: ignore[method-assign]
            return loop

        with asyncio.Runner(loop_factory=guarded_loop) as runner:
            runner.run(self.serve(sockets=sockets))


def require_loopback(host: str, what: str, override: str) -> None:
    """ValueError unless ``host`` is a loopback address: a plaintext address (no TLS: tokens
    and secrets in clear) may not be reachable from the network by accident. ``what`` names
    the address, ``override`` what lets it listen there anyway."""
    if not is_loopback(host):
        raise ValueError(
            f"{what} {host!r}: not a loopback address; without TLS a server listens on loopback only "
            f"(its tokens and secrets would cross the network in clear): give TLS, or {override} to listen there anyway"
        )


def serve_api(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    insecure_bind: bool = False,
    log_level: str = "warning",
    tls: TlsFiles | None = None,
) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve ``app`` on ``host:port`` (0: a free port; ``server.config.port`` says which) and
    return once it accepts connections; HTTPS with ``tls`` (clients authenticate with tokens,
    no client certificate is asked). Stop it with ``stop_api``. Raises ValueError for a
    non-loopback host served in plaintext without ``insecure_bind``, OSError when the address
    cannot be bound, RuntimeError when uvicorn does not start."""
    if not insecure_bind and tls is None:
        require_loopback(host, "API address (plaintext)", "insecure_bind")
    raise_fd_limit()  # (the soft default, 1,024, caps clients well below what the host allows)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host=host,
        port=bound_port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        http=GuardedHttp,
        # past this many connections a request is a 503 (each holds a descriptor)
        limit_concurrency=max_connections(),
    )
    server = GuardedServer(config, None if tls is None else pki.https_context(tls.cert, tls.key))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"api-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(1.0)
            sock.close()
            raise RuntimeError(f"API on {host}:{bound_port}: uvicorn did not start (see its log)")
        time.sleep(0.005)
    return server, thread


def stop_api(server: uvicorn.Server, thread: threading.Thread, timeout: float = 5.0) -> None:
    """Stop accepting, let requests in flight end (up to ``timeout``), and wait for the thread."""
    server.should_exit = True
    thread.join(timeout)
    if thread.is_alive():
        server.force_exit = True
        thread.join(timeout)
