"""`runink exec` against a server that speaks the REST API (a stub on loopback): the command
runs end to end, and once the config's values are kept it starts without the heavy imports
(pydantic's config models, httpx, rich): what made a cluster command take ~0.55 s instead of
~0.2 (bench/README.md)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from http_stub import HttpStub, ok

# One CLI run in this process's interpreter; prints its exit status and which heavy modules it loaded.
RUN = """
import json, sys
from runink.core.cli import main
HEAVY = ("pydantic", "runink.core.config", "httpx", "rich", "runink.core.model")
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}), file=sys.__stdout__)
"""


def api(request: bytes) -> bytes:
    """The REST API's answers for one `/bin/true` job that has already ended."""
    line = request.split(b"\r\n", 1)[0]
    if line.startswith(b"POST /v1/jobs "):
        return ok(json.dumps({"job": {"id": "job-1", "state": "PENDING"}, "revision": 3}).encode())
    if line.startswith(b"GET /v1/jobs/job-1/logs"):
        data = base64.b64encode(b"hello\n" if b"stream=stdout" in line else b"").decode()
        answer = {"attempt": 1, "state": "SUCCEEDED", "dropped": 0, "kept_bytes": 0, "data": data}
        return ok(json.dumps({**answer, "next_offset": 6 if data else 0, "more": False}).encode())
    if line.startswith(b"GET /v1/jobs/job-1"):
        job = {"id": "job-1", "state": "SUCCEEDED", "herd": "team"}
        return ok(json.dumps({"job": job, "tasks": [{"state": "SUCCEEDED", "exit_code": 0}], "revision": 4}).encode())
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"


def test_exec_runs_end_to_end_and_starts_light_once_the_config_is_kept(tmp_path: Path) -> None:
    server = HttpStub(api)
    (tmp_path / "runink.toml").write_text(f'herd = "team"\n[cluster]\nserver = "127.0.0.1:{server.port}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINK_")}
    env |= {"XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    runs = []
    try:
        for _ in range(2):
            ran = subprocess.run(
                [sys.executable, "-c", RUN, "exec", "--", "/bin/true"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            runs.append(json.loads(ran.stdout.strip().splitlines()[-1]))
            assert ran.stdout.startswith("hello\n"), (ran.stdout, ran.stderr)  # the command's output
            assert "job-1: SUCCEEDED" in ran.stderr, ran.stderr
    finally:
        server.close()
    assert [r["code"] for r in runs] == [0, 0]
    assert "runink.core.config" in runs[0]["heavy"]  # the first run reads the config in full...
    assert runs[1]["heavy"] == []  # ...the next one its kept values, and nothing heavy
    posted = [r for r in server.requests if r.startswith(b"POST /v1/jobs ")]
    assert len(posted) == 2 and all(json.loads(r.partition(b"\r\n\r\n")[2])["herd"] == "team" for r in posted)
