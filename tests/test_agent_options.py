"""`runink agent`'s options are checked before it starts: a capacity the servers would refuse
(or a size it cannot read) is this command's error, one line naming the option, not a
registration refused later nor an internal error."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixture_types import CliRunner


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--cpus", "nan", "--cpus: Expected `float` >= 0.0"),
        ("--cpus", "inf", "--cpus: Expected `float` <= 4096.0"),
        ("--cpus", "5000", "--cpus: Expected `float` <= 4096.0"),
        ("--memory", "1200000Ti", "--memory: Expected `int` <= "),
        ("--memory", "lots", "--memory: invalid memory size 'lots'"),
    ],
)
def test_a_capacity_out_of_bounds_is_refused_naming_its_option(
    run_cli: CliRunner, tmp_path: Path, option: str, value: str, says: str
) -> None:
    out = run_cli("agent", "--servers", "127.0.0.1:9", "--node-id", "n1", "--work-dir", str(tmp_path), option, value)
    assert out.returncode != 0, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {says}"), out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("servers", ["10.9.8.7:7070", "127.0.0.1:7070,agents.example:7070", "nonsense"])
def test_an_agent_without_tls_speaks_to_loopback_servers_only(run_cli: CliRunner, tmp_path: Path, servers: str) -> None:
    """Its token went in clear to any server address given (a review's run, a listener reading
    the `authorization` header), where a server refuses to serve off loopback in plaintext."""
    out = run_cli("agent", "--servers", servers, "--node-id", "n1", "--work-dir", str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert "not a loopback address" in out.stderr and "--plaintext" in out.stderr and "Traceback" not in out.stderr
