"""The Barn server's HTTP/1.1 transport: an asyncio protocol around httptools' parser.

Why not uvicorn: the Barn's API is small JSON POSTs on keep-alive connections, and the
leader's one event-loop thread is its bottleneck. uvicorn writes an answer's headers and body
with two writes (two system calls, two segments, two wake-ups of the client) and builds an
ASGI scope, a task and receive/send pairs per request; this writes each answer once. Measured
in 3 alternating pairs of runs (64 clients, 6,400 puts each): the leader's CPU per put fell
18% and the group's throughput rose 9-13% against the same server on uvicorn + httptools.

What it does: keep-alive (HTTP/1.1's default; ``Connection: close`` honoured), pipelined
requests answered in order, bodies up to ``MAX_BODY`` (413 beyond), 400 and close on an
unparsable request, and, for a client that does not read its answers, no more reading of its
requests nor answering of those read ahead until it does (dropped when idle meanwhile).

What it refuses, so that no client can starve the server (each refusal is an answer, then
the connection closes): a URL over ``MAX_URL`` (414) and a head over ``MAX_HEAD`` or
``MAX_HEADERS`` (431), never buffered beyond that; a head not received within the header
timeout or a body within the body timeout (408); a connection past the cap (503, keeping
descriptors for the journal and Raft). An idle keep-alive connection is closed after the
idle timeout.
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

from runink.core.fd_limits import max_connections
from runink.core.server import pki
from runink.core.tls_accept import TlsAcceptor

log = logging.getLogger("runink.barn")

MAX_BODY = 16 << 20  # bytes: well above the largest value the Barn accepts
MAX_PIPELINED = 16  # requests read ahead of their answers per connection: then reading pauses
MAX_READ_AHEAD = 1024  # ... but one read already received may hold more: past this, 503 and close
MAX_URL = 8 << 10  # bytes of the request target: 414 beyond
MAX_HEAD = 64 << 10  # bytes of the request line and headers: 431 beyond (counted per HEAD_SLICE)
HEAD_SLICE = 4 << 10  # a head is fed to the parser this much at a time
MAX_HEADERS = 100  # header lines: 431 beyond
HEADER_TIMEOUT = 10.0  # seconds from a request's first byte to the end of its headers
BODY_TIMEOUT = 60.0  # seconds from the end of the headers to the end of the body
IDLE_TIMEOUT = 120.0  # seconds a keep-alive connection may wait for its next request
LINGER = 2.0  # seconds a refused client's input is still read (and dropped) before closing
SWEEP = 1.0  # seconds between looks for connections past their deadline
MAX_HANDSHAKES_PER_ADDRESS = 64  # TLS handshakes under way from one client (address, IPv6 /64): not the whole cap


@dataclass(frozen=True)
class Limits:
    """A server's connection limits (module defaults; tests shorten them)."""

    max_connections: int = field(default_factory=max_connections)
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT


@dataclass
class Request:
    method: str
    path: str
    headers: dict[bytes, bytes]
    body: bytes
    keep_alive: bool


@dataclass
class Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encode(self, keep_alive: bool) -> bytes:
        head = f"HTTP/1.1 {self.status} {_PHRASES.get(self.status, 'Unknown')}\r\n"
        head += f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        if not keep_alive:
            head += "Connection: close\r\n"
        return (head + "\r\n").encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]
_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}


