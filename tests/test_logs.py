"""Runink's own log lines: JSON for a daemon's collector, text on a terminal, each carrying the
ids of what it is about (request, job, task, run)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from runink.core import hookimpl, logs
from runink.core.cli.state import CliState
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.store import ClusterStore
from runink.core.server.api import create_app
from runink.core.server.auth import ApiAuth
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager


def _logged(setup: str) -> tuple[str, str]:
    """What a fresh process logs on stderr after ``logs.setup`` (its stderr a pipe, as a
    collector's), and what setup chose."""
    code = (
        "import logging, sys\n"
        "from runink.core import logs\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        f"print(logs.setup{setup})\n"
        "log = logging.getLogger('runink.test')\n"
        "with logs.correlation(job='job-1', task='job-1.0001'), logs.correlation(run='r-7'):\n"
        "    log.warning('slice %s started', 'a')\n"
        "log.warning('outside')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip(), done.stderr


def test_a_daemon_logs_json_lines_with_the_ids_of_what_they_are_about() -> None:
    chosen, text = _logged("('auto', daemon=True)")
    first, second = (json.loads(line) for line in text.splitlines())
    assert chosen == "json"
    assert first["message"] == "slice a started" and first["level"] == "warning" and first["logger"] == "runink.test"
    assert (first["job"], first["task"], first["run"]) == ("job-1", "job-1.0001", "r-7")
    assert first["time"].endswith("+00:00") and "job" not in second


def test_a_command_logs_text_and_says_the_ids_too() -> None:
    chosen, text = _logged("('auto', daemon=False)")
    assert chosen == "text"
    assert text.splitlines() == [
        "WARNING runink.test: slice a started [job=job-1 task=job-1.0001 run=r-7]",
        "WARNING runink.test: outside",
    ]
    assert _logged("('json', daemon=False)")[0] == "json"  # (said in the config: whatever the command)


@pytest.mark.parametrize(
    ("argv", "daemon"),
    [
        (["server", "--api", "x"], True),
        (["--config", "c.toml", "agent", "--servers", "s"], True),
        (["barn", "serve", "--name", "a"], True),
        (["barn", "status"], False),
        (["run", "server.dsl"], False),
        (["--config", "server", "run", "p.dsl"], False),
        (["--set", "x=1", "jobs", "list"], False),
    ],
)
def test_which_commands_are_daemons(argv: list[str], daemon: bool) -> None:
    assert CliState.from_argv(argv).daemon is daemon


class _Ids:
    @hookimpl
    def runink_api_routes(self, router: APIRouter, guard: Any) -> None:
        @router.get("/v1/example/ids", openapi_extra=guard.declare("public"))
        def ids() -> dict[str, str]:  # (a sync route: run in a worker thread)
            return logs.current_ids()


def test_each_request_has_an_id_its_answer_and_its_log_lines_carry() -> None:
    store = ClusterStore(MemoryBarn())
    with plugin_manager(("ids", _Ids()), entrypoints=False) as manager:
        auth = ApiAuth(manager, store, insecure=True)
        client = TestClient(create_app(Lifecycle(store), store, auth=auth, manager=manager))
        one, two = client.get("/v1/example/ids"), client.get("/v1/example/ids")
    assert one.json() == {"request": one.headers["X-Request-Id"]}
    assert len(one.headers["X-Request-Id"]) == 16 and one.headers["X-Request-Id"] != two.headers["X-Request-Id"]
