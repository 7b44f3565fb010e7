"""`runink exec` against a server that speaks the REST API (a stub on loopback): the command
runs end to end; once the config's values are kept it starts without the heavy imports
(pydantic's config models, httpx, rich, and, on its short path, typer); the short path
(``exec_fast``) sends what the full command sends and exits as it does, and leaves to it
every form it does not read; an ended job's output comes in its final answer."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from http_stub import HttpStub, ok
from trusted import trust_project_config

# One CLI run in this process's interpreter; prints its exit status and which heavy modules it
# loaded. FULL: the same through the full CLI only (typer), never the short path.
RUN = """
import json, sys
from runink.core.cli import main
HEAVY = ("pydantic", "runink.core.config", "httpx", "rich", "runink.core.model", "typer", "dataclasses", "logging")
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}), file=sys.__stdout__)
"""


FULL = RUN.replace("from runink.core.cli import main", "from runink.core.cli.app import main")


def log_read(stream: bytes) -> dict[str, object]:
    """What GET /v1/jobs/job-1/logs answers for ``stream`` from offset 0."""
    data = b"hello\n" if stream == b"stdout" else b""
    answer = {"attempt": 1, "state": "SUCCEEDED", "dropped": 0, "kept_bytes": 0, "offset": 0}
    return {**answer, "data": base64.b64encode(data).decode(), "next_offset": len(data)}


def api_of(state: str = "SUCCEEDED", exit_code: int = 0, *, embeds: bool = False) -> Callable[[bytes], bytes]:
    """The REST API's answers for one job that has already ended in ``state``; with
    ``embeds``, its final answer carries its output when asked (``output=true``), as today's
    servers do; without, as older ones."""

    def api(request: bytes) -> bytes:
        line = request.split(b"\r\n", 1)[0]
        if line.startswith(b"POST /v1/jobs "):
            return ok(json.dumps({"job": {"id": "job-1", "state": "PENDING"}, "revision": 3}).encode())
        if line.startswith(b"GET /v1/jobs/job-1/logs"):
            return ok(
                json.dumps({**log_read(b"stdout" if b"stream=stdout" in line else b"stderr"), "more": False}).encode()
            )
        if line.startswith(b"GET /v1/jobs/job-1"):
            job = {"id": "job-1", "state": state, "herd": "team"}
            answer = {"job": job, "tasks": [{"state": state, "exit_code": exit_code}], "revision": 4}
            if embeds and b"output=true" in line:
                answer["output"] = {"stdout": log_read(b"stdout"), "stderr": log_read(b"stderr")}
            return ok(json.dumps(answer).encode())
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"

    return api


api = api_of()


def _project(tmp_path: Path, server: HttpStub) -> dict[str, str]:
    """A project whose config names ``server``; the environment a CLI run gets."""
    (tmp_path / "runink.toml").write_text(f'herd = "team"\n[cluster]\nserver = "127.0.0.1:{server.port}"\n')
    trust_project_config(tmp_path, tmp_path / "cfg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINK_")}
    return env | {"XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}


def _cli(tmp_path: Path, env: dict[str, str], *args: str, full: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FULL if full else RUN, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _posted(server: HttpStub) -> list[dict[str, Any]]:
    return [json.loads(r.partition(b"\r\n\r\n")[2]) for r in server.requests if r.startswith(b"POST ")]


def test_exec_runs_end_to_end_and_starts_light_once_the_config_is_kept(tmp_path: Path) -> None:
    server = HttpStub(api)
    env = _project(tmp_path, server)
    runs = []
    try:
        for _ in range(2):
            ran = _cli(tmp_path, env, "exec", "--", "/bin/true")
            runs.append(json.loads(ran.stdout.strip().splitlines()[-1]))
            assert ran.stdout.startswith("hello\n"), (ran.stdout, ran.stderr)  # the command's output
            assert "job-1: SUCCEEDED" in ran.stderr, ran.stderr
    finally:
        server.close()
    assert [r["code"] for r in runs] == [0, 0]
    assert "runink.core.config" in runs[0]["heavy"]  # the first run reads the config in full...
    assert runs[1]["heavy"] == []  # ...the next one its kept values, and nothing heavy
    posted = _posted(server)
    assert len(posted) == 2 and all(p["herd"] == "team" for p in posted)


@pytest.mark.parametrize(
    ("args", "state", "exit_code", "status"),
    [
        (["--", "/bin/true"], "SUCCEEDED", 0, 0),
        (["--herd", "lab", "--cpu", "0.5", "--memory", "64Mi", "--gpu=1", "--", "/bin/echo", "a b"], "FAILED", 3, 3),
        (["--timeout=30s", "--retries", "2", "--server", "{server}", "/bin/echo", "--cpu", "3"], "OOMKILLED", 0, 137),
        (["-d", "--", "/bin/true"], "SUCCEEDED", 0, 0),
        (["--json", "--detach", "--", "/bin/true"], "SUCCEEDED", 0, 0),
        (["--json", "--", "/bin/true"], "DEADLINE_EXCEEDED", 0, 124),
    ],
)
def test_the_short_path_sends_what_the_full_command_sends_and_exits_as_it_does(
    tmp_path: Path, args: list[str], state: str, exit_code: int, status: int
) -> None:
    ran = {}
    for full in (False, True):
        server = HttpStub(api_of(state, exit_code, embeds=True))
        env = _project(tmp_path, server)
        try:
            argv = [a.replace("{server}", f"127.0.0.1:{server.port}") for a in args]
            for _ in range(2):  # (the second run reads the kept settings)
                done = _cli(tmp_path, env, "exec", *argv, full=full)
            printed, _, last = done.stdout.rstrip("\n").rpartition("\n")  # (the last line: RUN's)
            result = json.loads(last)
            ran[full] = (result["code"], printed, done.stderr, _posted(server)[-1])
            if not full:
                assert "typer" not in result["heavy"]  # (the short path ran)
        finally:
            server.close()
    assert ran[False] == ran[True]
    assert ran[False][0] == status


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--help"], "Usage: runink exec"),
        (["--cpu", "-1", "--", "/bin/true"], "Invalid value for '--cpu'"),
        (["--memory", "lots", "--", "/bin/true"], "Invalid value for --memory"),
        (["--bogus", "--", "/bin/true"], "No such option: --bogus"),
        (["--herd"], "Option '--herd' requires an argument"),
    ],
)
def test_what_the_short_path_does_not_read_the_full_command_answers(tmp_path: Path, args: list[str], said: str) -> None:
    server = HttpStub(api)
    try:
        done = _cli(tmp_path, _project(tmp_path, server), "exec", *args)
    finally:
        server.close()
    assert said in done.stdout + done.stderr
    assert _posted(server) == []  # nothing submitted


def test_an_ended_jobs_output_in_its_final_answer_needs_no_log_reads(tmp_path: Path) -> None:
    reads = {}
    for embeds in (True, False):
        server = HttpStub(api_of(embeds=embeds))
        try:
            done = _cli(tmp_path, _project(tmp_path, server), "exec", "--", "/bin/true")
        finally:
            server.close()
        assert done.stdout.startswith("hello\n") and "job-1: SUCCEEDED" in done.stderr, done.stderr
        reads[embeds] = len([r for r in server.requests if b"/logs" in r.split(b"\r\n", 1)[0]])
    assert reads == {True: 0, False: 2}  # (an older server: each stream read)


@pytest.mark.parametrize(
    ("argv", "config", "overrides"),
    [
        (["exec", "/bin/echo", "--config", "x.toml", "--set", "a=b"], None, {}),
        (["exec", "--json", "/bin/echo", "-c", "x.toml"], None, {}),
        (["exec", "--herd", "h", "--secret", "s", "/bin/sh", "-c", "x"], None, {}),
        (["--config", "exec", "exec", "/bin/echo", "--config", "x"], "exec", {}),
        (["--config", "c.toml", "exec", "--", "/bin/echo", "--set", "a=b"], "c.toml", {}),
        (["--config", "c.toml", "run", "p.dsl", "--set", "a=b"], "c.toml", {"a": "b"}),
    ],
)
def test_the_options_of_execs_command_are_not_runinks(
    argv: list[str], config: str | None, overrides: dict[str, str]
) -> None:
    """`runink exec CMD ARGS`: ARGS are the command's, even where they look like runink's own
    options (`--config`, `--set`): the config is not read from them."""
    from runink.core.cli.state import CliState

    state = CliState.from_argv(argv)
    assert (None if state.config_path is None else str(state.config_path), state.overrides) == (config, overrides)


def test_the_script_ends_at_once_with_all_its_output_written_and_the_commands_status(tmp_path: Path) -> None:
    """`runink exec` as a script ends without the interpreter's teardown (exec_fast.exit_now):
    what it wrote is all out, large output too, and it exits with the command's status."""
    big = b"".join(b"%06d\n" % i for i in range(40_000))  # 280 KB
    read = {"attempt": 1, "state": "FAILED", "dropped": 0, "kept_bytes": 0, "offset": 0}

    def api(request: bytes) -> bytes:
        line = request.split(b"\r\n", 1)[0]
        if line.startswith(b"POST /v1/jobs "):
            return ok(json.dumps({"job": {"id": "job-1", "state": "PENDING"}, "revision": 3}).encode())
        output = {
            "stdout": {**read, "data": base64.b64encode(big).decode(), "next_offset": len(big)},
            "stderr": {**read, "data": base64.b64encode(b"oops\n").decode(), "next_offset": 5},
        }
        job = {"id": "job-1", "state": "FAILED", "herd": "team"}
        answer = {"job": job, "tasks": [{"state": "FAILED", "exit_code": 3}], "revision": 4, "output": output}
        return ok(json.dumps(answer).encode())

    server = HttpStub(api)
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "runink", "exec", "--", "/bin/false"],
            cwd=tmp_path,
            env=_project(tmp_path, server),
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        server.close()
    assert ran.returncode == 3, ran.stderr
    assert ran.stdout == big
    assert ran.stderr.startswith(b"oops\n") and b"job-1: FAILED" in ran.stderr


