"""The OPA authorization plugin against a local HTTP server speaking OPA's Data API."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from runink.core import hookimpl
from runink.core.config import RuninkConfig
from runink.core.errors import ConfigError
from runink.core.model import AuthzDecision, Grant, Identity
from runink.core.security import authorize
from runink.plugins.auth.opa import OpaAuthorizer, parse_options
from runink.testing import plugin_manager

POLICY = "runink/authz/allow"
ALICE = Identity("alice", ("analysts",), {"email": "alice@example.com"}, "oidc")
GRANTS = [Grant("runner", "finance", "binding"), Grant("cluster-viewer", "*", "token")]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


# How the fake OPA answers one request: it writes the whole HTTP answer itself.
Responder = Callable[[BaseHTTPRequestHandler, Recorded], None]


def reply(status: int, body: bytes | dict[str, Any]) -> Responder:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    def respond(handler: BaseHTTPRequestHandler, _: Recorded) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    return respond


@dataclass
class FakeOpa:
    """Records every request; answers with ``responder`` (OPA's answer to an undefined rule by default)."""

    server: ThreadingHTTPServer
    requests: list[Recorded] = field(default_factory=list)
    responder: Responder = field(default_factory=lambda: reply(200, {}))
    client_gone: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def opa() -> Iterator[FakeOpa]:
    fake: FakeOpa

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            recorded = Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw))
            fake.requests.append(recorded)
            try:
                fake.responder(self, recorded)
            except (BrokenPipeError, ConnectionResetError):
                fake.client_gone.set()  # the client gave up first: what the timeout tests want

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake = FakeOpa(server)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(5)


def opa_config(**options: Any) -> RuninkConfig:
    return RuninkConfig(plugin={"opa": options})


def ask(
    options: dict[str, Any], *others: tuple[str, Any], action: str = "jobs.submit", herd: str = "finance"
) -> AuthzDecision:
    with plugin_manager(("opa", OpaAuthorizer()), *others, config=opa_config(**options), entrypoints=False) as manager:
        return authorize(manager, ALICE, action, "pipeline/orders", herd, grants=GRANTS)


class AllowAll:
    @hookimpl
    def runink_authorize(self, identity: Identity, action: str, resource: str, herd: str) -> AuthzDecision | None:
        return AuthzDecision(True, "everyone may")


def test_sends_the_data_api_request(opa: FakeOpa) -> None:
    opa.responder = reply(200, {"result": True})
    ask({"url": opa.url, "path": POLICY})
    [request] = opa.requests
    assert request.method == "POST"
    assert request.path == "/v1/data/runink/authz/allow"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "input": {
            "identity": {
                "subject": "alice",
                "groups": ["analysts"],
                "claims": {"email": "alice@example.com"},
                "authenticated_by": "oidc",
            },
            "action": "jobs.submit",
            "resource": "pipeline/orders",
            "herd": "finance",
            "grants": [
                {"role": "runner", "herd": "finance", "source": "binding"},
                {"role": "cluster-viewer", "herd": "*", "source": "token"},
            ],
        }
    }


def test_url_with_a_path_prefix_and_default_policy_path(opa: FakeOpa) -> None:
    opa.responder = reply(200, {"result": True})
    assert ask({"url": opa.url + "/opa/"}).allowed
    assert [request.path for request in opa.requests] == ["/opa/v1/data/runink/authz/allow"]


def test_true_allows(opa: FakeOpa) -> None:
    opa.responder = reply(200, {"result": True})
    decision = ask({"url": opa.url, "path": POLICY})
    assert decision == AuthzDecision(True, "OPA policy runink/authz/allow allows", "opa")


def test_false_denies(opa: FakeOpa) -> None:
    opa.responder = reply(200, {"result": False})
    decision = ask({"url": opa.url, "path": POLICY}, ("all", AllowAll()))
    assert decision == AuthzDecision(False, "OPA policy runink/authz/allow denies", "opa")


