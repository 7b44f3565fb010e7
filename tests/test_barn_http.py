"""The Barn server's HTTP/1.1 transport (http_protocol.py), on a real socket with a stand-in
handler: keep-alive, pipelining in order, Connection: close, and refusals of bad input."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from runink.plugins.barn.raft.http_protocol import MAX_BODY, Request, Response, serve


@pytest.fixture
def address() -> Iterator[tuple[str, int]]:
    async def echo(request: Request) -> Response:
        await asyncio.sleep(0.01 if request.path == "/slow" else 0)  # a slow answer must not be overtaken
        return Response(200, f'{{"path": "{request.path}", "body": {len(request.body)}}}'.encode())

    listener = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.new_event_loop()
    stopped = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(echo, listener, stopped),), daemon=True)
    thread.start()
    yield listener.getsockname()
    loop.call_soon_threadsafe(stopped.set)
    thread.join(5)


def exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Send raw bytes and read until the server closes or 2 s pass."""
    with socket.create_connection(address, timeout=2) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def post(path: str, body: bytes = b"{}", close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (path.encode(), len(body), extra, body)


def test_pipelined_requests_are_answered_in_order_then_close(address: tuple[str, int]) -> None:
    answer = exchange(address, post("/slow") + post("/fast") + post("/last", close=True))
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.index(b'"/slow"') < answer.index(b'"/fast"') < answer.index(b'"/last"')
    assert b"Connection: close" in answer  # and the server closed (exchange returned before 2 s)


def test_a_garbled_request_gets_400_and_the_connection_closes(address: tuple[str, int]) -> None:
    answer = exchange(address, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"bad HTTP request" in answer


def test_a_body_over_the_limit_gets_413(address: tuple[str, int]) -> None:
    header = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(header)
        chunk = b"x" * (1 << 20)
        sent = 0
        try:
            while sent <= MAX_BODY:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before the whole body is in
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")
