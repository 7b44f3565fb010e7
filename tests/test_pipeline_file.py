"""A submitted .dsl as a node reads it (core/agent/pipeline_file.py): the agent runs as root and
the path is a herd member's, so only a regular, bounded file in the herd's roots, reached with
no link, in a folder not everyone may write; never blocking, never quoting what it refused.
Real files, links and FIFOs in a temporary folder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from runink.core.agent.pipeline_file import MAX_DSL_BYTES, read_submitted
from runink.core.errors import RuninkError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "herd"
    (folder / "p").mkdir(parents=True)
    (folder / "p" / "p.dsl").write_text("Feature: orders\n")
    return folder


def test_a_dsl_in_its_herds_roots_is_read(root: Path) -> None:
    assert read_submitted(str(root / "p" / "p.dsl"), [str(root)]) == "Feature: orders\n"
    assert read_submitted(str(root / "p" / "p.dsl"), ["/elsewhere", str(root / "p")]) == "Feature: orders\n"


@pytest.mark.parametrize(
    ("path", "roots", "why"),
    [
        ("p/p.dsl", None, "not an absolute, normalised path"),
        ("{root}/p/../p/p.dsl", None, "not an absolute, normalised path"),
        ("{root}//p/p.dsl", None, "not an absolute, normalised path"),
        ("{root}/p/p.txt", None, "to a .dsl file"),
        ("{root}/p/p.dsl", [], "its herd has no folders pipelines may be in"),
        ("{root}/p/p.dsl", ["/srv"], "not in a folder its herd's pipelines may be in (/srv)"),
        ("{root}/p/p.dsl", ["{root}/p/p"], "not in a folder"),
        ("{root}/p/nope.dsl", None, "No such file or directory"),
    ],
)
def test_what_is_refused_says_why_in_one_line(root: Path, path: str, roots: list[str] | None, why: str) -> None:
    given = [r.format(root=root) for r in roots] if roots is not None else [str(root)]
    with pytest.raises(RuninkError) as error:
        read_submitted(path.format(root=root), given)
    assert why in str(error.value) and "\n" not in str(error.value)


def test_no_symbolic_link_is_followed_at_the_end_or_on_the_way(root: Path, tmp_path: Path) -> None:
    """A link named x.dsl to /etc/shadow, read as root, had its first line quoted back."""
    secret = tmp_path / "secret"
    secret.write_text("root:*:20228:0:99999:7:::\n")
    (root / "p" / "shadow.dsl").symlink_to(secret)
    outside = tmp_path / "other"
    outside.mkdir()
    (outside / "p.dsl").write_text("Feature: theirs\n")
    (root / "linked").symlink_to(outside)
    for path in (root / "p" / "shadow.dsl", root / "linked" / "p.dsl"):
        with pytest.raises(RuninkError, match="a symbolic link on its way") as error:
            read_submitted(str(path), [str(root)])
        assert "root:" not in str(error.value) and "theirs" not in str(error.value)


def test_a_fifo_a_device_and_a_folder_are_refused_without_blocking(root: Path) -> None:
    """A FIFO named x.dsl once held the node's every start (a blocking read on the agent's round)."""
    fifo = root / "p" / "fifo.dsl"
    os.mkfifo(fifo)
    (root / "p" / "folder.dsl").mkdir()
    outcome: list[str] = []
    reader = threading.Thread(target=lambda: outcome.append(_refusal(str(fifo), [str(root)])), daemon=True)
    reader.start()
    reader.join(5)
    assert outcome == [f"pipeline {fifo}: not a regular file"]  # (at once: no writer came)
    assert _refusal(str(root / "p" / "folder.dsl"), [str(root)]).endswith("not a regular file")


def test_a_file_past_its_size_is_refused_unread(root: Path) -> None:
    """A 1 GiB sparse .dsl made the root agent's parser take the machine's memory."""
    big = root / "p" / "big.dsl"
    with big.open("wb") as out:
        out.truncate(MAX_DSL_BYTES + 1)
    assert _refusal(str(big), [str(root)]) == f"pipeline {big}: {MAX_DSL_BYTES + 1:,} bytes, at most {MAX_DSL_BYTES:,}"


@pytest.mark.parametrize("mode", [0o777, 0o1755])
def test_a_folder_anyone_may_write_is_no_pipelines_folder(root: Path, mode: int) -> None:
    """A slice is granted its .dsl's whole folder: /tmp/x.dsl granted all of /tmp."""
    os.chmod(root / "p", mode)
    assert "its folder may be written by anyone (as /tmp)" in _refusal(str(root / "p" / "p.dsl"), [str(root)])


def _refusal(path: str, roots: list[str]) -> str:
    try:
        read_submitted(path, roots)
    except RuninkError as exc:
        return str(exc)
    raise AssertionError(f"{path}: read")
