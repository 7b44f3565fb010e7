"""The OIDC plugin against a real local issuer: discovery and JWKS over HTTP on 127.0.0.1,
keys from ``cryptography``, tokens signed with PyJWT."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from runink.core.config import RuninkConfig
from runink.core.errors import AuthenticationError
from runink.core.model import AuthRequest, Identity
from runink.core.plugins import PluginManager
from runink.core.security import authenticate
from runink.plugins.auth.oidc import OidcAuthenticator
from runink.testing import plugin_manager

AUDIENCE = "runink-cli"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    exported = (
        RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        if isinstance(key, rsa.RSAPrivateKey)
        else ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    )
    return {**exported, "kid": kid, "use": "sig"}


@dataclass
class Issuer:
    """An OIDC issuer on 127.0.0.1: serves its discovery document and JWKS, counts JWKS requests."""

    server: ThreadingHTTPServer
    keys: list[dict[str, Any]] = field(default_factory=list)
    jwks_requests: int = 0
    discovery_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    jwks_hold: threading.Event | None = None  # set: the JWKS answer waits for it (a hung provider)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def document(self, path: str) -> dict[str, Any] | None:
        if path == "/.well-known/openid-configuration":
            with self.lock:
                self.discovery_requests += 1
            return {"issuer": self.url, "jwks_uri": f"{self.url}/jwks.json"}
        if path == "/jwks.json":
            with self.lock:
                self.jwks_requests += 1
            if self.jwks_hold is not None:
                self.jwks_hold.wait(10)
            with self.lock:
                return {"keys": list(self.keys)}
        return None


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    holder: list[Issuer] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            document = holder[0].document(self.path)
            body = json.dumps(document).encode()
            self.send_response(200 if document is not None else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(Issuer(server, [public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-1")]))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()
    thread.join(5)


class Clock:
    """A monotonic clock the test moves, to pace JWKS refreshes without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(**options: Any) -> RuninkConfig:
    return RuninkConfig(plugin={"oidc": options})


def configured(issuer: Issuer, clock: Clock | None = None, **options: Any) -> OidcAuthenticator:
    plugin = OidcAuthenticator(clock or Clock())
    plugin.runink_configure(config(issuer=issuer.url, audience=AUDIENCE, **options))
    return plugin


def registered(issuer: Issuer) -> AbstractContextManager[PluginManager]:
    """A plugin manager holding only the oidc plugin, configured (by the manager) for ``issuer``."""
    return plugin_manager(
        ("oidc", OidcAuthenticator()), config=config(issuer=issuer.url, audience=AUDIENCE), entrypoints=False
    )


def claims(issuer: Issuer, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": issuer.url,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "email": "alice@example.org",
        "groups": ["analysts", "finance"],
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def sign(payload: dict[str, Any], key: Any = RSA_KEY, algorithm: str = "RS256", kid: str = "rsa-1") -> str:
    return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid})


def bearer(token: str) -> AuthRequest:
    return AuthRequest(headers={"Authorization": f"Bearer {token}"}, peer="10.0.0.9")


def check(plugin: OidcAuthenticator, token: str) -> Identity | None:
    return plugin.runink_authenticate(bearer(token))


def test_valid_rs256_and_es256_tokens_become_identities(issuer: Issuer) -> None:
    with registered(issuer) as manager:
        signed = claims(issuer, name="Alice A.")
        identity = authenticate(manager, bearer(sign(signed)))
        # (its exp too: a token it mints expires no later than it, a review's finding)
        assert identity == Identity(
            subject="alice",
            groups=("analysts", "finance"),
            claims={"email": "alice@example.org", "iss": issuer.url, "name": "Alice A.", "exp": signed["exp"]},
            authenticated_by="oidc",
        )
        token = sign(claims(issuer, sub="bob", groups=["ops"]), EC_KEY, "ES256", "ec-1")
        identity = authenticate(manager, bearer(token))
        assert (identity.subject, identity.groups, identity.claims["email"]) == ("bob", ("ops",), "alice@example.org")
    # discovery once and the JWKS once: both keys were in the first answer
    assert issuer.jwks_requests == 1


