"""A server's descriptors: its soft limit raised, and the client connections it may hold.

The Barn's HTTP server and the API server size their connection caps from the same limit.
"""

from __future__ import annotations

import contextlib
import resource

MAX_CONNECTIONS = 10_000  # client connections, at most (see max_connections)
FD_RESERVE = 256  # descriptors kept for everything but client connections


def max_connections() -> int:
    """Client connections a server accepts: below the descriptor limit, keeping FD_RESERVE for
    its files, peers and pools."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft - FD_RESERVE))


def raise_fd_limit() -> None:
    """Raise this process's soft descriptor limit to its hard limit (at most 65,536): the
    soft default (often 1,024) caps a server's clients well below what the host allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
