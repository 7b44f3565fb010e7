"""Mutual TLS in the raft Barn (plugins/barn/raft/tls.py): between members and on the HTTP API,
with certificates of the cluster CA (core/server/pki.py). Real member processes on loopback."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from barn_cluster import Cluster
from fixture_types import CliRunner
from test_barn_secret import CreateFile, send_raw, wait_for_file

from runink.core.drivers import load_driver
from runink.core.interfaces import BarnBackend
from runink.core.model import Grant
from runink.core.security import CLUSTER
from runink.core.server import pki
from runink.core.server.auth import LEEWAY, MAX_TTL, ClusterTokens, new_key_file
from runink.core.server.revocations import Revocations


class TlsCluster(Cluster):
    """``Cluster`` whose members get ``--tls-*`` flags from ``identities`` (name -> (cert, key,
    ca); a member missing from it runs plaintext) and whose client speaks HTTPS with a client
    certificate of the cluster CA."""

    def __init__(self, root: Path, ca: Path, identities: dict[str, tuple[Path, Path, Path]], size: int = 3) -> None:
        super().__init__(root, size=size, fsync=False)
        self.identities = identities
        # a server's (both usages): the HTTP API serves no client-only certificate
        self.user = pki.issue(ca, root / "certs", "test-client", sans=["127.0.0.1"], usage="both")
        self.ca = ca

    def command(self, name: str) -> list[str]:
        command = super().command(name)
        if name in self.identities:
            cert, key, ca = self.identities[name]
            command = [part for part in command if part != "--plaintext"]
            command += ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)]
        return command

    def client(self, *names: str, timeout: float = 10.0) -> Any:
        options = {
            "endpoints": [self.http[n] for n in names or self.names],
            "timeout": timeout,
            "tls_ca": str(self.ca / "ca.pem"),
            "tls_cert": str(self.user.cert),
            "tls_key": str(self.user.key),
        }
        return load_driver(BarnBackend, "raft", options)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")


def member_identities(ca: Path, out: Path, names: str) -> dict[str, tuple[Path, Path, Path]]:
    return {
        name: (*pki.issue(ca, out, f"barn-{name}", sans=["127.0.0.1"], usage="both"), ca / "ca.pem") for name in names
    }


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    pki.create_ca(tmp_path / "ca")
    return tmp_path / "ca"


def wait_until(check: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


def test_a_tls_group_elects_a_leader_and_serves_through_the_tls_client(
    tmp_path: Path, ca: Path, run_cli: CliRunner
) -> None:
    cluster = TlsCluster(tmp_path, ca, member_identities(ca, tmp_path / "certs", "abc"))
    cluster.start()
    try:
        leader = cluster.leader()
        barn = cluster.client()
        assert barn.put("/k", b"v") == 1
        assert barn.get("/k").value == b"v"
        follower = next(n for n in cluster.names if n != leader)
        via_follower = cluster.client(follower)  # the follower forwards to the leader over HTTPS
        assert via_follower.put("/k2", b"v2") == 2
        assert via_follower.get("/k2").value == b"v2"
        assert wait_until(lambda: all(p["connected"] for p in cluster.status(leader)["peers"].values()), 5)
        barn.close()
        via_follower.close()
        endpoints = ",".join(cluster.http.values())
        tls = {"RUNINK_BARN_TLS_CA": str(ca / "ca.pem"), "RUNINK_BARN_TLS_CERT": str(cluster.user.cert),
               "RUNINK_BARN_TLS_KEY": str(cluster.user.key)}  # fmt: skip
        status = run_cli("barn", "status", "--endpoints", endpoints, "--json", env=tls)
        assert status.returncode == 0, status.stderr
        assert sorted(json.loads(status.stdout)[i]["state"] for i in range(3)) == ["follower", "follower", "leader"]
        for name in cluster.names:
            assert "refused" not in cluster.log(name), cluster.log(name)
            assert "unauthenticated" not in cluster.log(name)  # TLS authenticates the Raft port
    finally:
        cluster.stop()


def test_tls_and_a_shared_secret_together(tmp_path: Path, ca: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a shared secret of the three members")
    secret.chmod(0o600)
    cluster = TlsCluster(tmp_path, ca, member_identities(ca, tmp_path / "certs", "abc"))
    cluster.options = ("--secret-file", str(secret))  # pysyncobj's sealing, inside the TLS connection
    cluster.start()
    try:
        barn = cluster.client()
        assert barn.put("/k", b"v") == 1 and barn.get("/k").value == b"v"
        leader = cluster.leader()
        assert wait_until(lambda: all(p["connected"] for p in cluster.status(leader)["peers"].values()), 5)
        barn.close()
    finally:
        cluster.stop()


def test_a_member_killed_and_restarted_catches_up_over_tls_from_a_snapshot(tmp_path: Path, ca: Path) -> None:
    """Reconnection, and large messages (a snapshot of ~2 MB, sent in many partial writes)."""
    cluster = TlsCluster(tmp_path, ca, member_identities(ca, tmp_path / "certs", "abc"))
    cluster.options = ("--compaction-entries", "50", "--compaction-seconds", "0.1")
    cluster.start()
    try:
        leader = cluster.leader()
        laggard = next(n for n in cluster.names if n != leader)
        barn = cluster.client()
        cluster.kill(laggard)
        value = bytes(range(256)) * 40  # 10 KB, incompressible enough
        for i in range(200):
            barn.put(f"/big/{i:03}", value)
        time.sleep(0.5)  # a compaction period: the entries c lacks are gone from the log
        assert cluster.status(leader)["log_len"] < 100, "no compaction: the test would not send a snapshot"
        cluster.start(laggard)
        laggard_client = cluster.client(laggard)

        def caught_up() -> bool:
            return len(laggard_client.scan("/big/", serializable=True)) == 200

        assert wait_until(caught_up, 15), cluster.status(laggard)
        assert all(kv.value == value for kv in laggard_client.scan("/big/", serializable=True))
        cluster.kill(leader)  # and a new leader is elected over TLS
        assert cluster.leader() != leader
        assert barn.put("/after", b"v") == 201
        barn.close()
        laggard_client.close()
    finally:
        cluster.stop()


def test_a_server_added_to_a_tls_group_joins_over_tls(tmp_path: Path, ca: Path) -> None:
    identities = member_identities(ca, tmp_path / "certs", "abcd")
    cluster = TlsCluster(tmp_path, ca, identities)
    cluster.start()
    try:
        cluster.leader()
        barn = cluster.client("a", "b", "c")
        barn.put("/m/1", b"before")
        cluster.grow("d")
        cluster.start("d")
        added = barn.call("/v1/members/add", {"name": "d", "raft": cluster.raft["d"], "http": cluster.http["d"]})
        assert added["members"] == ["a", "b", "c", "d"]
        barn.put("/m/2", b"after")
        newcomer = cluster.client("d")
        assert wait_until(lambda: len(newcomer.scan("/m/", serializable=True)) == 2, 10)
        newcomer.close()
        barn.close()
        for name in cluster.names:  # the check that d's ports answer is a probe, not a refusal
            assert "refused" not in cluster.log(name), cluster.log(name)
    finally:
        cluster.stop()


def outsider_status(cluster: TlsCluster, name: str, ca: Path) -> dict[str, Any]:
    """``name``'s status, asked with a client certificate of the CA ``ca`` (its own)."""
    user = pki.issue(ca, cluster.root / "outsider", f"client-{time.monotonic_ns()}", sans=["127.0.0.1"], usage="both")
    options = {"endpoints": [cluster.http[name]], "timeout": 3.0, "tls_ca": str(ca / "ca.pem"),
               "tls_cert": str(user.cert), "tls_key": str(user.key)}  # fmt: skip
    client = load_driver(BarnBackend, "raft", options)
    try:
        return dict(client.status())
    finally:
        client.close()