def test_without_an_issuer_or_a_bearer_token_the_plugin_accepts_nothing(issuer: Issuer) -> None:
    unconfigured = OidcAuthenticator()
    unconfigured.runink_configure(RuninkConfig())
    assert check(unconfigured, sign(claims(issuer))) is None
    plugin = configured(issuer)
    for headers in ({}, {"authorization": "Basic YWxpY2U6cHc="}, {"authorization": "Bearer"}):
        assert plugin.runink_authenticate(AuthRequest(headers=headers)) is None
    assert check(plugin, "not-a-jwt") is None  # perhaps another plugin's opaque token
    lower = AuthRequest(headers={"authorization": f"bearer {sign(claims(issuer))}"})
    assert plugin.runink_authenticate(lower) is not None
    assert issuer.jwks_requests == 1


def rejected(plugin: OidcAuthenticator, token: str, reason: str) -> str:
    with pytest.raises(AuthenticationError, match=reason) as raised:
        check(plugin, token)
    message = str(raised.value)
    assert "\n" not in message and token not in message and token.split(".")[1] not in message
    return message


def test_tampered_expired_early_and_wrong_audience_tokens_get_401(issuer: Issuer) -> None:
    plugin = configured(issuer)
    header, _, signature = sign(claims(issuer)).split(".")
    forged = jwt.utils.base64url_encode(json.dumps(claims(issuer, sub="root")).encode()).decode()
    rejected(plugin, f"{header}.{forged}.{signature}", "signature does not verify")
    now = int(time.time())
    rejected(plugin, sign(claims(issuer, iat=now - 600, exp=now - 60)), "expired")
    rejected(plugin, sign(claims(issuer, nbf=now + 120)), "not valid yet")
    rejected(plugin, sign(claims(issuer, iat=now + 120)), "not valid yet")
    rejected(plugin, sign(claims(issuer, aud="someone-else")), "not for this audience")
    rejected(plugin, sign(claims(issuer, aud=None)), "lacks the aud claim")
    rejected(plugin, sign(claims(issuer, exp=None)), "lacks the exp claim")
    rejected(plugin, sign(claims(issuer, sub=None)), "lacks the sub claim")
    rejected(plugin, sign(claims(issuer, groups="admins")), "groups claim must be a list")
    rejected(plugin, sign(claims(issuer, groups=[f"g{i}" for i in range(257)])), "at most 256 strings")
    # within the leeway (30 s): still accepted
    assert check(plugin, sign(claims(issuer, iat=now - 600, exp=now - 10, nbf=now + 10))) is not None


def test_a_token_of_another_issuer_is_not_ours(issuer: Issuer) -> None:
    token = sign(claims(issuer, iss="https://login.elsewhere.example"))
    with registered(issuer) as manager:
        assert check(manager.pm.get_plugin("oidc"), token) is None
        assert authenticate(manager, bearer(sign(claims(issuer)))).subject == "alice"
        with pytest.raises(AuthenticationError, match="no authentication plugin accepted"):
            authenticate(manager, bearer(token))
    assert issuer.jwks_requests == 1  # for our own token only


def test_alg_none_and_hs256_with_the_public_key_as_secret_get_401(issuer: Issuer) -> None:
    plugin = configured(issuer)
    unsigned = jwt.encode(claims(issuer), "", algorithm="none", headers={"kid": "rsa-1"})
    rejected(plugin, unsigned, "algorithm is not among")
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # PyJWT refuses to HMAC with a PEM key, so the confused token is signed by hand with hmac.
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(claims(issuer)).encode())
    mac = hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest()
    confused = b".".join([header, payload, jwt.utils.base64url_encode(mac)]).decode()
    rejected(plugin, confused, "algorithm is not among")
    # an allowed algorithm that does not fit the key: an ES256 header on the RSA key's kid
    rejected(plugin, sign(claims(issuer), EC_KEY, "ES256", "rsa-1"), "does not match its signing key")


