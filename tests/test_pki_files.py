"""Keys and CAs read from files another user could reach are refused: a private key others may
read (a CA's let them mint certificates), a --tls-ca-key that is not the CA's key (found only
at the first join, its path in the answer), and `runink server --init` into another user's folder
or over a CA planted there (a review's runs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import CliRunner

from runink.core.server import pki


def test_a_private_key_others_may_read_is_refused(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "ca")
    server = pki.issue(tmp_path / "ca", tmp_path / "out", "server.s0", sans=["127.0.0.1"], usage="both")
    pki.server_context(server.cert, server.key, ca.cert)  # (0600: taken)
    os.chmod(server.key, 0o644)
    with pytest.raises(pki.PkiError, match=r"private key .* has mode 0644: group or others may read it; refused"):
        pki.server_context(server.cert, server.key, ca.cert)
    os.chmod(ca.key, 0o640)
    with pytest.raises(pki.PkiError, match="others may read"):
        pki.issue(tmp_path / "ca", tmp_path / "more", "server.s1", sans=["127.0.0.1"], usage="both")


def test_a_ca_key_is_checked_against_its_certificate(tmp_path: Path) -> None:
    ca, other = pki.create_ca(tmp_path / "ca"), pki.create_ca(tmp_path / "other")
    pki.check_ca_key(ca.cert, ca.key)
    with pytest.raises(pki.PkiError, match="not the key of the CA"):
        pki.check_ca_key(ca.cert, other.key)


def test_server_init_refuses_another_users_folder_and_a_ca_planted_in_it(run_cli: CliRunner, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    out = run_cli("server", "--init", str(foreign))
    assert out.returncode != 0 and "owned by uid 65534" in out.stderr and "Traceback" not in out.stderr
    mine = tmp_path / "mine"
    pki.create_ca(mine)
    for name in (pki.CA_CERT, pki.CA_KEY):
        os.chown(mine / name, 65534, 65534)  # (as if another user had planted them)
    out = run_cli("server", "--init", str(mine))
    assert out.returncode != 0 and "a CA found here is not used" in out.stderr, out.stderr
    shutil.rmtree(mine)
    made = run_cli("server", "--init", str(mine))
    assert made.returncode == 0 and "--tls-ca" in made.stdout, made.stderr


def test_a_fifo_or_a_huge_file_at_a_certificate_or_key_path_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO put at a key's path hung the process for good: it is opened without waiting."""
    ca = pki.create_ca(tmp_path / "ca")
    server = pki.issue(tmp_path / "ca", tmp_path / "out", "server.s0", sans=["127.0.0.1"], usage="both")
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(pki.PkiError, match="not a regular file, refused"):
        pki.server_context(server.cert, fifo, ca.cert)
    with pytest.raises(pki.PkiError, match="not a regular file, refused"):
        pki.server_context(fifo, server.key, ca.cert)
    huge = tmp_path / "huge.pem"
    with open(huge, "wb") as out:
        out.truncate(pki.MAX_PEM + 1)  # (sparse)
    with pytest.raises(pki.PkiError, match="larger than"):
        pki.server_context(server.cert, server.key, huge)
