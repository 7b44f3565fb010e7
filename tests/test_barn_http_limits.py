"""The Barn server's HTTP transport under clients that would starve it (issue 17, item 17):
timeouts for a half-sent request and an idle connection, the connection cap, bounded heads;
and what must still work: many pipelined requests in one packet, a large legitimate head,
a client that half-closes after sending its requests."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from runink.plugins.barn.raft.http_protocol import MAX_HEAD, Limits, Request, Response, serve

Serve = Callable[[Limits], tuple[str, int]]


@pytest.fixture
def start() -> Iterator[Serve]:
    """Start a server with the given limits (an echo handler) in a thread; stopped at the end."""
    stops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, threading.Thread]] = []

    async def echo(request: Request) -> Response:
        return Response(200, f'{{"path": "{request.path}", "body": {len(request.body)}}}'.encode())

    def run(limits: Limits) -> tuple[str, int]:
        listener = socket.create_server(("127.0.0.1", 0))
        loop = asyncio.new_event_loop()
        stopped = asyncio.Event()
        thread = threading.Thread(
            target=loop.run_until_complete, args=(serve(echo, listener, stopped, limits),), daemon=True
        )
        thread.start()
        stops.append((loop, stopped, thread))
        address: tuple[str, int] = listener.getsockname()
        return address

    yield run
    for loop, stopped, thread in stops:
        loop.call_soon_threadsafe(stopped.set)
        thread.join(5)


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What the server sends until it closes (or ``timeout`` passes)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def request(path: str, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n%s\r\n{}" % (path.encode(), extra)


def test_a_request_half_sent_gets_408_and_the_connection_closes(start: Serve) -> None:
    address = start(Limits(header_timeout=0.3, body_timeout=0.3))
    with socket.create_connection(address) as sock:
        sock.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    with socket.create_connection(address) as sock:
        sock.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # nor the body
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_an_idle_connection_is_closed_after_the_idle_timeout(start: Serve) -> None:
    address = start(Limits(idle_timeout=0.3))
    with socket.create_connection(address) as never_asked, socket.create_connection(address) as asked_once:
        asked_once.sendall(request("/one"))
        answer = read_all(asked_once)  # answered, then closed once idle
        assert answer.startswith(b"HTTP/1.1 200") and b'"/one"' in answer
        assert read_all(never_asked) == b""  # closed without a word


def test_a_connection_idle_after_its_answer_gets_no_408(start: Serve) -> None:
    """A request that ended exactly where a read ended leaves nothing half sent: the
    connection waits for the next one under the idle timeout, not the header timeout. (It
    used to get an unasked 408 after the header timeout, which the client then read as the
    answer to its next request: a cluster idle for 10 s failed its next submission.)"""
    address = start(Limits(header_timeout=0.3, body_timeout=0.3, idle_timeout=30))
    with socket.create_connection(address) as sock:
        sock.settimeout(5)
        for path in ("/first", "/after-idle"):
            sock.sendall(request(path))  # one write: the request ends with the read
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200") and path.encode() in answer, answer
            time.sleep(1.5)  # past the header timeout and a sweep


def test_connections_past_the_cap_get_503_and_those_held_still_work(start: Serve) -> None:
    address = start(Limits(max_connections=5))
    held = [socket.create_connection(address) for _ in range(5)]
    try:
        time.sleep(0.2)  # all five accepted
        with socket.create_connection(address) as extra:
            answer = read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer
        held[0].sendall(request("/held"))
        held[0].settimeout(5)
        assert held[0].recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)  # the server sees them go: room again
    with socket.create_connection(address) as again:
        again.sendall(request("/again", b"Connection: close\r\n"))
        assert read_all(again).startswith(b"HTTP/1.1 200")


def test_heads_are_bounded_while_they_arrive(start: Serve) -> None:
    address = start(Limits())
    for head, status in (
        (b"GET /" + b"a" * (1 << 20), b"414"),  # the URL never ends: refused at its limit
        (b"POST /x HTTP/1.1\r\nX-Big: " + b"b" * (1 << 20), b"431"),  # nor this header
    ):
        with socket.create_connection(address) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused mid-send
                sock.sendall(head)
            assert select.select([sock], [], [], 5)[0], "no answer"
            assert sock.recv(65536).startswith(b"HTTP/1.1 " + status)


def test_a_large_legitimate_head_and_many_pipelined_requests_are_answered(start: Serve) -> None:
    address = start(Limits())
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 400) for i in range(90))  # ~37 KiB, 90 headers
    assert len(headers) < MAX_HEAD - (4 << 10)
    with socket.create_connection(address) as sock:
        sock.sendall(request("/big-head", headers + b"Connection: close\r\n"))
        assert read_all(sock).startswith(b"HTTP/1.1 200")
    # 300 requests in one send: the head is fed in slices, a slice holds many requests
    many = b"".join(request(f"/p{i}") for i in range(300)) + request("/last", b"Connection: close\r\n")
    with socket.create_connection(address) as sock:
        sock.sendall(many)
        answer = read_all(sock)
    assert answer.count(b"HTTP/1.1 200 OK") == 301
    positions = [answer.index(b'"/p%d"' % i) for i in range(300)]
    assert positions == sorted(positions) and answer.index(b'"/last"') > positions[-1]


def test_a_client_that_half_closes_after_its_requests_gets_every_answer(start: Serve) -> None:
    address = start(Limits())
    with socket.create_connection(address) as sock:
        sock.sendall(request("/a") + request("/b"))
        sock.shutdown(socket.SHUT_WR)
        answer = read_all(sock)
    assert answer.count(b"HTTP/1.1 200 OK") == 2 and answer.index(b'"/a"') < answer.index(b'"/b"')


def test_a_body_announced_too_large_is_refused_before_it_is_sent(start: Serve) -> None:
    host, port = start(Limits())
    with socket.create_connection((host, port)) as sock:
        sock.sendall(b"POST /v1/put HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]


def test_requests_pipelined_behind_a_slow_answer_are_not_read_ahead_without_bound() -> None:
    """While an answer waits (a Raft commit), the requests read ahead of it are bounded: the
    server stops reading that client, whose sends then block, long before 2,000 are buffered."""

    async def slow(_request: Request) -> Response:
        await asyncio.sleep(30)
        return Response(200, b"{}")

    listener = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.new_event_loop()
    stopped = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(serve(slow, listener, stopped, Limits()),), daemon=True
    )
    thread.start()
    request = b"POST /v1/put HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n" + b"x" * 60000
    sent = 0
    try:
        with socket.create_connection(listener.getsockname()) as sock:
            sock.setblocking(False)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and sent < 2000 * len(request):
                if not select.select([], [sock], [], 1.0)[1]:
                    break  # the server stopped reading: the pipe is full
                with contextlib.suppress(BlockingIOError):
                    sent += sock.send(request[sent % len(request) :])
    finally:
        loop.call_soon_threadsafe(stopped.set)
        thread.join(5)
    assert sent < 200 * len(request), f"{sent // len(request)} requests read ahead of their answers"
