"""Who may call the REST API.

Each request names its caller with a bearer token; the ``runink_authenticate`` chain turns it
into an Identity: the cluster's own tokens (``ClusterTokens``, registered by the server) and
whatever identity plugins are installed (OIDC). Each route then asks ``ApiAuth.check`` for its
action in its herd, with the roles the caller holds there (``grants``: its bindings in the
Barn, and what its token grants); the ``runink_authorize`` chain decides (the RBAC plugin, OPA).
No credentials: 401; credentials refused: 401 with the reason; not allowed: 403 with the reason.

A server started with ``--insecure-dev`` authenticates nobody and allows everything, and says
so in a header of every answer (INSECURE_HEADER).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from runink.core.control.bindings import Binding, bindings
from runink.core.control.records import Record
from runink.core.control.roles import RoleCache
from runink.core.control.store import ClusterStore
from runink.core.errors import AuthenticationError, RuninkError
from runink.core.fstree import read_private_file
from runink.core.hookspecs import hookimpl
from runink.core.interfaces.barn import TxnOp
from runink.core.model import AuthRequest, AuthzDecision, Grant, Identity
from runink.core.plugins import PluginManager
from runink.core.report import printable
from runink.core.security import CLUSTER, ROLES, authenticate, authorize
from runink.core.server.revocations import Revocations, RevocationsUnknown

INSECURE_HEADER = "X-Runink-Insecure"
INSECURE_VALUE = "authentication is off (--insecure-dev): anyone may do anything"
ISSUER = AUDIENCE = "runink"  # the cluster's own tokens: iss and aud
ALGORITHM = "ES256"
NODE_SUBJECT = "node:"  # a node token's subject: node:NODE
# what revokes every token holding a role in herd H (its deletion, `runink token revoke --herd`)
HERD_TOKENS = "herd:"
MAX_TOKEN = 16 * 1024  # characters of a bearer token
MAX_TTL = 90 * 86400  # seconds a token the cluster signs may live
LEEWAY = 30  # seconds of clock skew allowed on exp, nbf and iat
VERIFIED_KEPT = 4096  # tokens whose checked claims a server keeps (the least recently used go)
BINDINGS_FOR = 1.0  # seconds a server trusts the bindings it read (a revoked role lasts this long)
AUDIT = "/cluster/audit/"  # DAY/TIME-RANDOM -> an AuditRecord, written once, never changed
#: the same for changes that were not made (refused, or allowed and then failed: a quota, a
#: bad value), kept apart with a bound of their own: anyone may be refused, and any runner
#: may fail a submission again and again; such records had pushed every change made out of
#: the log (reviews: 293 records a second from one node's token; 409s from a runner's)
AUDIT_UNDONE = "/cluster/audit-undone/"


MAX_KEY_FILE = 64 << 10  # bytes of a signing key file, at most


def _read_private(path: Path) -> bytes:
    """The bytes of the key file ``path``: a private regular file (fstree.read_private_file)."""
    data = read_private_file(path, "--auth-key", MAX_KEY_FILE)
    if len(data) > MAX_KEY_FILE:
        raise RuninkError(f"--auth-key {path}: larger than {MAX_KEY_FILE:,} bytes: not a key")
    return data


class AuditRecord(Record, kw_only=True):
    """One authorization decision about a change (every action but ``*.read``), allowed or not."""

    at: float
    subject: str
    authenticated_by: str
    action: str
    resource: str
    herd: str
    allowed: bool
    reason: str


def audit_day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


class Unauthenticated(RuninkError):
    """401: no credentials, or credentials no plugin accepts (the reason says which)."""


class Forbidden(RuninkError):
    """403: the caller may not do this (the reason says what it lacks)."""


def bearer(headers: Any) -> str | None:
    """The bearer token of an ``authorization`` header, else None."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = str(value).partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


# --- the cluster's own tokens ------------------------------------------------------------


