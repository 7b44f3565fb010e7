"""Shared fixtures: run the real CLI in a subprocess, and fake installed distributions.

A "fake distribution" is exactly what pip leaves on disk (a module plus a ``*.dist-info``
folder with METADATA and entry_points.txt) in a folder put on PYTHONPATH, so entry-point
discovery runs for real without a pip install per test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fixture_types import CliRunner, FakeDist, OnSysPath
from trusted import trust_project_config

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Herd
from runink.core.control.store import ClusterStore
from runink.plugins.barn.memory import MemoryBarn

if TYPE_CHECKING:
    from runink.plugins.executors.linux.executor import LinuxExecutor

REPO = Path(__file__).resolve().parent.parent


def copy_example(name: str, folder: Path) -> Path:
    """A copy of examples/NAME in ``folder`` (its data, contracts, steps and .dsl; no outputs)."""
    target = folder / name
    shutil.copytree(REPO / "examples" / name, target, ignore=shutil.ignore_patterns("out", "__pycache__", ".runink"))
    return target


@pytest.fixture
def orders(tmp_path: Path) -> Path:
    """A copy of examples/orders to run."""
    return copy_example("orders", tmp_path)


@pytest.fixture
def trades(tmp_path: Path) -> Path:
    """A copy of examples/trades (with its golden tests) to run."""
    return copy_example("trades", tmp_path)


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINK_")}
    env.update(extra or {})
    return env


@pytest.fixture(autouse=True)
def _no_ambient_runink_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never read the developer's RUNINK_* variables or config files."""
    for name in list(os.environ):
        if name.startswith("RUNINK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))  # (runs' state: tmp_path/xdg-data/runink)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # (the CLI's command index)


@pytest.fixture
def data_home(tmp_path: Path) -> Path:
    """Where the test's runs keep their state (the default data dir, under its XDG_DATA_HOME)."""
    return tmp_path / "xdg-data" / "runink"


@pytest.fixture
def run_cli(tmp_path: Path) -> CliRunner:
    """Run ``python -m runink ARGS`` in a subprocess (cwd: a temp dir), return the completed process."""

    def run(
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        python: str | None = None,
        pythonpath: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = _clean_env(env)
        full_env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
        trust_project_config(cwd or tmp_path, tmp_path / "xdg")
        full_env.setdefault("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
        full_env.setdefault("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
        if pythonpath is not None:
            full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), full_env.get("PYTHONPATH")]))
        return subprocess.run(
            [python or sys.executable, "-m", "runink", *args],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd or tmp_path,
            timeout=120,
            check=False,
        )

    return run


@pytest.fixture
def fake_dist(tmp_path: Path) -> FakeDist:
    """``fake_dist(name, version, entry_points={group: {name: target}}, modules={file: source})`` -> site dir."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)

    def make(
        name: str, version: str, entry_points: Mapping[str, Mapping[str, str]], modules: Mapping[str, str]
    ) -> Path:
        for filename, source in modules.items():
            (site / filename).write_text(textwrap.dedent(source))
        dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, items in entry_points.items():
            lines.append(f"[{group}]")
            lines.extend(f"{ep_name} = {target}" for ep_name, target in items.items())
        (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        return site

    return make


@pytest.fixture
def on_sys_path(monkeypatch: pytest.MonkeyPatch) -> OnSysPath:
    """Put a fake site dir on sys.path for this test (entry points are read afresh each time)."""

    def add(site: Path) -> None:
        monkeypatch.syspath_prepend(str(site))

    return add


@pytest.fixture
def store() -> ClusterStore:
    """A ClusterStore on a memory Barn holding the herd "lab" (no quota): what the agent and
    lifecycle tests start from (a test file with other needs defines its own)."""
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="lab"))
    return store


@pytest.fixture
def life(store: ClusterStore) -> Lifecycle:
    return Lifecycle(store)


@pytest.fixture
def linux() -> Iterator[LinuxExecutor]:
    """A linux executor with a cgroup parent of its own, so leak checks see only its slices
    and cgroups (tox runs envs in parallel); closed, and its parents removed, after."""
    from runink.plugins.executors.linux.executor import LinuxExecutor

    executor = LinuxExecutor(cgroup_parent=f"runink-test-{uuid.uuid4().hex[:8]}")
    yield executor
    close_linux(executor)


def close_linux(executor: LinuxExecutor) -> None:
    """Close a test's linux executor and remove its cgroup parents (what is left in one stays)."""
    executor.close()
    if executor.cgroups is not None:
        for parent in set(executor.cgroups.parents().values()):
            with contextlib.suppress(OSError):
                parent.rmdir()