def test_a_member_with_a_certificate_of_another_ca_never_joins(tmp_path: Path, ca: Path) -> None:
    pki.create_ca(tmp_path / "other-ca")
    identities = member_identities(ca, tmp_path / "certs", "ab")
    identities.update(member_identities(tmp_path / "other-ca", tmp_path / "other-certs", "c"))
    cluster = TlsCluster(tmp_path, ca, identities)
    cluster.start()
    try:
        leader = cluster.leader()
        barn = cluster.client("a", "b")
        barn.put("/k", b"v")  # a and b are a quorum of 3
        time.sleep(1.0)  # ample for c to be sent the entry, were it connected
        peers = cluster.status(leader)["peers"]
        assert peers["c"]["connected"] is False and not peers["c"]["match_index"], peers
        outsider = outsider_status(cluster, "c", tmp_path / "other-ca")
        assert outsider["revision"] == 0 and outsider["state"] != "leader", outsider
        assert not any(p["connected"] for p in outsider["peers"].values()), outsider
        barn.close()
        for name in "ab":  # each good member says why, once (not at every reconnection)
            refusals = [line for line in cluster.log(name).splitlines() if "refused" in line]
            assert refusals, cluster.log(name)
            assert all("another CA" in line for line in refusals), refusals
            assert len(refusals) <= 2, refusals  # one per direction at most: from c's host, to c
    finally:
        cluster.stop()


