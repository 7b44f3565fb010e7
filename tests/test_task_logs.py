"""Tasks' output from the agent to the API, over real sockets on 127.0.0.1: a Lifecycle on the
memory Barn served by serve_agents and the REST API, a real Agent with the process executor
talking through GrpcControl; and the CLI (`runink exec`, `runink logs`) against `runink server`
and `runink agent` processes. The tests place tasks themselves (what the scheduler does)."""

from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import agent_helpers
import httpx
import pytest
import test_cluster_processes
from fixture_types import CliRunner

from runink.core.agent import Agent
from runink.core.agent.grpc_control import ControlUnavailable, GrpcControl
from runink.core.agent.logs import LogShipper
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.logs import TAIL_BYTES, Chunk, Tail, log_key
from runink.core.control.records import Amount, Herd, RunState, TaskRecord, keys
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.interfaces.executor import Executor
from runink.core.server.agent_service import serve_agents
from runink.core.server.api import create_app
from runink.core.server.serve_api import serve_api, stop_api
from runink.plugins.barn.memory import MemoryBarn

one_server = test_cluster_processes.one_server  # `runink server` + `runink agent` processes


sync_until = functools.partial(agent_helpers.sync_until, timeout=20.0)  # this file's slices take longer


@dataclass
class Cluster:
    store: ClusterStore
    api: httpx.Client
    control: GrpcControl
    agent: Agent

    def submit(self, *command: str, **fields: object) -> str:
        answer = self.api.post("/v1/jobs", json={"herd": "lab", "command": list(command), **fields})
        assert answer.status_code == 201, answer.text
        job_id: str = answer.json()["job"]["id"]
        return job_id

    def task(self, job_id: str) -> TaskRecord:
        (task,) = self.store.job_tasks(self.store.job(job_id).record)
        return task.record

    def schedule(self, job_id: str) -> TaskRecord:
        """Place the job's task on n1 as its next attempt (what the scheduler does)."""
        (current,) = self.store.job_tasks(self.store.job(job_id).record)
        task = current.record
        moved = task.moved_to(RunState.SCHEDULED, node="n1", attempt=task.attempt + 1, token=self.store.barn.revision())
        key = keys.task(task.herd, task.id)
        self.store.commit([(key, current.revision)], [(key, moved)])
        return moved

    def run(self, job_id: str) -> None:
        self.schedule(job_id)
        sync_until(self.agent, lambda: self.task(job_id).state.final)

    def logs(self, job_id: str, **query: Any) -> dict[str, Any]:
        answer = self.api.get(f"/v1/jobs/{job_id}/logs", params=query)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        found["bytes"] = base64.b64decode(found["data"])
        return found


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    lifecycle = Lifecycle(store)
    agents = serve_agents(lifecycle, "127.0.0.1", 0)
    api, thread = serve_api(create_app(lifecycle, store), "127.0.0.1", 0)
    executor: Executor = load_driver(Executor, "process", {})
    control = GrpcControl(f"127.0.0.1:{agents.port}", timeout=5.0)
    agent = Agent(control, executor, "n1", Amount(cpu=4, memory=1 << 30), work_dir=tmp_path / "n1", stop_grace=2.0)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{api.config.port}", timeout=10) as client:
            yield Cluster(store, client, control, agent)
    finally:
        control.close()
        executor.close()
        stop_api(api, thread)
        agents.stop(grace=None).wait()


def test_both_streams_of_a_failed_command_through_the_api(cluster: Cluster) -> None:
    job_id = cluster.submit("sh", "-c", "echo out; echo err >&2; exit 2")
    cluster.run(job_id)
    assert cluster.task(job_id).state is RunState.FAILED
    out = cluster.logs(job_id)
    assert (out["bytes"], out["offset"], out["next_offset"], out["dropped"]) == (b"out\n", 0, 4, 0)
    assert (out["stream"], out["attempt"], out["state"]) == ("stdout", 1, "FAILED")
    err = cluster.logs(job_id, stream="stderr")
    assert (err["bytes"], err["next_offset"]) == (b"err\n", 4)
    part = cluster.logs(job_id, offset=2)  # from an offset: the rest
    assert (part["bytes"], part["offset"], part["next_offset"]) == (b"t\n", 2, 4)
    assert cluster.logs(job_id, offset=4)["bytes"] == b""


