"""The CLI's token handling: `runink login` stores one token (owner-only), refuses anything
else in one line; an agent's --token-file is read the same way, never through a symlink."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from fixture_types import CliRunner


def login(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    env.pop("RUNINK_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "runink", "login"],
        input=text,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_login_stores_the_token_from_stdin_readable_by_its_owner_only(tmp_path: Path) -> None:
    earlier = tmp_path / "xdg" / "runink" / "token"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("old\n")
    earlier.chmod(0o644)  # (a file made by hand: login makes it its owner's only)
    done = login(tmp_path, "eyJ.abc.def\n")
    assert done.returncode == 0, done.stderr
    stored = tmp_path / "xdg" / "runink" / "token"
    assert stored.read_text() == "eyJ.abc.def\n"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    for bad in ("", "two words", "x" * (16 * 1024 + 1), "a\nb"):
        refused = login(tmp_path, bad)
        assert refused.returncode != 0 and "login: not one token" in refused.stderr, bad[:20]
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert stored.read_text() == "eyJ.abc.def\n"  # (a refused login changes nothing)


def test_an_agents_token_file_is_one_token_and_no_symlink(run_cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "real.token").write_text("eyJ.abc.def\n")
    (tmp_path / "link.token").symlink_to(tmp_path / "real.token")
    (tmp_path / "bad.token").write_text("not one token\n")
    for name, words in (
        ("missing.token", "No such file"),
        ("link.token", "symbolic links"),
        ("bad.token", "not one token"),
    ):
        out = run_cli("agent", "--servers", "127.0.0.1:9", "--node-id", "n1", "--token-file", str(tmp_path / name))
        assert out.returncode != 0 and words in out.stderr and name in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_token_files_of_revoke_and_join_follow_no_link_and_wait_on_no_fifo(run_cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "real.token").write_text("eyJ.abc.def\n")
    (tmp_path / "link.token").symlink_to(tmp_path / "real.token")
    os.mkfifo(tmp_path / "fifo.token")  # (nobody writes it: a blocking open would hang the command)
    commands = (
        ("token", "revoke", "--server", "http://127.0.0.1:9"),
        ("node", "join", "--server", "https://127.0.0.1:9", "--dir", str(tmp_path / "node")),
    )
    for command in commands:
        for name, words in (("link.token", "symbolic links"), ("fifo.token", "not a regular file; refused")):
            out = run_cli(*command, "--token-file", str(tmp_path / name))
            assert out.returncode != 0 and words in out.stderr and name in out.stderr, (command, out.stderr)
            assert "Traceback" not in out.stderr
    both = run_cli(*commands[0], "eyJ.abc.def", "--token-file", str(tmp_path / "real.token"))
    assert both.returncode != 0 and "give the token one way" in both.stderr, both.stderr
