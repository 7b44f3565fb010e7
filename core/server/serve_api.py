"""The REST API served by uvicorn in a background thread, on an address bound before it starts.

Until authentication lands the API listens on loopback only: another address is refused
unless ``insecure_bind`` is given, so a server is never reachable from the network by accident.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from runink.core.server.tls import TlsFiles

START_TIMEOUT = 10.0  # seconds for uvicorn to start accepting connections


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only "localhost" is known to stay on this machine
        return False


def require_loopback(host: str, what: str, override: str) -> None:
    """ValueError unless ``host`` is a loopback address: until authentication exists (issue 20)
    nothing of a server may be reachable from the network by accident. ``what`` names the
    address, ``override`` what lets it listen there anyway."""
    if not is_loopback(host):
        raise ValueError(
            f"{what} {host!r}: not a loopback address; until authentication exists (issue 20) a server "
            f"listens on loopback only: give {override} to listen there anyway"
        )


def serve_api(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    insecure_bind: bool = False,
    log_level: str = "warning",
    tls: TlsFiles | None = None,
) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve ``app`` on ``host:port`` (0: a free port; ``server.config.port`` says which) and
    return once it accepts connections; HTTPS with ``tls`` (clients authenticate with tokens,
    no client certificate is asked). Stop it with ``stop_api``. Raises ValueError for a
    non-loopback host served in plaintext without ``insecure_bind``, OSError when the address
    cannot be bound, RuntimeError when uvicorn does not start."""
    if not insecure_bind and tls is None:
        require_loopback(host, "API address (plaintext)", "insecure_bind")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host=host,
        port=bound_port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        ssl_certfile=None if tls is None else str(tls.cert),
        ssl_keyfile=None if tls is None else str(tls.key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"api-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(1.0)
            sock.close()
            raise RuntimeError(f"API on {host}:{bound_port}: uvicorn did not start (see its log)")
        time.sleep(0.005)
    return server, thread


def stop_api(server: uvicorn.Server, thread: threading.Thread, timeout: float = 5.0) -> None:
    """Stop accepting, let requests in flight end (up to ``timeout``), and wait for the thread."""
    server.should_exit = True
    thread.join(timeout)
    if thread.is_alive():
        server.force_exit = True
        thread.join(timeout)
