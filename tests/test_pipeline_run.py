"""`runink run` end to end: real slices through the process executor, real files, the CLI as users run it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixture_types import CliRunner, FakeDist

from runink.core.datasets import DatasetRef
from runink.core.pipeline.compile import CompiledScenario, CompiledSink
from runink.core.pipeline.model import Scenario

REPO = Path(__file__).resolve().parent.parent


def _writing(final: Path) -> CompiledScenario:
    """A compiled scenario whose one sink is ``final`` (stage_sinks reads only its sinks' paths)."""
    ref = DatasetRef("csv", final, str(final))
    return CompiledScenario(Scenario("writes"), ref, (CompiledSink(ref, "valid", {}),))


def summary(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode in (0, 1), out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_orders_example_end_to_end(run_cli: CliRunner, orders: Path, data_home: Path) -> None:
    out = run_cli("run", "orders.dsl", "--json", cwd=orders)
    result = summary(out)
    assert out.returncode == 0 and result["ok"]
    validate, large = result["scenarios"]
    assert (validate["scenario"], validate["state"]) == ("Validate orders", "SUCCEEDED")
    assert validate["rows_in"] == 1000 and validate["rows_valid"] == 980 and validate["rows_invalid"] == 20
    assert validate["rows_malformed"] == 4 and validate["rows_out"] == 980
    assert large["state"] == "SUCCEEDED" and large["rows_in"] == 980 and 0 < large["rows_out"] < 980
    silver = pq.read_table(orders / "out" / "silver" / "orders.parquet")
    assert silver.num_rows == 980 and "amount_eur" in silver.column_names
    assert set(silver.column("customer_email").to_pylist()) == {"****.com"}  # pii masked
    dlq = [json.loads(line) for line in (orders / "out" / "dlq" / "orders.jsonl").read_text().splitlines()]
    assert len(dlq) == 20
    first = dlq[0]
    assert first["order_id"] == "O-0000049" and first["_runink_reason"] == "amount: not a valid decimal(12,2)"
    assert first["_runink_position"] == 51  # the file line: header is line 1
    malformed = [r for r in dlq if r["_runink_text"]]
    assert len(malformed) == 4 and malformed[0]["_runink_reason"].startswith("malformed line: expected 7 columns")
    lines = (orders / "data" / "orders.csv").read_text().splitlines()
    line = lines[malformed[0]["_runink_position"] - 1]  # (the contract masks the e-mail: only its length)
    assert malformed[0]["_runink_text"] == f"**** (masked: {len(line)} characters)" and "@" in line
    # lineage: START and COMPLETE for both scenarios, with their datasets
    lineage = data_home / "lineage" / "events.jsonl"  # the data dir: $XDG_DATA_HOME/runink, not the project's
    events = [json.loads(x) for x in lineage.read_text().splitlines()]
    kinds = [(e["eventType"], e["job"]["name"]) for e in events]
    assert ("COMPLETE", "Orders to silver.Validate orders") in kinds
    assert ("START", "Orders to silver.Large orders") in kinds
    complete = next(e for e in events if kinds[events.index(e)] == ("COMPLETE", "Orders to silver.Validate orders"))
    facet = complete["run"]["facets"]["runink"]
    assert facet["rowsInvalid"] == 20 and facet["contractHash"] and facet["state"] == "SUCCEEDED"
    # OpenLineage's own facets: rows read, rows written, the output's schema, the pipeline run as parent
    assert complete["inputs"][0]["inputFacets"]["dataQualityMetrics"]["rowCount"] == 1000
    silver = next(o for o in complete["outputs"] if o["name"].endswith("silver/orders.parquet"))
    assert silver["namespace"] == "file" and silver["outputFacets"]["outputStatistics"]["rowCount"] == 980
    assert "amount_eur" in [f["name"] for f in silver["facets"]["schema"]["fields"]]
    parents = {e["run"]["facets"]["parent"]["run"]["runId"] for e in events}
    assert len(parents) == 1 and len({e["run"]["runId"] for e in events}) == 2  # one run per scenario


def test_table_output_and_progress(run_cli: CliRunner, orders: Path) -> None:
    out = run_cli("run", "orders.dsl", cwd=orders)
    assert out.returncode == 0, out.stderr
    assert "Validate orders" in out.stdout and "SUCCEEDED" in out.stdout
    assert "Validate orders: running" in out.stderr
    forced = run_cli("run", "orders.dsl", "--set", "executor.driver=process", cwd=orders)
    assert forced.returncode == 0 and "does not enforce" in forced.stderr


def _linux_isolates() -> bool:
    from runink.plugins.executors.linux.executor import LinuxExecutor

    return LinuxExecutor().fingerprint().healthy


@pytest.mark.skipif(os.geteuid() != 0 or not _linux_isolates(), reason="the linux executor cannot isolate here")
def test_auto_runs_scenarios_isolated_and_publishes_outputs(run_cli: CliRunner, orders: Path) -> None:
    out = run_cli("run", "orders.dsl", "--json", cwd=orders)
    result = json.loads(out.stdout)
    assert result["ok"], out.stderr
    assert "not isolated" not in out.stderr
    for scenario in result["scenarios"]:
        work = Path(scenario["log_dir"]) / "work"
        # the slice (its own unprivileged user) wrote there through an id-mapped mount: nothing chowned
        assert work.stat().st_uid == os.getuid() and (work / "report.jsonl").stat().st_uid == os.getuid()
        for output in scenario["outputs"]:
            assert Path(output).stat().st_uid == os.getuid()  # published as the runner's user
            task, attempt, size, _ = os.getxattr(output, "user.runink.writer").decode().split(" ")  # (its writer)
            assert re.fullmatch(r"job-[0-9a-f]+-[0-9a-f]{8}\.000[12]", task) and attempt == "1", task
            assert int(size) == Path(output).stat().st_size
            assert not list(Path(output).parent.glob(".runink-stage-*"))  # staging removed


@pytest.mark.skipif(os.geteuid() != 0 or not _linux_isolates(), reason="the linux executor cannot isolate here")
def test_a_second_run_with_the_same_config_starts_its_launcher_before_loading_the_config(
    run_cli: CliRunner, orders: Path
) -> None:
    """`runink run` keeps the executor driver it used under the config's fingerprint; the next
    run with that config asks the driver to prestart (the linux launcher starts importing the
    slices' runtime before the config is loaded) and the executor takes it over."""
    taken = "took over the prestarted launcher"
    first = run_cli("--debug", "run", "orders.dsl", cwd=orders)
    assert first.returncode == 0 and taken not in first.stderr, first.stderr
    second = run_cli("--debug", "run", "orders.dsl", "--json", cwd=orders)
    assert second.returncode == 0 and taken in second.stderr, second.stderr
    assert json.loads(second.stdout)["ok"]
    # another config (the process executor): no guess for it, and nothing taken over
    process = run_cli("--debug", "run", "orders.dsl", cwd=orders, env={"RUNINK_EXECUTOR__DRIVER": "process"})
    assert process.returncode == 0 and taken not in process.stderr, process.stderr
    again = run_cli("--debug", "run", "orders.dsl", cwd=orders, env={"RUNINK_EXECUTOR__DRIVER": "process"})
    assert again.returncode == 0 and taken not in again.stderr, again.stderr


def test_dry_run_writes_nothing(run_cli: CliRunner, orders: Path) -> None:
    out = run_cli("run", "orders.dsl", "--dry-run", "--json", cwd=orders)
    plan = json.loads(out.stdout)
    assert plan["levels"] == [["Validate orders"], ["Large orders"]]
    assert plan["scenarios"][1]["upstream"] == ["Validate orders"]
    assert not (orders / "out").exists()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    write(
        root / "contracts.py",
        """
        from runink.core.contracts import Contract, Field

        class Row(Contract):
            id: int = Field(ge=0)
            name: str
    """,
    )
    write(
        root / "steps.py",
        """
        import os, time
        import pyarrow as pa
        import pyarrow.compute as pc
        from runink.core.steps import record_step

        def boom(batch):
            if pc.any(pc.equal(batch.column("id"), 7)).as_py():
                raise ValueError("id 7 is cursed")
            return batch

        def flaky(batch):
            if "attempt-1" in os.getcwd():  # each attempt has its own private work dir
                raise RuntimeError("first attempt fails")
            return batch

        def slow(batch):
            time.sleep(30)
            return batch

        def chatty(batch):
            import sys
            print(f"saw {batch.num_rows} rows", end="")
            print(" in one batch")
            print("warning: nothing wrong", file=sys.stderr)
            return batch

        @record_step
        def shout(row):
            return None if row["id"] % 2 else {**row, "name": row["name"].upper()}
    """,
    )
    rows = "id,name\n" + "".join(f"{i},n{i}\n" for i in range(10))
    write(root / "in.csv", rows)
    return root


def dsl(root: Path, body: str) -> Path:
    return write(root / "p.dsl", "Feature: test\n" + textwrap.indent(textwrap.dedent(body), "  "))


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``folder`` (made if missing) for the block; root only (else skipped)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    folder.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_step_exception_fails_the_scenario_and_keeps_old_outputs(run_cli: CliRunner, project: Path) -> None:
    dsl(
        project,
        """
        Scenario: a
          @source("in.csv", contract="contracts:Row")
          @step("steps:boom")
          @sink("out/a.parquet")
          @sink("out/dlq.jsonl", when="invalid")
        Scenario: b
          @source("out/a.parquet")
          @sink("out/b.csv")
    """,
    )
    write(project / "out" / "a.parquet", "previous output")
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    result = summary(out)
    assert out.returncode == 1 and not result["ok"]
    a, b = result["scenarios"]
    assert a["state"] == "FAILED"
    assert "step steps:boom raised ValueError: id 7 is cursed (batch of in.csv lines 2-11)" in a["error"]
    assert b["state"] == "SKIPPED" and "upstream scenario 'a'" in b["error"]
    assert (project / "out" / "a.parquet").read_text() == "previous output"
    assert not (project / "out" / "dlq.jsonl").exists()
    assert sorted(p.name for p in (project / "out").iterdir()) == ["a.parquet"]  # no temp files left
    assert "Traceback" in (Path(a["log_dir"]) / "stderr.log").read_text()


def test_record_steps_and_retries(run_cli: CliRunner, project: Path) -> None:
    dsl(
        project,
        """
        @retries(2, backoff="0.1s")
        Scenario: a
          @source("in.csv", contract="contracts:Row")
          @step("steps:flaky")
          @step("steps:shout")
          @sink("out/a.jsonl")
    """,
    )
    result = summary(run_cli("run", "p.dsl", "--json", cwd=project))
    a = result["scenarios"][0]
    assert a["state"] == "SUCCEEDED" and a["attempts"] == 2
    rows = [json.loads(x) for x in (project / "out" / "a.jsonl").read_text().splitlines()]
    assert rows == [{"id": i, "name": f"N{i}"} for i in range(0, 10, 2)]


def test_log_lines_are_tagged_with_the_slice_and_step(run_cli: CliRunner, project: Path) -> None:
    dsl(
        project,
        """
        Scenario: a
          @source("in.csv", contract="contracts:Row")
          @step("steps:chatty")
          @step("steps:shout")
          @sink("out/a.jsonl")
    """,
    )
    a = summary(run_cli("run", "p.dsl", "--json", cwd=project))["scenarios"][0]
    assert a["state"] == "SUCCEEDED"
    log_dir = Path(a["log_dir"])
    task_id = json.loads((log_dir / "handle.json").read_text())["task_id"]
    assert (log_dir / "stdout.log").read_text().splitlines() == [f"[{task_id} steps:chatty] saw 10 rows in one batch"]
    assert f"[{task_id} steps:chatty] warning: nothing wrong" in (log_dir / "stderr.log").read_text().splitlines()


def test_timeout(run_cli: CliRunner, project: Path) -> None:
    dsl(
        project,
        """
        @requires(timeout="1s")
        Scenario: a
          @source("in.csv")
          @step("steps:slow")
          @sink("out/a.csv")
    """,
    )
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    a = summary(out)["scenarios"][0]
    assert a["state"] == "DEADLINE_EXCEEDED" and "timed out after 1s" in a["error"]
    assert not (project / "out" / "a.csv").exists()


def test_missing_source_and_unwritable_sink(run_cli: CliRunner, project: Path) -> None:
    dsl(
        project,
        """
        Scenario: a
          @source("nowhere.csv")
          @sink("out/a.csv")
        Scenario: b
          @source("in.csv")
          @sink("blocked/b.csv")
    """,
    )
    write(project / "blocked", "a file where a folder should be")
    result = summary(run_cli("run", "p.dsl", "--json", cwd=project))
    a, b = result["scenarios"]
    assert a["state"] == "FAILED" and "nowhere.csv does not exist" in a["error"]
    assert b["state"] == "FAILED" and "blocked" in b["error"]


def test_schema_drift_warns_or_blocks(run_cli: CliRunner, project: Path) -> None:
    write(project / "in.csv", "id,name,extra\n1,a,x\n")
    dsl(
        project,
        """
        Scenario: a
          @source("in.csv", contract="contracts:Row")
          @sink("out/a.csv")
    """,
    )
    warned = summary(run_cli("run", "p.dsl", "--json", cwd=project))["scenarios"][0]
    assert warned["state"] == "SUCCEEDED" and warned["drift"] == ["column 'extra' is not in the contract"]
    write(project / "runink.toml", '[herds.default]\ndrift = "block"\n')
    blocked = summary(run_cli("run", "p.dsl", "--json", cwd=project))["scenarios"][0]
    assert blocked["state"] == "FAILED" and "(herd policy: block)" in blocked["error"]


def test_many_batches_keep_positions(run_cli: CliRunner, project: Path) -> None:
    lines = ["id,name"] + [f"{i if i % 1000 else -i},name{i}" for i in range(1, 30_001)]
    write(project / "in.csv", "\n".join(lines) + "\n")
    dsl(
        project,
        """
        Scenario: a
          @source("in.csv", contract="contracts:Row", block_size=65536)
          @sink("out/a.parquet")
          @sink("out/dlq.csv", when="invalid")
    """,
    )
    a = summary(run_cli("run", "p.dsl", "--json", cwd=project))["scenarios"][0]
    assert a["state"] == "SUCCEEDED" and a["rows_in"] == 30_000 and a["rows_invalid"] == 30
    assert pq.read_metadata(project / "out" / "a.parquet").num_rows == 29_970
    dlq = (project / "out" / "dlq.csv").read_text().splitlines()[1:]
    positions = [int(row.split(",")[-2]) for row in dlq]
    assert positions == [i + 1 for i in range(1000, 30_001, 1000)]  # line = id + 1 (header)


def test_compile_error_is_one_line(run_cli: CliRunner, project: Path) -> None:
    dsl(
        project,
        """
        Scenario: a
          @source("in.csv")
          @stepp("steps:boom")
          @sink("out/a.csv")
    """,
    )
    out = run_cli("run", "p.dsl", cwd=project)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: p.dsl:5:5: unknown annotation @stepp (did you mean 'step'?); known: @herd, @source, "
        "@step, @run, @sink, @requires, @affinity, @retries, @golden, @network, @secrets, @annotate"
    )
    assert "Traceback" not in out.stderr


def test_set_overrides_reach_plugins_and_drivers(
    run_cli: CliRunner, orders: Path, tmp_path: Path, data_home: Path
) -> None:
    data = tmp_path / "state"
    out = run_cli("run", "orders.dsl", "--json", "--set", f"data_dir={data}", cwd=orders)
    assert out.returncode == 0, out.stderr
    assert (data / "lineage" / "events.jsonl").exists()  # the lineage plugin saw the override
    assert not (data_home / "lineage").exists()  # (the default data dir: not used)
    bad = run_cli("run", "orders.dsl", "--set", "executor.driver=nope", cwd=orders)
    assert bad.returncode == 1
    assert "no runink.executors driver named 'nope' (set at --set executor.driver)" in bad.stderr


def test_publishing_accepts_only_regular_files(tmp_path: Path) -> None:
    """A staging folder belongs to the slice: a link, a hard link or a setuid file left there is
    not published as is, and a staging folder swapped for a link after it was made redirects
    nothing (fds, not paths)."""
    from runink.core.staging import publish as _publish
    from runink.core.staging import stage_sinks as _stage_sinks
    from runink.core.staging import unstage as _unstage

    secret = tmp_path / "root-only.txt"
    secret.write_text("not for slices")
    final = tmp_path / "out" / "orders.csv"
    item = _writing(final)
    stages = _stage_sinks(item)
    stage = stages[final]
    outer = stage.path.parent
    assert outer.parent == final.parent and outer.name.startswith(".runink-stage-") and stage.path.name == "out"
    assert outer.stat().st_mode & 0o777 == 0o700  # what the slice leaves in out/ is out of others' reach
    stage.file.symlink_to(secret)
    with pytest.raises(OSError, match="no regular file"):
        _publish(stages)
    stage.file.unlink()
    os.link(secret, stage.file)  # (a slice cannot make one across mounts; a runner-side mistake could)
    with pytest.raises(OSError, match="no regular file"):
        _publish(stages)
    assert not final.exists() and secret.read_text() == "not for slices"
    stage.file.unlink()
    stage.file.write_text("id\n1\n")
    os.chmod(stage.file, 0o6755)  # what a slice may do to its own file: setuid, setgid, exec
    # someone who can write out/ moves the staging folder away and plants a link in its place
    outer.rename(tmp_path / "moved")
    os.symlink(tmp_path / "elsewhere", outer)
    _publish(stages)
    assert final.read_text() == "id\n1\n" and not (tmp_path / "elsewhere").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert final.stat().st_mode & 0o7777 == 0o666 & ~umask  # a data file's mode: no setuid, no exec
    _unstage(stages)
    assert stages == {}


def test_a_stale_staging_folder_is_swept_and_a_live_one_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runink.core import staging
    from runink.core.staging import stage_sinks as _stage_sinks
    from runink.core.staging import unstage as _unstage

    monkeypatch.setattr(staging, "STALE_AFTER", 0.0)  # (a fresh unlocked one is left alone for a minute)

    final = tmp_path / "out" / "a.csv"
    item = _writing(final)
    live = _stage_sinks(item)
    (final.parent / ".runink-stage-deadbeef").mkdir()  # a dead runner's: nobody holds its lock
    other = _stage_sinks(item)
    names = {p.name for p in final.parent.glob(".runink-stage-*")}
    assert ".runink-stage-deadbeef" not in names
    assert {live[final].path.parent.name, other[final].path.parent.name} == names
    _unstage(live)
    _unstage(other)
    assert not list(final.parent.glob(".runink-stage-*"))


def test_removing_a_staging_folder_swapped_for_another_deletes_only_its_own(tmp_path: Path) -> None:
    """Someone who can write the sink's folder swaps the runner's staging folder for a folder of
    theirs: the runner empties its own (through its fd) and leaves theirs whole."""
    from runink.core.staging import stage_sinks as _stage_sinks
    from runink.core.staging import unstage as _unstage

    final = tmp_path / "out" / "a.csv"
    item = _writing(final)
    stages = _stage_sinks(item)
    outer = stages[final].path.parent
    stages[final].file.write_text("partial")
    theirs = tmp_path / "out" / "data"
    (theirs / "keep").mkdir(parents=True)
    (theirs / "keep" / "precious.csv").write_text("x")
    outer.rename(tmp_path / "out" / "moved-away")
    theirs.rename(outer)  # their folder now has the staging folder's name
    _unstage(stages)
    assert (outer / "keep" / "precious.csv").read_text() == "x"
    assert list((tmp_path / "out" / "moved-away").iterdir()) == []  # the runner's own was emptied


def test_a_sink_folder_redirected_by_a_link_after_compiling_is_refused(tmp_path: Path) -> None:
    from runink.core.staging import stage_sinks as _stage_sinks

    (tmp_path / "out").mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink(victim, tmp_path / "out" / "sub")  # planted in a folder others can write
    final = tmp_path / "out" / "sub" / "a.csv"
    item = _writing(final)
    with pytest.raises(OSError, match="outside what the pipeline may write"):
        _stage_sinks(item, lambda real: real == tmp_path / "out" or tmp_path / "out" in real.parents)
    assert list(victim.iterdir()) == []


def test_a_csv_sink_read_by_the_next_scenario_keeps_every_text(run_cli: CliRunner, project: Path) -> None:
    """Values with line breaks, which the CSV sink writes quoted, were dead letters when the next
    scenario read that file, and "" (an empty text) came back as null: a required field failed."""
    notes = ["two\nlines", "", "ok", "cr\r", "crlf\r\n", 'a "quote"\n']
    lines = [json.dumps({"id": i, "name": note}) for i, note in enumerate(notes)]
    (project / "in.jsonl").write_text("\n".join(lines) + "\n")
    dsl(
        project,
        """
        Scenario: first
          @source("in.jsonl", contract="contracts:Row")
          @sink("out/mid.csv")
        Scenario: second
          @source("out/mid.csv", contract="contracts:Row")
          @sink("out/final.jsonl")
          @sink("out/dlq.jsonl", when="invalid")
    """,
    )
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    first, second = summary(out)["scenarios"]
    assert (first["state"], second["state"]) == ("SUCCEEDED", "SUCCEEDED"), out.stderr
    final = [json.loads(x) for x in (project / "out" / "final.jsonl").read_text().splitlines()]
    assert final == [{"id": i, "name": note} for i, note in enumerate(notes)]
    assert (second["rows_valid"], second["rows_invalid"], second["rows_malformed"]) == (6, 0, 0)
    assert (project / "out" / "dlq.jsonl").read_text() == ""


def test_malformed_records_are_dead_letters_with_or_without_a_contract(run_cli: CliRunner, project: Path) -> None:
    # An unclosed quote swallowed the following lines into one value and the scenario SUCCEEDED;
    # a line nested 2,000 deep or not UTF-8 failed the whole scenario; a dead-letter sink
    # needed a contract.
    lines = ["id,name"] + [f"{i},n{i}" for i in range(10)]
    lines[4] = '3,"never closed'
    lines[7] = b"6,\xff".decode("latin-1")
    lines[10] = "nine,n9"  # (invalid by the contract, after both malformed lines: written after them)
    (project / "in.csv").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    deep = '{"id": ' + "[" * 2000 + "]" * 2000 + "}"
    (project / "in.jsonl").write_bytes(b'{"id": 1}\n' + deep.encode() + b'\n{"id": "\xff"}\n{"id": 4}\n')
    dsl(
        project,
        """
        Scenario: with contract
          @source("in.csv", contract="contracts:Row")
          @sink("out/a.parquet")
          @sink("out/dlq-a.jsonl", when="invalid")
        Scenario: without contract
          @source("in.jsonl")
          @sink("out/b.jsonl")
          @sink("out/dlq-b.jsonl", when="invalid")
    """,
    )
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    a, b = summary(out)["scenarios"]
    assert (a["state"], b["state"]) == ("SUCCEEDED", "SUCCEEDED"), out.stderr
    assert pq.read_table(project / "out" / "a.parquet").column("id").to_pylist() == [0, 1, 2, 4, 5, 7, 8]
    dlq_a = [json.loads(x) for x in (project / "out" / "dlq-a.jsonl").read_text().splitlines()]
    assert [(r["_runink_position"], r["_runink_text"]) for r in dlq_a] == [
        (5, '3,"never closed'),
        (8, "6,\ufffd"),
        (11, None),
    ]  # (in file order)
    assert "a quoted value does not close" in dlq_a[0]["_runink_reason"] and "UTF-8" in dlq_a[1]["_runink_reason"]
    assert a["rows_malformed"] == 2 and a["rows_valid"] == 7
    good = [json.loads(x)["id"] for x in (project / "out" / "b.jsonl").read_text().splitlines()]
    assert good == [1, 4]
    dlq_b = [json.loads(x) for x in (project / "out" / "dlq-b.jsonl").read_text().splitlines()]
    assert [(r["_runink_position"], r["_runink_source"]) for r in dlq_b] == [(2, "in.jsonl"), (3, "in.jsonl")]
    assert dlq_b[0]["_runink_reason"] == "malformed line: nested deeper than 512 levels"
    assert b["rows_malformed"] == 2 and b["rows_invalid"] == 2


def test_a_failing_step_is_one_line_on_the_console(run_cli: CliRunner, project: Path) -> None:
    # It came three times: the runner's log record with the slice's traceback, then the summary.
    dsl(
        project,
        """
        Scenario: a
          @source("in.csv", contract="contracts:Row")
          @step("steps:boom")
          @sink("out/a.parquet")
    """,
    )
    out = run_cli("run", "p.dsl", cwd=project)
    assert out.returncode == 1
    lines = [x for x in out.stderr.splitlines() if "cursed" in x]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    line = lines[0]
    assert line.startswith("a: step steps:boom raised ValueError: id 7 is cursed (batch of in.csv lines 2-11)")
    log = Path(line.rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.name == "stderr.log" and "Traceback" in log.read_text()
    debug = run_cli("--debug", "run", "p.dsl", cwd=project)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


EXECUTORS = '''
    from runink.core.errors import TaskRejectedError
    from runink.core.interfaces import ExecutorCapabilities
    from runink.plugins.executors.process import ProcessExecutor

    class Plain(ProcessExecutor):
        """A third party's executor that isolates nothing and takes degrade like every driver."""
        name = "plain"

    class Strict(ProcessExecutor):
        """Isolates (it says) and refuses what it cannot enforce, without saying who it is."""
        name = "strict"

        def capabilities(self):
            return ExecutorCapabilities(isolation="vm")

        def start(self, spec):
            if not self.degrade:
                raise TaskRejectedError("no room for this task")
            return super().start(spec)

    class Old(ProcessExecutor):
        """An executor written before every driver took degrade."""
        name = "old"

        def __init__(self):
            super().__init__(degrade=False)
'''


def test_third_party_executors_get_degrade_and_are_named(
    run_cli: CliRunner, project: Path, fake_dist: FakeDist
) -> None:
    site = fake_dist(
        "third-party-executors",
        "1.0",
        {"runink.executors": {"plain": "tpx:Plain", "strict": "tpx:Strict", "old": "tpx:Old"}},
        {"tpx.py": EXECUTORS},
    )
    dsl(
        project,
        """
        Scenario: a
          @requires(memory="256Mi")
          @source("in.csv")
          @sink("out/a.csv")
    """,
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("run", "p.dsl", "--json", *args, cwd=project, pythonpath=site)

    # isolates nothing: degraded by default, as the built-in process executor, and said so
    plain = run("--set", "executor.driver=plain")
    assert summary(plain)["scenarios"][0]["state"] == "SUCCEEDED", plain.stderr
    assert "warning: executor 'plain' does not enforce cpu, memory limits" in plain.stderr
    # degrade=false from --set is false, not the (true) string "false"
    refused = run("--set", "executor.driver=plain", "--set", "executor.options.degrade=false")
    error = summary(refused)["scenarios"][0]["error"]
    assert error.startswith("scenario 'a': executor 'plain' refused it: task ") and "cannot enforce" in error
    # an isolating driver refuses unless told to degrade; the refusal names it
    strict = summary(run("--set", "executor.driver=strict"))["scenarios"][0]
    assert strict["error"] == "scenario 'a': executor 'strict' refused it: no room for this task"
    allowed = run("--set", "executor.driver=strict", "--set", "executor.options.degrade=true")
    assert summary(allowed)["scenarios"][0]["state"] == "SUCCEEDED"
    old = run("--set", "executor.driver=old")
    assert old.returncode == 1
    assert "driver 'old' does not take the 'degrade' option every executor driver takes" in old.stderr


def test_a_run_from_a_read_only_folder_keeps_its_state_in_the_data_dir(
    run_cli: CliRunner, orders: Path, tmp_path: Path, data_home: Path
) -> None:
    """Nothing a run leaves goes to the folder it was started from: a read-only one is fine."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as read_only:
        out = run_cli("run", str(orders / "orders.dsl"), cwd=read_only)
        assert out.returncode == 0, out.stderr
        assert (orders / "out" / "silver" / "orders.parquet").exists()
        assert (data_home / "lineage" / "events.jsonl").exists() and any((data_home / "runs").iterdir())
        assert (data_home / "catalog.db").exists() and os.listdir(read_only) == []


def test_publishing_is_all_or_none_when_a_folder_took_one_sinks_place(tmp_path: Path) -> None:
    """A failed scenario publishes nothing: one sink's place taken by a folder (made during the
    run) fails the publication before any output moves."""
    from runink.core.pipeline.model import Scenario as _Scenario
    from runink.core.staging import publish as _publish
    from runink.core.staging import stage_sinks as _stage_sinks
    from runink.core.staging import unstage as _unstage

    first, second = tmp_path / "out" / "a.csv", tmp_path / "out" / "b.csv"
    refs = [DatasetRef("csv", path, str(path)) for path in (first, second)]
    item = CompiledScenario(_Scenario("writes"), refs[0], tuple(CompiledSink(r, "valid", {}) for r in refs))
    stages = _stage_sinks(item)
    for final in (first, second):
        stages[final].file.write_text("id\n1\n")
    second.mkdir()  # (a folder in its place since the run began)
    with pytest.raises(OSError, match="a folder is in its place"):
        _publish(stages)
    assert not first.exists()  # the other one was not published either
    _unstage(stages)


def test_a_full_disk_fails_the_scenario_naming_the_sink_not_its_staging_folder(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """The error named `.runink-stage-<random>/out/...`, a path the user never wrote; nothing is
    left on the full disk but the previous output."""
    with tmpfs(tmp_path / "small", "size=6m") as small:  # the pipeline's folder, on a file system of 6 MiB
        (small / "out").mkdir()
        (small / "out" / "m.csv").write_text("id\n1\n")
        (small / "in.csv").write_text("id,text\n" + "".join(f"{i},{'x' * 200}\n" for i in range(20_000)))
        dsl(small, '\nScenario: m\n  @source("in.csv")\n  @sink("out/m.csv")\n')
        out = run_cli("run", "p.dsl", "--json", cwd=small)
        (m,) = summary(out)["scenarios"]
        assert m["state"] == "FAILED", m
        assert ".runink-stage-" not in m["error"] and f"{small}/out/m.csv" in m["error"], m["error"]
        assert "No space left on device" in m["error"], m["error"]
        assert os.listdir(small / "out") == ["m.csv"] and (small / "out" / "m.csv").read_text() == "id\n1\n"


def test_a_sink_folder_mounted_inside_the_pipelines_folder_is_written(run_cli: CliRunner, project: Path) -> None:
    """The pipeline folder's read-only grant hid the mount at out/ (a data disk there): the
    slice could not reach its staging folder, "cannot set up slice: Read-only file system"."""
    with tmpfs(project / "out", "size=16m") as out:
        (out / "private").mkdir(mode=0o700)  # (read-only in the slice, as the folder around it)
        (project / "probe.py").write_text(
            "import errno, os\n"
            "def writes(batch):\n"
            f"    for path in ({str(out / 'w.txt')!r}, {str(out / 'private' / 'w.txt')!r}):\n"
            "        try:\n"
            "            open(path, 'w').close()\n"
            "        except OSError as exc:\n"
            "            assert exc.errno == errno.EROFS, exc\n"
            "        else:\n"
            "            raise RuntimeError(f'wrote {path}')\n"
            "    return batch\n"
        )
        dsl(project, '\nScenario: m\n  @source("in.csv")\n  @step("probe:writes")\n  @sink("out/m.csv")\n')
        out_run = run_cli("run", "p.dsl", "--json", cwd=project)
        (m,) = summary(out_run)["scenarios"]
        assert m["state"] == "SUCCEEDED", m.get("error")
        assert (out / "m.csv").read_text().splitlines()[:2] == ['"id","name"', '0,"n0"']
        assert sorted(p.name for p in out.iterdir()) == ["m.csv", "private"]


def _two_sinks(tmp_path: Path) -> tuple[Path, Path, dict[Path, Any]]:
    from runink.core.pipeline.model import Scenario as _Scenario
    from runink.core.staging import stage_sinks as _stage_sinks

    first, second = tmp_path / "out" / "a.csv", tmp_path / "out" / "b.csv"
    first.parent.mkdir(parents=True, exist_ok=True)
    first.write_text("old a\n")
    refs = [DatasetRef("csv", path, str(path)) for path in (first, second)]
    item = CompiledScenario(_Scenario("writes"), refs[0], tuple(CompiledSink(r, "valid", {}) for r in refs))
    stages = _stage_sinks(item)
    for final in (first, second):
        stages[final].file.write_text(f"new {final.stem}\n")
    return first, second, stages


@pytest.mark.parametrize("others_file", [False, True])
def test_publishing_puts_back_what_it_replaced_when_a_later_sink_cannot_go_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, others_file: bool
) -> None:
    """Sinks went into place one at a time: a rename that failed (a file made immutable, a
    bind mount) left the first sink new and the second old, and the run FAILED.
    ``others_file``: the current file is another user's, which a runner that is not root may
    not hard-link (fs.protected_hardlinks): it is moved aside instead, and back."""
    from runink.core.staging import publish as _publish
    from runink.core.staging import unstage as _unstage

    first, second, stages = _two_sinks(tmp_path)
    real_replace = os.replace
    if others_file:

        def refuse_link(*_args: Any, **_kwargs: Any) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", refuse_link)

    def refuse_second(src: Any, dst: Any, **kwargs: Any) -> None:
        if dst == second.name and kwargs.get("dst_dir_fd") == stages[second].folder:
            raise PermissionError(1, "Operation not permitted")
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", refuse_second)
    with pytest.raises(
        OSError,
        match=r"b.csv: cannot put it in place \(Operation not permitted\); the outputs put in place before it were",
    ):
        _publish(stages)
    monkeypatch.setattr(os, "replace", real_replace)
    assert first.read_text() == "old a\n" and not second.exists()
    _unstage(stages)
    assert sorted(p.name for p in first.parent.iterdir()) == ["a.csv"]  # (its kept copy went with the staging folder)
    if others_file:  # and published where nothing fails
        again_first, again_second, again = _two_sinks(tmp_path / "again")
        _publish(again)
        _unstage(again)
        assert (again_first.read_text(), again_second.read_text()) == ("new a\n", "new b\n")


def test_publishing_leaves_an_output_another_run_wrote_since_this_one_started(tmp_path: Path) -> None:
    """Two runs of one pipeline: the one that finished last replaced the other's newer output,
    silently (a run started on a 5M-row input published over one started later on 100k)."""
    from runink.core.staging import publish as _publish
    from runink.core.staging import unstage as _unstage

    first, second, stages = _two_sinks(tmp_path)
    first.write_text("written by another run meanwhile\n")
    with pytest.raises(OSError, match=r"a.csv: written by someone else since this run started"):
        _publish(stages)
    assert first.read_text() == "written by another run meanwhile\n" and not second.exists()
    _unstage(stages)
    _, _, again = _two_sinks(tmp_path / "again")  # (nothing changed: published, both)
    _publish(again)
    _unstage(again)
    assert (tmp_path / "again" / "out" / "a.csv").read_text() == "new a\n"
    assert (tmp_path / "again" / "out" / "b.csv").read_text() == "new b\n"


def test_fail_on_invalid_takes_a_percentage_not_nan(run_cli: CliRunner, orders: Path) -> None:
    # (click's range let NaN through: every scenario with rows then failed, "over nan%")
    out = run_cli("run", "orders.dsl", "--fail-on-invalid", "nan", cwd=orders)
    assert out.returncode == 2 and "--fail-on-invalid" in out.stderr and "Traceback" not in out.stderr


def test_a_source_column_named_like_a_dead_letter_field_is_kept_beside_it(run_cli: CliRunner, project: Path) -> None:
    """A source with a `_runink_position` column made every dead-letter sink fail with a
    duplicate column (a review's run): it is kept as `source._runink_position`."""
    (project / "in.csv").write_text("id,name,_runink_position,source._runink_position\n1,a,x,p\n-2,b,y,q\n")
    dsl(
        project,
        """
        Scenario: reserved names
          @source("in.csv", contract="contracts:Row")
          @sink("out/a.parquet")
          @sink("out/dlq.jsonl", when="invalid")
    """,
    )
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    (scenario,) = summary(out)["scenarios"]
    assert scenario["state"] == "SUCCEEDED", out.stderr
    (dead,) = [json.loads(x) for x in (project / "out" / "dlq.jsonl").read_text().splitlines()]
    assert (dead["source.source._runink_position"], dead["source._runink_position"]) == ("y", "q")
    assert (dead["_runink_position"], dead["id"]) == (3, "-2")  # (prefixed again: that name is the source's own)


def test_a_malformed_record_of_a_source_that_masks_a_field_is_not_written_as_text(
    run_cli: CliRunner, project: Path
) -> None:
    """A malformed line's raw text held the unmasked e-mail that `mask=True` keeps out of every
    output (a review's run): a record that cannot be split into fields may hold the field anywhere."""
    write(
        project / "masked.py",
        """
        from runink.core.contracts import Contract, Field

        class Person(Contract):
            id: int
            email: str = Field(pii=True, mask=True)
    """,
    )
    (project / "in.csv").write_text('id,email\n1,ann@example.com\n2,"bob@example.com\n3,cy@example.com\n')
    dsl(
        project,
        """
        Scenario: masked
          @source("in.csv", contract="masked:Person")
          @sink("out/a.parquet")
          @sink("out/dlq.jsonl", when="invalid")
    """,
    )
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    assert summary(out)["scenarios"][0]["state"] == "SUCCEEDED", out.stderr
    dlq = (project / "out" / "dlq.jsonl").read_text()
    (dead,) = [json.loads(x) for x in dlq.splitlines()]
    assert dead["_runink_text"] == "**** (masked: 18 characters)" and dead["_runink_position"] == 3
    assert "bob@" not in dlq
    assert pq.read_table(project / "out" / "a.parquet").column("email").to_pylist() == ["****.com", "****.com"]


def test_a_parquet_source_a_contract_cannot_read_fails_or_dead_letters_naming_it(
    run_cli: CliRunner, project: Path
) -> None:
    """A struct where text is due failed the scenario with ArrowNotImplementedError (its dead
    letter could not be written as text), a column named twice with a bare KeyError (a review's run)."""
    struct = pa.table({"id": pa.array([1, 2]), "name": pa.array([{"x": 1}, None], pa.struct([("x", pa.int64())]))})
    pq.write_table(struct, project / "struct.parquet")
    twice = pa.Table.from_arrays([pa.array([1]), pa.array(["a"]), pa.array(["b"])], names=["id", "name", "name"])
    pq.write_table(twice, project / "twice.parquet")
    dsl(
        project,
        """
        Scenario: struct
          @source("struct.parquet", contract="contracts:Row")
          @sink("out/a.parquet")
          @sink("out/dlq.jsonl", when="invalid")
        Scenario: twice
          @source("twice.parquet", contract="contracts:Row")
          @sink("out/b.parquet")
    """,
    )
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    struct_run, twice_run = summary(out)["scenarios"]
    assert struct_run["state"] == "SUCCEEDED", out.stderr
    dead = [json.loads(x) for x in (project / "out" / "dlq.jsonl").read_text().splitlines()]
    reasons = [(d["name"], d["_runink_reason"]) for d in dead]
    assert reasons == [('{"x": 1}', "name: not a valid str"), (None, "name: required")]
    assert twice_run["state"] == "FAILED" and twice_run["outputs"] == []  # (none published: none listed)
    assert "twice.parquet: the source has 'name' more than once among its columns" in twice_run["error"]


def test_without_a_contract_a_csv_value_its_columns_type_refuses_is_one_dead_letter(
    run_cli: CliRunner, project: Path
) -> None:
    # A value the first block's types refused failed the scenario; read again as text and cast,
    # every good row of its block (" 2" is an int64 to Arrow's CSV converter, not to a cast) was
    # a dead letter. A column empty in the first block was typed null and refused every value.
    rows = [f"{i}, {i % 7},,2026-01-0{1 + i % 9}" for i in range(3000)]
    rows[2500] = "x, 1,,2026-01-01"  # line 2502 (after the header)
    rows[2700] = "2700, 1,late,2026-01-01"
    (project / "in.csv").write_text("id,n,note,day\n" + "\n".join(rows) + "\n")
    lines = [json.dumps({"id": i, "day": "2026-01-01"}) for i in range(10)]
    (project / "in.jsonl").write_text("\n".join(lines) + "\n")
    dsl(
        project,
        """
        Scenario: csv
          @source("in.csv", block_size=4096)
          @sink("out/c.parquet")
          @sink("out/dlq-c.jsonl", when="invalid")
        Scenario: jsonl
          @source("in.jsonl")
          @sink("out/j.jsonl")
    """,
    )
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    c, j = summary(out)["scenarios"]
    assert (c["state"], j["state"]) == ("SUCCEEDED", "SUCCEEDED"), out.stderr
    table = pq.read_table(project / "out" / "c.parquet")
    assert table.schema.field("id").type == pa.int64() and table.num_rows == 2999
    assert table.column("note").to_pylist()[2699] == "late"  # (the empty first block made it text)
    (dead,) = [json.loads(x) for x in (project / "out" / "dlq-c.jsonl").read_text().splitlines()]
    assert dead["_runink_position"] == 2502 and dead["_runink_text"] == "x, 1,,2026-01-01"
    assert dead["_runink_reason"] == (
        "malformed line: column 'id': CSV conversion error to int64: invalid value 'x' "
        "(the type the file's first rows gave it)"
    )
    assert (c["rows_invalid"], c["rows_malformed"], c["rows_valid"]) == (1, 1, 2999)
    # JSON has no dates: a string that looks like one stays the string written
    written = [json.loads(x) for x in (project / "out" / "j.jsonl").read_text().splitlines()]
    assert {r["day"] for r in written} == {"2026-01-01"}


def test_a_steps_new_column_null_in_its_first_batches_takes_the_type_of_its_later_values(
    run_cli: CliRunner, project: Path
) -> None:
    """The sink held the first batches' null type and refused the later values ("a new column
    that is all null in a record step's first batch fails the sink later": a data review).
    It holds rows back until a value types the column; one null throughout stays null."""
    (project / "steps.py").write_text(
        (project / "steps.py").read_text()
        + textwrap.dedent(
            """

            @record_step
            def late_note(row):
                return {**row, "note": "late" if row["id"] >= 2000 else None, "never": None}

            @record_step
            def late_nested(row):
                late = row["id"] >= 2000
                return {**row, "tags": [row["id"]] if late else [], "meta": {"a": row["id"] if late else None}}
            """
        )
    )
    rows = "id,name\n" + "".join(f"{i},n{i}\n" for i in range(3000))
    (project / "in.csv").write_text(rows)
    dsl(
        project,
        """
        Scenario: notes
          @source("in.csv", block_size=4096)
          @step("steps:late_note")
          @sink("out/n.parquet")
          @sink("out/n.csv")
        Scenario: piped
          @source("in.csv", block_size=4096)
          @step("steps:late_note")
          @run("cat", format="parquet")
          @sink("out/p.jsonl")
        Scenario: nested
          @source("in.csv", block_size=4096)
          @step("steps:late_nested")
          @sink("out/nested.parquet")
    """,
    )
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    notes, piped, nested = summary(out)["scenarios"]
    assert notes["state"] == "SUCCEEDED", notes.get("error") or out.stderr
    assert piped["state"] == "SUCCEEDED", piped.get("error") or out.stderr  # (a command step's input file too)
    # an empty list, a struct whose field is None: list<null>, struct<a: null> until typed
    assert nested["state"] == "SUCCEEDED", nested.get("error") or out.stderr
    typed = pq.read_table(project / "out" / "nested.parquet")
    assert typed.schema.field("tags").type == pa.list_(pa.int64())
    assert typed.schema.field("meta").type == pa.struct([("a", pa.int64())])
    assert typed.column("tags").to_pylist()[1999:2001] == [[], [2000]]
    assert typed.column("meta").to_pylist()[1999:2001] == [{"a": None}, {"a": 2000}]
    written = [json.loads(line) for line in (project / "out" / "p.jsonl").read_text().splitlines()]
    assert [w["note"] for w in written] == [None] * 2000 + ["late"] * 1000
    table = pq.read_table(project / "out" / "n.parquet")
    assert table.num_rows == 3000 and table.column("id").to_pylist() == list(range(3000))  # (in order)
    assert table.schema.field("note").type == pa.string() and table.schema.field("never").type == pa.null()
    assert table.column("note").to_pylist() == [None] * 2000 + ["late"] * 1000
    lines = (project / "out" / "n.csv").read_text().splitlines()
    assert len(lines) == 3001 and lines[2001] == '2000,"n2000","late",'
    # lineage names the type written, not the first batch's null
    events = (project.parent / "xdg-data" / "runink" / "lineage" / "events.jsonl").read_text()
    assert '"name": "note", "type": "string"' in events and '"name": "note", "type": "null"' not in events


def test_a_panic_in_a_library_fails_the_scenario_with_a_reason(run_cli: CliRunner, project: Path) -> None:
    # A Rust library's panic (polars panicked writing a bytes column as JSON Lines, before the
    # sink wrote them as base64) is a PanicException, no Exception: the slice ended with "exit
    # code 1" and no reason, its sinks not aborted. Raised here as polars raises it.
    (project / "steps.py").write_text(
        (project / "steps.py").read_text()
        + "\n\ndef panics(batch):\n    import polars as pl\n\n"
        + "    raise pl.exceptions.PanicException('a library panicked')\n"
    )
    pq.write_table(pa.table({"id": [1, 2], "blob": pa.array([b"a", b"b"], pa.binary())}), project / "in.parquet")
    dsl(project, '\nScenario: m\n  @source("in.parquet")\n  @step("steps:panics")\n  @sink("out/m.jsonl")\n')
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    (m,) = summary(out)["scenarios"]
    assert m["state"] == "FAILED" and "PanicException" in m["error"], m["error"]
    assert "a library panicked" in m["error"]
    assert not (project / "out" / "m.jsonl").exists()


def test_without_a_contract_json_lines_get_one_type_per_column_for_the_whole_file(
    run_cli: CliRunner, project: Path
) -> None:
    # Typed chunk by chunk, a fraction or a key first seen 1,000 lines in changed the Parquet
    # sink's schema mid-file and failed the run: the file is read once for its types first.
    lines = [json.dumps({"id": i, "v": 1, "price": 2}) for i in range(1500)]
    lines += [json.dumps({"id": 1500 + i, "v": "x", "price": 2.5, "note": "late"}) for i in range(10)]
    (project / "in.jsonl").write_text("\n".join(lines) + "\n")
    dsl(project, '\nScenario: m\n  @source("in.jsonl", chunk_lines=1000)\n  @sink("out/m.parquet")\n')
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    (m,) = summary(out)["scenarios"]
    assert m["state"] == "SUCCEEDED", m.get("error")
    assert (m["rows_valid"], m["rows_malformed"]) == (1510, 0)
    table = pq.read_table(project / "out" / "m.parquet")
    types = {f.name: str(f.type) for f in table.schema}
    # whole numbers and fractions: float64; numbers and strings: text, each number as written
    assert types == {"id": "int64", "v": "string", "price": "double", "note": "string"}, types
    rows = table.to_pylist()
    assert rows[0] == {"id": 0, "v": "1", "price": 2.0, "note": None}
    assert rows[-1] == {"id": 1509, "v": "x", "price": 2.5, "note": "late"}


def test_a_newer_attempts_outputs_replace_those_an_earlier_attempt_published_meanwhile(tmp_path: Path) -> None:
    """A cluster's attempt presumed dead (fenced) that published before its newer attempt did
    made the newer one fail "written by someone else". Its later publish still changes nothing."""
    from runink.core.pipeline.model import Scenario as _Scenario
    from runink.core.staging import WRITER
    from runink.core.staging import publish as _publish
    from runink.core.staging import stage_sinks as _stage_sinks
    from runink.core.staging import unstage as _unstage

    final = tmp_path / "out" / "a.csv"
    final.parent.mkdir()
    final.write_text("before\n")
    ref = DatasetRef("csv", final, str(final))
    item = CompiledScenario(_Scenario("writes"), ref, (CompiledSink(ref, "valid", {}),))

    def staged(text: str) -> dict[Path, Any]:
        stages = _stage_sinks(item)
        stages[final].file.write_text(text)
        return stages

    first, second, stranger = staged("attempt 1\n"), staged("attempt 2\n"), staged("other\n")
    late, third, fourth = staged("attempt 1, again\n"), staged("attempt 3\n"), staged("attempt 4\n")
    os.setxattr(second[final].file, WRITER, b"task-1 9 10 0")  # (the slice's own mark counts for nothing)
    _publish(first, ("task-1", 1))
    assert os.getxattr(final, WRITER).startswith(b"task-1 1 10 ")
    with pytest.raises(OSError, match="written by someone else"):  # another task's
        _publish(stranger, ("task-2", 5))
    _publish(second, ("task-1", 2))
    assert final.read_text() == "attempt 2\n" and os.getxattr(final, WRITER).startswith(b"task-1 2 ")
    with pytest.raises(OSError, match="written by someone else"):  # an attempt older than the file's
        _publish(late, ("task-1", 1))
    mark = os.getxattr(final, WRITER)
    for forged in (b"task-1 \xff", b"task-1 -7 10 0", mark.replace(b"task-1 2", b"task-1 0")):
        os.setxattr(final, WRITER, forged)  # (a mark no attempt wrote: no earlier attempt's)
        with pytest.raises(OSError, match="written by someone else"):
            _publish(third, ("task-1", 3))
    os.setxattr(final, WRITER, mark)
    with final.open("a") as appended:  # changed in place since it was published: the mark no longer holds
        appended.write("a row added by hand\n")
    with pytest.raises(OSError, match="written by someone else"):
        _publish(third, ("task-1", 3))
    assert final.read_text() == "attempt 2\na row added by hand\n"
    for stages in (first, second, stranger, third, late, fourth):
        _unstage(stages)
    assert sorted(p.name for p in final.parent.iterdir()) == ["a.csv"]


def test_a_failed_publish_puts_back_what_an_earlier_attempt_published_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newer attempt had staged while the sink was empty: a later sink's failed rename
    removed the earlier attempt's output, saying "put back" (a review's run)."""
    from runink.core.staging import publish as _publish
    from runink.core.staging import unstage as _unstage

    first, second, earlier = _two_sinks(tmp_path)
    newer = _two_sinks(tmp_path)[2]
    first.unlink()
    for stage in (*earlier.values(), *newer.values()):
        stage.found = None  # (both attempts staged while the sinks were empty)
    _publish(earlier, ("task-1", 1))
    second.unlink()  # (of the earlier attempt's outputs, a.csv is left)
    real_replace = os.replace

    def refuse_b(src: Any, dst: Any, **kwargs: Any) -> None:
        if dst == second.name and kwargs.get("dst_dir_fd") == newer[second].folder:
            raise OSError(28, "No space left on device")
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", refuse_b)
    with pytest.raises(OSError, match="the outputs put in place before it were put back"):
        _publish(newer, ("task-1", 2))
    monkeypatch.setattr(os, "replace", real_replace)
    assert first.read_text() == "new a\n" and not second.exists()  # the earlier attempt's, put back
    for staged in (earlier, newer):
        _unstage(staged)


def test_an_attempt_and_its_fenced_older_one_publishing_at_once_take_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked, then renamed: an older attempt that had checked before the newer one renamed
    put its own output over the newer one's (a review's run, the two interleaved by a hook)."""
    import threading

    from runink.core import staging
    from runink.core.staging import publish as _publish
    from runink.core.staging import unstage as _unstage

    first, _, older = _two_sinks(tmp_path)
    newer = _two_sinks(tmp_path)[2]
    for stages, text in ((older, "older\n"), (newer, "newer\n")):
        for stage in stages.values():
            stage.file.write_text(text)
            stage.found = staging._identity(stage.folder, stage.final.name)
    real_vetted = staging._vetted
    during: list[threading.Thread] = []

    def vetted(stage: Any, umask: int, writer: Any) -> bool:
        if writer == ("task-1", 1) and not during:  # the older one, checked: the newer one now
            during.append(threading.Thread(target=_publish, args=(newer, ("task-1", 2))))
            during[0].start()
            during[0].join(0.5)  # (waits on the folder's lock: it cannot finish meanwhile)
        return real_vetted(stage, umask, writer)

    monkeypatch.setattr(staging, "_vetted", vetted)
    _publish(older, ("task-1", 1))
    during[0].join(10)
    assert first.read_text() == "newer\n"  # the newer attempt's, whatever the interleaving
    for stages in (older, newer):
        _unstage(stages)


def test_a_lock_someone_else_holds_on_a_sink_folder_does_not_hold_the_publish(tmp_path: Path) -> None:
    """Publishing locked the sink folder itself: anyone who could read it (a slice given the
    pipeline's folder, another user) held every publish there for as long as they liked."""
    import fcntl
    import threading

    from runink.core.staging import publish as _publish
    from runink.core.staging import unstage as _unstage

    first, second, stages = _two_sinks(tmp_path)
    holder = os.open(first.parent, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(holder, fcntl.LOCK_SH)  # (a read-only descriptor is all it takes)
    try:
        done = threading.Event()
        threading.Thread(target=lambda: (_publish(stages), done.set()), daemon=True).start()
        assert done.wait(10), "the publish waited on someone else's lock of the sink folder"
    finally:
        os.close(holder)
    assert (first.read_text(), second.read_text()) == ("new a\n", "new b\n")
    _unstage(stages)


def test_publish_locks_exclude_each_other_and_leave_no_files(tmp_path: Path) -> None:
    """A lock file per sink folder ever published to was left in the data dir for good; removing
    it on release must not let a runner that waited on the removed file in beside the next one."""
    import threading

    from runink.core import staging

    sink = tmp_path / "sink"
    sink.mkdir()
    folder = os.open(sink, os.O_RDONLY | os.O_DIRECTORY)
    stages: dict[Path, Any] = {sink / "a.csv": SimpleNamespace(folder=folder)}
    locks = tmp_path / "data" / staging.LOCKS
    inside, most, errors = [0], [0], []
    count = threading.Lock()

    def publisher() -> None:
        try:
            for _ in range(40):
                with staging._folders_locked(stages, locks):  # type: ignore[arg-type]
                    with count:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    time.sleep(0.0005)
                    with count:
                        inside[0] -= 1
        except Exception as exc:  # (reported below: a thread's exception is otherwise lost)
            errors.append(exc)

    threads = [threading.Thread(target=publisher) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    os.close(folder)
    assert not errors and most[0] == 1, (errors, most)
    assert list(locks.iterdir()) == []


def test_outputs_of_a_run_that_kept_no_row_have_the_sources_columns(run_cli: CliRunner, project: Path) -> None:
    """A source without a contract that gave no row (an empty Parquet file), or steps that kept
    none: the outputs had no columns at all (a data review's run)."""
    pq.write_table(
        pa.table({"id": pa.array([], pa.int64()), "amt": pa.array([], pa.decimal128(10, 2))}), project / "e.parquet"
    )
    (project / "steps.py").write_text(
        (project / "steps.py").read_text() + "\n\ndef none(batch):\n    return batch.slice(0, 0)\n"
    )
    dsl(
        project,
        """
        Scenario: empty
          @source("e.parquet")
          @sink("out/e.parquet")
        Scenario: filtered
          @source("in.csv")
          @step("steps:none")
          @sink("out/f.parquet")
    """,
    )
    out = run_cli("run", "p.dsl", "--json", cwd=project)
    assert [s["state"] for s in summary(out)["scenarios"]] == ["SUCCEEDED", "SUCCEEDED"], out.stderr
    empty, filtered = (pq.read_schema(project / "out" / name) for name in ("e.parquet", "f.parquet"))
    assert (empty.names, empty.field("amt").type) == (["id", "amt"], pa.decimal128(10, 2))
    assert filtered.names == ["id", "name"]


def test_rows_with_no_column_fail_the_scenario_instead_of_being_counted_as_written(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """A JSON Lines source of `{}` lines, or a step that returns `batch.select([])`: the rows
    were counted out and the run said so, and the sink wrote none (a review)."""
    (tmp_path / "in.jsonl").write_text("{}\n{}\n{}\n")
    (tmp_path / "steps.py").write_text("def none(batch):\n    return batch.select([])\n")
    for name, step in (("from_source", ""), ("from_step", '    @step("steps:none")\n')):
        (tmp_path / f"{name}.dsl").write_text(
            f'Feature: F\n  Scenario: S\n    @source("jsonl://in.jsonl")\n{step}    @sink("parquet://out/{name}.parquet")\n'
        )
        out = run_cli("run", f"{name}.dsl", "--json", cwd=tmp_path)
        assert out.returncode == 1, out.stdout + out.stderr
        (scenario,) = summary(out)["scenarios"]
        came = "its last step" if step else "the source jsonl://in.jsonl"
        assert f"3 rows with no column came from {came}: no sink can write them" in scenario["error"]
        assert not (tmp_path / "out" / f"{name}.parquet").exists()


def test_a_dead_letter_keeps_the_value_that_made_it_one_in_a_column_the_first_batch_lacked(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """A JSON Lines chunk has only the keys its lines have: the dead-letter records' columns
    were the first chunk's, and a later row's bad `ts` was left out of its own record (a review)."""
    (tmp_path / "contracts.py").write_text(
        "import datetime as dt\nfrom runink.core.contracts import Contract\n"
        "class Event(Contract):\n    id: int\n    ts: dt.datetime | None\n"
    )
    (tmp_path / "in.jsonl").write_text('{"id":1}\n{"id":2}\n{"id":3,"ts":"2026-13-45 garbage"}\n')
    (tmp_path / "p.dsl").write_text(
        "Feature: F\n  Scenario: S\n"
        '    @source("jsonl://in.jsonl", contract="contracts:Event", chunk_lines=2)\n'
        '    @sink("jsonl://out/ok.jsonl")\n    @sink("jsonl://out/dlq.jsonl", when="invalid")\n'
    )
    out = run_cli("run", "p.dsl", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (letter,) = [json.loads(line) for line in (tmp_path / "out" / "dlq.jsonl").read_text().splitlines()]
    assert letter["ts"] == "2026-13-45 garbage" and letter["_runink_reason"] == "ts: not a valid datetime"
    assert letter["id"] == "3" and letter["_runink_position"] == 3


def test_a_step_that_ends_its_slice_with_status_0_is_a_failure_that_says_so(run_cli: CliRunner, tmp_path: Path) -> None:
    """`os._exit(0)` or `sys.exit(0)` in a step: the run failed saying "slice ended succeeded: "."""
    (tmp_path / "in.csv").write_text("id\n1\n")
    (tmp_path / "steps.py").write_text(
        "import os, sys\ndef bye(batch):\n    sys.exit(0)\ndef hard(batch):\n    os._exit(0)\n"
    )
    for step in ("bye", "hard"):
        (tmp_path / "p.dsl").write_text(
            f'Feature: F\n  Scenario: S\n    @source("csv://in.csv")\n    @step("steps:{step}")\n'
            '    @sink("csv://out/ok.csv")\n'
        )
        out = run_cli("run", "p.dsl", "--json", cwd=tmp_path)
        (scenario,) = summary(out)["scenarios"]
        assert out.returncode == 1 and "its slice exited 0 before it reported its end" in scenario["error"], step
        assert not (tmp_path / "out" / "ok.csv").exists()
