"""The Raft port and the group's shared secret (``--secret-file``).

pysyncobj unpickles whatever a peer sends, so an open Raft port runs the code of anyone who
can connect to it. With a secret every message is sealed (Fernet: AES + HMAC) and a connection
that cannot authenticate is dropped before anything is unpickled.
"""

from __future__ import annotations

import io
import pickle
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from barn_cluster import Cluster


class CreateFile:
    """Unpickling this creates a file: the smallest proof of running the sender's code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (io.open, (str(self.path), "w"))


def send_raw(raft_address: str, message: object) -> None:
    """One message framed as pysyncobj's transport frames it: length, zlib(pickle)."""
    host, port = raft_address.rsplit(":", 1)
    payload = zlib.compress(pickle.dumps(message), 3)
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(struct.pack("i", len(payload)) + payload)
        time.sleep(0.3)  # let the server read it before the connection closes


def wait_for_file(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return path.exists()


def test_without_a_secret_the_raft_port_runs_what_it_is_sent_and_the_server_warns(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, size=1)
    cluster.start()
    try:
        marker = tmp_path / "ran-the-senders-code"
        send_raw(cluster.raft["a"], CreateFile(marker))
        assert wait_for_file(marker, 3.0), "the forged message was not unpickled: is this test still needed?"
        assert "unauthenticated" in (tmp_path / "a.log").read_text()
    finally:
        cluster.stop()


def test_with_a_secret_the_group_serves_and_forged_messages_are_dropped(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a shared secret of the three members\n")
    secret.chmod(0o600)
    cluster = Cluster(tmp_path, size=3, options=("--secret-file", str(secret)))
    cluster.start()
    try:
        barn = cluster.client()
        barn.put("/k", b"before")
        marker = tmp_path / "ran-the-senders-code"
        for name in cluster.names:
            send_raw(cluster.raft[name], CreateFile(marker))
        assert not wait_for_file(marker, 1.0), "a forged message was unpickled despite the secret"
        barn.put("/k", b"after")
        assert barn.get("/k").value == b"after"
        assert "unauthenticated" not in (tmp_path / "a.log").read_text()
        barn.close()
    finally:
        cluster.stop()


def test_a_member_with_another_secret_is_kept_out(tmp_path: Path) -> None:
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("the secret of members a and b")
    wrong.write_text("a different secret held by c")
    right.chmod(0o600)
    wrong.chmod(0o600)
    cluster = Cluster(tmp_path, size=3)
    cluster.options = ("--secret-file", str(right))
    cluster.start("a", "b")
    cluster.options = ("--secret-file", str(wrong))
    cluster.start("c")
    try:
        barn = cluster.client("a", "b")
        barn.put("/k", b"v")  # a and b are a quorum of 3
        time.sleep(1.0)  # ample for c to be sent the entry, were it connected
        status = cluster.status("c")
        assert status["state"] != "leader" and not status.get("leader"), status
        assert status["revision"] == 0, f"c applied entries from members it cannot authenticate: {status}"
        barn.close()
    finally:
        cluster.stop()


def test_a_missing_or_short_secret_file_is_a_one_line_error(tmp_path: Path) -> None:
    def serve(secret_file: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "runink.plugins.barn.raft.server", "--name", "a",
                   "--raft", "127.0.0.1:1", "--http", "127.0.0.1:2", "--data-dir", str(tmp_path / "data"),
                   "--secret-file", str(secret_file), "--plaintext"]  # fmt: skip
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)

    missing = serve(tmp_path / "absent")
    assert missing.returncode == 2
    assert f"--secret-file {tmp_path / 'absent'}: no such file" in missing.stderr
    (tmp_path / "open").write_text("a secret others may read")
    others = serve(tmp_path / "open")  # (it keeps code sent to the Raft port from running here)
    assert others.returncode == 2 and "has mode 0644: group or others may read it; refused" in others.stderr
    (tmp_path / "short").write_text("short")
    (tmp_path / "short").chmod(0o600)
    short = serve(tmp_path / "short")
    assert short.returncode == 2 and "the secret has 5 bytes, at least 16 needed" in short.stderr
    assert "Traceback" not in missing.stderr + short.stderr
