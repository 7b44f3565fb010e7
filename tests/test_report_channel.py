"""The report channel: a slice can neither hang nor bloat its runner through its report file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runink.core.report import ReportError, ReportReader

EXECUTORS = ["process", "linux"]


def _linux_isolates() -> bool:
    from runink.plugins.executors.linux.executor import LinuxExecutor

    return os.geteuid() == 0 and not LinuxExecutor._detect_problems()


def _project(root: Path, step: str) -> Path:
    root.mkdir()
    (root / "in.csv").write_text("id\n1\n2\n")
    (root / "steps.py").write_text(textwrap.dedent(step))
    (root / "p.dsl").write_text(
        'Feature: report\n  @requires(timeout="60s")\n  Scenario: a\n    @source("in.csv")\n'
        '    @step("steps:attack")\n    @sink("out/a.csv")\n'
    )
    return root


def _run(project: Path, executor: str, timeout: float = 90) -> tuple[subprocess.CompletedProcess[str], int]:
    """``runink run`` in a child that reports the largest resident size of its descendants (MiB)."""
    if executor == "linux" and not _linux_isolates():
        pytest.skip("the linux executor cannot isolate here")
    wrapper = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=float(sys.argv[1]))\n"
        "sys.stderr.write(done.stderr)\n"
        "print(done.stdout)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
        "sys.exit(done.returncode)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINK_")}
    command = [sys.executable, "-m", "runink", "run", "p.dsl", "--json", "--set", f"executor.driver={executor}"]
    done = subprocess.run(
        [sys.executable, "-c", wrapper, str(timeout), *command],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    *summary, peak = done.stdout.strip().splitlines()
    return subprocess.CompletedProcess(done.args, done.returncode, "\n".join(summary), done.stderr), int(peak)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_fifo_in_place_of_the_report_does_not_hang_the_run(tmp_path: Path, executor: str) -> None:
    project = _project(
        tmp_path / "proj",
        """
        import os

        def attack(batch):
            os.unlink("report.jsonl")  # the work dir is the slice's cwd, and the slice's
            os.mkfifo("report.jsonl")
            return batch
        """,
    )
    done, _peak = _run(project, executor, timeout=60)  # hung until killed, before
    result = json.loads(done.stdout)
    assert result["scenarios"][0]["state"] == "SUCCEEDED", done.stderr  # the runner read its own file
    assert result["scenarios"][0]["rows_out"] == 2


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_huge_report_line_does_not_bloat_the_runner(tmp_path: Path, executor: str) -> None:
    project = _project(
        tmp_path / "proj",
        """
        def attack(batch):
            with open("report.jsonl", "a") as report:  # 300 MiB without a newline, 1 MiB at a time
                chunk = "x" * (1 << 20)
                for _ in range(300):
                    report.write(chunk)
                report.write("\\n")
            return batch
        """,
    )
    done, peak = _run(project, executor)
    result = json.loads(done.stdout)
    assert result["scenarios"][0]["state"] == "SUCCEEDED", done.stderr
    # the runner, its launchers and the slice: each about 100-150 MiB here; the runner held the
    # whole line (and its decoded copy) before: over 700 MiB
    assert peak < 300, peak


def test_long_lines_are_discarded_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "report.jsonl"
    reader = ReportReader.create(path, max_line=100, poll_bytes=1 << 20)
    with open(path, "a") as out:
        out.write(json.dumps({"rows_in": 1}) + "\n")
        out.write('{"rows_in": "' + "9" * 500 + '"}\n')  # too long: dropped, never held whole
        out.write("not json\n[1, 2]\n" + "[" * 50 + "\n")  # not an object: ignored
        out.write(json.dumps({"rows_in": 3}) + "\n" + '{"rows_in": 4')  # the last one is incomplete
    assert list(reader.events()) == [{"rows_in": 1}, {"rows_in": 3}]
    assert reader.discarded == 1 and len(reader._partial) <= 100
    with open(path, "a") as out:
        out.write("}\n")
    assert list(reader.events(final=True)) == [{"rows_in": 4}]
    assert reader.notes() == ["1 report line(s) longer than 100 bytes discarded"]
    reader.close()


def test_the_reader_keeps_reading_the_file_it_made(tmp_path: Path) -> None:
    path = tmp_path / "report.jsonl"
    reader = ReportReader.create(path)
    writer = open(path, "a")  # noqa: SIM115 - the data plane's handle, opened at the slice's start
    path.unlink()
    os.mkfifo(path)  # whatever the name becomes, the runner neither opens nor blocks on it
    writer.write(json.dumps({"ok": True}) + "\n")
    writer.close()
    assert list(reader.events(final=True)) == [{"ok": True}]
    reader.close()
    with pytest.raises(ReportError, match="cannot create the report file"):
        ReportReader.create(path)  # something is there already: refused, not opened


def test_at_the_end_only_the_tail_of_a_huge_report_is_read(tmp_path: Path) -> None:
    path = tmp_path / "report.jsonl"
    reader = ReportReader.create(path, poll_bytes=1024, tail_bytes=4096)
    with open(path, "a") as out:
        for i in range(10_000):
            out.write(json.dumps({"rows_in": i}) + "\n")
        out.write(json.dumps({"event": "done", "ok": True}) + "\n")
    assert len(list(reader.events())) < 200  # a look reads at most poll_bytes
    events = list(reader.events(final=True))
    assert events[-1] == {"event": "done", "ok": True} and len(events) < 400
    assert reader.skipped > 100_000 and reader.discarded == 0
    reader.close()


def test_text_a_slice_reports_is_safe_to_print() -> None:
    """A slice's error and drift messages reach the user's terminal: no escape sequences."""
    from runink.core.report import printable as _printable

    hostile = "boom\x1b]0;owned\x07\x1b[2J\r\nnext\x9b31m"
    shown = _printable(hostile, 4000)
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown and "\n" not in shown
    assert shown.startswith("boom") and "next" in shown
    assert len(_printable("x" * 10_000, 4000)) == 4000
