"""Shell completion: `runink --install-completion` / `--show-completion`, answered from the
commands the CLI has (plugin commands included), without loading the data or Raft stacks."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

HEAVY = ("polars", "pyarrow", "numpy", "pysyncobj", "uvloop", "cryptography", "sqlalchemy", "openlineage", "alembic")


def runink(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runink", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def complete(words: str) -> list[str]:
    """What bash completion offers for the last of ``words`` (as typer's bash script asks it)."""
    result = runink(
        env={"_RUNINK_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_help_shows_the_completion_options() -> None:
    result = runink("--help")
    assert result.returncode == 0, result.stderr
    assert "--install-completion" in result.stdout
    assert "--show-completion" in result.stdout


def test_show_completion_prints_a_bash_script() -> None:
    """The script is for the shell the command runs in (typer finds it among its parents):
    here a bash that stays the parent (a second command keeps it from exec'ing the first)."""
    command = f"{shlex.quote(sys.executable)} -m runink --show-completion; exit $?"
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(["bash", "-c", command], check=False, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "_RUNINK_COMPLETE=complete_bash" in result.stdout
    assert "complete " in result.stdout and "runink" in result.stdout


def test_completion_offers_commands_and_options() -> None:
    assert complete("runink ru") == ["run"]
    assert "barn" in complete("runink ba")  # a plugin's command group
    assert complete("runink barn serve --no-f") == ["--no-fsync"]


def test_help_and_completion_load_no_heavy_module() -> None:
    code = f"""
import contextlib, io, os, sys
from runink.core.cli import main
completing = {{"_RUNINK_COMPLETE": "complete_bash", "COMP_WORDS": "runink ", "COMP_CWORD": "1"}}
for argv, env in ((["--help"], {{}}), ([], completing)):
    os.environ.update(env)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(sorted(name for name in {HEAVY!r} if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
