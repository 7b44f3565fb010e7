"""The cluster CA (core/server/pki.py): files, certificates, and real TLS handshakes over a
loopback socket pair."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from runink.core.server import pki


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "127.0.0.1") -> tuple[str, str]:
    """Both sides of a TLS handshake over a socket pair: each side's outcome ("ok" with the
    TLS version, or the error). The server side echoes one message so the client sees a
    refusal of its certificate (with TLS 1.3 it arrives after the client's handshake)."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    outcome = {"server": "", "client": ""}

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                tls.sendall(tls.recv(5))
                outcome["server"] = f"ok {tls.version()}"
        except (ssl.SSLError, OSError) as error:
            outcome["server"] = f"refused: {error}"
            left.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right, server_hostname=hostname) as tls:
            tls.sendall(b"hello")
            echoed = tls.recv(5)
            outcome["client"] = f"ok {tls.version()}" if echoed == b"hello" else f"refused: echo {echoed!r}"
    except (ssl.SSLError, OSError) as error:
        outcome["client"] = f"refused: {error}"
        right.close()
    thread.join(10)
    return outcome["server"], outcome["client"]


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    pki.create_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_create_ca_writes_a_ca_certificate_and_a_private_key_and_never_overwrites(tmp_path: Path) -> None:
    files = pki.create_ca(tmp_path / "ca", name="test CA")
    assert files == (tmp_path / "ca" / "ca.pem", tmp_path / "ca" / "ca-key.pem")
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certificate.subject.rfc4514_string() == "CN=test CA"
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 3649 <= lifetime.days <= 3651
    key_before = files.key.read_bytes()
    with pytest.raises(pki.PkiError, match="exists already"):
        pki.create_ca(tmp_path / "ca")
    assert files.key.read_bytes() == key_before
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca-key.pem", "ca.pem"]  # no temporary left


def test_issue_sets_usages_and_names(ca: Path, tmp_path: Path) -> None:
    files = pki.issue(ca, tmp_path / "certs", "barn-a", sans=["127.0.0.1", "barn-a.example", "::1"], usage="both")
    assert files == (tmp_path / "certs" / "barn-a.pem", tmp_path / "certs" / "barn-a-key.pem")
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate(files.cert.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert names.get_values_for_type(x509.DNSName) == ["barn-a.example"]
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    der = ssl.PEM_cert_to_DER_cert(files.cert.read_text())
    assert pki.usages(der) == {"server", "client"}
    client = pki.issue(ca, tmp_path / "certs", "alice", sans=[], usage="client")
    assert pki.usages(ssl.PEM_cert_to_DER_cert(client.cert.read_text())) == {"client"}
    with pytest.raises(pki.PkiError, match="exists already"):
        pki.issue(ca, tmp_path / "certs", "barn-a", sans=["127.0.0.1"], usage="server")


def test_names_host_matches_as_a_tls_client_checks_a_server(ca: Path, tmp_path: Path) -> None:
    files = pki.issue(ca, tmp_path, "s", sans=["10.0.0.1", "::1", "Barn.Example", "*.nodes.example"], usage="both")
    der = pki.read_certificate(files.cert)
    assert pki.names(der) == {"10.0.0.1", "::1", "barn.example", "*.nodes.example"}
    for host in ("10.0.0.1", "[::1]", "0:0::1", "barn.example", "BARN.example.", "a.nodes.example"):
        assert pki.names_host(der, host), host
    for host in ("10.0.0.2", "example", "other.example", "nodes.example", "a.b.nodes.example", ""):
        assert not pki.names_host(der, host), host


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (("a", ["not a name!"], "server"), "neither an IP address nor a DNS name"),
        (("a", [], "server"), "needs at least one SAN"),
        (("../a", ["127.0.0.1"], "server"), "letters, digits"),
        (("a", ["127.0.0.1"], "peer"), "usage must be one of"),
    ],
)
def test_issue_refuses_bad_input_in_one_line(
    ca: Path, tmp_path: Path, case: tuple[str, list[str], str], message: str
) -> None:
    name, sans, usage = case
    with pytest.raises(pki.PkiError, match=message) as caught:
        pki.issue(ca, tmp_path / "certs", name, sans=sans, usage=usage)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_a_key_behind_a_symbolic_link_is_refused(ca: Path, tmp_path: Path) -> None:
    files = pki.issue(ca, tmp_path / "certs", "s", sans=["127.0.0.1"], usage="server")
    link = tmp_path / "link-key.pem"
    link.symlink_to(files.key)
    with pytest.raises(pki.PkiError, match="symbolic link"):
        pki.server_context(files.cert, link, ca / "ca.pem")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "ca2").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "ca2" / "ca.pem").symlink_to(tmp_path / "elsewhere" / "target")
    with pytest.raises(pki.PkiError, match="exists already"):  # a link where the CA goes is not written through
        pki.create_ca(tmp_path / "ca2")
    assert not (tmp_path / "elsewhere" / "target").exists()


