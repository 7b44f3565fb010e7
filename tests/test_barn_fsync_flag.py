"""`runink barn serve --fsync/--no-fsync` reaches the server's config (typer once made it `--no-no-fsync`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Runs `runink barn serve ARGS` in a child whose ServerConfig only prints the fsync it was given:
# the whole path (the CLI's flags -> the server's config) without starting a server.
CHILD = """
import sys
from runink.plugins.barn.raft import server
def config(*args, fsync, **kwargs):
    print("fsync", fsync)
    sys.exit(0)
server.ServerConfig = config
from runink.core.cli import main
main(["barn", "serve", "--name", "a", "--raft", "127.0.0.1:1", "--http", "127.0.0.1:2", "--data-dir", sys.argv[1],
      "--plaintext", *sys.argv[2:]])
"""


def serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), *flags], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(("flags", "fsync"), [((), True), (("--fsync",), True), (("--no-fsync",), False)])
def test_fsync_flag_reaches_the_server(tmp_path: Path, flags: tuple[str, ...], fsync: bool) -> None:
    result = serve(tmp_path, *flags)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"fsync {fsync}"]


def test_no_no_fsync_is_gone(tmp_path: Path) -> None:
    result = serve(tmp_path, "--no-no-fsync")
    assert result.returncode == 2
    assert "--no-no-fsync" in result.stderr
    assert "fsync" not in result.stdout