class _Refusal(Exception):
    """Raised in a parser callback: answer ``status`` and stop reading this connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Connections:
    """The live connections of one server: the cap, and the sweep that enforces timeouts."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.live: set[HttpProtocol] = set()
        self.tls: TlsAcceptor | None = None  # (with TLS: its handshakes under way count in the cap too)

    def full(self, handshaking: int | None = None) -> bool:
        """Whether the cap is reached (``handshaking``: the TLS handshakes under way; default:
        the acceptor's count)."""
        if handshaking is None:
            handshaking = self.tls.total if self.tls is not None else 0
        return len(self.live) + handshaking >= self.limits.max_connections

    async def sweep(self) -> None:
        """Every ``SWEEP`` seconds, end the connections past their deadline: one timer for
        all (a timer per request would cost the loop more than the requests' parsing)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP)
            now = loop.time()
            for connection in [c for c in self.live if c.deadline is not None and c.deadline < now]:
                try:
                    connection.expire()
                except Exception:  # the sweep must outlive any one connection's trouble
                    self.live.discard(connection)
                    log.exception("closing a timed-out connection failed")


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(
        self,
        handler: Handler,
        connections: Connections,
        token_check: Callable[[bytes | None], str] | None = None,
        *,
        counted: bool = False,
    ) -> None:
        self.handler = handler
        self.counted = counted  # let in by the TlsAcceptor, which counted it in the cap from its accept
        self.connections = connections
        self.token_check = token_check
        self.needs_token = False  # a TLS client without a certificate: each request shows a token
        self.limits = connections.limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[Request] = collections.deque()  # read, not yet answered
        self.busy = False  # one request at a time: answers leave in order
        self.closing = False  # refused: nothing more is read or answered
        self.paused = False  # the client does not read its answers
        self.eof = False  # the client has sent all it will send
        # loop time by which the connection must make progress (None: a request is being
        # answered) and what it gets then: 408 (a request half sent) or a silent close (idle)
        self.deadline: float | None = None
        self.late_status: int | None = None
        self.in_head = True  # between requests or reading a request line and headers
        self.head_size = 0  # bytes of the current head so far (within one HEAD_SLICE)
        self.in_message = False  # a request has begun and not yet ended
        self._url: list[bytes] = []
        self._url_size = 0
        self._headers: dict[bytes, bytes] = {}
        self._header_count = 0
        self._body: list[bytes] = []
        self._size = 0

    # --- asyncio --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one, not a subclass
        if not self.counted and self.connections.full():
            # over the cap: refused at once, so idle clients cannot take the descriptors the
            # journal, snapshots and Raft connections need
            self.transport.write(_refusal(503, "too many connections to this Barn server; retry later"))
            self.transport.close()
            self.transport, self.closing = None, True
            return
        refused, self.needs_token = _admission(self.transport, self.token_check is not None)
        if refused:
            self.transport.write(_refusal(403, refused))
            self.transport.close()
            self.transport, self.closing = None, True
            return
        self.connections.live.add(self)
        # its first request begins within the header timeout, not the idle one: silent
        # connections (after a finished handshake too) held slots 120 s each, and one client
        # could hold the whole cap (a review)
        self._deadline(self.limits.header_timeout, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.live.discard(self)
        self.transport = None
        self.closing = True
        self.waiting.clear()

    def eof_received(self) -> bool:
        self.eof = True
        # True keeps the connection: the client half-closed after sending requests still
        # being answered; False closes it
        return not self.closing and (self.busy or bool(self.waiting))

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # refused: what still comes is read and dropped until the linger ends
        try:
            if not self.in_head:
                self.parser.feed_data(data)
                return
            # A head (request line and headers) is fed in slices so that its size is known
            # before httptools buffers it whole (it joins a header's pieces in memory).
            for start in range(0, len(data), HEAD_SLICE):
                piece = data if len(data) <= HEAD_SLICE else data[start : start + HEAD_SLICE]
                self.parser.feed_data(piece)
                if self._refused():  # by a callback just now
                    return
                if self._reading_head():  # still (or again: a request ended in the piece)
                    self.head_size += len(piece)
                    if self.head_size > MAX_HEAD:
                        raise _Refusal(431, f"the request line and headers are over {MAX_HEAD} bytes")
                elif len(data) > start + HEAD_SLICE:
                    self.parser.feed_data(data[start + HEAD_SLICE :])  # a body: no need to slice
                    return
        except _Refusal as refusal:
            self._refuse(refusal.status, str(refusal))
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refusal):
                self._refuse(exc.__context__.status, str(exc.__context__))
            else:
                self._refuse(400, f"bad HTTP request: {exc.__context__ or exc}")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"bad HTTP request: {exc}")

    # (methods, not attributes: the parser's callbacks change these during feed_data)
    def _refused(self) -> bool:
        return self.closing

    def _reading_head(self) -> bool:
        return self.in_head

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading its requests
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
            if not self.busy and self.waiting:
                self._next()

    def expire(self) -> None:
        """(the sweep) The deadline passed: 408 for a request half sent, else just close."""
        if self.late_status is not None and not self.closing:
            self._refuse(self.late_status, "the request was not received in time")
            return
        self.connections.live.discard(self)
        self.deadline = None
        if self.transport is not None:
            # a client that reads nothing would keep a graceful close waiting for ever
            (self.transport.abort if self.paused or self.closing else self.transport.close)()
            self.transport = None
        self.closing = True

    # --- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._url_size, self._headers, self._header_count = [], 0, {}, 0
        self._body, self._size, self.head_size = [], 0, 0
        self.in_message = True
        if not self.busy:
            self._deadline(self.limits.header_timeout, 408)

    def on_url(self, url: bytes) -> None:
        self._url_size += len(url)
        if self._url_size > MAX_URL:
            raise _Refusal(414, f"the URL is over {MAX_URL} bytes")
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            raise _Refusal(431, f"over {MAX_HEADERS} headers")
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.in_head = False
        length = self._headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:  # refused before a byte of it is read
            raise _Refusal(413, f"the request body is over {MAX_BODY} bytes")
        if not self.busy:
            self._deadline(self.limits.body_timeout, 408)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= MAX_BODY:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self.in_head, self.head_size, self.in_message = True, 0, False
        if self._size > MAX_BODY:
            raise _Refusal(413, f"the request body is over {MAX_BODY} bytes")
        request = Request(
            self.parser.get_method().decode("latin-1"),
            httptools.parse_url(b"".join(self._url)).path.decode("latin-1"),
            self._headers,
            b"".join(self._body),
            self.parser.should_keep_alive(),
        )
        if len(self.waiting) >= MAX_READ_AHEAD:  # all parsed from reads made before reading paused
            raise _Refusal(503, f"over {MAX_READ_AHEAD} requests pipelined ahead of their answers")
        self.waiting.append(request)
        if len(self.waiting) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()  # bounded memory: resumed as answers go out (_next)
        self.deadline = None  # answering: the handler bounds its own time
        if not self.busy:
            self._next()

    # --- answering ------------------------------------------------------------------------

    def _next(self) -> None:
        if not self.waiting or self.transport is None:
            self.busy = False
            if self.eof and self.transport is not None:  # every request answered
                self.transport.close()
                self.transport = None
                return
            # (not head_size: a request that ended with a read leaves it counted until the
            # next begins, and an idle connection must not get a 408 it never asked for)
            if not self.in_message:
                self._idle()
            else:  # a request is half read: its clock runs from now
                self._deadline(self.limits.header_timeout if self.in_head else self.limits.body_timeout, 408)
            return
        if self.paused:
            # the client does not read its answers: the next one waits for resume_writing (else
            # every request read ahead is answered into memory: 300 pipelined reads of a 1 MiB
            # value held ~400 MiB), and a client that never reads is dropped when idle
            self.busy = False
            self._idle()
            return
        self.busy = True
        self.deadline = None
        request = self.waiting.popleft()
        if len(self.waiting) == MAX_PIPELINED // 2 and not self.paused and not self.closing:
            self.transport.resume_reading()
        task = asyncio.ensure_future(self._handle(request))
        task.add_done_callback(lambda done: self._answer(request, done))

    async def _handle(self, request: Request) -> Response:
        if self.needs_token and self.token_check is not None:
            refusal = self.token_check(request.headers.get(b"authorization"))
            if refusal:
                body = json.dumps({"error": "unauthenticated", "message": refusal[:400]}).encode()
                return Response(401, body, [("WWW-Authenticate", "Bearer")])
        return await self.handler(request)

    def _answer(self, request: Request, done: asyncio.Future[Response]) -> None:
        if done.cancelled():
            response = Response(503, b'{"error": "unavailable", "message": "the server is stopping"}')
        elif done.exception() is not None:
            response = Response(500, b'{"error": "internal", "message": "see the server log"}')
            asyncio.get_running_loop().call_exception_handler(
                {"message": f"error answering {request.method} {request.path}", "exception": done.exception()}
            )
        else:
            response = done.result()
        if self.transport is None or self.closing:  # the client went away, or was refused
            return
        # (a client refused its token is not kept: it holds no slot while it tries another)
        keep_alive = request.keep_alive and response.status != 401
        self.transport.write(response.encode(keep_alive))
        if not keep_alive:
            self.transport.close()
            self.transport = None
            self.closing = True
            return
        self._next()

    def _idle(self) -> None:
        self._deadline(self.limits.idle_timeout, None)

    def _deadline(self, seconds: float, status: int | None) -> None:
        self.deadline = asyncio.get_running_loop().time() + seconds
        self.late_status = status

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request that cannot be read further, then close: the answer first, then
        our end (FIN), then what the client still sends is dropped for up to LINGER seconds.
        Closing at once with unread input would reset the connection, and the client could
        lose the answer it is owed."""
        self.closing = True
        self.waiting.clear()
        if self.transport is None:
            return
        self.transport.write(_refusal(status, message))
        if self.paused or not self.transport.can_write_eof():
            self.transport.close()
            self.transport = None
            return
        self.transport.write_eof()
        self._deadline(LINGER, None)