def test_undefined_decision_denies(opa: FakeOpa) -> None:
    opa.responder = reply(200, {"decision_id": "d1"})  # OPA leaves out result when no rule matched
    decision = ask({"url": opa.url, "path": POLICY})
    assert not decision.allowed and "undefined decision" in decision.reason


def test_the_policy_decides_per_input(opa: FakeOpa) -> None:
    def finance_runners_only(handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        given = request.body["input"]
        allowed = any(g["role"] == "runner" and g["herd"] == given["herd"] for g in given["grants"])
        reply(200, {"result": allowed})(handler, request)

    opa.responder = finance_runners_only
    assert ask({"url": opa.url}, herd="finance").allowed
    assert not ask({"url": opa.url}, herd="risk").allowed


def test_object_answer_with_reason(opa: FakeOpa) -> None:
    opa.responder = reply(200, {"result": {"allow": False, "reason": "freeze\nuntil\x1b[31m Monday " + "x" * 500}})
    decision = ask({"url": opa.url, "path": POLICY})
    assert not decision.allowed
    assert decision.reason.startswith("OPA policy runink/authz/allow denies: freeze until [31m Monday xxx")
    assert decision.reason.isprintable() and len(decision.reason) < 300 and decision.reason.endswith("...")
    opa.responder = reply(200, {"result": {"allow": True, "reason": "on call"}})
    assert ask({"url": opa.url, "path": POLICY}) == AuthzDecision(
        True, "OPA policy runink/authz/allow allows: on call", "opa"
    )


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"result": "yes"}, "answered a str"),
        ({"result": 1}, "answered a int"),
        ({"result": ["allow"]}, "answered a list"),
        ({"result": {"allow": "true"}}, "answered an object without a boolean allow"),
        ([True], "the answer is a JSON list"),
    ],
)
def test_malformed_answer_denies_naming_it(opa: FakeOpa, answer: Any, named: str) -> None:
    opa.responder = reply(200, answer)
    decision = ask({"url": opa.url, "path": POLICY}, ("all", AllowAll()))
    assert not decision.allowed and decision.plugin == "opa" and named in decision.reason


def test_http_error_fails_closed(opa: FakeOpa) -> None:
    opa.responder = reply(500, {"code": "internal_error", "message": "boom"})
    decision = ask({"url": opa.url, "path": POLICY}, ("all", AllowAll()))
    assert decision == AuthzDecision(False, "OPA unreachable: HTTP 500 from the OPA server", "opa")
    assert len(opa.requests) == 1  # no retries: one bounded try


def test_non_json_and_oversized_answers_fail_closed(opa: FakeOpa) -> None:
    opa.responder = reply(200, b"<html>proxy error</html>")
    assert ask({"url": opa.url}) == AuthzDecision(False, "OPA unreachable: the answer is not JSON", "opa")
    opa.responder = reply(200, b'{"result": true, "pad": "' + b"x" * (1024 * 1024) + b'"}')
    assert ask({"url": opa.url}) == AuthzDecision(False, "OPA unreachable: answer over 1048576 bytes", "opa")


def test_slow_server_times_out(opa: FakeOpa) -> None:
    def slow(handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        time.sleep(2)
        reply(200, {"result": True})(handler, request)

    opa.responder = slow
    started = time.monotonic()
    decision = ask({"url": opa.url, "timeout": 0.3}, ("all", AllowAll()))
    assert time.monotonic() - started < 1.5
    assert not decision.allowed and decision.reason.startswith("OPA unreachable:") and decision.plugin == "opa"


def test_trickling_server_times_out(opa: FakeOpa) -> None:
    # A byte every 0.1 s never trips a per-read timeout of 0.3 s; the call must end anyway.
    def trickle(handler: BaseHTTPRequestHandler, _: Recorded) -> None:
        body = b'{"result": true}' + b" " * 40
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for byte in body:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.1)

    opa.responder = trickle
    started = time.monotonic()
    decision = ask({"url": opa.url, "timeout": 0.3})
    assert time.monotonic() - started < 1.5
    assert not decision.allowed and decision.reason.startswith("OPA unreachable:")
    # The request in the background is dropped too, not read to its end.
    assert opa.client_gone.wait(1.5 - (time.monotonic() - started))