def new_key_file(path: Path) -> None:
    """Write a new P-256 signing key (PEM, readable by its owner only); never over a file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


class ClusterTokens:
    """Tokens the cluster signs: ES256 JWTs (``iss`` and ``aud`` "runink") naming a subject and
    the roles it holds (``grants``), signed by the first of the cluster's keys and checked
    against any of them (rotation: add the new key first, drop the old one once the tokens it
    signed expired). Every server of a cluster is given the same keys (``--auth-key``)."""

    def __init__(self, key_files: Sequence[Path]) -> None:
        import jwt
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        if not key_files:
            raise RuninkError("cluster tokens: no signing key given")
        self._keys: dict[str, Any] = {}  # kid -> private key, the signing one first
        for path in key_files:
            try:
                key = serialization.load_pem_private_key(_read_private(Path(path)), password=None)
            except (ValueError, TypeError) as exc:
                raise RuninkError(f"--auth-key {path}: not a readable PEM private key ({type(exc).__name__})") from None
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
                raise RuninkError(f"--auth-key {path}: not a P-256 (ES256) key")
            self._keys[_kid(jwt, key)] = key
        self.signing_kid = next(iter(self._keys))
        self.revocations: Revocations | None = None  # (a server sets them once its Barn is there)
        # token -> its identity, once its signature and claims were checked: a client sends the
        # same token with every request (the check is an ES256 verify); its expiry and whether
        # it was revoked are still looked at each time, and the keys never change
        self._verified: OrderedDict[str, Identity] = OrderedDict()
        self._verified_lock = threading.Lock()

    def mint(self, subject: str, grants: Sequence[Grant], ttl: float, *, now: float | None = None) -> tuple[str, float]:
        """A token for ``subject`` holding ``grants`` for ``ttl`` seconds; and when it expires.
        It carries the epochs of the revocations it may be revoked under, read now (``rev``:
        core/server/revocations.py); RevocationsUnknown when they cannot be read."""
        import jwt

        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl: {ttl:g} s (expected 1 s to {MAX_TTL // 86400} days)")
        under = [subject, *sorted({HERD_TOKENS + g.herd for g in grants if g.herd != CLUSTER})]
        epochs = None if self.revocations is None else self.revocations.epochs(under)
        issued = time.time() if now is None else now
        expires = int(issued + ttl)
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": int(issued),
            "nbf": int(issued),
            "exp": expires,
            "jti": secrets.token_hex(8),
            "grants": [{"role": g.role, "herd": g.herd} for g in grants],
        }
        if epochs is not None:
            claims["rev"] = epochs
        token = jwt.encode(claims, self._keys[self.signing_kid], algorithm=ALGORITHM, headers={"kid": self.signing_kid})
        return token, float(expires)

    @staticmethod
    def jti_of(token: str) -> str | None:
        """The ``jti`` of a token this cluster minted (read, not verified: it is ours)."""
        import jwt

        found = jwt.decode(token, options={"verify_signature": False}).get("jti")
        return found if isinstance(found, str) else None

    def mint_node(self, node_id: str, ttl: float) -> tuple[str, float]:
        """The token the agent of ``node_id`` connects with: ``node:NODE`` holding the node role."""
        return self.mint(f"{NODE_SUBJECT}{node_id}", [Grant("node", CLUSTER)], ttl)

    def node_of(self, identity: Identity | None) -> str | None:
        """The node a token's identity may act as (a node token's), else None."""
        if identity is None or not identity.subject.startswith(NODE_SUBJECT):
            return None
        if not any(isinstance(g, Grant) and g.role == "node" for g in identity.claims.get("grants", ())):
            return None
        return identity.subject[len(NODE_SUBJECT) :]

    def admin_refusal(self, authorization: str | None) -> str:
        """ "" if ``authorization`` (an Authorization header) bears a token this cluster signed
        whose own grants hold cluster-admin (bindings are not read: the Barn's HTTP API asks
        this of itself), else why not, in one line."""
        try:
            identity = self.runink_authenticate(AuthRequest(headers={"authorization": authorization or ""}))
        except (AuthenticationError, RevocationsUnknown) as exc:
            return str(exc)
        if identity is None:
            return "no token of this cluster (and no client certificate of its CA)"
        grants = identity.claims.get("grants", ())
        if not any(isinstance(g, Grant) and g.role == "cluster-admin" and g.herd == CLUSTER for g in grants):
            return f"{identity.subject}: the token does not grant cluster-admin"
        return ""

    def jwks(self) -> dict[str, Any]:
        """The public keys, as ``/.well-known/jwks.json`` serves them."""
        from jwt.algorithms import ECAlgorithm

        found = []
        for kid, key in self._keys.items():
            jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
            found.append({**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM})
        return {"keys": found}

    @hookimpl
    def runink_authenticate(self, request: AuthRequest) -> Identity | None:
        """A token the cluster signed (``iss`` "runink"), checked in full (once: its expiry and
        revocation each time); another: None."""
        token = bearer(request.headers)
        if token is None or len(token) > MAX_TOKEN:
            return None
        identity = self._checked(token)
        if identity is None:
            identity = self._check(token)
            if identity is None:
                return None
            with self._verified_lock:
                self._verified[token] = identity
                if len(self._verified) > VERIFIED_KEPT:
                    self._verified.popitem(last=False)
        if (why := self.why_revoked(identity)) is not None:
            raise AuthenticationError(f"token: {why}")
        return identity

    def known(self, token: str) -> Identity | None:
        """The identity of a token checked before, if telling needs no I/O (its revocation
        list read under a second ago): the API answers such a request without a thread of
        its own. None: ask ``runink_authenticate``. AuthenticationError: revoked."""
        identity = self._checked(token)
        if identity is None or (self.revocations is not None and not self.revocations.fresh()):
            return None
        if (why := self.why_revoked(identity)) is not None:
            raise AuthenticationError(f"token: {why}")
        return identity

    def _checked(self, token: str) -> Identity | None:
        """The identity of a token checked before, unless it expired since (then forgotten)."""
        with self._verified_lock:
            identity = self._verified.get(token)
            if identity is None:
                return None
            if identity.claims["exp"] > time.time() - LEEWAY:  # (as the full check: ``leeway``)
                self._verified.move_to_end(token)
                return identity
            del self._verified[token]
        return None

    def _check(self, token: str) -> Identity | None:
        """The identity of a token this cluster signed, its signature and claims checked; None
        for another issuer's or not a JWT; AuthenticationError for a bad one of ours."""
        import jwt

        try:
            if jwt.decode(token, options={"verify_signature": False}).get("iss") != ISSUER:
                return None  # another issuer's: another plugin may take it
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return None  # not a JWT: not ours
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise AuthenticationError("token: signed by a key this cluster does not have")
        try:
            claims = jwt.decode(
                token,
                key.public_key(),
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "nbf", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"token: {exc}") from None
        grants = tuple(_token_grants(claims.get("grants")))
        return Identity(
            str(claims["sub"]),
            claims={
                "grants": grants,
                "jti": claims.get("jti"),
                "iat": claims.get("iat"),
                "exp": claims.get("exp"),
                "rev": _epochs(claims.get("rev")),
            },
            authenticated_by="runink-token",
        )

    def why_certificate_revoked(self, node: str, issued: float) -> str | None:
        """Why node ``node``'s certificate issued at ``issued`` no longer counts (``runink nodes
        revoke``: every credential of ``node:NAME`` issued up to then), or None; a server that
        cannot tell takes none: RevocationsUnknown (a 503, not a 401: the credential may be good)."""
        if self.revocations is None:
            return None
        why = self.revocations.why_revoked(f"node:{node}", None, issued)
        return None if why is None else why.replace("every token of", "every token and certificate of", 1)

    def why_revoked(self, identity: Identity) -> str | None:
        """Why this token's identity no longer counts (revoked: core/server/revocations.py), or
        None; a server that cannot tell takes no token: RevocationsUnknown (the API answers 503,
        not 401: a client told its good token is bad would ask for another, or give up)."""
        if self.revocations is None:
            return None
        issued = identity.claims.get("iat")
        herds = sorted(
            {g.herd for g in identity.claims.get("grants", ()) if isinstance(g, Grant) and g.herd != CLUSTER}
        )
        epochs = identity.claims.get("rev")  # (None: a token of an earlier version, judged by its iat)

        def seen(subject: str) -> int | None:
            return None if not isinstance(epochs, dict) else epochs.get(subject, 0)

        subject = identity.subject
        why = self.revocations.why_revoked(subject, identity.claims.get("jti"), issued, seen(subject))
        for herd in herds:  # (a herd deleted, maybe made again since: its old tokens hold nothing)
            under = HERD_TOKENS + herd
            if why is None and (why := self.revocations.why_revoked(under, None, issued, seen(under))):
                why = why.replace(f"every token of {HERD_TOKENS}{herd}", f"every token of herd {herd}", 1)
        return why