@pytest.mark.parametrize(("signum", "status", "said"), [(2, 130, "interrupted"), (15, 143, "stopped by SIGTERM")])
def test_an_exec_stopped_while_it_waits_cancels_its_job_and_says_so(
    tmp_path: Path, signum: int, status: int, said: str
) -> None:
    """Ctrl-C printed only "interrupted" and SIGTERM (timeout(1)) nothing: the job ran on, its id
    never shown (a review). As srun's, a waiting exec stopped so cancels its job; a job that
    cannot be placed says why on stderr, terminal or not."""

    def api(request: bytes) -> bytes:
        line = request.split(b"\r\n", 1)[0]
        if line.startswith(b"POST /v1/jobs/job-1/cancel"):
            return ok(json.dumps({"job": {"id": "job-1", "state": "CANCELLED"}}).encode())
        if line.startswith(b"POST /v1/jobs "):
            return ok(json.dumps({"job": {"id": "job-1", "state": "PENDING"}, "revision": 3}).encode())
        if line.startswith(b"GET /v1/jobs/job-1/logs"):
            return ok(json.dumps({**log_read(b""), "state": "PENDING", "more": False}).encode())
        if line.startswith(b"GET /v1/jobs/job-1"):
            time.sleep(0.1)
            task = {"state": "PENDING", "message": "no node fits: agent-0: cordoned"}
            return ok(json.dumps({"job": {"id": "job-1", "state": "PENDING"}, "tasks": [task], "revision": 3}).encode())
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"

    server = HttpStub(api)
    env = _project(tmp_path, server)
    try:
        cli = subprocess.Popen(
            [sys.executable, "-c", RUN, "exec", "--", "/bin/true"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not any(r.startswith(b"GET /v1/jobs/job-1?") for r in server.requests) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        cli.send_signal(signum)
        out, err = cli.communicate(timeout=30)
    finally:
        server.close()
    assert json.loads(out.strip().splitlines()[-1])["code"] == status, err
    assert "job-1: PENDING: no node fits: agent-0: cordoned" in err
    assert f"job-1: cancelled: {said}" in err
    assert any(r.startswith(b"POST /v1/jobs/job-1/cancel") for r in server.requests)


def test_a_job_id_reaches_the_server_as_one_quoted_path_part(tmp_path: Path) -> None:
    """Ids and names went into API paths as given: `runink status 'job-1?explain=true'` sent a
    query, and a name with '/' another path (a review)."""
    server = HttpStub(api)
    env = _project(tmp_path, server)
    try:
        ran = _cli(tmp_path, env, "status", "job-1?explain=true", full=True)
    finally:
        server.close()
    assert json.loads(ran.stdout.strip().splitlines()[-1])["code"] == 1, ran.stderr
    assert {r.split(b" ")[1] for r in server.requests} == {b"/v1/jobs/job-1%3Fexplain%3Dtrue"}


def test_herd_and_node_commands_say_what_a_script_and_a_reader_need(tmp_path: Path) -> None:
    """A review: `herd delete --json` printed null; `nodes list` showed memory as a count of
    bytes beside its use in Gi; `herd create --budget-period 3q` was ignored without --budget."""
    node = {"id": "n1", "ready": True, "capacity": {"cpu": 2, "memory": 25276182528, "gpu": 0}, "labels": {}}

    def api(request: bytes) -> bytes:
        line = request.split(b"\r\n", 1)[0]
        if line.startswith(b"DELETE /v1/herds/y1 "):
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if line.startswith(b"GET /v1/nodes "):
            return ok(json.dumps({"nodes": [node]}).encode())
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"

    server = HttpStub(api)
    env = _project(tmp_path, server)
    try:
        deleted = _cli(tmp_path, env, "herd", "delete", "y1", "--json", full=True)
        listed = _cli(tmp_path, env, "nodes", "list", full=True)
        period = _cli(tmp_path, env, "herd", "create", "y1", "--budget-period", "3q", full=True)
    finally:
        server.close()
    assert json.loads(deleted.stdout.rsplit("\n", 2)[0]) == {"herd": "y1", "deleted": True}, deleted.stdout
    assert " 24Gi " in listed.stdout and "25276182528" not in listed.stdout, listed.stdout
    assert json.loads(period.stdout.splitlines()[-1])["code"] == 2 and "invalid duration '3q'" in period.stderr
    assert not any(r.startswith(b"POST /v1/herds") for r in server.requests)
