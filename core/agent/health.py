"""An agent's health over HTTP (``runink agent --health HOST:PORT``): ``/healthz`` answers 200
while the process runs; ``/readyz`` answers 200 once the node is registered and its last
heartbeat was accepted within ``stale`` seconds, else 503 saying why. Plain HTTP, nothing but
those two answers: meant for loopback, a supervisor or a load balancer's probe.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from runink.core.small_http import Bounded

#: (ready, why): what /readyz answers
Readiness = Callable[[], tuple[bool, str]]


def serve_health(host: str, port: int, ready: Readiness) -> ThreadingHTTPServer:
    """Serve /healthz and /readyz on ``host:port`` (0: any free port) from a daemon thread;
    ``shutdown()`` the server returned to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._answer(200, {"status": "alive"})
            elif self.path == "/readyz":
                ok, why = ready()
                self._answer(200 if ok else 503, {"status": "ready" if ok else "not ready", "detail": why})
            else:
                self._answer(404, {"detail": "only /healthz and /readyz here"})

        def _answer(self, status: int, body: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # (probes every few seconds: not worth a line each)

    class Server(Bounded, ThreadingHTTPServer):
        pass

    server = Server((host, port), Handler)
    server.daemon_threads = True
    # (polled every 50 ms for a shutdown: the default half second would delay the agent's exit)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="health").start()
    return server


def agent_readiness(agent: object, stale: float) -> Readiness:
    """Ready: registered (an incarnation) and a heartbeat accepted in the last ``stale`` s."""

    def ready() -> tuple[bool, str]:
        if not getattr(agent, "incarnation", ""):
            return False, "not registered yet"
        last = getattr(agent, "last_beat_ok", None)
        if last is None:
            return False, "registered; no heartbeat accepted yet"
        age = time.monotonic() - last
        if age > stale:
            return False, f"no heartbeat accepted for {age:.0f}s (the servers away?)"
        return True, f"registered; heartbeat {age:.1f}s ago"

    return ready
