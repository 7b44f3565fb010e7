"""The Fluentd exporter against a forward-protocol receiver of the tests' own (msgpack over TCP,
acks on): every line a slice printed arrives with its labels; a receiver stopped mid-run and
started again still gets every line within the buffer bound, and a line twice only under a
repeated chunk id; past the bound lines are dropped and counted, never waited for."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fixture_types import CliRunner
from trusted import trust_project_config

from runink.core import metrics
from runink.core.config import RuninkConfig
from runink.core.model import LogEntry
from runink.plugins.observability.fluentd import FluentdExporter


class Receiver:
    """A Fluentd ``forward`` input, acks on: keeps (chunk id, tag, record) of every message."""

    def __init__(self, port: int = 0, *, lose_acks: int = 0, garbage: int = 0) -> None:
        self.got: list[tuple[str, str, dict[str, Any]]] = []
        self.lose_acks = lose_acks  # the first N messages: stored, then the connection dropped
        self.garbage = garbage  # the first N messages: answered with garbage, not stored
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", port))
        self.port = self._server.getsockname()[1]
        self._connections: list[socket.socket] = []
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self._open:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self._connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False, timestamp=0)
        with connection:
            while True:
                try:
                    data = connection.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                unpacker.feed(data)
                for tag, entries, option in unpacker:
                    if self.garbage > 0:  # msgpack's header of a 1 MB string, then 8 KB of it
                        self.garbage -= 1
                        connection.sendall(b"\xdb\x00\x10\x00\x00" + b"A" * 8192)
                        continue
                    with self._lock:
                        self.got.extend((option["chunk"], tag, record) for _moment, record in entries)
                        lose = self.lose_acks > 0
                        self.lose_acks -= lose
                    if lose:
                        connection.close()
                        return
                    connection.sendall(msgpack.packb({"ack": option["chunk"]}))

    def messages(self) -> list[str]:
        with self._lock:
            return [record["message"] for _chunk, _tag, record in self.got]

    def close(self) -> None:
        self._open = False
        self._server.close()
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def _exporter(port: int, **options: object) -> FluentdExporter:
    exporter = FluentdExporter()
    config = RuninkConfig.model_validate({"plugin": {"fluentd": {"host": "127.0.0.1", "port": port, **options}}})
    exporter.runink_configure(config)
    return exporter


def _entry(number: int) -> LogEntry:
    return LogEntry(f"line {number}", "info", "slice", {"herd": "lab", "step": "s"})


def _wait(predicate: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_collector_down_a_while_still_gets_every_line_and_a_repeat_only_under_its_chunk_id(
    receiver: Receiver,
) -> None:
    exporter = _exporter(receiver.port, chunk=50, ack_timeout=1.0)
    try:
        for number in range(200):
            exporter.runink_export_log(_entry(number))
        _wait(lambda: len(receiver.messages()) >= 200)
        receiver.close()  # down mid-run ...
        began = time.monotonic()
        for number in range(200, 600):
            exporter.runink_export_log(_entry(number))
        assert time.monotonic() - began < 0.5  # ... and the callers never waited for it
        time.sleep(1.0)
        again = Receiver(receiver.port)  # ... and up again on the same port
        try:
            assert exporter.flush(30)
            every = [m for m in receiver.messages() + again.messages()]
            assert sorted(set(every), key=lambda m: int(m.split()[1])) == [f"line {n}" for n in range(600)]
            _only_repeated_under_the_same_chunk(receiver.got + again.got)
            assert exporter.shipped == 600 and exporter.dropped == 0
        finally:
            again.close()
    finally:
        exporter.runink_unconfigure()


def _lines_once(receiver: Receiver) -> list[str]:
    """The "line N" messages received, each once (a resend counted once), in N's order."""
    return sorted(set(receiver.messages()), key=lambda m: int(m.split()[1]))


