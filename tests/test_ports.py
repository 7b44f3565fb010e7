"""core/ports.free_ports: ports for local servers, out of the way of outgoing connections."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from runink.core import ports


def test_ports_are_distinct_bindable_and_below_the_range_outgoing_connections_use() -> None:
    low, _ = ports.ephemeral_range()
    given = ports.free_ports(40)
    assert len(set(given)) == 40
    assert all(ports.LOWEST <= port < low for port in given), given  # (bind(0)'s would be >= low)
    servers = [socket.create_server(("127.0.0.1", port)) for port in given]
    try:
        # outgoing connections to them get their local ports from the ephemeral range: never one given
        clients = [socket.create_connection(("127.0.0.1", port)) for port in given]
        assert all(c.getsockname()[1] >= low for c in clients)
        for client in clients:
            client.close()
    finally:
        for server in servers:
            server.close()


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    free = ports.free_ports(1)[0]
    busy = taken.getsockname()[1]
    script = iter([busy, busy, free])

    class Scripted:
        def randrange(self, start: int, stop: int) -> int:
            return next(script)

    monkeypatch.setattr(ports.random, "SystemRandom", Scripted)
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (65000, 65535))  # (busy may be above the real range)
    try:
        assert ports.free_ports(1) == [free]
    finally:
        taken.close()


def test_without_room_below_the_range_the_kernel_chooses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text(f"{ports.LOWEST + 10}\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE", narrow)
    given = ports.free_ports(5)
    assert len(set(given)) == 5 and all(0 < port < 65536 for port in given)
    for port in given:
        socket.create_server(("127.0.0.1", port)).close()
