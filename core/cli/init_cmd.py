"""`runink init [DIR]`: a small working pipeline to start from.

It writes a .dsl, a contract, a step, sample data and a golden test that `runink run` and
`runink test` pass at once (tests/test_init.py runs both on what it writes). Nothing is
overwritten: a file that is there already stops it before anything is written.
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

import typer

from runink.core.cli.output import print_json
from runink.core.errors import RuninkError
from runink.core.project_files import open_folder_below

TEMPLATE = "project_template"  # beside this module: the project's files, as written
# A file named NAME.template is written as NAME: its Python is the project's, not a module of
# the package (no linter or type checker of runink's takes it), and "gitignore" gets its dot.
SUFFIX = ".template"
RENAMED = {"gitignore": ".gitignore"}


def _template() -> dict[str, bytes]:
    """The template's files by their path in the project."""
    found: dict[str, bytes] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for item in folder.iterdir():
            if item.name == "__pycache__":
                continue
            if item.is_dir():
                walk(item, f"{prefix}{item.name}/")
            else:
                name = item.name.removesuffix(SUFFIX)
                found[prefix + RENAMED.get(name, name)] = item.read_bytes()

    walk(resources.files("runink.core.cli") / TEMPLATE, "")
    return dict(sorted(found.items()))


def init_command(
    directory: Path = typer.Argument(Path("."), metavar="DIR", help="Where to write it (made if missing)."),
    json_output: bool = typer.Option(False, "--json", help="Print the files written as JSON."),
) -> None:
    """Write a small working pipeline (a .dsl, a contract, a step, sample data, a golden test)
    that `runink run` and `runink test` pass at once."""
    root = directory.resolve()
    if root.exists() and not root.is_dir():
        raise RuninkError(f"{directory}: not a folder")
    files = _template()
    there = [name for name in files if os.path.lexists(root / name)]
    if there:
        raise RuninkError(f"{root / there[0]}: already there (runink init writes into a new or empty folder)")
    written = []
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # (a file on the way, no such place, no right: was an "internal error")
        raise RuninkError(f"{directory}: cannot make the folder: {exc.strerror}") from None
    for name, content in files.items():
        path = root / name
        # its folders made below the project's through no link (a linked data/ wrote outside it),
        # the file with O_EXCL and no link followed: a file made meanwhile is never overwritten
        folder = open_folder_below(root, PurePosixPath(name).parent, "runink init: folder", create=True)
        try:
            fd = os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)
        except OSError as exc:
            raise RuninkError(f"{path}: {exc.strerror}") from None
        finally:
            os.close(folder)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        written.append(str(path))
    if json_output:
        print_json({"dir": str(root), "files": written})
        return
    where = "" if root == Path.cwd().resolve() else f"cd {directory} && "
    print(f"wrote a pipeline in {root} ({len(written)} files); try:\n  {where}runink run pipeline.dsl && runink test")


def register(app: typer.Typer) -> None:
    app.command("init")(init_command)
