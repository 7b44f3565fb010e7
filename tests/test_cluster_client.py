"""The CLI's cluster client: which server it asks, and that a write is never sent twice."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from runink.core.cli.cluster_client import ClusterClient, ClusterError, server_addresses


class Silent:
    """A server on loopback that reads a request and never answers; counts the requests."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            self.requests += 1
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[list[Silent]]:
    servers = [Silent(), Silent()]
    yield servers
    for server in servers:
        server.close()


def test_a_write_without_an_answer_is_not_sent_to_another_server(silent: list[Silent]) -> None:
    client = ClusterClient([s.address for s in silent], timeout=(0.5, 0.5))
    try:
        with pytest.raises(ClusterError, match="may have been done"):
            client.call("POST", "/v1/jobs", {"herd": "default", "command": ["/bin/true"]})
    finally:
        client.close()
    assert [s.requests for s in silent] == [1, 0]  # not a second job on the other server


def test_a_read_without_an_answer_tries_the_next_server(silent: list[Silent]) -> None:
    client = ClusterClient([s.address for s in silent], timeout=(0.5, 0.5))
    try:
        with pytest.raises(ClusterError, match="no server answered"):
            client.call("GET", "/v1/jobs")
    finally:
        client.close()
    assert [s.requests for s in silent] == [1, 1]


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
