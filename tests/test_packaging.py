"""What the package says about itself: its licences, its vendored code, its pinned CLI library."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_licence_is_an_spdx_string_with_its_files() -> None:
    """The table form (`license = {text = ...}`) stops building with setuptools in 2027."""
    project = PROJECT["project"]
    assert isinstance(project["license"], str)
    assert "Apache-2.0" in project["license"]
    for name in project["license-files"]:
        assert (REPO / name).is_file(), name
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]


def test_vendored_code_has_its_licence_and_is_out_of_lint() -> None:
    vendored = [folder for folder in REPO.glob("plugins/**/_vendor/*") if folder.is_dir() and folder.name[0] != "_"]
    assert vendored, "no vendor folder found"
    excluded = PROJECT["tool"]["ruff"]["extend-exclude"]
    for folder in vendored:
        relative = folder.relative_to(REPO).as_posix()
        assert (folder / "LICENSE").is_file(), f"{relative} has no LICENSE"
        assert f"{relative}/LICENSE" in PROJECT["project"]["license-files"], f"{relative}/LICENSE not in the wheel"
        assert any(relative.startswith(entry) for entry in excluded), f"{relative} is linted"


def test_typer_is_capped_to_the_versions_tested() -> None:
    """Each typer minor has changed how help renders (0.27: `{pipeline}`, 0.29: `--dry-run <bool>`): bump on purpose."""
    spec = next(Requirement(dep) for dep in PROJECT["project"]["dependencies"] if Requirement(dep).name == "typer")
    assert any(item.operator == "<" for item in spec.specifier), f"typer is not capped: {spec}"
    assert spec.specifier.contains(version("typer")), f"the installed typer {version('typer')} is outside {spec}"
