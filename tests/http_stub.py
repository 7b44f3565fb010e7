"""A tiny HTTP/1.1 server on loopback for client tests: it reads each request whole (head and
Content-Length body), records it, and writes what ``reply`` returns for it, on kept-alive
connections unless told to close after each answer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

#: a request's bytes -> what to write (b"": nothing, the connection held; None: close without a word)
Reply = Callable[[bytes], bytes | None]


def ok(body: bytes, extra_headers: bytes = b"") -> bytes:
    """A 200 answer with a JSON body."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n"
    return head % (extra_headers, len(body)) + body


class HttpStub:
    """``close_after``: close each connection once its first answer is written, ``linger``
    seconds later (a server's idle timeout, seen from the client)."""

    def __init__(self, reply: Reply, *, close_after: bool = False, linger: float = 0.0) -> None:
        self.reply, self.close_after, self.linger = reply, close_after, linger
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.address = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.requests: list[bytes] = []  # each request whole: head, blank line, body
        threading.Thread(target=self._serve, daemon=True).start()

    def asked(self) -> list[bytes]:
        """Each request's first line and its body, joined by a space."""
        return [r.split(b"\r\n", 1)[0] + b" " + r.partition(b"\r\n\r\n")[2] for r in self.requests]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            buffer = b""
            while True:
                try:
                    while b"\r\n\r\n" not in buffer:
                        if not (chunk := conn.recv(65536)):
                            return
                        buffer += chunk
                    head, _, rest = buffer.partition(b"\r\n\r\n")
                    lines = head.split(b"\r\n")
                    length = next((int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length")), 0)
                    while len(rest) < length:
                        rest += conn.recv(65536)
                except OSError:
                    return
                request, buffer = head + b"\r\n\r\n" + rest[:length], rest[length:]
                self.requests.append(request)
                answer = self.reply(request)
                if answer is None:
                    return
                conn.sendall(answer)
                if self.close_after:
                    time.sleep(self.linger)
                    return

    def close(self) -> None:
        self.sock.close()