def test_malformed_tokens_of_our_issuer_are_401_or_left_alone(issuer: Issuer) -> None:
    plugin = configured(issuer)

    def b64(value: Any) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return jwt.utils.base64url_encode(raw).decode()

    payload = b64(claims(issuer))
    signature = sign(claims(issuer)).split(".")[2]
    headers = [{"alg": "RS256", "kid": 7}, {"alg": ["RS256"], "kid": "rsa-1"}, {"alg": "RS256"}, [1, 2], b"{not json"]
    tokens = [f"{b64(header)}.{payload}.{signature}" for header in headers]
    tokens += [f"{b64({'alg': 'RS256', 'kid': 'rsa-1'})}.{payload}.!!!", f"..{signature}", "a.b.c", "." * 20]

    def outcome(token: str) -> str:
        try:
            return repr(check(plugin, token))
        except AuthenticationError as error:
            return str(error)

    # ours (its payload names our issuer) but unusable: 401; not a readable JWT (PyJWT refuses a
    # kid that is not a string, a header that is not an object, a bad base64 part): left alone
    assert [outcome(token) for token in tokens] == [
        "None",
        "OIDC token rejected: its algorithm is not among [plugin.oidc] algorithms (RS256, ES256)",
        "OIDC token rejected: it names no signing key (kid)",
        *["None"] * 6,
    ]


def test_a_token_signed_by_another_key_under_a_known_kid_gets_401(issuer: Issuer) -> None:
    rejected(configured(issuer), sign(claims(issuer), OTHER_RSA_KEY), "signature does not verify")


def test_a_token_signed_by_a_short_rsa_key_of_the_jwks_gets_401(issuer: Issuer) -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    issuer.keys.append(public_jwk(short, "short"))
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        token = sign(claims(issuer), short, kid="short")
    rejected(configured(issuer), token, "signing key is unusable")


def test_a_key_added_to_the_jwks_is_picked_up_on_its_first_token(issuer: Issuer) -> None:
    clock = Clock()
    plugin = configured(issuer, clock)
    assert check(plugin, sign(claims(issuer))) is not None
    assert issuer.jwks_requests == 1
    issuer.keys.append(public_jwk(OTHER_RSA_KEY, "rsa-2"))
    clock.now += 10  # the default refresh_interval since the last fetch
    identity = check(plugin, sign(claims(issuer, sub="carol"), OTHER_RSA_KEY, kid="rsa-2"))
    assert identity is not None and identity.subject == "carol"
    assert issuer.jwks_requests == 2


def test_a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_interval(issuer: Issuer) -> None:
    clock = Clock()
    plugin = configured(issuer, clock)
    assert check(plugin, sign(claims(issuer))) is not None
    clock.now += 11
    tokens = [sign(claims(issuer), OTHER_RSA_KEY, kid=f"made-up-{i}") for i in range(50)]

    def attempt(token: str) -> str:
        try:
            check(plugin, token)
        except AuthenticationError as error:
            return str(error)
        return "accepted"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, tokens))
    assert set(outcomes) == {"OIDC token rejected: unknown signing key"}
    assert issuer.jwks_requests == 2
    # known keys keep working within the interval, without fetching
    assert check(plugin, sign(claims(issuer), EC_KEY, "ES256", "ec-1")) is not None
    assert issuer.jwks_requests == 2


def test_a_subject_with_control_characters_is_refused(issuer: Issuer) -> None:
    """It went into the audit log as it was, and `runink audit` printed its escape sequences to
    the cluster admin's terminal (retitled it, cleared the screen)."""
    plugin = configured(issuer)
    for subject in ("eve\x1b]0;pwned\x07", "line\nbreak", "x" * 257):
        rejected(plugin, sign(claims(issuer, sub=subject)), "at most 256 printable characters")
    assert check(plugin, sign(claims(issuer, sub="élodie@example.com"))) is not None


