"""Runs of `runink run` are kept under the data directory: `runink jobs list`, `status`,
`logs [--follow]` and `cancel` read them as they read a cluster's jobs, while and after they
run; a run whose process died reads as FAILED; `runink jobs prune` and `[run] keep_for` /
`keep_size` remove old ones, never a running one, never following a link a slice planted."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixture_types import CliRunner

from runink.core import history as history_module
from runink.core.history import INDEX, PRUNED_STAMP, RECORD, RunHistory
from runink.core.processes import process_start

LINE = "x" * 99 + "\n"  # 100 bytes
LINES = 6000  # 600,000 bytes: more than one read of a kept log answers


def project(tmp_path: Path, step: str) -> Path:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "in.csv").write_text("id\n1\n2\n")
    (folder / "steps.py").write_text(step)
    (folder / "p.dsl").write_text(
        'Feature: Talk\n  Scenario: Speak\n    @source("csv://in.csv")\n    @step("steps:speak")\n'
        '    @sink("csv://out.csv")\n'
    )
    return folder


LOUD = f"""import sys
def speak(batch):
    sys.stdout.write({LINE!r} * {LINES})
    sys.stdout.flush()
    print("to stderr", file=sys.stderr)
    return batch
"""


def only_run(data_home: Path) -> Path:
    (run,) = [p for p in (data_home / "runs").iterdir() if not p.name.startswith(".")]
    return run


def test_a_past_run_is_listed_its_status_and_whole_output_read(
    run_cli: CliRunner, tmp_path: Path, data_home: Path
) -> None:
    folder = project(tmp_path, LOUD)
    out = run_cli("run", "p.dsl", "--json", cwd=folder)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    jobs = json.loads(run_cli("jobs", "list", "--json").stdout)
    (job,) = jobs
    assert job["state"] == "SUCCEEDED" and job["kind"] == "pipeline" and job["herd"] == "default"
    table = run_cli("jobs", "list")
    assert job["id"] in table.stdout and "runs of `runink run`" in table.stdout
    # by its job id and by its run id alike, as a cluster's job
    for ident in (job["id"], run_id):
        status = json.loads(run_cli("status", ident, "--json").stdout)
        assert status["job"]["id"] == job["id"]
        (task,) = status["tasks"]
        assert task["state"] == "SUCCEEDED" and task["attempt"] == 1 and task["node"] == "local"
        assert [t["state"] for t in task["transitions"]] == ["SCHEDULED", "RUNNING", "SUCCEEDED"]
        assert "explain" not in task
        (speak,) = status["datasets"]
        assert speak["read"] == [{"uri": f"csv://{folder / 'in.csv'}", "rows": 2}]
        assert speak["wrote"] == [{"uri": f"csv://{folder / 'out.csv'}", "rows": 2}]
    logs = run_cli("logs", job["id"])
    assert logs.returncode == 0, logs.stderr
    written = (only_run(data_home) / "speak" / "attempt-1" / "stdout.log").read_text()
    assert logs.stdout == written  # all of it, read in pieces
    assert len(written) > 256 * 1024 and written.count(LINE) == LINES  # (each line tagged with its step)
    assert run_cli("logs", run_id, "--stream", "stderr").stdout.endswith("to stderr\n")
    piece = json.loads(run_cli("logs", job["id"], "--json").stdout)
    assert piece["more"] is True and piece["next_offset"] == len(base64.b64decode(piece["data"])) == 256 * 1024
    # a cluster named (here one that does not answer): a job it does not know is a kept run's
    elsewhere = run_cli("status", job["id"], "--json", env={"RUNINK_SERVER": "127.0.0.1:1"})
    assert elsewhere.returncode == 0 and json.loads(elsewhere.stdout)["job"]["id"] == job["id"], elsewhere.stderr
    cluster_jobs = run_cli("jobs", "list", env={"RUNINK_SERVER": "127.0.0.1:1"})
    assert cluster_jobs.returncode == 1 and "no server answered" in cluster_jobs.stderr  # the cluster's, unless --local
    assert job["id"] in run_cli("jobs", "list", "--local", env={"RUNINK_SERVER": "127.0.0.1:1"}).stdout
    text = run_cli("status", job["id"])
    assert "SUCCEEDED" in text.stdout and "Traceback" not in text.stderr
    unknown = run_cli("status", "job-0-00000000")
    assert unknown.returncode == 1 and "not a run kept in" in unknown.stderr and "Traceback" not in unknown.stderr


SLOW = """import sys, time
def speak(batch):
    for n in range(600):
        print(f"line {n}", flush=True)
        time.sleep(0.05)
    return batch
