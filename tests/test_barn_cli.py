"""`runink barn` comes from the raft plugin (through runink_cli_commands), and `barn serve` has
one parser: `python -m runink.plugins.barn.raft.server` is the same command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fixture_types import CliRunner


def _options(help_text: str) -> set[str]:
    return {word.strip(",.[]()") for word in help_text.split() if word.startswith("--")}


def test_barn_commands_come_from_the_raft_plugin(run_cli: CliRunner) -> None:
    listed = run_cli("plugins", "list", "--json")
    assert '"barn-raft"' in listed.stdout
    assert run_cli("barn", "--help").returncode == 0
    without = run_cli("barn", "--help", env={"RUNINK_DISABLE_PLUGINS": "barn-raft"})
    assert without.returncode == 2 and "No such command 'barn'" in without.stderr


def test_barn_serve_and_the_server_module_share_one_parser(run_cli: CliRunner, tmp_path: Path) -> None:
    runink = run_cli("barn", "serve", "--help", env={"COLUMNS": "200"}).stdout
    module = [sys.executable, "-m", "runink.plugins.barn.raft.server"]
    alone = subprocess.run([*module, "--help"], capture_output=True, text=True, timeout=60, check=False, env={
        "COLUMNS": "200", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    assert _options(runink) == _options(alone.stdout)
    assert {"--fsync", "--no-fsync", "--secret-file", "--max-connections"} <= _options(alone.stdout)
    # the same checks, the same one-line usage error (exit 2), from either
    bad = ["--name", "a", "--raft", "127.0.0.1:1", "--http", "127.0.0.1:2", "--data-dir", str(tmp_path), "--peer", "b"]
    for out in (run_cli("barn", "serve", *bad), subprocess.run([*module, *bad], capture_output=True, text=True,
                                                              timeout=60, check=False)):  # fmt: skip
        assert out.returncode == 2, out
        assert "--peer: a member is name=raft_host:port,http_host:port, got 'b'" in out.stderr
        assert "Traceback" not in out.stderr
