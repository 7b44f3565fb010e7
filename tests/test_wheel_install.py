"""The wheel users install: built by tools/build-dist (python -m build, then auditwheel), tagged
py3-none-manylinux, installed with pip into a fresh virtualenv of each supported Python, where
`runink init && runink run && runink test` pass.

Slow (each venv installs every dependency from the package index) and networked to the index
only: marked slow, run by `tox -e slow` / `pytest -m slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHONS = ("3.11", "3.12", "3.13")

pytestmark = pytest.mark.slow


def _python(version: str) -> str | None:
    """An interpreter of that version that runs: pyenv's, else pythonX.Y on PATH (a pyenv shim
    there may name a version that is not selected: it is tried before it is taken)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [str(p) for p in sorted(root.glob(f"{version}.*/bin/python{version}"))] if root.is_dir() else []
    on_path = shutil.which(f"python{version}")
    for candidate in [*reversed(candidates), *([on_path] if on_path else [])]:
        tried = subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=60, check=False)
        if tried.returncode == 0:
            return candidate
    return None


def _run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNINK_", "PYTHON", "VIRTUAL_ENV"))}
    env["XDG_CONFIG_HOME"] = str(cwd / "xdg")
    env["XDG_DATA_HOME"] = str(cwd / "xdg-data")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = _run([str(REPO / "tools" / "build-dist"), str(out)], cwd=out)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


def test_the_wheel_is_one_per_platform_and_checked_by_auditwheel(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    assert wheel.name.startswith("runink-") and "-py3-none-manylinux_" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "runink/plugins/executors/linux/runink-init" in names  # the compiled helper
    assert "runink/core/cli/project_template/pipeline.dsl" in names  # runink init's files
    assert "License-Expression: Apache-2.0 AND MIT" in metadata
    assert "Classifier: Programming Language :: Python :: 3.13" in metadata
    assert "Project-URL: Source, https://github.com/runink/runink" in metadata
    (sdist,) = dist.glob("*.tar.gz")
    listed = subprocess.run(["tar", "tzf", str(sdist)], capture_output=True, text=True, check=True).stdout
    assert "/examples/orders/orders.dsl" in listed and "/examples/trades/golden/" in listed
    assert "/out/" not in listed


@pytest.mark.parametrize("version", PYTHONS)
def test_pip_install_the_wheel_then_init_run_and_test(dist: Path, version: str, tmp_path: Path) -> None:
    python = _python(version)
    if python is None:
        pytest.skip(f"no Python {version} here")
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    made = _run([python, "-m", "venv", str(venv)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    installed = _run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", str(wheel)], cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    runink = str(venv / "bin" / "runink")
    version_line = _run([runink, "--version"], cwd=tmp_path)
    assert version_line.returncode == 0 and version_line.stdout.startswith("runink "), version_line.stderr
    assert _run([runink, "init", "project"], cwd=tmp_path).returncode == 0
    project = tmp_path / "project"
    ran = _run([runink, "run", "pipeline.dsl", "--json"], cwd=project)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout)["scenarios"][0]["rows_valid"] == 5
    tested = _run([runink, "test"], cwd=project)
    assert tested.returncode == 0 and "1 passed, 0 failed" in tested.stdout, tested.stderr[-3000:]
