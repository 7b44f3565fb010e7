"""The CLI's cluster client: which server it asks, and that a write is never sent twice."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_stub import HttpStub, ok

from runink.core.cli.cluster_client import ClusterClient, ClusterError, server_addresses


@pytest.fixture
def silent() -> Iterator[list[HttpStub]]:
    """Two servers that read each request and never answer (b"": nothing written, the
    connection held)."""
    servers = [HttpStub(lambda request: b""), HttpStub(lambda request: b"")]
    yield servers
    for server in servers:
        server.close()


def test_a_write_without_an_answer_is_not_sent_to_another_server(silent: list[HttpStub]) -> None:
    client = ClusterClient([s.address for s in silent], timeout=(0.5, 0.5))
    try:
        with pytest.raises(ClusterError, match="may have been done"):
            client.call("POST", "/v1/jobs", {"herd": "default", "command": ["/bin/true"]})
    finally:
        client.close()
    assert [len(s.requests) for s in silent] == [1, 0]  # not a second job on the other server


def test_a_read_without_an_answer_tries_the_next_server(silent: list[HttpStub]) -> None:
    client = ClusterClient([s.address for s in silent], timeout=(0.5, 0.5))
    try:
        with pytest.raises(ClusterError, match="no server answered"):
            client.call("GET", "/v1/jobs")
    finally:
        client.close()
    assert [len(s.requests) for s in silent] == [1, 1]


@pytest.mark.parametrize("keep", [True, False])
def test_calls_reuse_a_connection_and_a_closed_one_is_replaced(keep: bool) -> None:
    server = HttpStub(lambda request: ok(b'{"ok": true}'), close_after=not keep, linger=0.1)
    client = ClusterClient([server.address], timeout=(2, 2))
    try:
        assert client.call("POST", "/v1/jobs", {"herd": "h"}) == {"ok": True}
        time.sleep(0.3)  # (the one-shot server has closed by now)
        assert client.call("POST", "/v1/jobs", {"herd": "h"}) == {"ok": True}  # not "may have been done"
        assert client.call("GET", "/v1/jobs/j", wait=0.5, after=3, explain=True, herd=None) == {"ok": True}
    finally:
        client.close()
        server.close()
    assert server.connections == (1 if keep else 3)
    assert server.asked() == [
        b'POST /v1/jobs HTTP/1.1 {"herd":"h"}',
        b'POST /v1/jobs HTTP/1.1 {"herd":"h"}',
        b"GET /v1/jobs/j?wait=0.5&after=3&explain=true HTTP/1.1 ",
    ]


def test_a_server_the_ca_does_not_vouch_for_is_not_asked(tmp_path: Path) -> None:
    """An https:// server whose certificate the given CA did not sign: refused at the handshake,
    said in one line, and the request never sent."""
    import ssl

    from runink.core.server import pki

    pki.create_ca(tmp_path / "ours")
    pki.create_ca(tmp_path / "theirs")
    cert = pki.issue(tmp_path / "theirs", tmp_path / "theirs", "server.s0", sans=["127.0.0.1"], usage="server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert, cert.key)
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                requests.append(tls.recv(65536))

    threading.Thread(target=serve, daemon=True).start()
    client = ClusterClient([f"https://127.0.0.1:{listener.getsockname()[1]}"], ca=str(tmp_path / "ours" / "ca.pem"))
    try:
        with pytest.raises(ClusterError, match=r"no server answered.*its certificate: "):
            client.call("POST", "/v1/jobs", {"herd": "h"})
    finally:
        client.close()
        listener.close()
    assert requests == []


def test_server_addresses_come_from_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNINK_SERVER", "127.0.0.1:1,127.0.0.1:2")
    assert server_addresses(None, None) == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert server_addresses("127.0.0.1:3", "127.0.0.1:4") == ["http://127.0.0.1:3"]


def test_the_clis_final_states_are_the_records_final_states() -> None:
    """jobs_cmd spells RunState's final states out (importing the records would slow every CLI
    start): the copy must not drift."""
    from runink.core.cli.jobs_cmd import FINAL
    from runink.core.control.records import RunState

    assert {state.value for state in RunState if state.final} == FINAL


def test_the_clis_cluster_herd_is_the_securitys() -> None:
    """auth_cmd spells security.CLUSTER out (importing security would slow the CLI's start)."""
    from runink.core.cli.auth_cmd import CLUSTER
    from runink.core.security import CLUSTER as SECURITY_CLUSTER

    assert CLUSTER == SECURITY_CLUSTER


def test_calls_go_first_to_the_server_the_answers_name_as_scheduling_never_to_one_not_given() -> None:
    """An answer names the server that schedules now (X-Runink-Scheduler): when it is one of
    the servers given, the next calls go there; a name not given is never asked."""
    from runink.core.cli.cluster_client import SCHEDULER_HEADER as CLIENT_HEADER
    from runink.core.server.api import SCHEDULER_HEADER

    assert CLIENT_HEADER == SCHEDULER_HEADER  # (spelt out in the CLI: the server's module is not imported)
    named: list[str] = ["http://127.0.0.1:9/"]  # (port 9: nothing listens there)

    def answer(request: bytes) -> bytes:
        return ok(b"{}", f"{SCHEDULER_HEADER}: {named[0]}\r\n".encode())

    first, second = HttpStub(answer), HttpStub(answer)
    client = ClusterClient([first.address, second.address], timeout=(2, 2))
    try:
        client.call("POST", "/v1/jobs", {"herd": "h"})
        client.call("POST", "/v1/jobs", {"herd": "h"})  # a server not given: still the first
        assert [len(first.requests), len(second.requests)] == [2, 0]
        named[0] = second.address + "/"
        client.call("POST", "/v1/jobs", {"herd": "h"})  # (this answer names the second)
        client.call("POST", "/v1/jobs", {"herd": "h"})
        client.call("GET", "/v1/jobs/j")
        assert [len(first.requests), len(second.requests)] == [3, 2]
    finally:
        client.close()
        first.close()
        second.close()


def test_the_next_command_asks_the_server_that_scheduled_last_first_and_only_among_those_given() -> None:
    """The server an answer named is kept (the user's cache) for the next client of the same
    servers, whose first call then goes there; a kept name that is not one of the servers
    given (another cluster's, or the file edited) changes nothing."""
    from runink.core.cli import index_store
    from runink.core.cli.cluster_client import HINTS, SCHEDULER_HEADER

    first, second = HttpStub(lambda _: b""), HttpStub(lambda _: b"")
    first.reply = second.reply = lambda _: ok(b"{}", f"{SCHEDULER_HEADER}: {second.address}\r\n".encode())
    try:
        client = ClusterClient([first.address, second.address], timeout=(2, 2))
        client.call("GET", "/v1/jobs")  # (the first server's answer names the second)
        client.close()
        after = ClusterClient([second.address, first.address], timeout=(2, 2))  # (any order: one cluster)
        after.call("GET", "/v1/jobs")
        after.close()
        again = ClusterClient([first.address, second.address], timeout=(2, 2))
        again.call("GET", "/v1/jobs")
        again.close()
        assert [len(first.requests), len(second.requests)] == [1, 2]
        key = ",".join(sorted([first.address, second.address]))
        index_store.save(HINTS, key, "http://127.0.0.1:9", set())  # (not one of them)
        first.reply = lambda _: ok(b"{}")
        stray = ClusterClient([first.address, second.address], timeout=(2, 2))
        stray.call("GET", "/v1/jobs")
        stray.close()
        assert [len(first.requests), len(second.requests)] == [2, 2]
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("job", ["a b", "j\r\nX-Injected: 1", "j\x00"])
def test_a_job_id_that_would_split_the_request_is_refused_before_anything_is_sent(job: str) -> None:
    server = HttpStub(lambda request: ok(b'{"ok": true}'))
    client = ClusterClient([server.address], timeout=(2, 2))
    try:
        with pytest.raises(ClusterError, match=r"(?s)^GET /v1/jobs/.*: not a request path"):
            client.call("GET", f"/v1/jobs/{job}")
        assert client.call("GET", "/v1/jobs/j") == {"ok": True}  # (the connection is still good)
    finally:
        client.close()
        server.close()
    assert [request.split(b"\r\n")[0] for request in server.requests] == [b"GET /v1/jobs/j HTTP/1.1"]


def test_a_read_the_server_was_too_busy_for_is_asked_again_after_its_retry_after() -> None:
    """A caller's second job list is a 429 at once (one heavy read per caller, core/server/api.py)
    and a Barn electing answers 503: the CLI failed on them; a write is never sent again."""
    answers = iter([429, 503, 200, 429, 429, 429, 429, 503])

    def reply(request: bytes) -> bytes:
        status = next(answers)
        if status == 200:
            return ok(b'{"jobs": []}')
        body = b'{"detail": "busy"}'
        head = b"HTTP/1.1 %d Busy\r\nRetry-After: 0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        return head % (status, len(body)) + body

    server = HttpStub(reply)
    client = ClusterClient([server.address], timeout=(2, 2))
    try:
        began = time.monotonic()
        assert client.call("GET", "/v1/jobs") == {"jobs": []}  # after a 429 and a 503
        assert 0.2 <= time.monotonic() - began < 2
        with pytest.raises(ClusterError, match="429"):  # (three times again, then it says so)
            client.call("GET", "/v1/jobs")
        with pytest.raises(ClusterError, match="503"):
            client.call("POST", "/v1/jobs", {"herd": "h"})  # (a write: never again)
    finally:
        client.close()
        server.close()
    assert len(server.requests) == 8