def test_an_ended_jobs_answer_asked_for_its_output_carries_what_the_logs_route_answers(cluster: Cluster) -> None:
    job_id = cluster.submit("sh", "-c", "echo out; echo err >&2; exit 2")
    asked = cluster.api.get(f"/v1/jobs/{job_id}", params={"output": "true"}).json()
    assert asked["job"]["state"] == "PENDING" and "output" not in asked  # (only once it ended)
    cluster.run(job_id)
    answer = cluster.api.get(f"/v1/jobs/{job_id}", params={"output": "true"}).json()
    assert answer["job"]["state"] == "FAILED"
    for stream in ("stdout", "stderr"):
        routed = cluster.logs(job_id, stream=stream)
        del routed["bytes"]
        assert answer["output"][stream] == routed
    assert base64.b64decode(answer["output"]["stderr"]["data"]) == b"err\n"


def test_a_large_output_keeps_only_the_tail_and_says_what_was_dropped(cluster: Cluster) -> None:
    mib = 1024 * 1024
    job_id = cluster.submit("sh", "-c", f"head -c {mib} /dev/zero | tr '\\0' a; printf END")
    cluster.run(job_id)
    assert cluster.task(job_id).state is RunState.SUCCEEDED
    out = cluster.logs(job_id)
    total = mib + 3
    assert out["next_offset"] == total
    assert len(out["bytes"]) == TAIL_BYTES and out["bytes"].endswith(b"aaaEND")
    assert (out["offset"], out["dropped"]) == (total - TAIL_BYTES, total - TAIL_BYTES)
    embedded = cluster.api.get(f"/v1/jobs/{job_id}", params={"output": "true"}).json()["output"]["stdout"]
    assert (embedded["offset"], embedded["dropped"], embedded["next_offset"]) == (out["offset"], out["dropped"], total)
    task = cluster.task(job_id)
    stored = cluster.store.barn.get(log_key("lab", task.id, 1, "stdout"))
    assert stored is not None and len(stored.value) <= TAIL_BYTES + 8  # bounded in the Barn too


def test_a_chunk_of_an_old_attempt_is_refused(cluster: Cluster) -> None:
    job_id = cluster.submit("sh", "-c", "echo first; exit 1", retries=1, backoff=0)
    old = cluster.schedule(job_id)
    # it fails, and goes back to PENDING to be retried (its output kept under attempt 1)
    sync_until(cluster.agent, lambda: cluster.task(job_id).state is RunState.PENDING)
    new = cluster.schedule(job_id)  # attempt 2 with a new token
    assert new.attempt == 2 and new.token != old.token
    late = Chunk("lab", old.id, old.attempt, old.token, "stdout", 6, b"late\n")
    assert cluster.control.log_chunk(late) == (False, 0)
    stale_token = Chunk("lab", new.id, new.attempt, old.token, "stdout", 0, b"forged\n")
    assert cluster.control.log_chunk(stale_token) == (False, 0)
    assert cluster.logs(job_id, attempt=1)["bytes"] == b"first\n"  # unchanged
    assert cluster.store.barn.get(log_key("lab", new.id, 2, "stdout")) is None
    current = Chunk("lab", new.id, new.attempt, new.token, "stdout", 0, b"second\n")
    assert cluster.control.log_chunk(current) == (True, 7)
    assert cluster.logs(job_id)["bytes"] == b"second\n"


