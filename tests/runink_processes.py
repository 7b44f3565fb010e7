"""Tests' helpers for `runink server` / `runink agent` processes on loopback: start one in a
session of its own (so a test can signal its whole group), and wait until it says it is ready
(the JSON line it prints first)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def start_runink(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``python -m runink ARGS``: stdout a pipe (its ready line), stderr appended to ``log``;
    its data_dir (catalog, lineage) beside the log unless ``env`` names one (not the cwd's)."""
    env = {"RUNINK_DATA_DIR": str(log.with_name(log.stem + "-data")), **env}
    with open(log, "a") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "runink", *args], stdout=subprocess.PIPE, stderr=err, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip


def ready(process: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    """The process's first line (its ready event), once it printed it; fails with its log's end."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"it exited before it was ready: {log.read_text()[-2000:]}"
    event: dict[str, Any] = json.loads(line)
    return event


def cluster_auth(folder: Path, env: dict[str, str]) -> list[str]:
    """A cluster's token key in ``folder`` and a cluster-admin token in ``env["RUNINK_TOKEN"]``
    (what the CLI sends, and ``admin_headers`` reads); returns the flags a server needs (in
    plaintext: tests/test_cluster_tls.py runs servers with TLS)."""
    from runink.core.model import Grant
    from runink.core.security import CLUSTER
    from runink.core.server.auth import ClusterTokens, new_key_file

    key = folder / "auth-key.pem"
    if not key.exists():
        new_key_file(key)
    env["RUNINK_TOKEN"] = ClusterTokens([key]).mint("admin", [Grant("cluster-admin", CLUSTER)], 3600)[0]
    return ["--auth-key", str(key), "--plaintext"]


def admin_headers(env: dict[str, str] | None = None) -> dict[str, str]:
    """The Authorization header of the admin token: ``env``'s RUNINK_TOKEN (``cluster_auth``),
    else the one `runink up` left in the context file of ``env``'s XDG_CONFIG_HOME."""
    import os

    env = env if env is not None else dict(os.environ)
    token = env.get("RUNINK_TOKEN")
    if not token:
        base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        token = json.loads((Path(base) / "runink" / "cluster.json").read_text())["token"]
    return {"Authorization": f"Bearer {token}"}


def node_auth(folder: Path, node: str) -> list[str]:
    """The flags an agent needs to join the cluster of ``cluster_auth(folder, ...)`` as ``node``:
    a node token for it, in a file."""
    from runink.core.server.auth import ClusterTokens

    token, _ = ClusterTokens([folder / "auth-key.pem"]).mint_node(node, 3600)
    path = folder / f"{node}.token"
    path.write_text(token + "\n")
    return ["--token-file", str(path)]


def up_tls(env: dict[str, str] | None = None) -> ssl.SSLContext:
    """A TLS context for the cluster `runink up` started (the context file of ``env``'s
    XDG_CONFIG_HOME): trusts its CA and presents its first server's certificate, which the
    Barn members' HTTP API asks for (the REST API does not mind it)."""
    import os

    from runink.core.server import pki

    env = env if env is not None else dict(os.environ)
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    context = json.loads((Path(base) / "runink" / "cluster.json").read_text())
    tls = Path(context["dir"]) / "tls"
    return pki.client_context(tls / "server.s0.pem", tls / "server.s0-key.pem", context["ca"])


@dataclass
class UpCluster:
    """A cluster `runink up` started for a test: the CLI's environment (its own context file),
    the cluster's folder and what `runink up --json` printed."""

    env: dict[str, str]
    folder: Path
    started: dict[str, Any]


def cluster_folder(tmp_path: Path) -> Path:
    """Where a test's `runink up --dir` goes: beside its tmp_path, the folder its pipelines may
    be in (`runink up` refuses a cluster folder inside it: slices would read the keys)."""
    return tmp_path.with_name(f"{tmp_path.name}-cluster")


@contextmanager
def up_cluster(
    run_cli: Any,
    tmp_path: Path,
    servers: int,
    agents: int,
    extra_env: dict[str, str] | None = None,
    *,
    extra_args: tuple[str, ...] = (),
) -> Iterator[UpCluster]:
    """`runink up --servers N --agents M` in ``tmp_path/cluster`` (TLS, tokens: the default), and
    `runink down` after; ``extra_env``: given to `runink up` (so to its processes) only;
    ``extra_args``: more flags for `runink up`."""
    import os

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    up = run_cli(
        "up",
        "--servers",
        str(servers),
        "--agents",
        str(agents),
        "--json",
        "--dir",
        str(cluster_folder(tmp_path)),
        *extra_args,
        env={**env, **(extra_env or {})},
    )
    folder = cluster_folder(tmp_path)
    assert up.returncode == 0, up.stderr
    # its members' journals and its agents' work: every herd's jobs and output, no other user's
    assert folder.stat().st_mode & 0o777 == 0o700
    try:
        yield UpCluster(env, folder, json.loads(up.stdout))
    finally:
        run_cli("down", env=env)


@contextmanager
def server_and_agent(
    tmp_path: Path, env: dict[str, str], *, node: str = "n1", agent_args: tuple[str, ...] = ()
) -> Iterator[dict[str, Any]]:
    """A server (memory Barn) and one agent (``node``, with ``agent_args``), as processes on
    loopback; ``env`` (the CLI's) gets RUNINK_SERVER and an admin token. Yields the agent's
    ready event. After, each is sent SIGTERM and must stop within 30 s (else SIGKILL and a
    failure naming the end of its log)."""
    import os
    import signal

    import pytest
    from barn_cluster import free_ports

    api, grpc = free_ports(2)
    env["RUNINK_SERVER"] = f"127.0.0.1:{api}"
    server = start_runink(
        ["server", "--api", f"127.0.0.1:{api}", "--agents", f"127.0.0.1:{grpc}", *cluster_auth(tmp_path, env)],
        tmp_path / "s.log",
        env,
    )
    processes = [server]
    try:
        ready(server, tmp_path / "s.log")
        command = ["agent", "--servers", f"127.0.0.1:{grpc}", "--node-id", node, "--work-dir", str(tmp_path / "agent")]
        agent = start_runink([*command, *agent_args, *node_auth(tmp_path, node)], tmp_path / "a.log", env)
        processes.append(agent)
        yield ready(agent, tmp_path / "a.log")
    finally:
        for process, log in zip(reversed(processes), ("a.log", "s.log")[2 - len(processes) :], strict=True):
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                ended = (tmp_path / log).read_text()[-3000:]
                pytest.fail(f"runink {process.args[3]} did not stop within 30 s of SIGTERM; its log ends: {ended}")