def test_a_member_whose_certificate_names_another_host_cannot_speak_as_a_member(tmp_path: Path, ca: Path) -> None:
    # c's certificate is of the cluster CA but for 127.0.0.1, and c is the member at 127.0.0.2:
    # c connects to a and b (the higher address connects), its handshakes succeed, and the
    # address it then announces is not one its certificate names
    identities = member_identities(ca, tmp_path / "certs", "abc")
    cluster = TlsCluster(tmp_path, ca, identities)
    cluster.raft["c"] = cluster.raft["c"].replace("127.0.0.1", "127.0.0.2")
    cluster.start()
    try:
        leader = cluster.leader()
        barn = cluster.client("a", "b")
        barn.put("/k", b"v")
        time.sleep(1.0)
        peers = cluster.status(leader)["peers"]
        assert peers["c"]["connected"] is False and not peers["c"]["match_index"], peers
        assert cluster.status("c")["revision"] == 0
        barn.close()
        logs = cluster.log("a") + cluster.log("b")
        assert f"it says it is the member at {cluster.raft['c']}, but its certificate is for 127.0.0.1" in logs, logs
    finally:
        cluster.stop()


def test_a_plaintext_member_cannot_join_a_tls_group(tmp_path: Path, ca: Path) -> None:
    cluster = TlsCluster(tmp_path, ca, member_identities(ca, tmp_path / "certs", "ab"))  # c: no --tls-*
    cluster.start()
    try:
        leader = cluster.leader()
        barn = cluster.client("a", "b")
        barn.put("/k", b"v")
        host, port = cluster.raft[leader].rsplit(":", 1)
        idle = socket.create_connection((host, int(port)), timeout=10)  # connects, never speaks
        marker = tmp_path / "ran-the-senders-code"
        send_raw(cluster.raft[leader], CreateFile(marker))  # a plaintext pysyncobj message
        assert not wait_for_file(marker, 0.5), "a TLS member unpickled a plaintext message"
        with socket.create_connection((host, int(port)), timeout=3) as garbage:
            garbage.sendall(bytes(range(256)) * 64)
        no_certificate = pki.client_context(None, None, ca / "ca.pem")
        raw = socket.create_connection((host, int(port)), timeout=3)
        refused = (ssl.SSLError, ConnectionResetError)
        with pytest.raises(refused), no_certificate.wrap_socket(raw, server_hostname=host) as tls:
            tls.recv(1)  # TLS, but no client certificate: refused

        def refused_plaintext() -> bool:
            logs = cluster.log("a") + cluster.log("b")
            return "does not speak TLS" in logs or "no TLS handshake within" in logs

        assert wait_until(refused_plaintext, 6), cluster.log("a") + cluster.log("b")
        peers = cluster.status(leader)["peers"]
        assert peers["c"]["connected"] is False and not peers["c"]["match_index"], peers
        plain = Cluster.client(cluster, "c", timeout=3.0)  # c serves plaintext HTTP
        status = plain.status()
        plain.close()
        assert status["revision"] == 0 and not any(p["connected"] for p in status["peers"].values()), status
        assert barn.put("/k", b"w") == 2  # the members are unhurt by all of it
        assert idle.recv(1) == b"", "a connection that never began a handshake was kept open"
        idle.close()
        barn.close()
    finally:
        cluster.stop()


def https(address: str, context: ssl.SSLContext | None, headers: dict[str, str] | None = None) -> int:
    """The status code of GET /v1/status at ``address`` (HTTPS with ``context``, else plain
    HTTP); raises what the connection raises."""
    host, _, port = address.rpartition(":")
    connection = (
        http.client.HTTPConnection(host, int(port), timeout=3)
        if context is None
        else http.client.HTTPSConnection(host, int(port), timeout=3, context=context)
    )
    try:
        connection.request("GET", "/v1/status", headers=headers or {})
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_http_api_wants_a_client_certificate_of_the_cluster_ca(tmp_path: Path, ca: Path) -> None:
    cluster = TlsCluster(tmp_path, ca, member_identities(ca, tmp_path / "certs", "a"), size=1)
    cluster.start()
    try:
        address = cluster.http["a"]
        user = cluster.user
        assert https(address, pki.client_context(user.cert, user.key, ca / "ca.pem")) == 200
        with pytest.raises((http.client.HTTPException, OSError)):
            https(address, None)  # plaintext HTTP
        refused = (ssl.SSLError, http.client.RemoteDisconnected, ConnectionResetError)  # an alert or just closed
        with pytest.raises(refused):
            https(address, pki.client_context(None, None, ca / "ca.pem"))  # no client certificate
        pki.create_ca(tmp_path / "other-ca")
        stranger = pki.issue(tmp_path / "other-ca", tmp_path / "other", "stranger", sans=[], usage="client")
        with pytest.raises(refused):
            https(address, pki.client_context(stranger.cert, stranger.key, ca / "ca.pem"))
        # a client-only certificate of the cluster CA (an agent's node certificate): 403, not the Barn
        node = pki.issue(ca, tmp_path / "node", "node.n1", sans=[], usage="client")
        assert https(address, pki.client_context(node.cert, node.key, ca / "ca.pem")) == 403
        # still serving after the refusals
        assert https(address, pki.client_context(user.cert, user.key, ca / "ca.pem")) == 200
    finally:
        cluster.stop()


