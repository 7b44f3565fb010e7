"""The TLS files a Runink process is given (``--tls-cert``, ``--tls-key``, ``--tls-ca``) and what
is built from them: the REST API's HTTPS, the agents' gRPC stream with mutual TLS, and the
Barn member's and client's flags.

Certificates are the cluster CA's (core/server/pki.py). Their common names say what they are:
``server.NAME`` for a server (serverAuth and clientAuth: it is the Barn's client too) and
``node.NAME`` for an agent (clientAuth): a gRPC stream presenting ``node.NAME`` acts as node
NAME only, whatever it claims.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runink.core.errors import RuninkError
from runink.core.server import pki

if TYPE_CHECKING:
    import grpc

SERVER_PREFIX = "server."  # a server's certificate: server.NAME
NODE_PREFIX = "node."  # an agent's: node.NAME


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def given(cls, cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles | None:
        """The three files if all were given (each checked: a certificate of ``ca`` with its key),
        None if none was; RuninkError naming what is missing or wrong otherwise."""
        flags = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
        missing = [flag for flag, value in flags.items() if value is None]
        if len(missing) == len(flags):
            return None
        if missing:
            raise RuninkError(f"{', '.join(missing)} missing: --tls-cert, --tls-key and --tls-ca go together")
        assert cert is not None and key is not None and ca is not None
        files = cls(Path(cert), Path(key), Path(ca))
        try:
            pki.client_context(files.cert, files.key, files.ca)  # (loads all three: a bad one is said now)
        except pki.PkiError as exc:
            raise RuninkError(f"TLS: {exc}") from None
        return files

    def _bytes(self) -> tuple[bytes, bytes, bytes]:
        try:
            return pki.read_pem(self.cert), pki.read_pem(self.key), pki.read_pem(self.ca)
        except pki.PkiError as exc:
            raise RuninkError(f"TLS: {exc}") from None

    def grpc_server(self) -> grpc.ServerCredentials:
        """The agent service's: its certificate, and a client certificate of the CA required."""
        import grpc

        cert, key, ca = self._bytes()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def grpc_channel(self) -> grpc.ChannelCredentials:
        """An agent's: trusts the CA only, presents its node certificate."""
        import grpc

        cert, key, ca = self._bytes()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def barn_flags(self) -> list[str]:
        """``runink barn serve``'s: mutual TLS between members and with its clients."""
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]

    def barn_options(self) -> dict[str, Any]:
        """The raft Barn driver's, for a server's client of its member."""
        return {"tls_ca": str(self.ca), "tls_cert": str(self.cert), "tls_key": str(self.key)}


def certificate_issued(auth_context: dict[str, Any]) -> float | None:
    """When a gRPC peer's verified certificate counts as issued, for its node's revocation
    (seconds since the epoch), or None when it presented none: its not-before, which pki.py
    sets CLOCK_SKEW before the signing. So a certificate a server whose clock runs ahead (by
    less than that) signed before a revocation made through another server still falls under
    it; one signed after a node's revocation starts after it (join.sign_node)."""
    pems = auth_context.get("x509_pem_cert") or []
    if len(pems) != 1:
        return None
    from cryptography import x509

    pem = pems[0] if isinstance(pems[0], bytes) else str(pems[0]).encode()
    return x509.load_pem_x509_certificate(pem).not_valid_before_utc.timestamp()


def node_of_peer(auth_context: dict[str, Any]) -> str | None:
    """The node a gRPC peer's verified certificate names (``node.NAME``), or None when it
    presented none (plaintext) or one that is not a node's (a server's, say)."""
    names = auth_context.get("x509_common_name") or []
    if len(names) != 1:
        return None
    name = names[0].decode("utf-8", "replace") if isinstance(names[0], bytes) else str(names[0])
    if not name.startswith(NODE_PREFIX) or len(name) == len(NODE_PREFIX):
        return None
    return name[len(NODE_PREFIX) :]
