"""OIDC authentication: bearer tokens signed by an OpenID Connect issuer become identities.

Configured by the ``[plugin.oidc]`` table (``issuer``, ``audience``, optional ``groups_claim``,
``leeway``, ``algorithms``, ``refresh_interval``); without an ``issuer`` the plugin accepts
nothing. A token naming another issuer, or that is not a JWT, is left to the next plugin; a
token of our issuer is verified with PyJWT against the key of its ``kid`` in the issuer's JWKS
(found through the discovery document), and any fault is a 401 (AuthenticationError).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from runink.core.config import RuninkConfig
from runink.core.errors import AuthenticationError
from runink.core.hookspecs import hookimpl
from runink.core.model import AuthRequest, Identity
from runink.core.units import is_loopback

if TYPE_CHECKING:  # imported where used: every CLI start loads this plugin, most never use it
    import jwt

    from runink.core.driverload import OptionsSchema

NAME = "oidc"
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
DEFAULT_ALGORITHMS = ("RS256", "ES256")
MAX_TOKEN_CHARS = 16 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_GROUPS = 256
MAX_GROUP_CHARS = 256
FETCH_TIMEOUT = 5.0
#: [plugin.oidc] (checked by runink.core.plugin_options before runink_configure)
OPTIONS: OptionsSchema = {
    "issuer": str,
    "audience": (str, list),
    "groups_claim": str,
    "leeway": float,
    "algorithms": list,
    "refresh_interval": float,
}
_COPIED_CLAIMS = ("email", "iss", "name")


class _FetchError(Exception):
    """The issuer could not be reached or answered something unusable (one line)."""


def _url_problem(url: str) -> str | None:
    """Why ``url`` may not be used to reach the issuer, or None: https, or http to loopback only."""
    parts = urlsplit(url)
    if not parts.hostname:
        return "has no host"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return None
    return "must be an https URL (http only for a loopback host: 127.0.0.0/8, ::1, localhost)"


def _one_line(text: str) -> str:
    return " ".join(text.split())


class OidcAuthenticator:
    """The ``oidc`` authentication plugin. ``clock`` (monotonic seconds) paces JWKS refreshes."""

    options_schema: ClassVar[OptionsSchema] = OPTIONS

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.timeout = FETCH_TIMEOUT
        self.issuer: str | None = None
        self.audience: str | list[str] = ""
        self.groups_claim = "groups"
        self.leeway: float = 30
        self.algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
        self.refresh_interval: float = 10
        self._reset_cache()

    @property
    def configured(self) -> bool:
        """Whether it authenticates anyone (an issuer is set): a server needs one such plugin,
        or its own token keys, to start without ``--insecure-dev``."""
        return self.issuer is not None

    def _reset_cache(self) -> None:
        # _lock guards the caches; _fetch_lock makes fetches one at a time: tokens of known keys
        # are not held up by a fetch in progress, and a token of an unknown kid that comes while
        # one is under way is refused at once (after a key rotation, a moment of 401s until the
        # fetch lands) rather than wait for it.
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._jwks_uri: str | None = None
        self._keys: dict[str, Mapping[str, Any]] = {}
        self._parsed: dict[tuple[str, str], jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._fetch_error: str | None = None

    # --- configuration ----------------------------------------------------------------

    @hookimpl
    def runink_configure(self, config: RuninkConfig) -> None:
        options = config.plugin_options(NAME)

        def bad(option: str, why: str) -> ValueError:
            source = config.source_of(f"plugin.{NAME}.{option}")
            where = "" if source == "default" else f" (set at {source})"
            return ValueError(f"[plugin.{NAME}] {option}: {why}{where}")

        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise bad(unknown[0], f"unknown option; the options are {', '.join(OPTIONS)}")
        self._reset_cache()
        issuer = options.get("issuer")
        if issuer is None:
            self.issuer = None
            return
        if not isinstance(issuer, str) or not issuer:
            raise bad("issuer", "must be a URL string")
        problem = _url_problem(issuer)
        if problem:
            raise bad("issuer", f"{problem}, got {issuer!r}")

        audience = options.get("audience")
        if isinstance(audience, list) and audience and all(isinstance(a, str) and a for a in audience):
            self.audience = list(audience)
        elif isinstance(audience, str) and audience:
            self.audience = audience
        else:
            raise bad("audience", "required when issuer is set: the client id (a string or a list of strings)")

        groups_claim = options.get("groups_claim", "groups")
        if not isinstance(groups_claim, str) or not groups_claim:
            raise bad("groups_claim", "must be a claim name")
        self.groups_claim = groups_claim

        leeway = options.get("leeway", 30)
        if isinstance(leeway, bool) or not isinstance(leeway, (int, float)) or not 0 <= leeway <= 300:
            raise bad("leeway", f"must be a number of seconds from 0 to 300, got {leeway!r}")
        self.leeway = float(leeway)

        algorithms = options.get("algorithms", list(DEFAULT_ALGORITHMS))
        if not isinstance(algorithms, list) or not algorithms or not all(isinstance(a, str) for a in algorithms):
            raise bad("algorithms", "must be a non-empty list of algorithm names")
        for name in algorithms:
            if name not in ASYMMETRIC_ALGORITHMS:
                # "none" and HS* would let anyone holding the (public) key, or no key, sign.
                raise bad(
                    "algorithms",
                    f"{name!r} is not allowed; only asymmetric algorithms: {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}",
                )
        self.algorithms = tuple(algorithms)

        refresh = options.get("refresh_interval", 10)
        if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or not 0 <= refresh <= 86400:
            raise bad("refresh_interval", f"must be a number of seconds from 0 to 86400, got {refresh!r}")
        self.refresh_interval = float(refresh)
        self.issuer = issuer

    # --- authentication ---------------------------------------------------------------

    @hookimpl
    def runink_authenticate(self, request: AuthRequest) -> Identity | None:
        issuer = self.issuer
        if issuer is None:
            return None
        import jwt

        token = _bearer_token(request.headers)
        if token is None:
            return None
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationError(f"bearer token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            # Unverified, only to route: the signature and every claim are checked below.
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None  # not a JWT: maybe another plugin's token
        if unverified.get("iss") != issuer:
            return None
        return self._verify(token, header, issuer)

    def _verify(self, token: str, header: Mapping[str, Any], issuer: str) -> Identity:
        import jwt

        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise AuthenticationError(
                f"OIDC token rejected: its algorithm is not among [plugin.{NAME}] algorithms "
                f"({', '.join(self.algorithms)})"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("OIDC token rejected: it names no signing key (kid)")
        key = self._key(kid, algorithm)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "sub"], "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as error:  # InvalidKeyError (a short key) is not an InvalidTokenError
            raise AuthenticationError(f"OIDC token rejected: {_reason(error)}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthenticationError("OIDC token rejected: sub must be a non-empty string")
        if not subject.isprintable() or len(subject) > 256:  # (it goes into the audit log, onto terminals)
            raise AuthenticationError("OIDC token rejected: sub must be at most 256 printable characters")
        copied: dict[str, Any] = {name: claims[name] for name in _COPIED_CLAIMS if isinstance(claims.get(name), str)}
        if type(claims.get("exp")) in (int, float):  # (checked above; a token minted with it expires no later)
            copied["exp"] = claims["exp"]
        return Identity(subject=subject, groups=self._groups(claims), claims=copied, authenticated_by=NAME)

    def _groups(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        groups = claims.get(self.groups_claim, [])
        if (
            not isinstance(groups, list)
            or len(groups) > MAX_GROUPS
            or not all(isinstance(g, str) and len(g) <= MAX_GROUP_CHARS for g in groups)
        ):
            raise AuthenticationError(
                f"OIDC token rejected: its {self.groups_claim} claim must be a list of at most "
                f"{MAX_GROUPS} strings of at most {MAX_GROUP_CHARS} characters"
            )
        return tuple(groups)

    def _key(self, kid: str, algorithm: str) -> jwt.PyJWK:
        """The issuer's key ``kid`` bound to ``algorithm``; the JWKS is fetched again for an
        unknown kid, at most once per refresh_interval (a flood of made-up kids costs one fetch)."""
        import jwt

        jwk = self._cached(kid)
        if jwk is None:
            # one fetch at a time, and no request waits behind it: a burst of made-up kids while
            # the provider hung held every API thread for the fetch's timeout (cached admins too)
            if not self._fetch_lock.acquire(blocking=False):
                raise AuthenticationError("OIDC token rejected: unknown signing key")
            try:
                jwk = self._cached(kid)
                if jwk is None:
                    jwk = self._refresh(kid)
            finally:
                self._fetch_lock.release()
        with self._lock:
            parsed = self._parsed.get((kid, algorithm))
        if parsed is not None:
            return parsed
        declared = jwk.get("alg")
        if declared is not None and declared != algorithm:
            raise AuthenticationError("OIDC token rejected: its algorithm does not match its signing key")
        try:
            # Bound to the token's algorithm: an RSA algorithm on an EC key (or the reverse, or
            # the wrong curve) fails here or in decode, so there is no algorithm confusion.
            parsed = jwt.PyJWK(dict(jwk), algorithm=algorithm)
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):  # a JWK of another type, or broken
            raise AuthenticationError("OIDC token rejected: its algorithm does not match its signing key") from None
        with self._lock:
            self._parsed[(kid, algorithm)] = parsed
        return parsed

    def _cached(self, kid: str) -> Mapping[str, Any] | None:
        with self._lock:
            return self._keys.get(kid)

    def _refresh(self, kid: str) -> Mapping[str, Any]:
        now = self._clock()
        if self._fetched_at is not None and now - self._fetched_at < self.refresh_interval:
            if self._fetch_error is not None:
                raise AuthenticationError(self._fetch_error)
            raise AuthenticationError("OIDC token rejected: unknown signing key")
        self._fetched_at = now
        try:
            keys = self._fetch_keys()
        except _FetchError as error:
            self._fetch_error = _one_line(f"OIDC issuer {self.issuer} unreachable: {error}")
            raise AuthenticationError(self._fetch_error) from None
        self._fetch_error = None
        with self._lock:
            self._keys = keys
            self._parsed = {}
        jwk = keys.get(kid)
        if jwk is None:
            raise AuthenticationError("OIDC token rejected: unknown signing key")
        return jwk

    def _fetch_keys(self) -> dict[str, Mapping[str, Any]]:
        issuer = self.issuer
        assert issuer is not None
        if self._jwks_uri is None:
            discovery = self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
            if discovery.get("issuer") != issuer:
                raise _FetchError("its discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise _FetchError("its discovery document has no jwks_uri")
            problem = _url_problem(jwks_uri)
            if problem:
                raise _FetchError(f"its jwks_uri {problem}")
            self._jwks_uri = jwks_uri
        entries = self._get_json(self._jwks_uri).get("keys")
        if not isinstance(entries, list):
            raise _FetchError("its JWKS has no keys list")
        keys: dict[str, Mapping[str, Any]] = {}
        for entry in entries:
            # Only signing keys with an id can match a token; others (encryption keys) are skipped.
            if isinstance(entry, dict) and isinstance(entry.get("kid"), str) and entry.get("use", "sig") == "sig":
                keys[entry["kid"]] = entry
        return keys

    def _get_json(self, url: str) -> dict[str, Any]:
        import httpx

        deadline = time.monotonic() + self.timeout
        body = bytearray()
        try:
            with (
                httpx.Client(timeout=self.timeout, follow_redirects=False) as client,
                client.stream("GET", url, headers={"accept": "application/json"}) as response,
            ):
                if response.status_code != 200:
                    raise _FetchError(f"GET {url} answered {response.status_code}")
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _FetchError(f"GET {url} answered more than {MAX_DOCUMENT_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise _FetchError(f"GET {url} took more than {self.timeout:g} s")
        except httpx.HTTPError as error:
            raise _FetchError(f"GET {url}: {type(error).__name__}: {error}") from None
        try:
            document = json.loads(body)
        except ValueError:
            raise _FetchError(f"GET {url} answered something that is not JSON") from None
        if not isinstance(document, dict):
            raise _FetchError(f"GET {url} answered JSON that is not an object")
        return document


def _bearer_token(headers: Mapping[str, str]) -> str | None:
    for name, value in headers.items():
        if name.lower() == "authorization":
            scheme, _, token = value.partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


def _reason(error: jwt.PyJWTError) -> str:
    """A one-line reason for a verification failure, without the token's text."""
    import jwt

    if isinstance(error, jwt.ExpiredSignatureError):
        return "it has expired"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "it is not valid yet (nbf or iat in the future)"
    if isinstance(error, jwt.InvalidAudienceError):
        return "it is not for this audience"
    if isinstance(error, jwt.InvalidIssuerError):
        return "it is from another issuer"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"it lacks the {error.claim} claim"
    if isinstance(error, jwt.InvalidSignatureError):
        return "its signature does not verify"
    if isinstance(error, jwt.InvalidAlgorithmError):
        return "its algorithm does not match its signing key"
    if isinstance(error, jwt.InvalidKeyError):
        return "its signing key is unusable (too short or of the wrong type)"
    if isinstance(error, jwt.DecodeError):
        return "it is malformed"
    return f"it is not valid ({type(error).__name__})"
