"""One keep-alive HTTP/1.1 client connection: the raft Barn's client (``Barn`` calls) and the
CLI's cluster client (``runink status``, ``exec`` ...) talk through it.

Why not ``http.client``: a control-plane server makes ~10 Barn calls per job (writes, reads,
watch long-polls), and ``http.client`` spent about half of each call's client CPU outside the
socket: the request assembled header by header, the answer's headers parsed by the ``email``
package, whose import is also ~10 ms of every cluster command's start. Here a request goes out
in one write and its answer is parsed by httptools (the parser the Barn server uses),
bounded: one answer at a time per connection, its body at most MAX_ANSWER bytes. Anything
else (a malformed answer, one past MAX_ANSWER, bytes nobody asked for) closes the connection
and raises ``OSError``, as a network failure does, so the caller's retry logic covers both.
Proxies are not used: the servers are asked directly.
"""

from __future__ import annotations

import re
import socket
import ssl

import httptools

MAX_ANSWER = 256 << 20  # bytes of one answer's body, at most
READ_SIZE = 64 << 10  # (a read allocates this much: keep it under malloc's mmap threshold)
# what a request line's target or a header may not hold (a space, a line break: a request
# split in two, or headers of the caller's own making); http.client refuses them too
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")
_UNSAFE_HEADER = re.compile(r"[\x00\r\n]")


class HttpConnection:
    """To ``host:port`` (TLS with ``context``); ``timeout``: each socket operation's, and the
    connect's unless ``connect_timeout`` is given."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        context: ssl.SSLContext | None = None,
        *,
        connect_timeout: float | None = None,
    ) -> None:
        self.host, self.port, self.timeout, self.context = host, port, timeout, context
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.sock: socket.socket | None = None
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # (an IPv6 host in brackets)
        self._head = f"Host: {authority}\r\n".encode("latin-1")

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout
        if self.sock is not None:
            self.sock.settimeout(timeout)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        """Send one request and read its answer (``OSError`` if either fails; ``ValueError``,
        nothing sent, for a target or header that would not be one)."""
        if _UNSAFE_TARGET.search(path) or not path.startswith("/"):
            raise ValueError(f"not a request path: {path!r}")
        for name, value in headers.items():
            if _UNSAFE_HEADER.search(name) or _UNSAFE_HEADER.search(value) or ":" in name:
                raise ValueError(f"not a header: {name!r}")
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        head = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), self._head]
        head.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())
        if body is not None:
            head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        try:
            self.sock.sendall(b"".join(head) + (body or b""))
            return self._answer()
        except BaseException:
            self.close()
            raise

    def connect(self) -> None:
        """Connect now (the TLS handshake included; ``request`` does it when not connected)."""
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def _answer(self) -> Answer:
        assert self.sock is not None
        answer = Answer()
        parser = answer.parser = httptools.HttpResponseParser(answer)
        while not answer.complete:
            data = self.sock.recv(READ_SIZE)
            if not data:
                raise ConnectionResetError("the server closed the connection before its answer ended")
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                raise OSError("the server asked to upgrade the connection") from None
            except httptools.HttpParserError as exc:
                raise OSError(f"a malformed answer from the server: {exc}") from None
            if answer.size > MAX_ANSWER:
                raise OSError(f"an answer of over {MAX_ANSWER >> 20} MiB from the server")
            if answer.extra:  # (set only once the answer is complete)
                raise OSError("the server sent more than its answer")
        if not answer.keep_alive:
            self.close()
        return answer


class Answer:
    """An answer as httptools' callbacks find it: status, headers (names in lower case), body."""

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.status = 0
        self.keep_alive = False
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] = []
        self.size = 0
        self.complete = False
        self.extra = False  # bytes after the answer ended

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        # (read here: once the answer is complete the parser has reset and says False)
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= MAX_ANSWER:
            self.parts.append(body)

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_message_complete(self) -> None:
        self.complete = True
