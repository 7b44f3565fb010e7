"""`runink run` (embedded) with a scenario's @secrets: the slice gets the herd's secret from the
configured backend (default: the env driver's RUNINK_SECRET_<HERD>__<NAME>), as a file and a
variable; its value is in no file the run leaves and in no output of the CLI."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pyarrow.csv as pacsv
import pytest
from fixture_types import CliRunner

from runink.plugins.executors.linux.executor import LinuxExecutor

ISOLATION_PROBLEMS = LinuxExecutor._detect_problems()
EXECUTORS = [
    "process",
    pytest.param(
        "linux", marks=pytest.mark.skipif(bool(ISOLATION_PROBLEMS), reason=f"cannot isolate: {ISOLATION_PROBLEMS}")
    ),
]
VALUE = "s3cret-of-the-finance-herd-41d8"

STEPS = '''
import hashlib, os
import pyarrow as pa

def digest(batch):
    """A column with the digest of the secret's file, checked against its variable."""
    with open(os.path.join(os.environ["RUNINK_FILES"], "db_password")) as f:
        value = f.read()
    assert os.environ["DB_PASSWORD"] == value
    return batch.append_column("digest", pa.array([hashlib.sha256(value.encode()).hexdigest()] * batch.num_rows))
'''


def pipeline(folder: Path, annotation: str) -> Path:
    folder.mkdir()
    (folder / "in.csv").write_text("id\n1\n2\n")
    (folder / "steps.py").write_text(STEPS)
    (folder / "p.dsl").write_text(
        textwrap.dedent(f"""\
        @herd("finance")
        Feature: Secrets
          Scenario: S
            {annotation}
            @source("csv://in.csv")
            @step("steps:digest")
            @sink("csv://out/digests.csv")
        """)
    )
    return folder / "p.dsl"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_scenario_gets_its_secret_as_a_file_and_a_variable(run_cli: CliRunner, tmp_path: Path, executor: str) -> None:
    dsl = pipeline(tmp_path / "p", '@secrets("db_password", env=True)')
    env = {"RUNINK_SECRET_FINANCE__DB_PASSWORD": VALUE}
    out = run_cli("run", dsl.name, "--json", "--set", f"executor.driver={executor}", cwd=dsl.parent, env=env)
    assert out.returncode == 0, out.stderr
    (scenario,) = json.loads(out.stdout)["scenarios"]
    assert scenario["state"] == "SUCCEEDED", scenario["error"]
    digests = pacsv.read_csv(dsl.parent / "out" / "digests.csv").column("digest").to_pylist()
    assert digests == [hashlib.sha256(VALUE.encode()).hexdigest()] * 2
    assert VALUE not in out.stdout + out.stderr
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and VALUE.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_a_missing_secret_fails_the_run_in_one_line_naming_it(run_cli: CliRunner, tmp_path: Path) -> None:
    dsl = pipeline(tmp_path / "p", '@secrets("db_password")')
    out = run_cli("run", dsl.name, "--set", "executor.driver=process", cwd=dsl.parent)
    assert out.returncode != 0
    assert "herd 'finance' has no secret 'db_password'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_step_that_raises_with_its_secret_in_the_message_has_it_masked(
    run_cli: CliRunner, tmp_path: Path, executor: str
) -> None:
    """The failure's message went, with the password, into the run's record, --json, the log
    lines and lineage, and in a cluster the task's record in the Barn (a review)."""
    dsl = pipeline(tmp_path / "p", '@secrets("db_password", env=True)')
    (dsl.parent / "steps.py").write_text(
        "import os\n\ndef digest(batch):\n"
        "    raise ValueError(f\"bad connection with password {os.environ['DB_PASSWORD']}\")\n"
    )
    env = {"RUNINK_SECRET_FINANCE__DB_PASSWORD": VALUE}
    out = run_cli("run", dsl.name, "--json", "--set", f"executor.driver={executor}", cwd=dsl.parent, env=env)
    (scenario,) = json.loads(out.stdout)["scenarios"]
    assert scenario["state"] == "FAILED" and "bad connection with password ****" in scenario["error"], scenario
    assert VALUE not in out.stdout + out.stderr


def test_a_secret_given_as_a_variable_may_not_hold_a_nul_byte(tmp_path: Path) -> None:
    """No variable can hold one: the slice failed with "exit code 126" and an "embedded null
    byte" in its stderr (a review). Refused before it starts, naming the secret, not its value."""
    from runink.core.agent.secrets import with_secrets
    from runink.core.errors import RuninkError
    from runink.core.interfaces.executor import TaskSpec

    spec = TaskSpec(id="t", command=("/bin/true",), task_dir=tmp_path, env={}, cwd=tmp_path)
    assert with_secrets(spec, "lab", {"blob": b"a\0b"}, as_env=False).files == {"blob": "a\0b"}  # (a file may)
    with pytest.raises(RuninkError, match=r"^secret 'blob' of herd 'lab' holds a NUL byte: it cannot be a variable$"):
        with_secrets(spec, "lab", {"blob": b"a\0b"}, as_env=True)
