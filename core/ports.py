"""Free loopback ports for servers started on this machine (`runink up`, the test and bench
harnesses, the slurm package's local Slurm).

The ports come from below the kernel's ephemeral range (``net.ipv4.ip_local_port_range``):
between the moment a port is found free and the moment its server binds it, an outgoing
connection of any process (a client's, a Raft peer's) could be given a port of that range and
take it (``runink up`` failed so: an agent's EADDRINUSE). Below it, only a program that binds
that very port can.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000  # below: ports of well-known services
ATTEMPTS = 64  # ports tried per port asked for, before giving up on the range below


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections and ``bind(0)`` (Linux's default if unreadable)."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that were free a moment ago (all held at once, so
    none is given twice), below the ephemeral range where it leaves room; else the kernel's."""
    low, _ = ephemeral_range()
    chooser = random.SystemRandom()  # (unseeded: two harnesses started at once choose apart)
    sockets: list[socket.socket] = []
    try:
        if low - LOWEST >= 16 * count:
            tried: set[int] = set()
            while len(sockets) < count and len(tried) < ATTEMPTS * count:
                port = chooser.randrange(LOWEST, low)
                if port in tried:
                    continue
                tried.add(port)
                candidate = socket.socket()
                try:
                    candidate.bind(("127.0.0.1", port))
                except OSError:  # in use
                    candidate.close()
                    continue
                sockets.append(candidate)
        while len(sockets) < count:  # (no room below the range: the kernel's choice)
            candidate = socket.socket()
            candidate.bind(("127.0.0.1", 0))
            sockets.append(candidate)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