def _only_repeated_under_the_same_chunk(got: list[tuple[str, str, dict[str, Any]]]) -> None:
    """A line received twice came in two messages with one chunk id (a resend), never as new."""
    chunk_of: dict[str, str] = {}
    for chunk, _tag, record in got:
        assert chunk_of.setdefault(record["message"], chunk) == chunk, record["message"]


def test_a_lost_ack_makes_a_resend_with_the_same_chunk_id() -> None:
    receiver = Receiver(lose_acks=1)
    exporter = _exporter(receiver.port, ack_timeout=1.0)
    try:
        for number in range(10):
            exporter.runink_export_log(_entry(number))
        assert exporter.flush(30)
        first = [record["message"] for chunk, _tag, record in receiver.got if chunk == receiver.got[0][0]]
        # the first message, stored but not acknowledged, came again whole under its chunk id
        assert first and len(first) % 2 == 0 and first[: len(first) // 2] == first[len(first) // 2 :]
        assert _lines_once(receiver) == [f"line {n}" for n in range(10)]
        assert len(receiver.got) == 10 + len(first) // 2
        _only_repeated_under_the_same_chunk(receiver.got)
        assert exporter.resent == 1 and receiver.got[0][1] == "runink.slice"
    finally:
        exporter.runink_unconfigure()
        receiver.close()


def _nobody_listens() -> int:
    """A loopback port nobody listens on (bound a moment, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_past_its_buffer_lines_are_dropped_and_counted_never_waited_for() -> None:
    port = _nobody_listens()
    exporter = _exporter(port, buffer=100, ack_timeout=0.2)
    try:
        began = time.monotonic()
        for number in range(1000):
            exporter.runink_export_log(_entry(number))
        assert time.monotonic() - began < 1.0
        assert exporter.dropped == 900
        dropped = [s for s in metrics.collect() if s.labels.get("exporter") == "fluentd"]
        assert [s.value for s in dropped] == [900]
    finally:
        exporter.runink_unconfigure()
    assert not [s for s in metrics.collect() if s.labels.get("exporter") == "fluentd"]  # unregistered


def test_past_its_buffer_in_bytes_lines_are_dropped_too() -> None:
    """The buffer was bounded in records only: 10,000 lines of wide characters took 640 MB."""
    port = _nobody_listens()
    exporter = _exporter(port, buffer=10_000, buffer_bytes=1 << 20, ack_timeout=0.2)
    try:
        for n in range(200):  # ~16 KB of UTF-8 each, 16 KB in memory too (4 bytes a character)
            exporter.runink_export_log(LogEntry(f"{n:04d}" + "\U0001f600" * 4000, "info", "slice", {"herd": "lab"}))
        assert 50 <= len(exporter._waiting) <= 64 and exporter.dropped == 200 - len(exporter._waiting)
    finally:
        exporter.runink_unconfigure()


def test_a_wrong_option_is_one_line_naming_it() -> None:
    with pytest.raises(Exception, match=r"fluentd.*positive"):
        _exporter(24224, buffer=0)


def test_every_line_a_slice_prints_reaches_the_collector_with_its_labels(
    run_cli: CliRunner, receiver: Receiver, tmp_path: Path
) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "in.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(5)))
    (project / "steps.py").write_text(
        "import sys\n"
        "def chatty(batch):\n"
        "    for n in range(300):\n"
        "        print(f'row {n} of the batch')\n"
        "    print('a warning', file=sys.stderr)\n"
        "    return batch\n"
    )
    (project / "p.dsl").write_text(
        '@herd("lab")\nFeature: Chatty\n  Scenario: Talk\n    @source("csv://in.csv")\n'
        '    @step("steps:chatty")\n    @sink("csv://out.csv")\n'
    )
    (project / "runink.toml").write_text(
        f'[log]\nslice_output = true\n[plugin.fluentd]\nhost = "127.0.0.1"\nport = {receiver.port}\n'
    )
    out = run_cli("run", "p.dsl", "--set", "executor.driver=process", cwd=project)
    assert out.returncode == 0, out.stderr
    _wait(lambda: len([m for m in receiver.messages() if m.startswith("row ")]) >= 300, 10)
    lines = [(tag, record) for _chunk, tag, record in receiver.got if record["message"].startswith("row ")]
    assert [record["message"] for _tag, record in lines] == [f"row {n} of the batch" for n in range(300)]
    tag, first = lines[0]
    assert tag == "runink.slice"
    assert first["herd"] == "lab" and first["step"] == "steps:chatty" and first["node"] == "local"
    assert first["stream"] == "stdout" and first["job"].startswith("job-") and first["task"]
    warning = next(r for _c, _t, r in receiver.got if r["message"] == "a warning")
    assert warning["stream"] == "stderr" and warning["level"] == "warning"


def test_a_collector_stopped_mid_run_and_started_again_still_gets_every_line(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """The issue's scenario with a real slice: it prints for two seconds; the collector goes
    down after the first lines and comes back on the same port; every line arrives, a line
    twice only under one chunk id."""
    receiver = Receiver()
    project = tmp_path / "p"
    project.mkdir()
    (project / "in.csv").write_text("id\n1\n")
    (project / "steps.py").write_text(
        "import time\n"
        "def talk(batch):\n"
        "    for n in range(40):\n"
        "        print(f'line {n}', flush=True)\n"
        "        time.sleep(0.05)\n"
        "    return batch\n"
    )
    (project / "p.dsl").write_text(
        'Feature: Talk\n  Scenario: Talk\n    @source("csv://in.csv")\n    @step("steps:talk")\n'
        '    @sink("csv://out.csv")\n'
    )
    (project / "runink.toml").write_text(
        f'[log]\nslice_output = true\n[plugin.fluentd]\nhost = "127.0.0.1"\nport = {receiver.port}\nack_timeout = 0.5\n'
    )
    trust_project_config(project, Path(os.environ["XDG_CONFIG_HOME"]))
    command = [sys.executable, "-m", "runink", "run", "p.dsl", "--set", "executor.driver=process"]
    running = subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    again: Receiver | None = None
    try:
        _wait(lambda: len(receiver.messages()) >= 5, 20)
        assert receiver.messages(), "no line arrived before the stop"
        receiver.close()  # down mid-run ...
        time.sleep(1.0)
        again = Receiver(receiver.port)  # ... up again on the same port
        _, err = running.communicate(timeout=60)  # (its exit waits for the acks, ack_timeout at most)
        assert running.returncode == 0, err
        _wait(lambda: {f"line {n}" for n in range(40)} <= set(receiver.messages() + again.messages()), 10)
        got = receiver.got + again.got
        lines = [r for _c, _t, r in got if r["message"].startswith("line ")]
        assert {r["message"] for r in lines} == {f"line {n}" for n in range(40)}
        _only_repeated_under_the_same_chunk(got)
    finally:
        if running.poll() is None:
            running.kill()
        if again is not None:
            again.close()
        receiver.close()


def test_slice_lines_are_read_from_where_they_were_left_bounded_and_never_through_a_link(tmp_path: Path) -> None:
    from runink.core.agent.slice_lines import MAX_LINE, SliceLines

    got: list[LogEntry] = []
    lines = SliceLines(got.append, "n1")
    task = tmp_path / "task"
    task.mkdir()
    out = task / "stdout.log"
    long = "x" * (MAX_LINE + 10)
    out.write_text(f"[t1 steps:a] first\n{long}\nhalf")
    assert lines.read("t1-a1", task, {"herd": "lab"}) == 3  # the unfinished line waits
    assert [e.message for e in got] == ["first", "x" * MAX_LINE, "x" * 10]
    assert got[0].fields["step"] == "steps:a" and got[1].fields["step"] == "slice"
    with out.open("a") as more:
        more.write(" done\n")
    lines.read("t1-a1", task, {"herd": "lab"})
    assert got[-1].message == "half done"  # read on from where it was left
    out.unlink()
    (task / "secret").write_text("do not read\n")
    out.symlink_to(task / "secret")  # a slice's link to a file it wants the node to read
    assert lines.read("t1-a2", task, {"herd": "lab"}, last=True) == 0 and got[-1].message == "half done"


def test_slice_lines_reach_logs_without_escape_sequences(tmp_path: Path) -> None:
    # a slice's text goes to the node's log exporters, a terminal among them
    from runink.core.agent.slice_lines import SliceLines

    got: list[LogEntry] = []
    task = tmp_path / "task"
    task.mkdir()
    (task / "stdout.log").write_text("hello \x1b]0;PWNED\x07\x1b[2J\x1b[31mfake: all good\x1b[0m\n")
    assert SliceLines(got.append, "n1").read("t1-a1", task, {"herd": "lab"}) == 1
    assert "\x1b" not in got[0].message and "\x07" not in got[0].message
    assert got[0].message.startswith("hello ") and "fake: all good" in got[0].message


def test_a_slice_printing_only_newlines_makes_no_records_and_a_round_stays_bounded(tmp_path: Path) -> None:
    """1 MiB of newlines was a million records in one round (32 s of the agent's round, no
    start nor timeout meanwhile): blank lines make none, and a round takes MAX_LINES lines at
    most, the rest the next round, none lost nor sent twice."""
    from runink.core.agent.slice_lines import MAX_LINE, MAX_LINES, SliceLines

    got: list[LogEntry] = []
    lines = SliceLines(got.append, "n1")
    task = tmp_path / "task"
    task.mkdir()
    (task / "stdout.log").write_bytes(b"\n" * (1 << 20))
    assert lines.read("t1-a1", task, {"herd": "lab"}) == 0 and got == []
    (task / "stderr.log").write_text("".join(f"line {n}\n" for n in range(MAX_LINES + 500)))
    assert lines.read("t1-a1", task, {"herd": "lab"}) == MAX_LINES
    assert lines.read("t1-a1", task, {"herd": "lab"}) == 500
    assert [e.message for e in got] == [f"line {n}" for n in range(MAX_LINES + 500)]
    # a line is bounded in bytes: invalid bytes become U+FFFD (3 bytes each once encoded)
    (task / "stdout.log").write_bytes(b"\n" * (1 << 20) + b"\xff" * MAX_LINE + b"\n")
    lines.read("t1-a1", task, {"herd": "lab"}, last=True)
    assert len(got[-1].message.encode()) <= MAX_LINE


def test_a_collector_answering_garbage_fails_that_attempt_only() -> None:
    """An answer msgpack cannot take (BufferFull: past the ack's bound) killed the sender's
    thread for good: every later record waited, then was dropped, until a restart."""
    receiver = Receiver(garbage=1)
    exporter = _exporter(receiver.port, ack_timeout=1.0)
    try:
        for number in range(50):
            exporter.runink_export_log(_entry(number))
        assert exporter.flush(30)
        assert _lines_once(receiver) == [f"line {n}" for n in range(50)]
        assert exporter.resent >= 1 and exporter.dropped == 0
    finally:
        exporter.runink_unconfigure()
        receiver.close()


def test_the_buffers_bytes_come_back_to_zero_once_all_is_acknowledged(receiver: Receiver) -> None:
    """A string's size grows once it has been encoded (CPython keeps its UTF-8): counted again
    at its ack, the buffer's bytes drifted below zero, and the bound with them."""
    exporter = _exporter(receiver.port, ack_timeout=1.0)
    try:
        for n in range(300):
            exporter.runink_export_log(LogEntry(f"ligne {n} é" * 50, "info", "slice", {"herd": "lab"}))
        assert exporter.flush(30)
        assert exporter._bytes == 0 and not exporter._sizes
    finally:
        exporter.runink_unconfigure()