def test_no_request_waits_behind_a_key_set_fetch(issuer: Issuer) -> None:
    """A burst of made-up kids while the provider hung held every API thread for the fetch's
    timeout (a cluster admin's cached token too): one request fetches, the others are refused
    at once."""
    clock = Clock()
    plugin = configured(issuer, clock)
    assert check(plugin, sign(claims(issuer))) is not None
    clock.now += 11
    issuer.jwks_hold = threading.Event()
    fetching = threading.Thread(
        target=lambda: rejected(plugin, sign(claims(issuer), OTHER_RSA_KEY, kid="first"), "unknown"), daemon=True
    )
    fetching.start()
    deadline = time.monotonic() + 5
    while issuer.jwks_requests < 2 and time.monotonic() < deadline:  # (its fetch is under way)
        time.sleep(0.01)
    started = time.monotonic()
    assert rejected(plugin, sign(claims(issuer), OTHER_RSA_KEY, kid="second"), "unknown") == (
        "OIDC token rejected: unknown signing key"
    )
    assert time.monotonic() - started < 1.0  # (not the fetch's timeout)
    assert check(plugin, sign(claims(issuer), EC_KEY, "ES256", "ec-1")) is not None  # a known key: no wait
    issuer.jwks_hold.set()
    fetching.join(10)


def test_an_unreachable_issuer_is_a_one_line_401_quickly(issuer: Issuer) -> None:
    plugin = configured(issuer)
    token = sign(claims(issuer))
    issuer.server.shutdown()
    issuer.server.server_close()
    started = time.monotonic()
    message = rejected(plugin, token, "unreachable")
    assert message.startswith(f"OIDC issuer {issuer.url} unreachable: ")
    assert time.monotonic() - started < 5


def test_an_issuer_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        plugin = OidcAuthenticator()
        plugin.runink_configure(config(issuer=url, audience=AUDIENCE))
        plugin.timeout = 0.5
        token = sign({"iss": url, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60})
        started = time.monotonic()
        with pytest.raises(AuthenticationError, match=r"unreachable: .*Timeout"):
            check(plugin, token)
        assert time.monotonic() - started < 3


def test_a_discovery_document_naming_another_issuer_is_refused(issuer: Issuer) -> None:
    plugin = OidcAuthenticator()
    # the same server under another name: its document says 127.0.0.1, not localhost
    url = issuer.url.replace("127.0.0.1", "localhost")
    plugin.runink_configure(config(issuer=url, audience=AUDIENCE))
    for _ in range(3):
        with pytest.raises(AuthenticationError, match="discovery document names another issuer"):
            check(plugin, sign(claims(issuer, iss=url)))
    # a failed fetch is not retried before refresh_interval has passed
    assert (issuer.discovery_requests, issuer.jwks_requests) == (1, 0)


def test_an_overlong_token_is_refused_before_parsing(issuer: Issuer) -> None:
    with pytest.raises(AuthenticationError, match="longer than 16384"):
        check(configured(issuer), "x" * 16385)
    assert issuer.jwks_requests == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"issuer": "http://login.example.org", "audience": "a"}, r"\[plugin.oidc\] issuer: must be an https URL"),
        ({"issuer": "https://login.example.org"}, r"\[plugin.oidc\] audience: required"),
        ({"issuer": "https://login.example.org", "audience": "a", "algorithms": ["HS256"]}, "algorithms: 'HS256'"),
        ({"issuer": "https://login.example.org", "audience": "a", "algorithms": ["none"]}, "algorithms: 'none'"),
        ({"issuer": "https://login.example.org", "audience": "a", "leeway": 301}, "leeway: must be"),
        ({"issuer": "https://login.example.org", "audience": "a", "refresh": 1}, "refresh: unknown option"),
    ],
)
def test_configuration_errors_name_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        OidcAuthenticator().runink_configure(config(**options))
    assert "\n" not in str(raised.value)


def test_loopback_http_issuers_are_allowed() -> None:
    for url in ("http://127.0.0.2:8080", "http://[::1]:9000", "http://localhost"):
        plugin = OidcAuthenticator()
        plugin.runink_configure(config(issuer=url, audience=AUDIENCE))
        assert plugin.issuer == url


def test_a_misconfigured_plugin_is_marked_failed_by_the_manager() -> None:
    manager = PluginManager()
    manager.register(OidcAuthenticator(), "oidc")
    manager.configure(config(issuer="http://login.example.org", audience="a"))
    (record,) = [record for record in manager.records() if record.name == "oidc"]
    assert record.status == "failed" and "[plugin.oidc] issuer: must be an https URL" in (record.error or "")
    assert manager.pm.get_plugin("oidc") is None
