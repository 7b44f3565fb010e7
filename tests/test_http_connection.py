"""The HTTP connection of the raft Barn's client and the CLI's (core/http_connection.py): one request per
write, answers parsed by httptools, kept alive while the server allows; anything but a
well-formed answer closes it and raises OSError (the client's retry logic takes it from
there)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from http_stub import HttpStub, Reply, ok

from runink.core import http_connection
from runink.core.http_connection import HttpConnection


@pytest.fixture
def serve() -> Iterator[Callable[..., HttpStub]]:
    servers: list[HttpStub] = []

    def start(reply: Reply, close_after: bool = False) -> HttpStub:
        servers.append(HttpStub(reply, close_after=close_after))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_requests_share_one_connection_and_answers_are_read_whole(serve: Callable[..., HttpStub]) -> None:
    big = b'{"v": "' + b"x" * 300_000 + b'"}'  # more than one read
    server = serve(lambda request: ok(big if b"/big" in request else b'{"n": 1}', b"Leader: 10.0.0.1:80\r\n"))
    connection = HttpConnection("127.0.0.1", server.port, 5.0)
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


def test_a_server_that_says_close_gets_a_new_connection(serve: Callable[..., HttpStub]) -> None:
    server = serve(lambda request: ok(b"{}", b"Connection: close\r\n"))
    connection = HttpConnection("127.0.0.1", server.port, 5.0)
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
    serve: Callable[..., HttpStub], monkeypatch: pytest.MonkeyPatch, written: bytes | None, why: str
) -> None:
    monkeypatch.setattr(http_connection, "MAX_ANSWER", 65_536)
    server = serve(lambda request: written, close_after=True)
    connection = HttpConnection("127.0.0.1", server.port, 5.0)
    with pytest.raises(OSError, match=why):
        connection.request("GET", "/v1/status", None, {})
    assert connection.sock is None


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/get x", {}),
        ("/v1/get\r\nX-Injected: 1", {}),
        ("v1/get", {}),
        ("/v1/get", {"Authorization": "Bearer t\r\nX-Injected: 1"}),
        ("/v1/get", {"X-Bad\r\nName": "v"}),
        ("/v1/get", {"X-Bad: Name": "v"}),
    ],
)
def test_a_target_or_header_that_would_split_the_request_is_refused_unsent(
    serve: Callable[..., HttpStub], path: str, headers: dict[str, str]
) -> None:
    server = serve(lambda request: ok(b"{}"))
    connection = HttpConnection("127.0.0.1", server.port, 5.0)
    with pytest.raises(ValueError, match="not a"):
        connection.request("GET", path, None, headers)
    assert connection.request("GET", "/v1/get", None, {}).status == 200
    connection.close()
    assert len(server.requests) == 1