def test_a_chunk_sent_again_or_past_a_gap(cluster: Cluster) -> None:
    job_id = cluster.submit("true")
    task = cluster.schedule(job_id)
    cluster.agent.register()  # binds the stream to n1 (the task is not started)
    chunk = Chunk("lab", task.id, task.attempt, task.token, "stderr", 0, b"abc")
    assert cluster.control.log_chunk(chunk) == (True, 3)
    assert cluster.control.log_chunk(chunk) == (True, 3)  # sent again after a broken stream: kept once
    overlapping = Chunk("lab", task.id, task.attempt, task.token, "stderr", 2, b"cde")
    assert cluster.control.log_chunk(overlapping) == (True, 5)
    past_gap = Chunk("lab", task.id, task.attempt, task.token, "stderr", 10, b"xyz")
    assert cluster.control.log_chunk(past_gap) == (True, 13)
    read = cluster.logs(job_id, stream="stderr")
    assert (read["bytes"], read["offset"], read["dropped"]) == (b"xyz", 10, 10)
    assert cluster.logs(job_id, stream="stderr", offset=11)["bytes"] == b"yz"


def test_a_bad_chunk_ends_the_stream_and_bad_queries_are_422(cluster: Cluster) -> None:
    job_id = cluster.submit("true")
    task = cluster.schedule(job_id)
    cluster.agent.register()
    with pytest.raises(ControlUnavailable, match=r"log_chunk\.stream"):
        cluster.control.log_chunk(Chunk("lab", task.id, task.attempt, task.token, "stdin", 0, b"x"))
    assert cluster.api.get(f"/v1/jobs/{job_id}/logs", params={"stream": "stdin"}).status_code == 422
    assert cluster.api.get(f"/v1/jobs/{job_id}/logs", params={"offset": -1}).status_code == 422
    assert cluster.api.get("/v1/jobs/job-nope/logs").status_code == 404
    assert cluster.api.get(f"/v1/jobs/{job_id}/logs", params={"task": "task-nope"}).status_code == 404


class Recorder:
    def __init__(self) -> None:
        self.chunks: list[Chunk] = []

    def log_chunk(self, chunk: Chunk) -> tuple[bool, int]:
        self.chunks.append(chunk)
        return True, chunk.offset + len(chunk.data)


def test_the_shipper_follows_no_link_and_sends_a_bounded_amount_per_round(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not the task's")
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "stdout.log").symlink_to(secret)
    recorder = Recorder()
    shipper = LogShipper(per_round=8, chunk_bytes=4)
    attempt = ("lab", "t1", 1, 7)
    shipper.ship(recorder, attempt, task_dir)
    assert recorder.chunks == []  # a link is not followed
    (task_dir / "stderr.log").write_bytes(b"0123456789abcdef")
    shipper.ship(recorder, attempt, task_dir)
    # 16 bytes new, 8 sent this round: the oldest 8 skipped, the offsets say where the rest are
    assert [(c.stream, c.offset, c.data) for c in recorder.chunks] == [("stderr", 8, b"89ab"), ("stderr", 12, b"cdef")]
    with open(task_dir / "stderr.log", "ab") as log:
        log.write(b"gh")
    shipper.ship(recorder, attempt, task_dir, last=True)
    assert (recorder.chunks[-1].offset, recorder.chunks[-1].data) == (16, b"gh")
    assert os.path.islink(task_dir / "stdout.log")


def test_the_shipper_masks_an_attempts_secrets_even_split_between_two_reads(tmp_path: Path) -> None:
    """A step's output (a traceback naming its password) was kept in clear on the servers,
    where the herd's viewers read it (a review). Masked as many '*', so the offsets hold."""
    recorder = Recorder()
    shipper = LogShipper(chunk_bytes=5)
    attempt = ("lab", "t1", 1, 7)
    shipper.mask(attempt, (b"hunter22",))
    (tmp_path / "stderr.log").write_bytes(b"pw=hunte")
    shipper.ship(recorder, attempt, tmp_path)  # (its end may be a value's start: held back)
    with open(tmp_path / "stderr.log", "ab") as log:
        log.write(b"r22 end")
    shipper.ship(recorder, attempt, tmp_path, last=True)
    sent = b"".join(c.data for c in sorted(recorder.chunks, key=lambda c: c.offset))
    assert sent == b"pw=******** end" and b"hunte" not in b"".join(c.data for c in recorder.chunks)
    assert [c.offset for c in recorder.chunks] == sorted({c.offset for c in recorder.chunks})  # (none twice)


