"""A new machine joins a running cluster with a one-time token (`runink nodes join-token`,
`runink node join`): its key is made on it, the server is trusted only if its CA is the one the
token names, the certificate names the token's node, the token works once, and the agent then
runs work over mutual TLS with nothing else (no node token)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixture_types import CliRunner
from runink_processes import UpCluster, ready, start_runink, up_cluster

from runink.core.server import pki

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent's linux executor needs root")


@pytest.fixture
def cluster(run_cli: CliRunner, tmp_path: Path) -> Iterator[UpCluster]:
    with up_cluster(run_cli, tmp_path, servers=1, agents=0) as up:
        yield up


def test_a_machine_joins_with_a_one_time_token_and_runs_work(
    cluster: UpCluster, run_cli: CliRunner, tmp_path: Path
) -> None:
    env, started = cluster.env, cluster.started
    api, grpc = str(started["api"][0]), str(started["grpc"][0])  # type: ignore[index]
    minted = run_cli("nodes", "join-token", "n9", "--ttl", "10m", env=env)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    # a token whose CA fingerprint is not the server's: the server is not trusted, nothing is sent
    forged = token[:-64] + "0" * 64
    refused = run_cli("node", "join", forged, "--server", api, "--dir", str(tmp_path / "forged"), env=env)
    assert refused.returncode != 0 and "its CA is not (only) the one the token names" in refused.stderr
    assert not (tmp_path / "forged" / "node-key.pem").exists()

    token_file = tmp_path / "join.token"
    token_file.write_text(token + "\n")  # (not an argument: others can read those)
    join = ("node", "join", "--server", api, "--token-file", str(token_file))
    both = run_cli(*join, token, "--dir", str(tmp_path / "n9"), env=env)
    assert both.returncode == 2 and "give the token one way" in both.stderr
    joined = run_cli(*join, "--dir", str(tmp_path / "n9"), env=env)
    assert joined.returncode == 0, joined.stderr
    flags = joined.stdout.split()
    assert flags[:2] == ["--node-id", "n9"]
    cert = pki.read_certificate(tmp_path / "n9" / "node.pem")
    assert pki.usages(cert) == {"client"}
    assert (tmp_path / "n9" / "node-key.pem").stat().st_mode & 0o077 == 0
    # once only
    again = run_cli("node", "join", token, "--server", api, "--dir", str(tmp_path / "again"), env=env)
    assert again.returncode != 0 and "unknown or used already" in again.stderr
    assert not (tmp_path / "again" / "node-key.pem").exists()

    # the agent needs nothing else: its certificate is the node
    log = tmp_path / "n9.log"
    agent = start_runink(["agent", "--servers", grpc, "--work-dir", str(tmp_path / "work"), *flags], log, env)
    try:
        ready(agent, log)
        ran = run_cli("exec", "--", "/bin/echo", "on n9", env=env)
        assert ran.returncode == 0 and ran.stdout == "on n9\n", ran.stderr
        nodes = json.loads(run_cli("nodes", "list", "--json", env=env).stdout)
        assert [n["id"] for n in nodes] == ["n9"]
    finally:
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
    audit = json.loads(run_cli("audit", "--json", env=env).stdout)
    assert [(r["subject"], r["action"]) for r in audit if r["action"] == "nodes.join"] == [("join:n9", "nodes.join")]
