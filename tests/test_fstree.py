"""Removing and measuring trees a slice wrote (core/fstree.py): any depth, no link followed,
read-only folders, on real files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from runink.core import fstree


def _chain(top: Path, depth: int) -> Path:
    """A chain of ``depth`` folders under ``top`` made with relative calls (its paths pass
    PATH_MAX), a 10-byte file at the bottom; the bottom folder's path is returned when short."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        file = os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
        os.write(file, b"0123456789")
        os.close(file)
    finally:
        os.close(fd)
    return top


def test_a_chain_deeper_than_the_interpreter_recurses_is_removed(tmp_path: Path) -> None:
    deep = _chain(tmp_path / "deep", 3000)
    assert sys.getrecursionlimit() < 3000  # (what shutil.rmtree and os.walk hit)
    fstree.remove_tree(deep)  # (if it fails, pytest's clean-up of this folder fails too: loudly)
    assert not deep.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing moved up is left beside it


def test_size_counts_the_files_to_its_depth_bound_and_no_further(tmp_path: Path) -> None:
    shallow = _chain(tmp_path / "shallow", 10)
    (shallow / "big").write_bytes(b"x" * 100_000)
    assert fstree.tree_size(shallow) == os.stat(shallow / "big").st_blocks * 512 + 4096
    deep = _chain(tmp_path / "deep", 3000)
    try:
        assert fstree.tree_size(deep) == 0  # (its one file is past MAX_OPEN levels) and no crash
    finally:
        fstree.remove_tree(deep)  # (pytest's own clean-up of old runs would recurse into it)
    assert fstree.tree_size(tmp_path / "nowhere") == 0


def test_links_are_removed_never_followed_nor_counted(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_bytes(b"x" * 50_000)
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "to-folder").symlink_to(precious)
    (tree / "a" / "to-file").symlink_to(precious / "keep")
    os.mkfifo(tree / "a" / "fifo")
    assert fstree.tree_size(tree) == 0
    fstree.remove_tree(tree)
    assert not tree.exists() and (precious / "keep").stat().st_size == 50_000
    link = tmp_path / "link"
    link.symlink_to(precious)
    fstree.remove_tree(link)  # a link given as the tree: the link goes
    assert not link.is_symlink() and precious.is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a tree nobody's (root only)")
def test_folders_a_slice_made_read_only_are_unlocked_and_removed(request: pytest.FixtureRequest) -> None:
    # as root nothing is refused: the removal runs as the tree's owner, nobody, in a fork (in a
    # folder of /tmp: pytest's own are root's alone)
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp())
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    tree = home / "tree"
    (tree / "locked" / "inner").mkdir(parents=True)
    (tree / "locked" / "inner" / "file").write_bytes(b"x")
    (tree / "shut").mkdir()
    for path in [home, *home.rglob("*")]:
        os.chown(path, 65534, 65534)
    (tree / "locked" / "inner").chmod(0o500)
    (tree / "locked").chmod(0o500)
    (tree / "shut").chmod(0o000)
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            fstree.remove_tree(tree)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not tree.exists()