def test_mutual_tls_accepts_a_certificate_of_the_ca_only(ca: Path, tmp_path: Path) -> None:
    server = pki.issue(ca, tmp_path / "certs", "server", sans=["127.0.0.1"], usage="server")
    client = pki.issue(ca, tmp_path / "certs", "client", sans=[], usage="client")
    pki.create_ca(tmp_path / "other-ca")
    stranger = pki.issue(tmp_path / "other-ca", tmp_path / "other", "client", sans=[], usage="client")
    server_context = pki.server_context(server.cert, server.key, ca / "ca.pem")

    accepted = handshake(server_context, pki.client_context(client.cert, client.key, ca / "ca.pem"))
    assert accepted == ("ok TLSv1.3", "ok TLSv1.3")

    server_side, client_side = handshake(server_context, pki.client_context(stranger.cert, stranger.key, ca / "ca.pem"))
    assert "certificate verify failed" in server_side, server_side
    assert client_side.startswith("refused"), client_side

    server_side, client_side = handshake(server_context, pki.client_context(None, None, ca / "ca.pem"))
    assert "peer did not return a certificate" in server_side, server_side
    assert client_side.startswith("refused"), client_side


def test_a_server_not_requiring_a_client_certificate_still_verifies_one_presented(ca: Path, tmp_path: Path) -> None:
    server = pki.issue(ca, tmp_path / "certs", "server", sans=["127.0.0.1"], usage="server")
    client = pki.issue(ca, tmp_path / "certs", "client", sans=[], usage="client")
    pki.create_ca(tmp_path / "other-ca")
    stranger = pki.issue(tmp_path / "other-ca", tmp_path / "other", "client", sans=[], usage="client")
    optional = pki.server_context(server.cert, server.key, ca / "ca.pem", require_client_cert=False)
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    assert handshake(optional, pki.client_context(None, None, ca / "ca.pem"))[0] == "ok TLSv1.3"
    assert handshake(optional, pki.client_context(client.cert, client.key, ca / "ca.pem"))[0] == "ok TLSv1.3"
    server_side, _ = handshake(optional, pki.client_context(stranger.cert, stranger.key, ca / "ca.pem"))
    assert "certificate verify failed" in server_side, server_side


def test_read_pem_refuses_a_symbolic_link(ca: Path, tmp_path: Path) -> None:
    assert pki.read_pem(ca / "ca.pem").startswith(b"-----BEGIN CERTIFICATE-----")
    (tmp_path / "link.pem").symlink_to(ca / "ca.pem")
    with pytest.raises(pki.PkiError, match="symbolic link"):
        pki.read_pem(tmp_path / "link.pem")
    with pytest.raises(pki.PkiError, match="No such file"):
        pki.read_pem(tmp_path / "absent.pem")


def test_the_client_checks_the_servers_ca_and_name(ca: Path, tmp_path: Path) -> None:
    server = pki.issue(ca, tmp_path / "certs", "server", sans=["barn.example"], usage="server")
    client = pki.issue(ca, tmp_path / "certs", "client", sans=[], usage="client")
    context = pki.server_context(server.cert, server.key, ca / "ca.pem")
    trusting = pki.client_context(client.cert, client.key, ca / "ca.pem")
    assert handshake(context, trusting, hostname="barn.example")[1] == "ok TLSv1.3"
    _, client_side = handshake(context, trusting, hostname="127.0.0.1")
    assert "IP address mismatch" in client_side, client_side
    pki.create_ca(tmp_path / "other-ca")
    distrusting = pki.client_context(client.cert, client.key, tmp_path / "other-ca" / "ca.pem")
    _, client_side = handshake(context, distrusting, hostname="barn.example")
    assert "certificate verify failed" in client_side, client_side


def test_contexts_refuse_tls_older_than_1_2(ca: Path, tmp_path: Path) -> None:
    server = pki.issue(ca, tmp_path / "certs", "server", sans=["127.0.0.1"], usage="both")
    for context in (
        pki.server_context(server.cert, server.key, ca / "ca.pem"),
        pki.client_context(server.cert, server.key, ca / "ca.pem"),
    ):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_REQUIRED