def _epochs(value: object) -> dict[str, int] | None:
    """A token's ``rev`` claim (subject -> epoch), or None when it has none or not one of ours
    (then it is judged by its ``iat``)."""
    if not isinstance(value, dict) or len(value) > 1024:
        return None
    if not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in value.items()):
        return None
    return dict(value)


def _kid(jwt: Any, key: Any) -> str:
    """The key's RFC 7638 thumbprint (what names it in a token's header and the JWKS)."""
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).decode().rstrip("=")


def _token_grants(value: object) -> list[Grant]:
    if not isinstance(value, list) or len(value) > 64:
        raise AuthenticationError("token: grants: not a list of at most 64 roles")
    found = []
    for item in value:
        if not isinstance(item, dict) or item.get("role") not in ROLES or not isinstance(item.get("herd"), str):
            raise AuthenticationError("token: grants: each one a known role and a herd")
        found.append(Grant(str(item["role"]), str(item["herd"]), "token"))
    return found


# --- per request -------------------------------------------------------------------------


class ApiAuth:
    """What the API asks per request: who calls (``identify``), and may they (``check``)."""

    def __init__(
        self,
        manager: PluginManager | None,
        store: ClusterStore,
        *,
        insecure: bool = False,
        tokens: ClusterTokens | None = None,
    ) -> None:
        if manager is None and not insecure:
            raise ValueError("ApiAuth: a plugin manager is needed unless insecure")
        self.manager = manager
        self.tokens = tokens  # (the cluster's own token plugin, registered with ``manager``)
        self.store = store
        self.insecure = insecure
        self._lock = threading.Lock()
        self._bindings: dict[str, tuple[float, list[Binding]]] = {}  # herd -> (read at, its bindings)
        self._forgotten = 0  # how many times a change made here dropped bindings read before it
        self.roles = RoleCache(store)  # the custom roles' actions, read at most once a second

    def identify_known(self, headers: Any) -> Identity | None:
        """Who calls, when that is known without I/O (on the event loop): authentication off,
        or a cluster token checked before (``ClusterTokens.known``); else None (``identify``,
        on a thread: a plugin may read a key set over the network)."""
        if self.insecure:
            return Identity("anonymous", authenticated_by="insecure-dev")
        token = bearer(headers)
        if token is None or self.tokens is None:
            return None
        try:
            return self.tokens.known(token)
        except AuthenticationError as exc:
            raise Unauthenticated(str(exc)) from None

    def identify(self, headers: Any, peer: str | None) -> Identity:
        if self.insecure:
            return Identity("anonymous", authenticated_by="insecure-dev")
        if bearer(headers) is None:
            raise Unauthenticated("no credentials: send `Authorization: Bearer TOKEN` (`runink login`)")
        try:
            assert self.manager is not None  # (see __init__)
            return authenticate(
                self.manager, AuthRequest(headers={"authorization": headers["authorization"]}, peer=peer)
            )
        except AuthenticationError as exc:
            raise Unauthenticated(str(exc)) from None

    def grants(self, identity: Identity, herd: str) -> list[Grant]:
        """The roles ``identity`` holds in ``herd`` and cluster-wide: its token's, and its
        bindings' (as a user by its subject, a service account by ``sa:NAME``, its groups).

        A herd's service account (a token minted with roles in herds only: ``POST
        /v1/herds/H/tokens``) takes the bindings of its name in those herds alone: any herd
        admin may mint any name, so the same name bound in another herd or cluster-wide is
        another account (else a herd admin minting ``sa:deployer`` held the cluster's
        ``deployer`` bindings). A cluster's (minted with a cluster role, or by the operator
        without any) takes them in every herd and cluster-wide."""
        found = [g for g in identity.claims.get("grants", ()) if isinstance(g, Grant)]
        account: tuple[str, str] | None = None
        minted_in = {g.herd for g in found}
        if identity.authenticated_by == "runink-token" and identity.subject.startswith("sa:"):
            account, subjects = ("sa", identity.subject[3:]), set()
        else:
            subjects = {("user", identity.subject)}
        subjects |= {("group", group) for group in identity.groups}
        herds_only = bool(minted_in) and CLUSTER not in minted_in
        for where in {herd, CLUSTER}:
            own_account = account is not None and (not herds_only or where in minted_in)
            for binding in self._read_bindings(where):
                bound = (binding.kind, binding.subject)
                if bound in subjects or (own_account and bound == account):
                    found.append(
                        self.roles.grant(binding.role, binding.herd, f"bound to {binding.kind} {binding.subject}")
                    )
        return found

    def _read_bindings(self, herd: str) -> list[Binding]:
        now = time.monotonic()
        with self._lock:
            cached = self._bindings.get(herd)
            generation = self._forgotten
        if cached is not None and now - cached[0] < BINDINGS_FOR:
            return cached[1]
        found = bindings(self.store, herd)
        with self._lock:
            if len(self._bindings) > 10_000:
                self._bindings.clear()
            # a read that began before a change this server made is not kept (it may miss it)
            if generation == self._forgotten:
                self._bindings[herd] = (now, found)
        return found

    def forget_bindings(self, herd: str) -> None:
        """Read ``herd``'s bindings again on the next check (this server just changed them)."""
        with self._lock:
            self._bindings.pop(herd, None)
            self._forgotten += 1

    def decide(self, identity: Identity, action: str, resource: str, herd: str) -> AuthzDecision:
        if self.insecure:
            return AuthzDecision(True, "insecure-dev", "")
        assert self.manager is not None  # (see __init__)
        return authorize(self.manager, identity, action, resource, herd, grants=self.grants(identity, herd))

    def check(self, identity: Identity, action: str, resource: str, herd: str) -> None:
        """Raise Forbidden unless ``identity`` may do ``action`` on ``resource`` in ``herd``;
        a decision about a change is written to the audit log first (no change goes unlogged:
        if the Barn cannot take the record, the request fails)."""
        entry = self.check_change(identity, action, resource, herd)
        if entry is not None:
            self.write_audit(entry)

    def check_change(self, identity: Identity, action: str, resource: str, herd: str) -> TxnOp | None:
        """``check``, leaving an allowed change's audit record to the caller: it commits the
        record in the change's own transaction (one commit, and no change without its record),
        or, if the change is not made, with ``write_audit``. A refusal is written here."""
        decision = self.decide(identity, action, resource, herd)
        entry = None
        if not self.insecure and not action.endswith(".read"):
            entry = self.audit_entry(identity, action, resource, herd, decision)
        if not decision.allowed:
            if entry is not None:
                self.write_audit(entry)
            raise Forbidden(decision.reason)
        return entry

    @contextlib.contextmanager
    def change(self, identity: Identity, action: str, resource: str, herd: str) -> Iterator[list[TxnOp]]:
        """``check_change`` around making the change: yields the writes to commit with it (its
        audit record, if any); if the block raises (the change refused or failed), the record
        is written on its own, so the decision is logged all the same."""
        entry = self.check_change(identity, action, resource, herd)
        try:
            yield [] if entry is None else [entry]
        except BaseException:
            if entry is not None:  # (allowed, not made: with the changes not made)
                self.write_audit(TxnOp(AUDIT_UNDONE + entry.key.removeprefix(AUDIT), entry.value))
            raise

    def audit_entry(self, identity: Identity, action: str, resource: str, herd: str, decision: AuthzDecision) -> TxnOp:
        """The audit log's record of one decision, as the write that stores it."""
        now = time.time()
        record = AuditRecord(
            at=now,
            subject=printable(identity.subject, 256),  # (an identity provider's: shown on terminals)
            authenticated_by=identity.authenticated_by,
            action=action,
            resource=printable(resource, 512),  # (a request's text, refused or not: shown on terminals)
            herd=herd,
            allowed=decision.allowed,
            reason=printable(decision.reason, 512),
        )
        prefix = AUDIT if decision.allowed else AUDIT_UNDONE
        key = f"{prefix}{audit_day(now)}/{time.time_ns():020d}-{secrets.token_hex(4)}"
        return TxnOp(key, record.model_dump_json().encode())

    def write_audit(self, entry: TxnOp) -> None:
        """Store an audit record on its own (once: a record there already is left as it is)."""
        self.store.barn.transaction([(entry.key, 0)], [entry])
