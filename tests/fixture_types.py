"""Types of the fixtures in conftest.py, for the tests' annotations (conftest itself cannot be imported by name)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol


class CliRunner(Protocol):
    """The ``run_cli`` fixture: ``python -m runink ARGS`` in a subprocess."""

    def __call__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        python: str | None = None,
        pythonpath: Path | None = None,
    ) -> subprocess.CompletedProcess[str]: ...


class FakeDist(Protocol):
    """The ``fake_dist`` fixture: writes a fake installed distribution, returns its site dir."""

    def __call__(
        self, name: str, version: str, entry_points: Mapping[str, Mapping[str, str]], modules: Mapping[str, str]
    ) -> Path: ...


OnSysPath = Callable[[Path], None]
"""The ``on_sys_path`` fixture: puts a site dir on sys.path for this test."""
