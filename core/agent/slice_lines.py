"""Every line a running slice prints, to the log exporters (``runink_export_log``), with the
herd, job, task, attempt, step and node it came from (``[log] slice_output = true``).

The agent (and the embedded run's in-process agent) reads each running attempt's
``stdout.log`` and ``stderr.log`` in its task dir once a round, from where it left off: never
following a link, never blocking, at most ``per_round`` bytes a stream a round (the rest next
round), at most ``MAX_LINES`` lines a stream a round, blank ones skipped (a slice printing
only newlines made a million records a round: the agent's round took 32 s), a line at most
``MAX_LINE`` bytes of UTF-8 (a longer one goes out in pieces). The slice writes
those files, so what it says of itself is not trusted: the step comes from the ``[task step]``
tag its log lines carry (core/dataplane/log_tags.py), printable and bounded; the herd, job,
task and node come from the agent's own records.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from runink.core.agent.logs import output_file
from runink.core.config import RuninkConfig
from runink.core.events import export_log
from runink.core.model import LogEntry
from runink.core.plugins import PluginManager
from runink.core.report import printable

MAX_LINE = 16 * 1024
PER_ROUND = 1 << 20
MAX_LINES = 1000  # records a stream a round, at most: the rest next round (an ended slice's: dropped)
STREAMS = ("stdout", "stderr")
_TAG = re.compile(r"^\[(\S{1,200}) (\S{1,200})\] ")


class SliceLines:
    def __init__(self, export: Callable[[LogEntry], object], node: str, *, per_round: int = PER_ROUND) -> None:
        self.export = export
        self.node = node
        self.per_round = per_round
        self._at: dict[tuple[str, str], int] = {}  # (attempt key, stream) -> bytes read
        self._partial: dict[tuple[str, str], bytes] = {}  # a line not ended yet

    def read(self, key: str, task_dir: Path, labels: dict[str, str], *, last: bool = False) -> int:
        """Export the new lines of attempt ``key``'s streams; ``last``: it ended, so its
        unfinished last line goes too and it is forgotten. How many lines went."""
        sent = 0
        for stream in STREAMS:
            sent += self._read_stream(key, task_dir / f"{stream}.log", stream, labels, last)
        if last:
            self.forget(key)
        return sent

    def forget(self, key: str) -> None:
        for stream in STREAMS:
            self._at.pop((key, stream), None)
            self._partial.pop((key, stream), None)

    def _read_stream(self, key: str, path: Path, stream: str, labels: dict[str, str], last: bool) -> int:
        where = (key, stream)
        with output_file(path, "slice output") as opened:
            if opened is None:
                return 0
            fd, size = opened
            at = self._at.get(where, 0)
            if size < at:  # truncated or replaced: from its start again
                at, self._partial[where] = 0, b""
            data = os.pread(fd, min(self.per_round, max(0, size - at)), at)
        before = self._partial.get(where, b"")
        pending = before + data
        *lines, rest = pending.split(b"\n", MAX_LINES)
        if len(lines) == MAX_LINES and rest:  # more lines than a round takes: the rest is read again next round
            self._at[where] = at + sum(len(line) + 1 for line in lines) - len(before)
            self._partial[where] = b""
            return self._send(lines, stream, labels)
        self._at[where] = at + len(data)
        while len(rest) > MAX_LINE:  # a line too long: out in pieces
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        if last and rest:
            lines.append(rest)
            rest = b""
        self._partial[where] = rest
        return self._send(lines, stream, labels)

    def _send(self, lines: list[bytes], stream: str, labels: dict[str, str]) -> int:
        pieces = [line[i : i + MAX_LINE] for line in lines for i in range(0, len(line), MAX_LINE)]
        sent = 0
        for raw in pieces:
            if raw.strip(b"\r\t "):  # (a blank line says nothing)
                self._export(raw, stream, labels)
                sent += 1
        return sent

    def _export(self, raw: bytes, stream: str, labels: dict[str, str]) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        step = "slice"
        if (tagged := _TAG.match(text)) is not None:
            step, text = printable(tagged.group(2), 200), text[tagged.end() :]
        fields = {**labels, "step": step, "stream": stream, "node": self.node}
        # the slice's own text, shown on terminals and in log files: no escape sequence
        # (one could retitle the window or clear the screen) nor any other control character
        text = printable(text, MAX_LINE)
        if len(text) > MAX_LINE // 4:  # bounded in bytes, not characters (a \xff is 3 bytes once replaced)
            text = text.encode()[:MAX_LINE].decode("utf-8", errors="ignore")
        self.export(LogEntry(text, "info" if stream == "stdout" else "warning", "slice", fields))


def slice_lines(config: RuninkConfig, manager: PluginManager, node: str) -> SliceLines | None:
    """The node's reader of its slices' lines when ``[log] slice_output`` is on, else None."""
    if not config.log.slice_output:
        return None
    return SliceLines(lambda entry: export_log(manager, entry), node)
