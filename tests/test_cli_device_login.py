"""`runink login --issuer URL` against a local OIDC provider speaking RFC 8628 over HTTP on
127.0.0.1 (discovery, device authorization, token endpoint; real signed ID tokens): the CLI
shows the code, polls until the user approved it (slowing down when told), stores the ID token,
which the OIDC plugin then accepts; a refused or expired code is one line and stores nothing."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fixture_types import CliRunner
from jwt.algorithms import ECAlgorithm

from runink.core.cli.device_login import DeviceLoginError, device_login
from runink.core.config import RuninkConfig
from runink.core.model import AuthRequest
from runink.plugins.auth.oidc import OidcAuthenticator

KEY = ec.generate_private_key(ec.SECP256R1())
CLIENT = "runink-cli"


@dataclass
class Provider:
    """An OIDC provider with the device grant: the code is approved (or denied) after
    ``pending`` polls; ``slow_downs`` polls first answer slow_down."""

    server: ThreadingHTTPServer
    pending: int = 2
    slow_downs: int = 0
    outcome: str = "approve"  # or "deny", "expire"
    polls: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        if path == "/.well-known/openid-configuration":
            return 200, {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/jwks",
                "device_authorization_endpoint": f"{self.url}/device",
                "token_endpoint": f"{self.url}/token",
            }
        if path == "/jwks":
            return 200, {"keys": [{**ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1", "use": "sig"}]}
        return 404, {}

    def post(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if path == "/device":
            assert form["client_id"] == CLIENT and "openid" in form["scope"].split()
            return 200, {
                "device_code": "dev-123",
                "user_code": "WDJB-MJHT",
                "verification_uri": f"{self.url}/activate",
                "expires_in": 30,
                "interval": 0.1,
            }
        if path == "/token":
            with self.lock:
                self.polls.append(form)
                polls = len(self.polls)
            assert form == {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": "dev-123",
                            "client_id": CLIENT}  # fmt: skip
            if polls <= self.slow_downs:
                return 400, {"error": "slow_down"}
            if polls <= self.slow_downs + self.pending:
                return 400, {"error": "authorization_pending"}
            if self.outcome != "approve":
                return 400, {"error": "access_denied" if self.outcome == "deny" else "expired_token"}
            now = int(time.time())
            claims = {"iss": self.url, "aud": CLIENT, "sub": "alice", "iat": now, "exp": now + 300,
                      "email": "alice@example.org", "groups": ["data-eng"]}  # fmt: skip
            token = jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": "k1"})
            return 200, {"id_token": token, "access_token": "opaque", "token_type": "Bearer", "expires_in": 300}
        return 404, {}


@pytest.fixture
def provider() -> Iterator[Provider]:
    holder: list[Provider] = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self.answer(*holder[0].get(self.path))

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            self.answer(*holder[0].post(self.path, form))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(Provider(server))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_the_cli_logs_in_with_a_device_code_and_the_oidc_plugin_accepts_the_token(
    provider: Provider, run_cli: CliRunner, tmp_path: Path
) -> None:
    out = run_cli("login", "--issuer", provider.url, "--client-id", CLIENT)
    assert out.returncode == 0, out.stderr
    assert f"open {provider.url}/activate and enter the code WDJB-MJHT" in out.stderr
    assert len(provider.polls) == 3  # pending twice, then the token
    stored = (tmp_path / "xdg" / "runink" / "token").read_text().strip()
    plugin = OidcAuthenticator()
    plugin.runink_configure(RuninkConfig(plugin={"oidc": {"issuer": provider.url, "audience": CLIENT}}))
    identity = plugin.runink_authenticate(AuthRequest(headers={"Authorization": f"Bearer {stored}"}))
    assert identity is not None and identity.subject == "alice" and "data-eng" in identity.groups


@pytest.mark.parametrize(("outcome", "says"), [("deny", "refused at the provider"), ("expire", "code expired")])
def test_a_refused_or_expired_code_is_one_line_and_stores_nothing(
    provider: Provider, run_cli: CliRunner, tmp_path: Path, outcome: str, says: str
) -> None:
    provider.outcome = outcome
    out = run_cli("login", "--issuer", provider.url, "--client-id", CLIENT)
    assert out.returncode != 0 and says in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "xdg" / "runink" / "token").exists()


def test_slow_down_widens_the_interval_and_plain_http_is_for_loopback_only(provider: Provider) -> None:
    provider.slow_downs, provider.pending = 2, 0
    waits: list[float] = []
    token = device_login(provider.url, CLIENT, show=lambda line: None, sleep=waits.append)
    assert token.count(".") == 2
    assert waits == [0.1, 5.1, 10.1]  # each slow_down adds 5 s (RFC 8628 3.5)
    with pytest.raises(DeviceLoginError, match="an https:// URL"):
        device_login("http://idp.example.com", CLIENT, show=lambda line: None)


def test_the_device_code_goes_only_to_https_endpoints_and_what_the_provider_shows_is_printable(
    provider: Provider,
) -> None:
    """The discovery document's endpoints were not checked: the device code (enough to take the
    user's token) and the token went in plaintext to whatever host it named."""
    original = provider.get

    def elsewhere(path: str) -> tuple[int, dict[str, Any]]:
        status, body = original(path)
        if path == "/.well-known/openid-configuration":
            body = {**body, "token_endpoint": "http://tokens.idp.example.com/token"}
        return status, body

    provider.get = elsewhere  # type: ignore[method-assign]
    with pytest.raises(
        DeviceLoginError, match=r"its token_endpoint http://tokens\.idp\.example\.com/token: an https://"
    ):
        device_login(provider.url, CLIENT, show=lambda line: None)
    provider.get = original  # type: ignore[method-assign]
    original_post = provider.post

    def escapes(path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        status, body = original_post(path, form)
        return status, ({**body, "user_code": "AB\x1b]0;pwned\x07CD"} if path == "/device" else body)

    provider.post = escapes  # type: ignore[method-assign]
    shown: list[str] = []
    device_login(provider.url, CLIENT, show=shown.append, sleep=lambda s: None)
    assert shown and "\x1b" not in shown[0] and "\x07" not in shown[0]
