"""The raft Barn client's HTTP connection (plugins/barn/raft/connection.py): one request per
write, answers parsed by httptools, kept alive while the server allows; anything but a
well-formed answer closes it and raises OSError (the client's retry logic takes it from
there)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from runink.plugins.barn.raft import connection as barn_connection
from runink.plugins.barn.raft.connection import BarnConnection

Reply = Callable[[bytes], bytes | None]  # a request's bytes -> what the server writes (None: close)


class Server:
    """Answers each request on a connection with ``reply``; counts connections and requests."""

    def __init__(self, reply: Reply, close_after: bool = False) -> None:
        self.close_after = close_after  # close once the first reply is written
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

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
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buffer += chunk
                except OSError:
                    return
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                request, buffer = head + b"\r\n\r\n" + rest[:length], rest[length:]
                self.requests.append(request)
                answer = self.reply(request)
                if answer is None:
                    return
                conn.sendall(answer)
                if self.close_after:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(reply: Reply, close_after: bool = False) -> Server:
        servers.append(Server(reply, close_after))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLeader: 10.0.0.1:80\r\n%sContent-Length: %d\r\n\r\n%s"
        % (
            extra,
            len(body),
            body,
        )
    )


def test_requests_share_one_connection_and_answers_are_read_whole(serve: Callable[..., Server]) -> None:
    big = b'{"v": "' + b"x" * 300_000 + b'"}'  # more than one read
    server = serve(lambda request: ok(big if b"/big" in request else b'{"n": 1}'))
    connection = BarnConnection("127.0.0.1", server.port, 5.0)
    try:
        first = connection.request("POST", "/v1/put", b'{"k": 1}', {"Content-Type": "application/json"})
        second = connection.request("GET", "/big", None, {})
    finally:
        connection.close()
    assert (first.status, first.body, first.header("leader")) == (200, b'{"n": 1}', "10.0.0.1:80")
    assert second.body == big
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /v1/put HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Length: 8\r\n" in server.requests[0] and server.requests[0].endswith(b'{"k": 1}')


def test_a_server_that_says_close_gets_a_new_connection(serve: Callable[..., Server]) -> None:
    server = serve(lambda request: ok(b"{}", b"Connection: close\r\n"))
    connection = BarnConnection("127.0.0.1", server.port, 5.0)
    for _ in range(3):
        assert connection.request("GET", "/v1/status", None, {}).status == 200
    assert connection.sock is None and server.connections == 3


@pytest.mark.parametrize(
    ("written", "why"),
    [
        (None, "closed the connection"),  # closed without a word
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "closed the connection"),  # cut short, then closed
        (b"SMTP ready\r\n\r\n", "malformed"),
        (ok(b"{}") + b"garbage that is no answer\r\n\r\n", "malformed|more than its answer"),
        (ok(b"{}") + ok(b"{}"), "more than its answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n" + b"x" * 70_000, "over 0 MiB"),
    ],
)
def test_anything_but_one_answer_closes_the_connection_and_raises(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch, written: bytes | None, why: str
) -> None:
    monkeypatch.setattr(barn_connection, "MAX_ANSWER", 65_536)
    server = serve(lambda request: written, close_after=True)
    connection = BarnConnection("127.0.0.1", server.port, 5.0)
    with pytest.raises(OSError, match=why):
        connection.request("GET", "/v1/status", None, {})
    assert connection.sock is None
