"""The cluster's certificate authority and the TLS contexts built on it.

``create_ca`` makes the cluster CA (an EC P-256 key and a self-signed certificate valid for 10
years: ``ca.pem``, ``ca-key.pem``); ``issue`` signs a certificate for a server, a client or
both (EKU serverAuth / clientAuth) with its names (SANs: DNS names and IP addresses);
``server_context`` and ``client_context`` are ``ssl`` contexts for TLS 1.2+ (1.3 when both
sides have it) that trust only the cluster CA.

Files: keys are written 0600 and certificates 0644, each through a temporary file linked into
place, so a reader never sees half a file and an existing file is never replaced (a second
``create_ca`` in the same directory is an error, not a new CA that would orphan every issued
certificate). Files are opened without following a symbolic link as their last component, so
a link planted where a key is expected is refused rather than read or written through.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import ipaddress
import os
import re
import ssl
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runink.core.fstree import check_private

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CA_DAYS = 3650
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates are valid from a little before now: peers' clocks differ
Usage = Literal["server", "client", "both"]
USAGES: dict[str, tuple[x509.ObjectIdentifier, ...]] = {
    "server": (ExtendedKeyUsageOID.SERVER_AUTH,),
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH,),
    "both": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
}
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class CertFiles(NamedTuple):
    cert: Path
    key: Path


class PkiError(ValueError):
    """A CA or certificate cannot be made or loaded; the message names the file and why."""


# --- making -----------------------------------------------------------------------------


def create_ca(directory: str | Path, name: str = "runink cluster CA") -> CertFiles:
    """A new CA in ``directory`` (created 0700 if missing): ``ca.pem`` and ``ca-key.pem`` (0600).
    Refuses (PkiError) if either file exists."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = CertFiles(directory / CA_CERT, directory / CA_KEY)
    for path in files:
        if os.path.lexists(path):
            raise PkiError(f"{path}: exists already; a cluster CA is never overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(files.key, _key_pem(key), 0o600)
    try:
        _write_new(files.cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        files.key.unlink()  # no key without its certificate: the next create_ca may run
        raise
    return files


def issue(
    ca_dir: str | Path,
    out_dir: str | Path,
    common_name: str,
    *,
    sans: Sequence[str],
    usage: Usage,
    days: int = 365,
) -> CertFiles:
    """A certificate for ``common_name`` signed by the CA in ``ca_dir``, written to ``out_dir`` as
    ``<common_name>.pem`` and ``<common_name>-key.pem`` (0600); refuses to overwrite either.

    ``sans``: the names a peer checks (IP addresses and DNS names; a server needs one at least);
    ``usage``: "server" (serverAuth), "client" (clientAuth) or "both". Valid ``days`` days, never
    past the CA's own expiry."""
    if usage not in USAGES:
        raise PkiError(f"usage must be one of {', '.join(USAGES)}, got {usage!r}")
    if not _SAFE_NAME.fullmatch(common_name):
        raise PkiError(f"common name {common_name!r}: letters, digits, '.', '_' and '-' only (it names the files)")
    if days <= 0:
        raise PkiError(f"days must be positive, got {days}")
    names = [_san(text) for text in sans]
    if usage != "client" and not names:
        raise PkiError(f"{common_name}: a server certificate needs at least one SAN (the names clients check)")
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert = _load_cert(ca_dir / CA_CERT)
    ca_key = _load_key(ca_dir / CA_KEY)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = CertFiles(out_dir / f"{common_name}.pem", out_dir / f"{common_name}-key.pem")
    for path in files:
        if os.path.lexists(path):
            raise PkiError(f"{path}: exists already; not overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _signed(ca_cert, ca_key, key.public_key(), common_name, usage=usage, days=days, names=names)
    _write_new(files.key, _key_pem(key), 0o600)
    try:
        _write_new(files.cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        files.key.unlink()
        raise
    return files


def new_request(common_name: str, key_path: str | Path) -> bytes:
    """A new EC P-256 key written to ``key_path`` (0600, never overwritten) and a certificate
    signing request (PEM) for ``common_name`` with it: the key never leaves the machine."""
    if not _SAFE_NAME.fullmatch(common_name):
        raise PkiError(f"common name {common_name!r}: letters, digits, '.', '_' and '-' only")
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    _write_new(Path(key_path), _key_pem(key), 0o600)
    return request.public_bytes(serialization.Encoding.PEM)


def sign_request(
    ca_cert: str | Path,
    ca_key: str | Path,
    request_pem: bytes,
    common_name: str,
    *,
    usage: Usage,
    days: int = 365,
    not_before: float | None = None,
) -> bytes:
    """A certificate (PEM) for the key of ``request_pem`` (a CSR), signed by the CA, named
    ``common_name`` whatever the request says (the signer decides who it is), for ``usage``,
    with no SAN, valid from no earlier than ``not_before``. PkiError for a request that is not
    one, or whose signature does not hold."""
    if usage not in USAGES:
        raise PkiError(f"usage must be one of {', '.join(USAGES)}, got {usage!r}")
    if not _SAFE_NAME.fullmatch(common_name):
        raise PkiError(f"common name {common_name!r}: letters, digits, '.', '_' and '-' only")
    try:
        request = x509.load_pem_x509_csr(request_pem)
    except ValueError:
        raise PkiError("not a PEM certificate signing request") from None
    if not request.is_signature_valid:
        raise PkiError("the signing request's signature does not hold")
    public_key = request.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise PkiError("the signing request's key is not EC P-256")
    authority, authority_key = _load_cert(Path(ca_cert)), _load_key(Path(ca_key))
    certificate = _signed(
        authority, authority_key, public_key, common_name, usage=usage, days=days, not_before=not_before
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def check_ca_key(ca_cert: str | Path, ca_key: str | Path) -> None:
    """PkiError unless ``ca_key`` is a private file of this user's holding the key of the CA
    certificate ``ca_cert`` (a server given another finds out at its first join, not at start)."""
    authority, key = _load_cert(Path(ca_cert)), _load_key(Path(ca_key))
    public = authority.public_key()
    same = (
        isinstance(public, ec.EllipticCurvePublicKey) and public.public_numbers() == key.public_key().public_numbers()
    )
    if not same:
        raise PkiError(f"{ca_key}: not the key of the CA {ca_cert}")


def _signed(
    authority: x509.Certificate,
    authority_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    *,
    usage: Usage,
    days: int,
    names: Sequence[x509.GeneralName] = (),
    not_before: float | None = None,
) -> x509.Certificate:
    """A leaf certificate (no CA) for ``public_key``, signed by the CA: valid from a little
    before now (peers' clocks differ; no earlier than ``not_before``, seconds since the epoch)
    for ``days`` days, never past the CA's own expiry."""
    now = _now()
    start = now - CLOCK_SKEW
    if not_before is not None:
        start = max(start, dt.datetime.fromtimestamp(not_before, dt.UTC))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(authority.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(now + dt.timedelta(days=days), authority.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(USAGES[usage])), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(authority_key, hashes.SHA256())


def fingerprint(pem: bytes) -> str:
    """A certificate's SHA-256 fingerprint (hex of its DER): how a join token names the CA."""
    try:
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError:
        raise PkiError("not a PEM certificate") from None
    return hashlib.sha256(der).hexdigest()


def one_ca(pem: bytes) -> bytes:
    """``pem`` as exactly one CA certificate, re-encoded (what a joining node keeps): PkiError
    for anything else, so no second certificate rides along with the one a fingerprint names."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise PkiError("not PEM certificates") from None
    if len(certificates) != 1:
        raise PkiError(f"{len(certificates)} certificates where one CA certificate is expected")
    try:
        constraints = certificates[0].extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise PkiError("the certificate is not a CA's (no basic constraints)") from None
    if not constraints.ca:
        raise PkiError("the certificate is not a CA's")
    return certificates[0].public_bytes(serialization.Encoding.PEM)


def write_new(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """``_write_new`` for callers: a file made whole or not at all, never replacing one."""
    _write_new(Path(path), data, mode)


def usages(der: bytes) -> set[str]:
    """What a certificate (DER, as ``getpeercert(binary_form=True)`` gives it) is for:
    {"server", "client"}, either or neither, from its extended key usage."""
    try:
        extension = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return set()
    found = set(extension.value)
    return {
        what
        for what, oid in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH))
        if oid in found
    }


def names(der: bytes) -> set[str]:
    """The names a certificate (DER) is for: its SANs, IP addresses in their compressed form,
    DNS names lowercased (a wildcard as written, ``*.example.com``)."""
    try:
        extension = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    found = {str(ip) for ip in extension.value.get_values_for_type(x509.IPAddress)}
    return found | {name.lower() for name in extension.value.get_values_for_type(x509.DNSName)}


def names_host(der: bytes, host: str) -> bool:
    """Whether the certificate (DER) is for ``host`` (an IP address or a DNS name), as a TLS
    client checks a server's: exact, or a wildcard standing for the leftmost label."""
    held = names(der)
    try:
        return str(ipaddress.ip_address(host.strip("[]"))) in held
    except ValueError:
        pass
    host = host.lower().rstrip(".")
    first, _, rest = host.partition(".")
    return host in held or (bool(first) and bool(rest) and f"*.{rest}" in held)


def read_pem(path: str | Path) -> bytes:
    """A PEM file's bytes, read without following a symbolic link (for APIs that take bytes,
    such as ``grpc.ssl_server_credentials``); PkiError naming the file if it cannot be read."""
    return _read(Path(path))


def read_certificate(path: str | Path) -> bytes:
    """The certificate in the PEM file ``path``, as DER (what ``usages`` takes)."""
    return _load_cert(Path(path)).public_bytes(serialization.Encoding.DER)


# --- using ------------------------------------------------------------------------------


def server_context(
    cert: str | Path, key: str | Path, ca: str | Path, *, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A server's context: this certificate and key. With ``require_client_cert`` a client
    must present a certificate signed by the CA ``ca`` (mutual TLS), else the handshake fails;
    without, a client may present none (then authenticate otherwise, e.g. a bearer token), but
    one it presents must still be of the CA (``peercert`` then names a verified client)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, Path(cert), Path(key))
    context.load_verify_locations(cadata=_read(Path(ca)).decode("ascii", "replace"))
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def https_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """An HTTPS server's context (the REST API's): this certificate and key, TLS 1.2 at least,
    no client certificate asked (clients send tokens); loaded without following a link."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, Path(cert), Path(key))
    return context


def client_context(
    cert: str | Path | None, key: str | Path | None, ca: str | Path, *, check_hostname: bool = True
) -> ssl.SSLContext:
    """A client's context: trusts only the CA ``ca`` and (``check_hostname``) checks the server's
    name against its certificate's SANs; presents ``cert``/``key`` if given (both or neither)."""
    if (cert is None) != (key is None):
        raise PkiError("a client certificate needs its key, and a key its certificate: give both or neither")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=_read(Path(ca)).decode("ascii", "replace"))
    if cert is not None and key is not None:
        _load_chain(context, Path(cert), Path(key))
    return context


# --- files ------------------------------------------------------------------------------


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[int]:
    """A descriptor of ``path``, a regular file: refused if its last component is a symbolic
    link, or it is a FIFO (opened without waiting for a writer: a FIFO put at a key's path hung
    the process, a review) or anything else but a file."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        reason = "a symbolic link, refused" if error.errno == errno.ELOOP else (error.strerror or str(error))
        raise PkiError(f"{path}: {reason}") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise PkiError(f"{path}: not a regular file, refused")
        yield descriptor
    finally:
        os.close(descriptor)


MAX_PEM = 1 << 20  # bytes of a certificate or key file, at most


def _read(path: Path) -> bytes:
    with _opened(path) as descriptor, os.fdopen(os.dup(descriptor), "rb") as source:
        data = source.read(MAX_PEM + 1)
    if len(data) > MAX_PEM:
        raise PkiError(f"{path}: larger than {MAX_PEM} bytes, refused")
    return data


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    # ssl loads a chain only from paths: the descriptors opened without following a link,
    # through /proc (Linux), so the file checked is the file loaded
    with _opened(cert) as cert_fd, _opened(key) as key_fd:
        _private(key, key_fd)
        try:
            if os.path.isdir("/proc/self/fd"):
                context.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}")
            else:
                context.load_cert_chain(cert, key)
        except ssl.SSLError as error:
            raise PkiError(f"{cert} / {key}: not a certificate and its key ({error.reason or error})") from None


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as error:
        if isinstance(error, PkiError):
            raise
        raise PkiError(f"{path}: not a PEM certificate") from None


def _private(path: Path, descriptor: int) -> None:
    """PkiError unless the key file open at ``descriptor`` is a private file of this user's
    (fstree.check_private: a CA's key readable by others let them mint certificates)."""
    check_private(os.fstat(descriptor), path, "private key", PkiError)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    with _opened(path) as descriptor, os.fdopen(os.dup(descriptor), "rb") as source:
        _private(path, descriptor)
        data = source.read(MAX_PEM + 1)
    if len(data) > MAX_PEM:
        raise PkiError(f"{path}: larger than {MAX_PEM} bytes, refused")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        if isinstance(error, PkiError):
            raise
        raise PkiError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: not an EC key")
    return key


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """``path`` with ``data``, created with ``mode`` through a temporary file linked into place:
    never half-written, never replacing a file (or link) that is there (PkiError)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)  # the umask may have narrowed it (never widened: 0600 stays)
        try:
            os.link(temporary, path)  # fails if the name exists, unlike rename
        except FileExistsError:
            raise PkiError(f"{path}: exists already; not overwritten") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _san(text: str) -> x509.GeneralName:
    text = text.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    labels = text.split(".")
    if labels and labels[0] == "*":  # one wildcard, leftmost only
        labels = labels[1:]
    if not text or len(text) > 253 or not labels or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise PkiError(f"SAN {text!r}: neither an IP address nor a DNS name")
    return x509.DNSName(text.lower())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
