"""Join tokens (core/server/join.py): good once, for their node only, a bad signing request
does not spend one, an expired one is refused, and of two servers redeeming one at once
exactly one signs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography import x509

from runink.core.control.store import ClusterStore, NotFound, Refused
from runink.core.server import join, pki
from runink.plugins.barn.memory import MemoryBarn


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertFiles:
    return pki.create_ca(tmp_path / "ca")


def test_a_token_signs_its_nodes_certificate_once(tmp_path: Path, ca: pki.CertFiles) -> None:
    store = ClusterStore(MemoryBarn())
    text, _ = join.mint(store, "n1", 600, ca.cert)
    token = join.JoinToken.parse(text)
    assert token.ca_fingerprint == pki.fingerprint(pki.read_pem(ca.cert))
    assert not any(token.secret.encode() in kv.value or token.secret in kv.key for kv in store.barn.scan("/"))

    def sign(node: str, request: bytes) -> bytes:
        return join.sign_node(ca.cert, ca.key, node, request)

    with pytest.raises(Refused, match="not a PEM certificate signing request"):
        join.redeem(store, token, lambda node: sign(node, b"garbage"))
    request = pki.new_request("node.someone-else", tmp_path / "key.pem")  # (the CN asked for is ignored)
    certificate = join.redeem(store, token, lambda node: sign(node, request))  # not spent by the refusal
    (tmp_path / "cert.pem").write_bytes(certificate)
    assert pki.usages(pki.read_certificate(tmp_path / "cert.pem")) == {"client"}
    assert x509.load_pem_x509_certificate(certificate).subject.rfc4514_string() == "CN=node.n1"
    with pytest.raises(NotFound, match="unknown or used already"):
        join.redeem(store, token, lambda node: sign(node, request))


def test_an_expired_token_is_refused_and_gone(ca: pki.CertFiles) -> None:
    store = ClusterStore(MemoryBarn())
    text, expires = join.mint(store, "n1", 60, ca.cert, now=1000.0)
    token = join.JoinToken.parse(text)
    with pytest.raises(Refused, match="expired"):
        join.redeem(store, token, lambda node: b"never", now=expires + 1)
    assert store.barn.scan(join.JOIN) == []


def test_two_redeeming_at_once_sign_once(tmp_path: Path, ca: pki.CertFiles) -> None:
    store = ClusterStore(MemoryBarn())
    token = join.JoinToken.parse(join.mint(store, "n1", 600, ca.cert)[0])
    both_read = threading.Barrier(2)
    outcomes: list[str] = []

    def sign(node: str) -> bytes:
        both_read.wait(5)  # each has read the token before either spends it
        return b"certificate"

    def redeem() -> None:
        try:
            join.redeem(store, token, sign)
            outcomes.append("signed")
        except NotFound:
            outcomes.append("refused")

    threads = [threading.Thread(target=redeem) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == ["refused", "signed"]


@pytest.mark.parametrize("text", ["", "rjt1.short.abc", "rjt2." + "a" * 43 + "." + "0" * 64, "x" * 500])
def test_a_malformed_token_is_refused_naming_the_shape(text: str) -> None:
    with pytest.raises(ValueError, match="not a join token"):
        join.JoinToken.parse(text)


def test_a_second_ca_riding_along_the_pinned_one_is_refused(tmp_path: Path, ca: pki.CertFiles) -> None:
    """A server in the middle answering the real CA followed by its own: the fingerprint of the
    first matches, yet nothing is trusted (trusting the whole PEM would trust the second)."""
    real = pki.read_pem(ca.cert)
    expected = pki.fingerprint(real)
    assert join.pinned_ca(real, expected) is not None
    mallory = pki.create_ca(tmp_path / "mallory")
    assert join.pinned_ca(real + pki.read_pem(mallory.cert), expected) is None
    assert join.pinned_ca(pki.read_pem(mallory.cert), expected) is None
    leaf = pki.issue(tmp_path / "ca", tmp_path / "leaf", "leaf", sans=["127.0.0.1"], usage="server")
    assert join.pinned_ca(pki.read_pem(leaf.cert), pki.fingerprint(pki.read_pem(leaf.cert))) is None  # not a CA
