"""Tests' helpers for `runink server` / `runink agent` processes on loopback: start one in a
session of its own (so a test can signal its whole group), and wait until it says it is ready
(the JSON line it prints first)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def start_runink(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``python -m runink ARGS``: stdout a pipe (its ready line), stderr appended to ``log``."""
    with open(log, "a") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "runink", *args], stdout=subprocess.PIPE, stderr=err, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip


def ready(process: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    """The process's first line (its ready event), once it printed it; fails with its log's end."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"it exited before it was ready: {log.read_text()[-2000:]}"
    event: dict[str, Any] = json.loads(line)
    return event
