"""A slice's log lines, tagged with its task id and the step that wrote them.

Steps run together in one process (a slice streams batches through all of them), so the
step is known only in-process: the slice wraps its stdout and stderr in a ``TaggedStream``
and sets ``current_step`` around each call into user code. Each complete line goes out at
once, prefixed ``[<task id> <step>] ``; lines written outside any step are tagged ``slice``.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TextIO

current_step: ContextVar[str] = ContextVar("runink_current_step", default="slice")


@contextlib.contextmanager
def step_context(ref: str) -> Iterator[None]:
    token = current_step.set(ref)
    try:
        yield
    finally:
        current_step.reset(token)


class TaggedStream(io.TextIOBase):
    """A text stream that writes whole lines to ``raw`` with a tag (line-buffered)."""

    def __init__(self, raw: TextIO, task_id: str) -> None:
        self._raw = raw
        self._task_id = task_id
        self._partial = ""
        self._lock = threading.Lock()  # the sink thread writes too

    def _tag(self, line: str) -> str:
        return f"[{self._task_id} {current_step.get()}] {line}\n"

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            if lines:
                self._raw.write("".join(self._tag(line) for line in lines))
                self._raw.flush()
        return len(text)

    def flush(self) -> None:
        """Also writes an unfinished line (a prompt, a progress bar): nothing is held back."""
        with self._lock:
            if self._partial:
                self._raw.write(self._tag(self._partial))
                self._partial = ""
            self._raw.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._raw.encoding