"""


def start_run(folder: Path, tmp_path: Path, data_home: Path) -> tuple[subprocess.Popen[str], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINK_")}
    env.update(XDG_DATA_HOME=str(data_home.parent), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    process = subprocess.Popen(
        [sys.executable, "-m", "runink", "run", "p.dsl"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = data_home / "runs"
        found = [p for p in runs.iterdir() if (p / RECORD).exists()] if runs.exists() else []
        log = found[0] / "speak" / "attempt-1" / "stdout.log" if found else None
        if log is not None and log.exists() and log.stat().st_size > 0:
            return process, found[0]
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the run did not start printing within 60 s")


def test_follow_prints_a_running_runs_output_and_cancel_stops_it(
    run_cli: CliRunner, tmp_path: Path, data_home: Path
) -> None:
    folder = project(tmp_path, SLOW)
    process, run = start_run(folder, tmp_path, data_home)
    try:
        status = json.loads(run_cli("status", run.name, "--json").stdout)
        assert status["job"]["state"] == "RUNNING"
        follow = subprocess.Popen(
            [sys.executable, "-m", "runink", "logs", run.name, "--follow"],
            env={**os.environ, "XDG_DATA_HOME": str(data_home.parent), "XDG_CONFIG_HOME": str(tmp_path / "xdg")},
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        cancel = run_cli("cancel", run.name)
        assert cancel.returncode == 0, cancel.stderr
        assert process.wait(30) == 143  # as Ctrl-C or SIGTERM stops it
        printed, _ = follow.communicate(timeout=30)  # --follow ends once the job ended
        assert follow.returncode == 0
    finally:
        process.kill()
    lines = [line.rpartition("] ")[2] for line in printed.splitlines()]  # (each tagged with its step)
    assert lines and lines == [f"line {n}" for n in range(len(lines))]  # in order, none twice
    kept = (run / "speak" / "attempt-1" / "stdout.log").read_text()
    assert printed == kept  # what --follow printed is what the slice wrote
    after = json.loads(run_cli("status", run.name, "--json").stdout)
    assert after["job"]["state"] == "CANCELLED"


def test_a_run_whose_process_died_reads_as_failed_and_can_be_pruned(
    run_cli: CliRunner, tmp_path: Path, data_home: Path
) -> None:
    folder = project(tmp_path, SLOW)
    process, run = start_run(folder, tmp_path, data_home)
    alive = run_cli("jobs", "prune", "--older-than", "1s", "--json")
    assert json.loads(alive.stdout)["removed"] == []  # a running one stays
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    subprocess.run(["pkill", "-KILL", "-f", str(run)], check=False)  # its slice, orphaned
    status = json.loads(run_cli("status", run.name, "--json").stdout)
    assert status["job"]["state"] == "FAILED"
    again = run_cli("cancel", run.name)  # (it had ended: said so, not "cancelled")
    assert again.returncode == 0 and again.stdout.strip() == f"{run.name}: already FAILED, nothing to cancel"
    (task,) = status["tasks"]
    assert task["state"] == "FAILED" and f"(pid {process.pid}) ended before this task did" in task["message"]
    listed = json.loads(run_cli("jobs", "list", "--state", "failed", "--json").stdout)
    assert [j["id"] for j in listed] == [status["job"]["id"]]
    started = json.loads((run / RECORD).read_text())["started"]
    time.sleep(max(0.0, started + 1.2 - time.time()))  # (older than 1s for sure: a fast CLI gets here sooner)
    pruned = json.loads(run_cli("jobs", "prune", "--older-than", "1s", "--json").stdout)
    assert [r["run"] for r in pruned["removed"]] == [run.name] and pruned["bytes"] > 0
    assert not run.exists()


def kept_run(runs: Path, name: str, started: float, size: int, state: str = "SUCCEEDED") -> Path:
    """A run's folder and record as the runner leaves them (``size`` bytes of output)."""
    folder = runs / name
    (folder / "s" / "attempt-1").mkdir(parents=True)
    (folder / "s" / "attempt-1" / "stdout.log").write_bytes(b"o" * size)
    job = {"id": f"job-{name[-6:]}", "herd": "h", "kind": "pipeline", "tasks": ["t1"], "state": state}
    record = {
        "format": 1,
        "run": name,
        "pid": 999999999,
        "pid_start": None,
        "started": started,
        "updated": started,
        "ended": state in ("SUCCEEDED", "FAILED"),
        "answer": {"job": {**job, "submitted": started}, "revision": 1, "tasks": [{"id": "t1", "attempt": 1}]},
        "logs": {"t1": {"1": "s/attempt-1"}},
        "datasets": [],
    }
    (folder / RECORD).write_text(json.dumps(record))
    return folder


