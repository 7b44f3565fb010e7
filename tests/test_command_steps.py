"""Command steps (``@run``): real `runink run`s of pipelines whose steps are Unix programs,
through the process executor and, where this machine isolates, the linux one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from fixture_types import CliRunner

from runink.core.dataplane.spec import CommandSpec, SinkSpec, SliceSpec, SourceSpec, SpecError
from runink.core.pipeline.compile import compile_pipeline
from runink.core.pipeline.dsl import DslError, parse
from runink.plugins.executors.linux.executor import LinuxExecutor

ISOLATION_PROBLEMS = LinuxExecutor._detect_problems()
EXECUTORS = [
    "process",
    pytest.param(
        "linux", marks=pytest.mark.skipif(bool(ISOLATION_PROBLEMS), reason=f"cannot isolate: {ISOLATION_PROBLEMS}")
    ),
]

ORDERS = """\
order_id,customer,amount
O-1,ann,120.5
O-2,bob,900
O-3,cat,45
O-4,dan,400
O-5,eve,650.25
"""

STEPS = '''
import os
import pyarrow as pa
from runink.core.steps import record_step

@record_step
def tag(row):
    return {**row, "big": row["amount"] > 500}

def whoami(batch):
    """Where this Python step runs: its uid and cgroup, as two columns."""
    n = batch.num_rows
    cgroup = ";".join(open("/proc/self/cgroup").read().split())
    return batch.append_column("step_uid", pa.array([os.getuid()] * n)).append_column(
        "step_cgroup", pa.array([cgroup] * n))

def boom(batch):
    raise ValueError("no good")

def drop_all(batch):
    return batch.slice(0, 0)

def count_batches(batch):
    print(f"batch of {batch.num_rows} rows")
    return batch
'''

# A program beside the .dsl: copies its input CSV, adding where it runs.
WHOAMI_PROGRAM = """\
import csv, os, sys
cgroup = ";".join(open("/proc/self/cgroup").read().split())
with open(sys.argv[1], newline="") as src, open(sys.argv[2], "w", newline="") as dst:
    rows = csv.reader(src)
    out = csv.writer(dst)
    out.writerow(next(rows) + ["cmd_uid", "cmd_cgroup"])
    for row in rows:
        out.writerow(row + [os.getuid(), cgroup])
"""


def pipeline(folder: Path, body: str, *, requires: str = "") -> Path:
    """A pipeline folder with the orders, the step module and ``body`` as a scenario's annotations."""
    folder.mkdir(exist_ok=True)
    (folder / "orders.csv").write_text(ORDERS)
    (folder / "steps.py").write_text(STEPS)
    dsl = folder / "p.dsl"
    dsl.write_text(f"Feature: Commands\n  {requires}\n  Scenario: S\n" + textwrap.indent(textwrap.dedent(body), "    "))
    return dsl