def _refusal(status: int, message: str) -> bytes:
    body = json.dumps({"error": "bad_request" if status < 500 else "unavailable", "message": message}).encode()
    return Response(status, body).encode(keep_alive=False)


def _admission(transport: asyncio.Transport, tokens: bool) -> tuple[str, bool]:
    """(why a client may not use this API, or ""; whether each of its requests must show a
    token). Plaintext: let in (the member was started with --plaintext). TLS: a certificate with
    both usages (a server's or a member's, as `runink server --init` makes them) is let in; a
    client-only one of the same CA (an agent's node certificate) is not, so a node cannot read
    or write the Barn behind its server's back; none at all only where tokens are taken."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return "", False
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        if tokens:
            return "", True
        return "a client certificate of the cluster CA is needed", False
    if pki.usages(der) != {"server", "client"}:
        why = "this Barn serves servers only: a client certificate with both usages (server and client) is needed"
        return why, False
    return "", False


async def serve(
    handler: Handler,
    sock: Any,
    stopped: asyncio.Event,
    limits: Limits | None = None,
    tls: ssl.SSLContext | None = None,
    *,
    token_check: Callable[[bytes | None], str] | None = None,
) -> None:
    """Serve on the listening socket ``sock`` until ``stopped`` is set; over TLS with ``tls``
    (a handshake not done within the header timeout closes the connection). ``token_check``:
    a TLS client without a certificate is let in, and each of its requests answered only if
    this says "" of its Authorization header (else 401 with what it says)."""
    limits = limits or Limits()
    connections = Connections(limits)
    loop = asyncio.get_running_loop()

    sweeper = asyncio.ensure_future(connections.sweep())
    try:
        if tls is None:
            server = await loop.create_server(
                lambda: HttpProtocol(handler, connections, token_check), sock=sock, backlog=1024
            )
            async with server:
                await stopped.wait()
            return
        # accepted here, so that a connection counts from its accept, not from its handshake's end
        sock.listen(1024)
        connections.tls = TlsAcceptor(
            loop,
            sock,
            lambda: HttpProtocol(handler, connections, token_check, counted=True),
            tls,
            handshake_timeout=limits.header_timeout,
            per_client=MAX_HANDSHAKES_PER_ADDRESS,
            full=connections.full,
        )
        connections.tls.start()
        try:
            await stopped.wait()
        finally:
            connections.tls.close()
            sock.close()
    finally:
        sweeper.cancel()