def test_prune_by_age_then_oldest_first_by_size_keeping_the_running_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runs = data / "runs"
    now = time.time()
    old = kept_run(runs, "20260101-000000-aaaaaa", now - 40 * 86400, 10_000)
    mid = kept_run(runs, "20260201-000000-bbbbbb", now - 3 * 86400, 300_000)
    new = kept_run(runs, "20260301-000000-cccccc", now - 2 * 86400, 300_000)
    live = kept_run(runs, "20260302-000000-dddddd", now - 86400 * 60, 300_000, state="RUNNING")
    record = json.loads((live / RECORD).read_text())  # this test's process runs it
    record.update(pid=os.getpid(), pid_start=process_start(os.getpid()), ended=False)
    (live / RECORD).write_text(json.dumps(record))
    history = RunHistory(data)
    dry = history.prune(older_than=30 * 86400, max_bytes=700_000, dry_run=True)
    assert [(k.run_id, why) for k, _, why in dry] == [
        (old.name, "older than 30d"),
        (mid.name, "runs take more than 683.6 KiB"),
    ]
    assert old.exists() and mid.exists()  # a dry run removes nothing
    removed = history.prune(older_than=30 * 86400, max_bytes=700_000)
    assert [k.run_id for k, _, _ in removed] == [old.name, mid.name]
    assert not old.exists() and not mid.exists() and new.exists() and live.exists()
    assert [k.run_id for k in history.all()] == [live.name, new.name]  # oldest first
    assert not [p for p in runs.iterdir() if p.name.startswith(".pruned-")]


def _counting_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loaded: list[str] = []
    real = history_module._load

    def counted(runs: Path, name: str) -> history_module.KeptRun | None:
        loaded.append(name)
        return real(runs, name)

    monkeypatch.setattr(history_module, "_load", counted)
    return loaded


def test_a_prune_reads_only_the_records_of_runs_it_has_not_seen_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every `runink run` prunes (once a minute): with thousands of kept runs, reading every
    record each time cost ~60 us a run. Ended runs go into an index; the next prune reads
    only the new ones' records, and those of the runs it removes."""
    data = tmp_path / "data"
    runs = data / "runs"
    now = time.time()
    for day in range(1, 6):
        kept_run(runs, f"202601{day:02d}-000000-aaaaaa", now - day * 86400, 100)
    loaded = _counting_loads(monkeypatch)
    assert RunHistory(data).prune(older_than=30 * 86400, max_bytes=None) == []
    assert len(loaded) == 5 and (runs / INDEX).is_file()
    newer = kept_run(runs, "20260110-000000-bbbbbb", now - 3600, 100)
    old = kept_run(runs, "20251101-000000-cccccc", now - 40 * 86400, 100)
    loaded.clear()
    removed = RunHistory(data).prune(older_than=30 * 86400, max_bytes=None)
    assert [k.run_id for k, _, _ in removed] == [old.name]
    assert sorted(loaded) == sorted([newer.name, old.name])
    loaded.clear()
    # by size, oldest first: the indexed runs' sizes are the index's, their records read only to go
    size = history_module.folder_size(newer)  # (each run's, the same)
    removed = RunHistory(data).prune(older_than=None, max_bytes=4 * size)  # 6 kept: the 2 oldest go
    assert [k.run_id for k, _, _ in removed] == ["20260105-000000-aaaaaa", "20260104-000000-aaaaaa"]
    assert sorted(loaded) == ["20260104-000000-aaaaaa", "20260105-000000-aaaaaa"]
    index = json.loads((runs / INDEX).read_text())
    assert sorted(index) == sorted(p.name for p in runs.iterdir() if not p.name.startswith("."))
    assert RunHistory(data).find(f"job-{newer.name[-6:]}").run_id == newer.name  # found through the index


