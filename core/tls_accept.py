"""Accepting TLS connections so that each one counts from its accept, its handshake included:
what the REST API's server (core/server/serve_api.py) and the Barn's HTTP API
(plugins/barn/raft/http_protocol.py) both do.

asyncio's own server (``create_server(ssl=...)``) hands a connection to its protocol only
once the handshake has ended, so a server's count of its connections missed those still in
their handshake: clients that open thousands and never finish one (each held up to the
handshake's timeout) took every descriptor of the server, and a Barn member's journal failed
with EMFILE. Here a connection is counted by its client (``client_key``) from its accept; past
``per_client`` handshakes of one client, or when the server says it is full, it is closed at
once, before TLS (nothing can be said to it). The rest is asyncio's TLS
(``connect_accepted_socket``), with the handshake's timeout.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger(__name__)

ACCEPT_BURST = 128  # connections accepted at a time: the loop's other work goes on between
ACCEPT_RETRY = 1.0  # seconds before accepting again when out of descriptors (asyncio's own delay)


def client_key(host: str) -> str:
    """What one client's connections are counted under: its IPv4 address (an IPv4-mapped IPv6
    one too), or its IPv6 /64 (a host is given a /64: each of its addresses is not a client)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class TlsAcceptor:
    """Accepts the connections of the listening socket ``sock`` on ``loop`` and runs their TLS
    handshakes (``tls``, within ``handshake_timeout`` seconds) into ``protocol_factory``'s
    protocols. ``full(n)``: whether the server takes no more connections now, ``n`` handshakes
    being under way (each is counted in its cap). ``start()`` to accept, ``close()`` to stop
    (the socket is the caller's)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        tls: ssl.SSLContext,
        *,
        handshake_timeout: float,
        per_client: int,
        full: Callable[[int], bool],
    ) -> None:
        self.loop, self.sock, self.protocol_factory, self.tls = loop, sock, protocol_factory, tls
        self.handshake_timeout, self.per_client, self.full = handshake_timeout, per_client, full
        self.handshaking: collections.Counter[str] = collections.Counter()  # by client_key
        self.total = 0  # handshakes under way
        self._tasks: set[asyncio.Task[None]] = set()
        self._fd = -1

    def start(self) -> None:
        self.sock.setblocking(False)
        self._fd = self.sock.fileno()
        self.loop.add_reader(self._fd, self._accept)

    def close(self) -> None:
        """Stop accepting and end the handshakes under way."""
        if self._fd != -1:
            self.loop.remove_reader(self._fd)
            self._fd = -1
        for task in list(self._tasks):
            task.cancel()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors or memory: accept again in a while
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("accepting a connection failed (%s): accepting again in %g s", exc, ACCEPT_RETRY)
                    self.loop.remove_reader(self._fd)
                    self.loop.call_later(ACCEPT_RETRY, self._resume)
                return  # (ECONNABORTED and the like: that connection only)
            key = client_key(str(address[0])) if isinstance(address, tuple) and address else ""
            if self.handshaking[key] >= self.per_client or self.full(self.total):
                conn.close()  # (before TLS: nothing can be said to it)
                continue
            self.handshaking[key] += 1
            self.total += 1
            task = self.loop.create_task(self._handshake(conn, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume(self) -> None:
        if self._fd != -1 and self.sock.fileno() == self._fd:  # (not closed meanwhile)
            self.loop.add_reader(self._fd, self._accept)

    async def _handshake(self, conn: socket.socket, key: str) -> None:
        counted = True

        def ended() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.total -= 1
                self.handshaking[key] -= 1
                if self.handshaking[key] <= 0:
                    del self.handshaking[key]

        def protocol_factory() -> asyncio.BaseProtocol:
            # The handshake stops counting where the connection starts to (its protocol's
            # connection_made, which the server counts): this task resumes only later, and one
            # connection counted twice meanwhile had refused a client below the cap (a CI run).
            protocol = self.protocol_factory()
            made = protocol.connection_made

            def connection_made(transport: asyncio.BaseTransport) -> None:
                ended()
                made(transport)

            protocol.connection_made = connection_made  # type: ignore[method-assign]
            return protocol

        try:
            await self.loop.connect_accepted_socket(
                protocol_factory, conn, ssl=self.tls, ssl_handshake_timeout=self.handshake_timeout
            )
        except (Exception, asyncio.CancelledError) as exc:  # a failed or timed-out handshake, a stop
            # (asyncio closed its transport already; a socket it never wrapped, here)
            log.debug("a TLS handshake from %s failed: %s", key, type(exc).__name__)
            conn.close()
        finally:
            ended()
