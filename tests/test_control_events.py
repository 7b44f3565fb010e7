"""The control plane's events reach the log exporters: each task's transition, once, with its
herd, job, task, node, state and attempt; from a server's feed of Barn changes only while its
member leads, and of a task first seen only its last transition; from `runink run` all of
them, over Fluentd's forward protocol as `runink.control` records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fixture_types import CliRunner
from runink_processes import up_cluster
from test_fluentd import Receiver, _wait

from runink.core import hookimpl
from runink.core.control.records import RunState, TaskRecord, keys
from runink.core.control.transitions import TransitionLog
from runink.core.interfaces.barn import KeyValue, WatchEvent
from runink.core.model import LogEntry
from runink.testing import plugin_manager, registered_plugin


class Collected:
    def __init__(self) -> None:
        self.entries: list[LogEntry] = []

    @hookimpl
    def runink_export_log(self, entry: LogEntry) -> None:
        self.entries.append(entry)


def put(task: TaskRecord, revision: int) -> WatchEvent:
    value = task.model_dump_json().encode()
    return WatchEvent("PUT", KeyValue(keys.task(task.herd, task.id), value, 1, revision, revision), revision)


def test_a_leading_servers_feed_exports_each_new_transition_once() -> None:
    leading = {"now": True}
    collected = Collected()
    with plugin_manager() as manager, registered_plugin(manager, collected, "collected"):
        events = TransitionLog(manager, lambda: leading["now"])
        task = TaskRecord(id="job-1.0001", job_id="job-1", herd="lab", command=["true"])
        task = task.moved_to(RunState.SCHEDULED, "placed on n1", attempt=1, node="n1")
        task = task.moved_to(RunState.RUNNING, "started")
        events.on_change(put(task, 5))  # first seen (a server just started): its last transition only
        events.on_change(put(task, 6))  # the same record again (a usage sample): nothing new
        leading["now"] = False
        ended = task.moved_to(RunState.FAILED, "exit 3", exit_code=3)
        events.on_change(put(ended, 7))  # another server leads: it says so, not this one
        leading["now"] = True
        retried = ended.model_copy(update={"transitions": [*ended.transitions]})
        events.on_change(put(retried, 8))  # leading again: what it had not said yet
        events.on_change(WatchEvent("PUT", KeyValue("/herds/lab/jobs/job-1", b"{}", 1, 9, 9), 9))  # not a task
        events.on_change(WatchEvent("PUT", KeyValue(keys.task("lab", "job-1.0002"), b"not json", 1, 10, 10), 10))
    said = [(e.fields["state"], e.level, e.source) for e in collected.entries]
    assert said == [("RUNNING", "info", "control"), ("FAILED", "warning", "control")]
    failed = collected.entries[1]
    assert failed.message == "task job-1.0001: FAILED (attempt 1 on n1): exit 3"
    assert {k: failed.fields[k] for k in ("herd", "job", "task", "node", "attempt")} == {
        "herd": "lab",
        "job": "job-1",
        "task": "job-1.0001",
        "node": "n1",
        "attempt": 1,
    }


def test_an_embedded_runs_transitions_reach_the_collector(run_cli: CliRunner, tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        project = tmp_path / "p"
        project.mkdir()
        (project / "in.csv").write_text("id\n1\n")
        (project / "p.dsl").write_text(
            '@herd("lab")\nFeature: F\n  Scenario: One\n    @source("csv://in.csv")\n    @sink("csv://a.csv")\n'
            '  Scenario: Two\n    @source("csv://a.csv")\n    @sink("csv://b.csv")\n'
        )
        (project / "runink.toml").write_text(f'[plugin.fluentd]\nhost = "127.0.0.1"\nport = {receiver.port}\n')
        out = run_cli("run", "p.dsl", "--set", "executor.driver=process", cwd=project)
        assert out.returncode == 0, out.stderr
        _wait(lambda: len(control(receiver)) >= 6, 10)
        got = control(receiver)
    finally:
        receiver.close()
    by_task: dict[str, list[str]] = {}
    for record in got:
        by_task.setdefault(record["task"], []).append(record["state"])
        assert record["herd"] == "lab" and record["job"].startswith("job-") and record["node"] == "local"
    assert list(by_task.values()) == [["SCHEDULED", "RUNNING", "SUCCEEDED"]] * 2, got


def control(receiver: Receiver) -> list[dict[str, Any]]:
    return [record for _chunk, tag, record in list(receiver.got) if tag == "runink.control"]


def test_a_clusters_leading_server_ships_its_tasks_transitions(run_cli: CliRunner, tmp_path: Path) -> None:
    receiver = Receiver()
    collector = {"RUNINK_PLUGIN__FLUENTD__HOST": "127.0.0.1", "RUNINK_PLUGIN__FLUENTD__PORT": str(receiver.port)}
    try:
        with up_cluster(run_cli, tmp_path, servers=1, agents=1, extra_env=collector) as up:
            out = run_cli("exec", "--json", "--", "/bin/sh", "-c", "exit 3", env=up.env)
            assert out.returncode == 3, out.stderr
            job = json.loads(out.stdout)["job"]["id"]
            _wait(lambda: len([r for r in control(receiver) if r["job"] == job]) >= 3, 20)
            got = [r for r in control(receiver) if r["job"] == job]
    finally:
        receiver.close()
    assert [r["state"] for r in got] == ["SCHEDULED", "RUNNING", "FAILED"], got
    assert {r["node"] for r in got} == {"agent-0"} and {r["herd"] for r in got} == {"default"}
    assert got[-1]["level"] == "warning" and got[-1]["attempt"] == "1"
