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