def run(run_cli: CliRunner, dsl: Path, executor: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = run_cli("run", dsl.name, "--json", "--set", f"executor.driver={executor}", cwd=dsl.parent)
    assert out.returncode in (0, 1), out.stderr
    scenario: dict[str, Any] = json.loads(out.stdout)["scenarios"][0]
    return out, scenario


def csv_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_pipeline_chains_unix_tools_and_python_steps(run_cli: CliRunner, tmp_path: Path, executor: str) -> None:
    # the docs' example (docs/dsl.md, Command steps) on small data
    dsl = pipeline(
        tmp_path / "p",
        """\
        @source("csv://orders.csv")
        @run("awk -F, 'NR == 1 || $3 >= 400' {input}")
        @step("steps:tag")
        @run("(head -n 1 {input} && tail -n +2 {input} | sort -t, -k3,3n) > {output}", shell=True)
        @run("tr a-z A-Z")
        @sink("parquet://out/large.parquet")
        """,
    )
    _, scenario = run(run_cli, dsl, executor)
    assert scenario["state"] == "SUCCEEDED", scenario["error"]
    table = pq.read_table(dsl.parent / "out" / "large.parquet")
    # tr upper-cased the header and the text; sort ordered by amount; awk dropped the small ones
    assert table.column_names == ["ORDER_ID", "CUSTOMER", "AMOUNT", "BIG"]
    assert table.column("ORDER_ID").to_pylist() == ["O-4", "O-5", "O-2"]
    assert table.column("AMOUNT").to_pylist() == [400, 650.25, 900]
    assert table.column("BIG").to_pylist() == [False, True, True]  # "TRUE" read back as CSV is typed
    assert scenario["steps"] == {"run:awk": 3, "steps:tag": 3, "run:sh": 3, "run:tr": 3}
    assert scenario["rows_in"] == 5 and scenario["rows_out"] == 3
    work = Path(scenario["log_dir"]) / "work"
    assert not list(work.glob("run-*")), "a command step's files outlive it"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_command_runs_inside_the_slice_like_the_python_steps(
    run_cli: CliRunner, tmp_path: Path, executor: str
) -> None:
    dsl = pipeline(
        tmp_path / "p",
        f"""\
        @source("csv://orders.csv")
        @step("steps:whoami")
        @run("{sys.executable} whoami.py {{input}} {{output}}")
        @sink("csv://out/where.csv")
        """,
    )
    (dsl.parent / "whoami.py").write_text(WHOAMI_PROGRAM)  # named relative: runs in the pipeline's folder
    _, scenario = run(run_cli, dsl, executor)
    assert scenario["state"] == "SUCCEEDED", scenario["error"]
    table = pacsv.read_csv(dsl.parent / "out" / "where.csv")
    assert table.num_rows == 5
    assert table.column("cmd_uid").to_pylist() == table.column("step_uid").to_pylist()
    assert table.column("cmd_cgroup").to_pylist() == table.column("step_cgroup").to_pylist()
    if executor == "linux":  # confined: an unprivileged uid in the slice's own cgroup
        assert table.column("cmd_uid")[0].as_py() != 0
        own = ";".join(Path("/proc/self/cgroup").read_text().split())
        assert table.column("cmd_cgroup")[0].as_py() != own and "runink" in table.column("cmd_cgroup")[0].as_py()


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_failing_command_fails_the_scenario_in_one_line(run_cli: CliRunner, tmp_path: Path, executor: str) -> None:
    dsl = pipeline(
        tmp_path / "p",
        """\
        @source("csv://orders.csv")
        @run("sh -c 'echo working >&2; echo cannot parse line 3 >&2; exit 3'")
        @sink("csv://out/never.csv")
        """,
    )
    out, scenario = run(run_cli, dsl, executor)
    assert out.returncode == 1 and scenario["state"] == "FAILED"
    assert scenario["error"] == (
        "scenario 'S': step run:sh (\"sh -c 'echo working >&2; echo cannot parse line 3 >&2; exit 3'\") "
        "exited with status 3 (stderr: cannot parse line 3)"
    )
    log = (Path(scenario["log_dir"]) / "stderr.log").read_text()
    assert "run:sh] working\n" in log and "run:sh] cannot parse line 3\n" in log  # the whole stderr, tagged
    assert not (dsl.parent / "out" / "never.csv").exists()
    table_out = run_cli("run", dsl.name, "--set", f"executor.driver={executor}", cwd=dsl.parent)
    failure = [line for line in table_out.stderr.splitlines() if "exited with status 3" in line]
    assert len(failure) == 1 and failure[0].startswith("S: step run:sh")


def test_a_missing_program_or_a_signal_is_said_so(run_cli: CliRunner, tmp_path: Path) -> None:
    dsl = pipeline(tmp_path / "p", '@source("csv://orders.csv")\n@run("no-such-program-xyz {input}")\n@sink("o.csv")\n')
    _, scenario = run(run_cli, dsl, "process")
    assert "step run:no-such-program-xyz" in scenario["error"]
    assert "program 'no-such-program-xyz' not found" in scenario["error"]
    dsl = pipeline(tmp_path / "q", '@source("csv://orders.csv")\n@run("sh -c \'kill -9 $$\'")\n@sink("o.csv")\n')
    _, scenario = run(run_cli, dsl, "process")
    assert scenario["error"].endswith("was killed by signal SIGKILL")


def test_more_failures_name_the_step(run_cli: CliRunner, tmp_path: Path) -> None:
    dsl = pipeline(tmp_path / "p", '@source("csv://orders.csv")\n@run("true {output}")\n@sink("o.csv")\n')
    _, scenario = run(run_cli, dsl, "process")
    assert scenario["error"].startswith("scenario 'S': step run:true ('true {output}') exited with status 0 but ")
    assert "wrote no output file {output}" in scenario["error"]
    # a Python step after a command names the lines of the command's output it was given
    body = '@source("csv://orders.csv")\n@run("tr a-z A-Z")\n@step("steps:boom")\n@sink("o.csv")\n'
    dsl = pipeline(tmp_path / "q", body)
    _, scenario = run(run_cli, dsl, "process")
    assert scenario["error"] == (
        "scenario 'S': step steps:boom raised ValueError: no good (batch of the output of run:tr lines 2-6)"
    )


def test_no_rows_reach_a_command(run_cli: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "p"
    body = '@source("csv://orders.csv")\n@step("steps:drop_all")\n@run("sh -c \'echo n; wc -c\'")\n@sink("out.csv")\n'
    dsl = pipeline(folder, body)
    _, scenario = run(run_cli, dsl, "process")
    assert scenario["state"] == "SUCCEEDED", scenario["error"]
    assert scenario["rows_out"] == 1
    assert (folder / "out.csv").read_text().split() == ['"n"', "0"]  # its input file was empty
    # an output of a header and no rows: no rows, and the sinks get its columns
    dsl = pipeline(tmp_path / "q", '@source("csv://orders.csv")\n@run("head -n 1 {input}")\n@sink("o.parquet")\n')
    _, scenario = run(run_cli, dsl, "process")
    assert scenario["state"] == "SUCCEEDED" and scenario["rows_out"] == 0, scenario["error"]
    assert pq.read_schema(tmp_path / "q" / "o.parquet").names == ["order_id", "customer", "amount"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_no_shell_unless_asked(run_cli: CliRunner, tmp_path: Path, executor: str) -> None:
    folder = tmp_path / "p"
    dsl = pipeline(
        folder,
        """\
        @source("csv://orders.csv")
        @run("printf 'text\\\\n%s\\\\n%s\\\\n%s\\\\n' 'a;touch pwned-1' '$(touch pwned-2)' '`touch pwned-3`'")
        @sink("csv://out/literal.csv")
        """,
    )
    _, scenario = run(run_cli, dsl, executor)
    assert scenario["state"] == "SUCCEEDED", scenario["error"]
    assert csv_rows(folder / "out" / "literal.csv") == [
        ['"text"'],
        ['"a;touch pwned-1"'],
        ['"$(touch pwned-2)"'],
        ['"`touch pwned-3`"'],
    ]
    assert not list(folder.rglob("pwned*")) and not list(Path(scenario["log_dir"]).rglob("pwned*"))

    dsl = pipeline(
        tmp_path / "q",
        """\
        @source("csv://orders.csv")
        @run("echo answer; echo $((6 * 7)) | tr 4 5", shell=True)
        @sink("csv://out/shell.csv")
        """,
    )
    _, scenario = run(run_cli, dsl, executor)
    assert scenario["state"] == "SUCCEEDED", scenario["error"]
    assert csv_rows(tmp_path / "q" / "out" / "shell.csv") == [['"answer"'], ["52"]]


def test_unknown_placeholder_is_a_compile_error_naming_file_and_line(
    run_cli: CliRunner, tmp_path: Path, data_home: Path
) -> None:
    dsl = pipeline(
        tmp_path / "p",
        """\
        @source("csv://orders.csv")
        @run("sort {inptu} -o {output}")
        @sink("csv://out/sorted.csv")
        """,
    )
    out = run_cli("run", dsl.name, cwd=dsl.parent)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: {dsl.name}:5:5: @run 'sort {{inptu}} -o {{output}}': unknown placeholder {{inptu}} "
        "(known: {input}, {output}; write {{ and }} for literal braces)"
    ), out.stderr
    assert not (dsl.parent / "out").exists() and not (data_home / "runs").exists()


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ("@run(\"awk '{print $1}' {input}\")", "unknown placeholder {print $1}"),
        ('@run("sort } {input}")', "Single '}' encountered in format string (write {{ and }} for literal braces)"),
        ('@run("tr \'a-z A-Z")', "cannot split the command into arguments: No closing quotation"),
        ('@run("  ")', "the command is empty"),
        ('@run("cat", format="s3")', "format 's3' is not a local file format of a storage driver (csv, jsonl, parquet"),
        ('@run("cat", shell="yes")', "@run: shell must be True or False, got 'yes'"),
        ("@run(3)", "@run: the command must be a string, got 3"),
    ],
)
def test_a_bad_command_is_refused_where_it_is_written(tmp_path: Path, annotation: str, message: str) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    text = f'Feature: F\n  Scenario: S\n    @source("in.csv")\n    {annotation}\n    @sink("out.csv")\n'
    with pytest.raises(DslError) as caught:
        compile_pipeline(parse(text, tmp_path / "p.dsl"))
    assert str(caught.value).startswith(f"{tmp_path / 'p.dsl'}:4:5: ")
    assert message in str(caught.value)


