"""The exit status a task's wrapper or sandbox leaves, read as the task may have left it
(core/processes.py's read_exit_status): bounded, no link, no FIFO, only an exit status."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runink.core.processes import read_exit_status


def test_a_status_is_read_as_written(tmp_path: Path) -> None:
    status = tmp_path / "exit_status"
    for text, code in (("0", 0), ("137\n", 137), ("-9", -9)):
        status.write_text(text)
        assert read_exit_status(status) == code


def test_what_a_task_may_have_put_there_is_refused_without_being_read_whole(tmp_path: Path) -> None:
    status = tmp_path / "exit_status"
    with open(status, "wb") as sparse:  # (2 GiB of nothing: it was read whole, 20 times over)
        sparse.truncate(2 << 30)
    with pytest.raises(ValueError, match="not an exit status"):
        read_exit_status(status)
    for text in ("99999999999", "nan", "1e3", ""):
        status.write_text(text)
        with pytest.raises(ValueError, match=r"not an exit status|invalid literal"):
            read_exit_status(status)
    status.unlink()
    os.mkfifo(status)  # (a read would wait for a writer forever)
    with pytest.raises(ValueError, match="not a regular file"):
        read_exit_status(status)
    status.unlink()
    (tmp_path / "elsewhere").write_text("0")
    status.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        read_exit_status(status)
