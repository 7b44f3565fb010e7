"""Node join tokens: how a new machine gets its node certificate (`runink node join`).

A cluster admin mints a token for one node (``runink nodes join-token NODE``); it is good once,
for a short time. The token carries the cluster CA's fingerprint, so the joining machine can
trust the server it has never seen: it fetches the CA (``GET /v1/cluster/ca``, over TLS it
cannot verify yet), keeps it only if its fingerprint is the token's, and from then on speaks
verified TLS. It makes its key itself and sends a signing request with the token; a server
holding the CA's key (``--tls-ca-key``) signs ``node.NAME`` for the node the token names
(whatever the request asks), and the token is spent in the same Barn transaction that reads
it. Only a hash of the secret is in the Barn.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runink.core.control.store import ClusterStore, NotFound, Refused
from runink.core.interfaces.barn import TxnOp
from runink.core.server import pki
from runink.core.server.tls import NODE_PREFIX

JOIN = "/cluster/join/"  # SHA-256 of a token's secret -> {"node", "expires"}: until spent
PREFIX = "rjt1"  # a join token: rjt1.<secret>.<CA fingerprint>
_TOKEN = re.compile(rf"{PREFIX}\.([A-Za-z0-9_-]{{43}})\.([0-9a-f]{{64}})")
MAX_JOIN_TTL = 7 * 86400.0


@dataclass(frozen=True)
class JoinToken:
    secret: str
    ca_fingerprint: str

    def __str__(self) -> str:
        return f"{PREFIX}.{self.secret}.{self.ca_fingerprint}"

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        found = _TOKEN.fullmatch(text.strip())
        if found is None:
            expected = f"{PREFIX}.SECRET.CA-FINGERPRINT, from `runink nodes join-token`"
            raise ValueError(f"not a join token (expected {expected})")
        return cls(found.group(1), found.group(2))


def _key(secret: str) -> str:
    return JOIN + hashlib.sha256(secret.encode()).hexdigest()


def mint(store: ClusterStore, node: str, ttl: float, ca_cert: Path, now: float | None = None) -> tuple[str, float]:
    """A new one-time token for ``node`` (its secret's hash stored, with when it expires)."""
    if not 0 < ttl <= MAX_JOIN_TTL:
        raise Refused(f"a join token lasts more than 0 s and at most {MAX_JOIN_TTL:g} s, not {ttl:g}")
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    expires = (time.time() if now is None else now) + ttl
    key = _key(secret)
    store.barn.transaction([(key, 0)], [TxnOp(key, json.dumps({"node": node, "expires": expires}).encode())])
    return str(JoinToken(secret, pki.fingerprint(pki.read_pem(ca_cert)))), expires


def forget_node(store: ClusterStore, node: str) -> int:
    """Delete the join tokens not spent yet that were minted for ``node`` (its revocation: a
    token minted before it would give the node a new certificate after it); how many."""
    gone = 0
    for page in store.pages(JOIN):
        for kv in page:
            try:
                minted_for = json.loads(kv.value).get("node")
            except (ValueError, AttributeError):
                continue
            if minted_for == node:
                held, _ = store.barn.transaction([(kv.key, kv.mod_revision)], [TxnOp(kv.key, None)])
                gone += held
    return gone


def redeem(store: ClusterStore, token: JoinToken, sign: Callable[[str], bytes], now: float | None = None) -> bytes:
    """Spend ``token`` and return ``sign(node)`` for the node it was minted for. The token is
    deleted in a transaction that compares what was read, after ``sign`` succeeded (a request
    refused does not spend it) and before anything is returned: a second use, here or on
    another server, finds nothing. NotFound for a token unknown or spent, Refused for one that
    expired (deleted too) or whatever ``sign`` refuses."""
    key = _key(token.secret)
    found = store.barn.get(key)
    if found is None:
        raise NotFound("join token unknown or used already (mint another: `runink nodes join-token NODE`)")
    record = json.loads(found.value)
    if (time.time() if now is None else now) > float(record["expires"]):
        store.barn.transaction([(key, found.mod_revision)], [TxnOp(key, None)])
        raise Refused("join token expired (mint another: `runink nodes join-token NODE`)")
    certificate = sign(str(record["node"]))
    held, _ = store.barn.transaction([(key, found.mod_revision)], [TxnOp(key, None)])
    if not held:
        raise NotFound("join token used already (mint another: `runink nodes join-token NODE`)")
    return certificate


def sign_node(ca_cert: Path, ca_key: Path, node: str, request_pem: bytes, revoked_up_to: float | None = None) -> bytes:
    """The node certificate (``node.NAME``, client usage) for the key of ``request_pem``;
    ``revoked_up_to``: the node's revocation, if any (the certificate starts after it, however
    this server's clock compares with the one that revoked it: tls.certificate_issued)."""
    not_before = None if revoked_up_to is None else revoked_up_to + 1
    try:
        return pki.sign_request(ca_cert, ca_key, request_pem, NODE_PREFIX + node, usage="client", not_before=not_before)
    except pki.PkiError as exc:
        raise Refused(f"join: {exc}") from None


def pinned_ca(pem: bytes, expected: str) -> bytes | None:
    """The CA certificate ``pem`` holds, re-encoded, if it is one CA certificate alone whose
    fingerprint is the one a join token carries; else None (nothing of it is to be trusted)."""
    try:
        alone = pki.one_ca(pem)
        return alone if hmac.compare_digest(pki.fingerprint(alone), expected) else None
    except pki.PkiError:
        return None