def test_the_http_api_takes_a_cluster_admins_token_instead_of_a_certificate(tmp_path: Path, ca: Path) -> None:
    """Started with --auth-key (the cluster's token key): a client without a certificate gets
    in with a token granting cluster-admin; any other token, or none, gets 401."""
    new_key_file(tmp_path / "auth-key.pem")
    tokens = ClusterTokens([tmp_path / "auth-key.pem"])
    cluster = TlsCluster(tmp_path, ca, member_identities(ca, tmp_path / "certs", "a"), size=1)
    cluster.options = ("--auth-key", str(tmp_path / "auth-key.pem"))
    cluster.start()
    try:
        no_certificate = pki.client_context(None, None, ca / "ca.pem")

        def status(token: str | None) -> int:
            return https(cluster.http["a"], no_certificate, {"Authorization": f"Bearer {token}"} if token else {})

        admin = tokens.mint("admin", [Grant("cluster-admin", CLUSTER)], 600)[0]
        assert status(admin) == 200
        assert status(tokens.mint("ci", [Grant("admin", "team")], 600)[0]) == 401  # a herd's admin: no
        assert status(tokens.mint_node("n1", 600)[0]) == 401
        assert status(None) == 401
        pki.create_ca(tmp_path / "other-ca")
        new_key_file(tmp_path / "other-key.pem")
        stranger = ClusterTokens([tmp_path / "other-key.pem"]).mint("admin", [Grant("cluster-admin", CLUSTER)], 600)
        assert status(stranger[0]) == 401  # another cluster's
        client = load_driver(
            BarnBackend, "raft", {"endpoints": [cluster.http["a"]], "tls_ca": str(ca / "ca.pem"), "token": admin}
        )
        try:
            client.put("/k", b"by token")
            assert client.get("/k").value == b"by token"
            # revoked (as a server writes it): every member refuses it within a second
            Revocations(client, max_ttl=MAX_TTL, leeway=LEEWAY).revoke_subject("admin", by="test")
            deadline = time.monotonic() + 5
            while status(admin) == 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert status(admin) == 401
        finally:
            client.close()
        time.sleep(1.05)  # (a token of the next second is a new one)
        assert status(tokens.mint("admin", [Grant("cluster-admin", CLUSTER)], 600)[0]) == 200
        # a node's client-only certificate is still refused, token or not
        node = pki.issue(ca, tmp_path / "node", "node.n1", sans=[], usage="client")
        with_node = pki.client_context(node.cert, node.key, ca / "ca.pem")
        assert https(cluster.http["a"], with_node, {"Authorization": f"Bearer {admin}"}) == 403
    finally:
        cluster.stop()


def serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "runink.plugins.barn.raft.server", "--name", "a",
               "--raft", "127.0.0.1:1", "--http", "127.0.0.1:2", "--data-dir", str(tmp_path / "data")]  # fmt: skip
    return subprocess.run([*command, *flags], check=False, capture_output=True, text=True, timeout=30)


def test_tls_flags_are_all_three_or_none_and_checked_at_start(tmp_path: Path, ca: Path) -> None:
    cert, key, ca_path = member_identities(ca, tmp_path / "certs", "a")["a"]
    ca_pem = str(ca_path)
    partial = serve(tmp_path, "--tls-cert", str(cert))
    assert partial.returncode == 2, partial.stderr
    assert "--tls-cert, --tls-key and --tls-ca go together: --tls-key, --tls-ca missing" in partial.stderr
    user = pki.issue(ca, tmp_path / "certs", "user", sans=[], usage="client")
    wrong = serve(tmp_path, "--tls-cert", str(user.cert), "--tls-key", str(user.key), "--tls-ca", ca_pem)
    assert wrong.returncode == 2, wrong.stderr
    assert "needs both usages (server and client), it has client" in wrong.stderr
    missing = serve(tmp_path, "--tls-cert", str(cert), "--tls-key", str(tmp_path / "absent"), "--tls-ca", ca_pem)
    assert missing.returncode == 2 and f"{tmp_path / 'absent'}: No such file or directory" in missing.stderr
    assert "Traceback" not in partial.stderr + wrong.stderr + missing.stderr
    # plaintext only when said on purpose, and not both
    bare = serve(tmp_path)
    assert bare.returncode == 2 and "no TLS: give --tls-cert, --tls-key and --tls-ca" in bare.stderr
    both = serve(tmp_path, "--plaintext", "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", ca_pem)
    assert both.returncode == 2 and "--plaintext and --tls-* contradict" in both.stderr