def test_an_index_that_lies_or_breaks_changes_nothing_a_prune_decides(tmp_path: Path) -> None:
    """The index is a cache: an entry is a hint, the record decides; a broken one is ignored."""
    data = tmp_path / "data"
    runs = data / "runs"
    now = time.time()
    live = kept_run(runs, "20260302-000000-dddddd", now - 3600, 100, state="RUNNING")
    record = json.loads((live / RECORD).read_text())
    record.update(pid=os.getpid(), pid_start=process_start(os.getpid()), ended=False)
    (live / RECORD).write_text(json.dumps(record))
    done = kept_run(runs, "20260301-000000-cccccc", now - 7200, 100)
    # the running run said to be ended and old: its record says it runs, so it stays
    (runs / INDEX).write_text(json.dumps({live.name: [now - 90 * 86400, 100, "job-dddddd"]}))
    assert RunHistory(data).prune(older_than=30 * 86400, max_bytes=None) == []
    assert live.exists()
    for broken in ("{not json", "[]", json.dumps({live.name: ["x", -1, 3], "../etc": [0, 0, None]})):
        (runs / INDEX).write_text(broken)
        assert RunHistory(data).prune(older_than=30 * 86400, max_bytes=None) == []
        assert live.exists() and done.exists()
    (runs / INDEX).unlink()
    (runs / INDEX).symlink_to(tmp_path / "elsewhere.json")  # a link is not read, nor written through
    (tmp_path / "elsewhere.json").write_text(json.dumps({done.name: [now - 90 * 86400, 1, None]}))
    assert RunHistory(data).prune(older_than=30 * 86400, max_bytes=None) == []
    assert done.exists() and json.loads((tmp_path / "elsewhere.json").read_text())[done.name][1] == 1