class Away(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.away = False

    def log_chunk(self, chunk: Chunk) -> tuple[bool, int]:
        if self.away:
            raise ControlUnavailable("server away")
        return super().log_chunk(chunk)


def test_the_last_output_not_sent_is_sent_by_the_next_call(tmp_path: Path) -> None:
    (tmp_path / "stdout.log").write_bytes(b"abc")
    control = Away()
    shipper = LogShipper()
    attempt = ("lab", "t1", 1, 7)
    shipper.ship(control, attempt, tmp_path)
    with open(tmp_path / "stdout.log", "ab") as log:
        log.write(b"def")
    control.away = True
    kept = shipper.ship(control, attempt, tmp_path, last=True)  # the server is away: its position is kept
    control.away = False
    done = shipper.ship(control, attempt, tmp_path, last=True)
    assert [(c.offset, c.data) for c in control.chunks] == [(0, b"abc"), (3, b"def")]
    assert (kept, done) == (False, True)
    assert shipper.ship(control, attempt, tmp_path, last=True)  # forgotten: a new call starts again
    assert [(c.offset, c.data) for c in control.chunks][-1] == (0, b"abcdef")


def test_tail_keeps_the_last_bytes() -> None:
    tail = Tail(0, b"").with_chunk(0, b"abcdef", limit=4)
    assert (tail.total, tail.data, tail.start) == (6, b"cdef", 2)
    assert Tail.decode(tail.encode(), "k") == tail
    with pytest.raises(ValueError, match="shorter than its header"):
        Tail.decode(b"\0", "k")


@pytest.mark.skipif(os.geteuid() != 0, reason="the agent's linux executor needs root")
def test_exec_prints_the_output_and_logs_prints_it_again(one_server: dict[str, str], run_cli: CliRunner) -> None:
    assert run_cli("herd", "create", "default", env=one_server).returncode == 0
    ran = run_cli("exec", "--", "sh", "-c", "echo hello; echo oops >&2", env=one_server)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hello\n"
    assert "oops\n" in ran.stderr
    (job,) = json.loads(run_cli("jobs", "list", "--json", env=one_server).stdout)
    printed = run_cli("logs", job["id"], env=one_server)
    assert (printed.returncode, printed.stdout) == (0, "hello\n"), printed.stderr
    errors = run_cli("logs", job["id"], "--stream", "stderr", "--follow", env=one_server)
    assert (errors.returncode, errors.stdout) == (0, "oops\n"), errors.stderr
    as_json = json.loads(run_cli("logs", job["id"], "--json", env=one_server).stdout)
    assert (base64.b64decode(as_json["data"]), as_json["next_offset"], as_json["dropped"]) == (b"hello\n", 6, 0)
    bad = run_cli("logs", job["id"], "--stream", "stdin", env=one_server)
    assert bad.returncode != 0 and "stdout or stderr" in bad.stderr


def test_two_secrets_that_overlap_are_both_masked_and_never_cut_in_two() -> None:
    """(masked one after the other, the second lost its match in the first's stars; a cut
    moved between them went back and forth for good)"""
    from runink.core.agent.secrets import cut_outside, masked

    masks = (b"abcdef", b"defghi")
    assert masked(b"xabcdefghix", masks) == b"x*********x"
    assert cut_outside(b"abcdefghi", masks, 4) == 9  # (they start the read: sent whole)
    assert cut_outside(b"xxabcdefghi", masks, 4) == 2  # (sent with the next read)
