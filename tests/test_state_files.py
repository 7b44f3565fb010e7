"""The files servers, agents and the CLI keep, and what they trust in them (a review's
findings, each reproduced first): folders of another user's, forged context and pid files,
a token sent where it does not belong, a signing key anyone may read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixture_types import CliRunner
from runink_processes import cluster_folder

from runink.core.cli import cluster_client
from runink.core.cli.cluster_client import ClusterClient, ClusterError
from runink.core.errors import RuninkError
from runink.core.fstree import ForeignFolder, private_folder
from runink.core.local_nodes import FOLDER
from runink.core.server.auth import ClusterTokens, new_key_file

NOBODY = 65534


def test_a_folder_of_another_users_state_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o777)
    os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(ForeignFolder, match=rf"--data-dir {folder}: owned by uid {NOBODY}, not this user"):
        private_folder(folder, "--data-dir")
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    private_folder(mine)
    assert (mine.stat().st_mode & 0o777) == 0o700  # (empty: made its owner's only)


def test_an_open_folder_holding_files_is_refused_not_narrowed(tmp_path: Path, run_cli: CliRunner) -> None:
    """`runink server --init /etc` as root made /etc 0700 and wrote the CA in it: every other
    user lost the system's files (a docs review's run; the slices' awk failed after it)."""
    shared = tmp_path / "etc"
    shared.mkdir(mode=0o755)
    (shared / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    with pytest.raises(ForeignFolder, match=r"--init .*etc: mode 0755 lets other users in, and it holds files"):
        private_folder(shared, "--init")
    out = run_cli("server", "--init", str(shared), "--name", "x")
    assert out.returncode != 0 and "lets other users in" in out.stderr and "Traceback" not in out.stderr
    assert (shared.stat().st_mode & 0o777) == 0o755 and sorted(p.name for p in shared.iterdir()) == ["passwd"]


def _runink(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "runink", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_a_barn_member_does_not_unpickle_a_snapshot_another_user_planted(tmp_path: Path) -> None:
    # nobody's data dir, nobody's raft.dump: a pickle that ran `id > pwned` as root
    data = tmp_path / "data"
    data.mkdir(mode=0o777)
    os.chown(data, NOBODY, NOBODY)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    import pickle

    (data / "raft.dump").write_bytes(pickle.dumps(Payload()))
    ran = _runink(
        "barn", "serve", "--name", "a", "--raft", "127.0.0.1:1", "--http", "127.0.0.1:1",
        "--data-dir", str(data), "--plaintext",
        cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode != 0 and f"owned by uid {NOBODY}, not this user" in ran.stderr, ran.stderr
    assert not marker.exists()


def test_an_agent_refuses_a_work_dir_of_another_user(tmp_path: Path) -> None:
    # its attempt handles there named a process to kill and a folder to remove: forged ones did
    work = tmp_path / "work"
    work.mkdir(mode=0o777)
    os.chown(work, NOBODY, NOBODY)
    ran = _runink("agent", "--servers", "127.0.0.1:1", "--node-id", "n1", "--work-dir", str(work), cwd=tmp_path)
    assert ran.returncode != 0 and f"--work-dir {work}: owned by uid {NOBODY}" in ran.stderr, ran.stderr


def _context(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "xdg" / "runink" / "cluster.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"api": ["https://127.0.0.1:9443"], "token": "the-admin-token", **extra}
    path.write_text(json.dumps(record))
    path.chmod(0o600)
    return path


def test_the_local_clusters_token_goes_to_its_own_servers_only(tmp_path: Path) -> None:
    # RUNINK_SERVER=127.0.0.1:28996 runink jobs list sent the cluster-admin token to that listener
    _context(tmp_path)
    own = ClusterClient(["https://127.0.0.1:9443"])
    assert own._headers["Authorization"] == "Bearer the-admin-token"
    other = ClusterClient(["http://127.0.0.1:28996"])
    assert "Authorization" not in other._headers
    for same in ("https://127.0.0.1:9443/", "HTTPS://LOCALHOST:9443"):  # (one server, spelt otherwise)
        assert ClusterClient([same])._headers["Authorization"] == "Bearer the-admin-token"


def test_a_token_never_crosses_the_network_in_plain_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNINK_TOKEN", "mine")
    with pytest.raises(ClusterError, match=r"^http://10\.0\.0\.5:8080: plain HTTP to another machine"):
        ClusterClient(["http://10.0.0.5:8080"])
    with pytest.raises(ClusterError, match="plain HTTP to another machine"):
        ClusterClient(["HTTP://10.0.0.5:8080"])
    for loopback in ("http://127.0.0.1:8080", "http://[::1]:8080", "http://localhost", "http://127.0.0.1"):
        assert ClusterClient([loopback])._headers["Authorization"] == "Bearer mine"


def test_a_context_file_others_may_write_or_that_is_a_link_is_not_read(tmp_path: Path) -> None:
    # a forged one named a process of nobody's for `runink down` to kill, and a folder to remove
    path = _context(tmp_path)
    assert cluster_client.read_context() is not None
    path.chmod(0o666)
    assert cluster_client.read_context() is None
    path.chmod(0o600)
    real = path.with_name("real.json")
    path.rename(real)
    path.symlink_to(real)
    assert cluster_client.read_context() is None


def test_a_signing_key_others_may_read_a_link_or_a_fifo_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "auth-key.pem"
    new_key_file(key)
    ClusterTokens([key])
    key.chmod(0o644)
    with pytest.raises(RuninkError, match=r"has mode 0644: group or others may read it; refused \(chmod 600"):
        ClusterTokens([key])
    key.chmod(0o600)
    link = tmp_path / "link.pem"
    link.symlink_to(key)
    with pytest.raises(RuninkError, match="is a symlink; refused"):
        ClusterTokens([link])
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo, 0o600)  # (it hung the server: not even SIGTERM ended it)
    with pytest.raises(RuninkError, match="not a regular file"):
        ClusterTokens([fifo])
    if os.geteuid() == 0:  # another user's key: they could swap it at will
        os.chown(key, NOBODY, NOBODY)
        with pytest.raises(RuninkError, match=rf"is owned by uid {NOBODY}, not by this user \(0\); refused"):
            ClusterTokens([key])


def test_down_stops_the_cluster_though_an_agents_pid_file_is_bad(run_cli: CliRunner, tmp_path: Path) -> None:
    # `: > scaler/agent-0.pid; runink down` stopped nothing: the servers and agents ran on
    up = run_cli("up", "--servers", "1", "--agents", "1", "--json", "--dir", str(cluster_folder(tmp_path)))
    assert up.returncode == 0, up.stderr
    context = json.loads((tmp_path / "xdg" / "runink" / "cluster.json").read_text())
    pids = [item["pid"] for item in context["servers"] + context["agents"]]
    pid_file = cluster_folder(tmp_path) / FOLDER / "agent-0.pid"
    pid_file.unlink()
    pid_file.symlink_to("/etc/hostname")
    down = run_cli("down")
    assert down.returncode == 1 and "warning: agent agent-0:" in down.stderr and "Traceback" not in down.stderr
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # (what could not be told may run on: the context stays, for a `down` once the file is mended)
    pid_file.unlink()
    assert run_cli("down").returncode == 0 and not cluster_folder(tmp_path).exists()


def test_a_token_file_is_a_regular_file_and_one_others_may_read_is_taken_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from runink.core.cli.cluster_client import read_token_file

    token = tmp_path / "node.token"
    token.write_text("abc.def.ghi\n")
    token.chmod(0o600)
    with caplog.at_level("WARNING"):
        assert read_token_file(token) == "abc.def.ghi"
    assert not caplog.records
    token.chmod(0o644)  # (`runink nodes token NODE > FILE` under the usual umask)
    with caplog.at_level("WARNING"):
        assert read_token_file(token) == "abc.def.ghi"
    assert f"--token-file {token} has mode 0644: others on this machine may read the token" in caplog.text
    token.chmod(0o666)  # (another user could put their token in it)
    with pytest.raises(RuninkError, match=r"mode 0666: another user may put a token in it; refused"):
        read_token_file(token)
    if os.geteuid() == 0:
        token.chmod(0o600)
        os.chown(token, NOBODY, NOBODY)
        with pytest.raises(RuninkError, match=rf"owned by uid {NOBODY} with mode 0600"):
            read_token_file(token)
    fifo = tmp_path / "fifo.token"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(RuninkError, match=rf"--token-file {fifo}: not a regular file; refused"):
        read_token_file(fifo)
    with pytest.raises(RuninkError, match="not a regular file; refused"):
        read_token_file(tmp_path)


def test_the_stored_login_token_is_sent_only_from_a_file_of_the_users_own_and_only_as_one_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from runink.core.cli import cluster_client

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("RUNINK_TOKEN", raising=False)
    stored = cluster_client.token_file()
    stored.parent.mkdir(parents=True)
    stored.write_text("abc.def.ghi\n")
    stored.chmod(0o600)
    assert cluster_client.read_token() == "abc.def.ghi"
    stored.chmod(0o666)  # (anyone could put their token in it)
    with caplog.at_level("WARNING"):
        assert cluster_client.read_token() is None
    assert "its token is not sent; `runink login` again" in caplog.text
    stored.chmod(0o600)
    stored.write_text("abc\r\nX-Injected: 1\n")  # (its text goes in a request header)
    with pytest.raises(RuninkError, match=rf"{stored}: not one token"):
        cluster_client.read_token()