def test_literal_braces_and_jsonl_rows(run_cli: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "p"
    dsl = pipeline(
        folder,
        """\
        @source("csv://orders.csv")
        @run("awk '/\\"O-[24]\\"/ {{ print }}' {input}", format="jsonl")
        @sink("jsonl://out/picked.jsonl")
        """,
    )
    _, scenario = run(run_cli, dsl, "process")
    assert scenario["state"] == "SUCCEEDED", scenario["error"]
    rows = [json.loads(line) for line in (folder / "out" / "picked.jsonl").read_text().splitlines()]
    assert [(r["order_id"], r["amount"]) for r in rows] == [("O-2", 900), ("O-4", 400)]


def test_a_command_output_is_streamed_in_batches(run_cli: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "p"
    dsl = pipeline(
        folder,
        """\
        @source("csv://orders.csv")
        @run("sh -c 'echo n; seq 1 1000000'")
        @step("steps:count_batches")
        @sink("parquet://out/numbers.parquet")
        """,
    )
    _, scenario = run(run_cli, dsl, "process")
    assert scenario["state"] == "SUCCEEDED", scenario["error"]
    sizes = [int(line.split()[-2]) for line in (Path(scenario["log_dir"]) / "stdout.log").read_text().splitlines()]
    assert len(sizes) > 1 and sum(sizes) == 1_000_000  # read back a block at a time, not whole
    assert pq.read_metadata(folder / "out" / "numbers.parquet").num_rows == 1_000_000


@pytest.mark.parametrize("executor", EXECUTORS)
def test_the_scenario_timeout_covers_its_commands(run_cli: CliRunner, tmp_path: Path, executor: str) -> None:
    dsl = pipeline(
        tmp_path / "p",
        '@source("csv://orders.csv")\n@run("sleep 60")\n@sink("csv://out/o.csv")\n',
        requires='@requires(timeout="1s")',
    )
    _, scenario = run(run_cli, dsl, executor)
    assert scenario["state"] == "DEADLINE_EXCEEDED", scenario["error"]
    assert scenario["elapsed"] < 20


# a child in a session of its own holding the step's pipes; the step goes on once it is there
LEAVES_ITS_SESSION = (
    "cat; f=$(mktemp); setsid sh -c 'echo $$ > $0; exec sleep 3599' $f & "
    "while [ ! -s $f ]; do sleep 0.05; done; rm -f $f"
)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_what_a_command_leaves_running_ends_with_it(run_cli: CliRunner, tmp_path: Path, executor: str) -> None:
    """A child left in the background held the step's stderr pipe: the step waited for ever
    (no timeout by default). It is killed once the command exits; one that left the command's
    process group and holds a pipe fails the step after a few seconds, saying so."""
    dsl = pipeline(
        tmp_path / "p",
        '@source("csv://orders.csv")\n@run("cat; sleep 3600 &", shell=True)\n@sink("csv://out/o.csv")\n',
        requires='@requires(timeout="60s")',
    )
    _, scenario = run(run_cli, dsl, executor)
    assert scenario["state"] == "SUCCEEDED", scenario["error"]
    assert scenario["elapsed"] < 20
    assert len(csv_rows(tmp_path / "p" / "out" / "o.csv")) > 1
    dsl = pipeline(
        tmp_path / "q",
        '@source("csv://orders.csv")\n@run("' + LEAVES_ITS_SESSION + '", shell=True)\n@sink("csv://out/o.csv")\n',
        requires='@requires(timeout="60s")',
    )
    try:
        _, scenario = run(run_cli, dsl, executor)
    finally:  # (the process executor has no cgroup to end it with the slice)
        subprocess.run(["pkill", "-f", "^sleep 3599$"], check=False)
    assert scenario["state"] == "FAILED" and scenario["elapsed"] < 30, scenario
    assert "still holds its output or stderr open after 5 s" in scenario["error"], scenario["error"]
    assert not (tmp_path / "q" / "out" / "o.csv").exists()


@pytest.mark.parametrize("make", ["mkfifo {output}", "ln -s /dev/zero {output}"])
def test_an_output_that_is_not_a_regular_file_fails_the_step(run_cli: CliRunner, tmp_path: Path, make: str) -> None:
    """A FIFO or a link to /dev/zero as {output} was read as "no rows": the step succeeded empty."""
    dsl = pipeline(tmp_path / "p", f'@source("csv://orders.csv")\n@run("{make}")\n@sink("csv://out/o.csv")\n')
    _, scenario = run(run_cli, dsl, "linux")
    assert scenario["state"] == "FAILED", scenario
    assert "its output {output} is not a regular file" in scenario["error"], scenario["error"]


def test_a_command_step_reaches_the_slice_in_its_spec() -> None:
    spec = SliceSpec(
        task_id="t",
        scenario="S",
        herd="h",
        base_dir="/p",
        source=SourceSpec("csv://a.csv", "csv", "/p/a.csv"),
        steps=("steps:tag", CommandSpec("sort {input}", False, "csv"), CommandSpec("a | b", True, "jsonl")),
        sinks=(SinkSpec("csv", "/p/o.csv"),),
        drift_policy="warn",
        report="/w/report.jsonl",
    )
    assert SliceSpec.from_json(spec.to_json()) == spec
    data = json.loads(spec.to_json())
    data["steps"][1]["shell"] = "no"
    with pytest.raises(SpecError, match="'steps' is not a list of strings"):
        SliceSpec.from_json(json.dumps(data))


@pytest.mark.skipif(bool(ISOLATION_PROBLEMS), reason=f"cannot isolate: {ISOLATION_PROBLEMS}")
def test_a_command_steps_program_killed_for_memory_ends_the_scenario_oomkilled(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """The program killed by the cgroup's OOM killer, its slice lived on to say so and exited 1:
    the scenario ended FAILED, where a Python step's would be OOMKILLED (a docs review's run)."""
    dsl = pipeline(
        tmp_path / "p",
        '@source("csv://orders.csv")\n@run("python3 -c \\"x = bytearray(600 * 1024 * 1024)\\"")\n'
        '@sink("csv://out/o.csv")\n',
        requires='@requires(memory="96Mi", timeout="60s")',
    )
    _, scenario = run(run_cli, dsl, "linux")
    assert scenario["state"] == "OOMKILLED", scenario
    assert "was killed by signal SIGKILL" in scenario["error"], scenario["error"]