def test_a_record_is_checked_field_by_field_and_a_run_it_cannot_read_is_not_removed_while_it_runs(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    runs = data / "runs"
    now = time.time()
    herd = kept_run(runs, "20260301-000000-aaaaaa", now - 60, 10)
    record = json.loads((herd / RECORD).read_text())
    record["answer"]["job"]["herd"] = "data_eng"  # a herd name may have "_" (units.NAME)
    (herd / RECORD).write_text(json.dumps(record))
    history = RunHistory(data)
    assert [k.job["herd"] for k in history.all() if k.record] == ["data_eng"]
    broken = {
        "logs": {"t1": {"1": 1}},  # an attempt's folder that is not a folder name
        "datasets": [1],
        "started": float("nan"),
    }
    for name, (field, value) in zip(("bbbbbb", "cccccc", "dddddd"), broken.items(), strict=True):
        folder = kept_run(runs, f"20260302-000000-{name}", now - 60, 10)
        record = json.loads((folder / RECORD).read_text())
        record[field] = value
        (folder / RECORD).write_text(json.dumps(record))
        kept = history.find(folder.name)
        assert kept is None  # not a record this module wrote: nothing of it is used
        assert "cannot be read" in str(next(k for k in history.all() if k.run_id == folder.name).problem)
    # a running run whose record fails its checks names its process: not removed, however old
    live = kept_run(runs, "20260101-000000-eeeeee", now - 90 * 86400, 10, state="RUNNING")
    record = json.loads((live / RECORD).read_text())
    record.update(pid=os.getpid(), pid_start=process_start(os.getpid()), ended=False, datasets=[1])
    (live / RECORD).write_text(json.dumps(record))
    os.utime(live, (now - 2 * 86400, now - 2 * 86400))  # (past the grace of a folder without a record)
    removed = history.prune(older_than=86400, max_bytes=None)
    assert live.exists() and live.name not in [k.run_id for k, _, _ in removed]
    (runs / INDEX).write_text("[" * 100_000)  # nested past the interpreter's depth: ignored
    (live / RECORD).write_text("[" * 100_000)
    assert history.prune(older_than=None, max_bytes=None) == [] and history.find(live.name) is None


def test_an_index_that_lies_about_a_runs_age_or_job_decides_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runs = data / "runs"
    now = time.time()
    run = kept_run(runs, "20260301-000000-aaaaaa", now - 60, 10)
    other = kept_run(runs, "20260301-000001-bbbbbb", now - 60, 10)
    history = RunHistory(data)
    assert history.prune(older_than=86400, max_bytes=None) == []  # (writes the index)
    index = json.loads((runs / INDEX).read_text())
    index[run.name][0] = now - 90 * 86400  # "started 90 days ago"
    index[other.name][2] = "job-nothing"  # the wrong job
    (runs / INDEX).write_text(json.dumps(index))
    assert history.prune(older_than=86400, max_bytes=None) == [] and run.exists()
    assert history.find(f"job-{other.name[-6:]}").run_id == other.name


@pytest.mark.skipif(os.geteuid() != 0, reason="makes files another user's (root only)")
def test_a_folder_a_slice_made_read_only_is_removed_by_a_prune_and_a_leftover_later(
    request: pytest.FixtureRequest,
) -> None:
    """As root nothing is refused, so the prune runs as nobody over nobody's files, as a user's
    `runink run` with the process executor would: the slice's `chmod 500` of its own folder."""
    import shutil
    import tempfile
    import traceback

    home = Path(tempfile.mkdtemp())  # (pytest's folders are root's alone: nobody could not reach this)
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    data = home / "data"
    runs = data / "runs"
    run = kept_run(runs, "20260101-000000-aaaaaa", time.time() - 90 * 86400, 10)
    trap = run / "s" / "attempt-1" / "work" / "trap"
    trap.mkdir(parents=True)
    (trap / "big").write_bytes(b"x" * 100_000)
    leftover = runs / ".pruned-20251201-000000-cccccc-123"  # what a killed prune left
    shutil.copytree(run, leftover)
    for folder in (trap, leftover / "s" / "attempt-1" / "work" / "trap"):
        folder.chmod(0o500)
    for path in [home, *home.rglob("*")]:
        os.chown(path, 65534, 65534, follow_symlinks=False)
    read, write = os.pipe()
    child = os.fork()  # (the interpreter's files may not be nobody's to read: history is imported already)
    if child == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            removed = RunHistory(data).prune(older_than=86400, max_bytes=None)
            os.write(write, json.dumps([k.run_id for k, _, _ in removed]).encode())
        except BaseException:
            os.write(write, traceback.format_exc().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        said = answer.read()
    os.waitpid(child, 0)
    assert said == json.dumps([run.name])

    assert not [p for p in runs.iterdir() if p.name.startswith(".pruned-")]  # nothing left, nothing stays


def test_prune_removes_a_planted_link_and_never_what_it_points_to(tmp_path: Path) -> None:
    data = tmp_path / "data"
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    run = kept_run(data / "runs", "20260101-000000-aaaaaa", time.time() - 90 * 86400, 10)
    (run / "s" / "attempt-1" / "work").mkdir()
    (run / "s" / "attempt-1" / "work" / "escape").symlink_to(precious)
    (data / "runs" / "20260101-000000-bbbbbb").symlink_to(precious)  # a run's name, but a link
    removed = RunHistory(data).prune(older_than=86400, max_bytes=None)
    assert [k.run_id for k, _, _ in removed] == [run.name]
    assert (precious / "keep.txt").read_text() == "mine"
    assert (data / "runs" / "20260101-000000-bbbbbb").is_symlink()  # not one Runink made: left alone


def test_a_kept_runs_log_is_not_read_through_a_link_nor_outside_the_run(
    run_cli: CliRunner, tmp_path: Path, data_home: Path
) -> None:
    run = kept_run(data_home / "runs", "20260101-000000-aaaaaa", time.time(), 10)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not show")
    log = run / "s" / "attempt-1" / "stdout.log"
    log.unlink()
    log.symlink_to(secret)
    out = run_cli("logs", run.name)
    assert out.returncode == 0 and "do not show" not in out.stdout
    record = json.loads((run / RECORD).read_text())
    record["logs"]["t1"]["1"] = "../../../secret"  # a record that names a folder outside the run
    (run / RECORD).write_text(json.dumps(record))
    bad = run_cli("logs", run.name)
    assert bad.returncode != 0 and "do not show" not in bad.stdout and "Traceback" not in bad.stderr
    (run / RECORD).write_text("{not json")
    listed = run_cli("jobs", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # an unreadable record is skipped


def test_each_run_prunes_past_ones_beyond_keep_size(run_cli: CliRunner, tmp_path: Path, data_home: Path) -> None:
    folder = project(tmp_path, LOUD)
    first = run_cli("run", "p.dsl", "--json", cwd=folder)
    assert first.returncode == 0, first.stderr
    first_id = json.loads(first.stdout)["run_id"]
    second = run_cli("run", "p.dsl", "--json", "--set", "run.keep_size=100k", cwd=folder)
    assert second.returncode == 0, second.stderr
    runs = {p.name for p in (data_home / "runs").iterdir() if not p.name.startswith(".")}
    assert first_id in runs  # pruned a moment ago: not again before a minute passed
    stamp = data_home / "runs" / PRUNED_STAMP
    os.utime(stamp, (time.time() - 61, time.time() - 61))
    third = run_cli("run", "p.dsl", "--json", "--set", "run.keep_size=100k", cwd=folder)
    assert third.returncode == 0, third.stderr
    assert only_run(data_home).name == json.loads(third.stdout)["run_id"]  # the others went, this one stays
    bad = run_cli("run", "p.dsl", "--set", "run.keep_for=soon", cwd=folder)
    assert bad.returncode != 0 and "keep_for" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(("option", "value"), [("--older-than", "yesterday"), ("--max-size", "lots")])
def test_prune_names_a_bad_bound(run_cli: CliRunner, option: str, value: str) -> None:
    out = run_cli("jobs", "prune", option, value)
    assert out.returncode == 2 and option in out.stderr and "Traceback" not in out.stderr


def test_ctrl_c_says_which_scenarios_outputs_were_published_and_json_reads_it(tmp_path: Path, data_home: Path) -> None:
    """Ctrl-C after one scenario published, another running: the run said nothing of what went
    in (on 3.11 its wait for the cancelled run returned at once), and --json printed nothing."""
    folder = project(tmp_path, SLOW)
    (folder / "p.dsl").write_text(
        'Feature: Talk\n  Scenario: Quick\n    @source("csv://in.csv")\n    @sink("csv://quick.csv")\n'
        '  Scenario: Speak\n    @source("csv://in.csv")\n    @step("steps:speak")\n    @sink("csv://out.csv")\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINK_")}
    env.update(XDG_DATA_HOME=str(data_home.parent), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    process = subprocess.Popen(
        [sys.executable, "-m", "runink", "run", "p.dsl", "--json"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (folder / "quick.csv").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert f"Quick: its outputs were published before the cancel reached it: {folder / 'quick.csv'}" in err
    assert "interrupted: the run was cancelled" in err and "Traceback" not in err
    printed = json.loads(out)
    assert printed["ok"] is False
    assert {s["scenario"]: s["state"] for s in printed["scenarios"]} == {"Quick": "SUCCEEDED", "Speak": "CANCELLED"}
    assert not (folder / "out.csv").exists()


def test_a_listing_of_kept_runs_reads_each_run_once_for_all_its_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every page read every kept run again: a listing of N runs in pages of P read N*N/P records."""
    from runink.core.cli.local_runs import LocalRuns

    data = tmp_path / "data"
    now = time.time()
    for i in range(6):
        kept_run(data / "runs", f"2026010{i}-000000-{i:06d}", now - 86400 * (6 - i), 10)
    loaded = _counting_loads(monkeypatch)
    local = LocalRuns(data)
    pages, after = [], None
    for _ in range(10):
        page = local.call("GET", "/v1/jobs", limit=2, **({} if after is None else {"after": after}))
        pages.append([job["id"] for job in page["jobs"]])
        if (after := page["next"]) is None:
            break
    assert pages == [["job-000000", "job-000001"], ["job-000002", "job-000003"], ["job-000004", "job-000005"]]
    assert sorted(loaded) == sorted(set(loaded)) and len(loaded) == 6, loaded