def test_trickling_headers_time_out(opa: FakeOpa) -> None:
    # Headers a byte at a time: the body is never reached, the whole call is still bounded.
    def trickle_headers(handler: BaseHTTPRequestHandler, _: Recorded) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"x" * 60:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.1)

    opa.responder = trickle_headers
    started = time.monotonic()
    decision = ask({"url": opa.url, "timeout": 0.3})
    assert time.monotonic() - started < 1.5
    assert not decision.allowed and decision.reason == "OPA unreachable: no answer within 0.3 s"


def test_closed_port_fails_closed_fast() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends, nothing listens
    started = time.monotonic()
    decision = ask({"url": f"http://127.0.0.1:{port}", "timeout": 5}, ("all", AllowAll()))
    assert time.monotonic() - started < 1.0
    assert not decision.allowed and decision.reason.startswith("OPA unreachable: ConnectError")


def test_opa_deny_wins_over_another_allow(opa: FakeOpa) -> None:
    opa.responder = reply(200, {"result": False})
    decision = ask({"url": opa.url}, ("all", AllowAll()))
    assert not decision.allowed and decision.plugin == "opa"
    opa.responder = reply(200, {"result": True})
    assert ask({"url": opa.url}, ("all", AllowAll())).allowed


def test_not_configured_abstains() -> None:
    assert OpaAuthorizer().runink_authorize(ALICE, "jobs.submit", "pipeline/orders", "finance", GRANTS) is None
    with plugin_manager(("opa", OpaAuthorizer()), ("all", AllowAll()), entrypoints=False) as manager:
        decision = authorize(manager, ALICE, "jobs.submit", "pipeline/orders", "finance", grants=GRANTS)
    assert decision == AuthzDecision(True, "everyone may", "all")
    with plugin_manager(("opa", OpaAuthorizer()), entrypoints=False) as manager:
        assert not authorize(manager, ALICE, "jobs.submit", "pipeline/orders", "finance").allowed  # no votes


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"path": POLICY}, r"\[plugin.opa\] url \(default\): required"),
        ({"url": "ftp://opa:8181"}, r"\[plugin.opa\] url .*not an http:// or https:// URL"),
        ({"url": "http://"}, r"\[plugin.opa\] url .*with a host"),
        ({"url": "http://user:secret@opa:8181"}, r"\[plugin.opa\] url .*must not hold credentials"),
        ({"url": 8181}, r"\[plugin.opa\] url .*must be a string"),
        ({"url": "http://opa:8181", "path": "runink.authz.allow"}, r"\[plugin.opa\] path .*'runink.authz.allow'"),
        ({"url": "http://opa:8181", "path": "/runink/allow"}, r"\[plugin.opa\] path "),
        ({"url": "http://opa:8181", "path": "a//b"}, r"\[plugin.opa\] path "),
        ({"url": "http://opa:8181", "timeout": 0.05}, r"\[plugin.opa\] timeout .*outside 0.1..30"),
        ({"url": "http://opa:8181", "timeout": 31}, r"\[plugin.opa\] timeout .*outside 0.1..30"),
        ({"url": "http://opa:8181", "timeout": "soon"}, r"\[plugin.opa\] timeout .*number of seconds"),
        ({"url": "http://opa:8181", "tiemout": 2}, r"\[plugin.opa\] tiemout .*unknown option"),
    ],
)
def test_config_errors_name_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_options(opa_config(**options))
    with plugin_manager(("opa", OpaAuthorizer()), entrypoints=False, config=opa_config(**options)) as manager:
        [record] = [record for record in manager.records() if record.name == "opa"]
    assert record.status == "failed" and "[plugin.opa]" in (record.error or "")


def test_secrets_stay_out_of_the_reason(opa: FakeOpa) -> None:
    opa.responder = reply(500, {"message": "input was " + json.dumps({"claims": {"email": "alice@example.com"}})})
    decision = ask({"url": opa.url})
    assert "alice" not in decision.reason and "claims" not in decision.reason
