"""TLS between a cluster's processes (`runink up`, the default: its own CA): the REST API is
HTTPS only, an agent's stream is mutual TLS and its certificate names the only node it may be,
and `runink server --init` makes the CA and a server's certificate. A plaintext peer, one of
another CA, or a certificate that is not a node's is refused, and the test shows it."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fixture_types import CliRunner
from runink_processes import UpCluster, admin_headers, up_cluster, up_tls

from runink.core.agent.grpc_control import GrpcControl
from runink.core.control.records import Amount, NodeRecord
from runink.core.errors import RuninkError
from runink.core.server import pki
from runink.core.server.tls import TlsFiles

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent's linux executor needs root")


@pytest.fixture
def cluster(run_cli: CliRunner, tmp_path: Path) -> Iterator[UpCluster]:
    with up_cluster(run_cli, tmp_path, servers=1, agents=1) as up:
        yield up


def register(address: str, tls: TlsFiles | None, node: str = "agent-0") -> str:
    """What registering as ``node`` over the agent stream gives: "ok" or the error's line."""
    control = GrpcControl(address, timeout=5.0, tls=tls)
    try:
        control.register_node(NodeRecord(id=node, capacity=Amount(cpu=1, memory=1 << 30)))
        return "ok"
    except RuninkError as exc:
        return str(exc)
    finally:
        control.close()


def test_the_cluster_speaks_tls_only_and_a_certificate_names_its_node(
    cluster: UpCluster, run_cli: CliRunner, tmp_path: Path
) -> None:
    env, folder, started = cluster.env, cluster.folder, cluster.started
    api = str(started["api"][0])  # type: ignore[index]
    assert api.startswith("https://")
    # the CLI checks the server against the cluster CA (from the context `runink up` wrote)
    ran = run_cli("exec", "--", "/bin/echo", "over tls", env=env)
    assert ran.returncode == 0 and ran.stdout == "over tls\n", ran.stderr
    # the REST API: HTTPS only; a client that does not trust the cluster CA refuses it
    with pytest.raises(httpx.HTTPError):
        httpx.get(api.replace("https://", "http://") + "/v1/herds", headers=admin_headers(env), timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(api + "/v1/herds", headers=admin_headers(env), timeout=5, verify=ssl.create_default_context())
    assert httpx.get(api + "/v1/herds", headers=admin_headers(env), verify=up_tls(env), timeout=5).status_code == 200

    # the agents' stream: mutual TLS, the certificate is the node
    grpc = str(started["grpc"][0])  # type: ignore[index]
    certs = folder / "tls"
    node = TlsFiles(certs / "node.agent-0.pem", certs / "node.agent-0-key.pem", certs / "ca.pem")
    assert register(grpc, node) == "ok"
    assert "agent-1" in register(grpc, node, node="agent-1")  # its certificate is agent-0's
    server = TlsFiles(certs / "server.s0.pem", certs / "server.s0-key.pem", certs / "ca.pem")
    assert "not a node's" in register(grpc, server)  # a server's certificate is no node
    assert register(grpc, None) != "ok"  # plaintext
    pki.create_ca(tmp_path / "other")
    stranger = pki.issue(tmp_path / "other", tmp_path / "other", "node.agent-0", sans=[], usage="client")
    assert register(grpc, TlsFiles(stranger.cert, stranger.key, certs / "ca.pem")) != "ok"  # another CA's
    # still serving its agent after all that
    again = run_cli("exec", "--", "/bin/true", env=env)
    assert again.returncode == 0, again.stderr


def test_a_revoked_node_is_kept_out_by_its_certificate_too(
    cluster: UpCluster, run_cli: CliRunner, tmp_path: Path
) -> None:
    """A node certificate alone lets an agent in (`runink node join` gives no token): after
    `runink nodes revoke NODE`, whoever holds the node's key registered again without its
    token. Its certificates issued before the revocation are refused now; one issued after is not."""
    env, folder, started = cluster.env, cluster.folder, cluster.started
    grpc = str(started["grpc"][0])  # type: ignore[index]
    certs = folder / "tls"
    node = TlsFiles(certs / "node.agent-0.pem", certs / "node.agent-0-key.pem", certs / "ca.pem")
    assert register(grpc, node) == "ok"  # (the certificate, no token)
    revoked = run_cli("nodes", "revoke", "agent-0", env=env)
    assert revoked.returncode == 0, revoked.stderr
    deadline = time.monotonic() + 10  # (each server reads the list at most a second old)
    while (answer := register(grpc, node)) == "ok":
        assert time.monotonic() < deadline, "the revoked node's certificate still lets it in"
        time.sleep(0.2)
    assert "certificate: every token and certificate of node:agent-0 issued up to" in answer and "join again" in answer
    # joined again (the way given): its new certificate starts after the revocation, whatever
    # the signing server's clock says, and counts
    minted = run_cli("nodes", "join-token", "agent-0", "--ttl", "10m", env=env)
    assert minted.returncode == 0, minted.stderr
    (tmp_path / "join.token").write_text(minted.stdout)
    api = str(started["api"][0])  # type: ignore[index]
    join = ("node", "join", "--server", api, "--token-file", str(tmp_path / "join.token"))
    joined = run_cli(*join, "--dir", str(tmp_path / "new"), env=env)
    assert joined.returncode == 0, joined.stderr
    fresh = TlsFiles(tmp_path / "new" / "node.pem", tmp_path / "new" / "node-key.pem", certs / "ca.pem")
    deadline = time.monotonic() + 10  # (valid from the second after the revocation's)
    while (answer := register(grpc, fresh)) != "ok":
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)
    # a certificate signed before the revocation by a server whose clock ran ahead (by less
    # than the 5 minutes certificates start early) is under it all the same
    ahead = pki.issue(certs, tmp_path / "ahead", "node.agent-0", sans=[], usage="client")
    assert register(grpc, TlsFiles(ahead.cert, ahead.key, certs / "ca.pem")) != "ok"


def test_server_init_makes_the_ca_once_and_a_certificate_per_server(run_cli: CliRunner, tmp_path: Path) -> None:
    first = run_cli("server", "--init", str(tmp_path / "pki"), "--name", "s0", "--san", "10.0.0.1")
    assert first.returncode == 0, first.stderr
    assert "cluster CA made" in first.stdout
    flags = first.stdout.strip().splitlines()[-1].split()
    assert flags[0::2] == ["--tls-cert", "--tls-key", "--tls-ca"]
    cert = Path(flags[1])
    assert cert.name == "server.s0.pem" and pki.usages(pki.read_certificate(cert)) == {"server", "client"}
    assert pki.names(pki.read_certificate(cert)) == {"10.0.0.1"}
    second = run_cli("server", "--init", str(tmp_path / "pki"), "--name", "s1")
    assert second.returncode == 0 and "cluster CA made" not in second.stdout  # the same CA
    twice = run_cli("server", "--init", str(tmp_path / "pki"), "--name", "s1")
    assert twice.returncode != 0 and "exists already" in twice.stderr and "Traceback" not in twice.stderr
