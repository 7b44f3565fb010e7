"""A test's client of the slice launcher (the fork server), driven over its stdin/stdout protocol."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


class Launcher:
    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runink.plugins.executors.linux.launcher", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Launch and wait: the "exited" event (with the "started" one's cgroup), or "failed"."""
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps({"op": "launch", **request}) + "\n")
        self.process.stdin.flush()
        started: dict[str, Any] = json.loads(self.process.stdout.readline())
        if started["event"] == "failed":
            return started
        assert started["event"] == "started" and started["id"] == request["id"]
        ended = json.loads(self.process.stdout.readline())
        assert ended["event"] == "exited" and ended["id"] == request["id"]
        return {**ended, "cgroup": started.get("cgroup")}

    def close(self) -> None:
        assert self.process.stdin
        if not self.process.stdin.closed:
            self.process.stdin.close()
        self.process.wait(10)
