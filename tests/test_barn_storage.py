"""A Barn member's files: damage is refused, never served (plugins/barn/raft/journal.py).

A review reproduced, with pysyncobj's own journal: one flipped bit in a stopped follower's
last record's term lost acknowledged writes group-wide; a flipped byte of a value was served;
a record cut short was skipped and the member drifted; a garbage snapshot or vote file was
read as empty; compaction rewrote the live file in place; a full disk killed the member with
SIGBUS. The journal itself is tested directly, then real member processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
from barn_cluster import Cluster
from pysyncobj.journal import FileJournal

from runink.plugins.barn.raft import journal as journal_module
from runink.plugins.barn.raft.journal import HEADER, RECORD, BarnJournal, BarnStorageError

COMMANDS = [(f"command {i}".encode() * (i + 1), i + 1, 1 + i // 3) for i in range(6)]


def _written(path: Path, entries: list[tuple[bytes, int, int]] = COMMANDS) -> Path:
    journal = BarnJournal(str(path))
    for entry in entries:
        journal.add(*entry)
    journal.setCurrentTerm(2, "b")
    journal.sync()
    journal._destroy()
    return path


def _offset(index: int) -> int:
    """Where record ``index`` (0-based) of COMMANDS starts."""
    return len(HEADER) + sum(RECORD.size + len(command) for command, _, _ in COMMANDS[:index])


def _flip(path: Path, at: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_records_vote_and_commit_index_come_back_as_written(tmp_path: Path) -> None:
    path = _written(tmp_path / "raft.journal")
    again = BarnJournal(str(path))
    assert [again[i] for i in range(len(again))] == COMMANDS
    assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (2, "b")
    again.deleteEntriesFrom(4)  # (a follower's conflicting tail)
    again.add(b"other", 5, 3)
    assert again.dirty  # (the same length as before, yet new: synced before it is acknowledged)
    again.sync()
    again._destroy()
    assert BarnJournal(str(path))[4] == (b"other", 5, 3) and len(BarnJournal(str(path))) == 5


@pytest.mark.parametrize(
    ("what", "at", "message"),
    [
        ("a term", _offset(4) + 16, "record 5 (at byte {}) does not match its checksum"),
        ("a value", _offset(2) + RECORD.size + 3, "record 3 (at byte {}) does not match its checksum"),
        ("a record's length", _offset(1), "record 2 (at byte {}) does not match its checksum"),
    ],
)
def test_a_damaged_record_stops_the_member_naming_the_file_and_byte(
    tmp_path: Path, what: str, at: int, message: str
) -> None:
    path = _written(tmp_path / "raft.journal")
    _flip(path, at)
    record_start = max(o for o in (_offset(i) for i in range(len(COMMANDS))) if o <= at)
    with pytest.raises(BarnStorageError, match=re.escape(message.format(record_start))) as caught:
        BarnJournal(str(path))
    assert str(caught.value).startswith(f"{path}: ") and "the file is damaged" in str(caught.value), what


def test_only_a_last_record_cut_short_or_unwritten_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _written(tmp_path / "raft.journal")
    whole = path.read_bytes()
    path.write_bytes(whole[: _offset(5) + 9])  # (a stop while the last record was appended)
    with caplog.at_level(logging.WARNING):
        journal = BarnJournal(str(path))
    assert len(journal) == 5 and "was cut short" in caplog.text
    journal._destroy()
    assert path.stat().st_size == _offset(5)  # (the torn bytes gone: the next record goes there)
    # its size on disk, not its bytes (zeros): the review's H1 too, a flipped bit in the last
    # term (it won an election with it): dropped, the leader sends it again
    path.write_bytes(whole[: _offset(5) + RECORD.size] + bytes(len(whole) - _offset(5) - RECORD.size))
    assert len(BarnJournal(str(path))) == 5
    path.write_bytes(whole)
    _flip(path, _offset(5) + 16)
    assert len(BarnJournal(str(path))) == 5 and "does not match its checksum" in caplog.text
    # a record out of sequence is damage, not a torn end
    entries = [*COMMANDS[:2], (b"x", 7, 1)]
    _written(tmp_path / "gap.journal", entries)
    with pytest.raises(BarnStorageError, match=r"record 3 \(at byte \d+\) has index 7 after 2"):
        BarnJournal(str(tmp_path / "gap.journal"))


def test_a_damaged_vote_is_refused_and_pysyncobjs_own_files_are_taken_over(tmp_path: Path) -> None:
    # A garbage vote file read as "voted for nobody": a member could vote twice in one term.
    path = _written(tmp_path / "raft.journal")
    meta = Path(f"{path}.meta")
    meta.write_bytes(meta.read_bytes().replace(b'"b"', b'"c"'))
    with pytest.raises(BarnStorageError, match="term and vote are damaged"):
        BarnJournal(str(path))
    old = FileJournal(str(tmp_path / "old.journal"))  # pysyncobj's format: read once, rewritten
    for entry in COMMANDS:
        old.add(*entry)
    old.setCurrentTerm(3, "c")
    old._destroy()
    taken = BarnJournal(str(tmp_path / "old.journal"))
    assert [taken[i] for i in range(len(taken))] == COMMANDS and taken.getCurrentTerm() == 3
    assert (tmp_path / "old.journal").read_bytes().startswith(HEADER)


def test_a_journal_gone_while_its_vote_file_stays_is_refused(tmp_path: Path) -> None:
    # (a single member started empty and, at its next snapshot, had lost every herd)
    path = _written(tmp_path / "raft.journal")
    path.unlink()
    with pytest.raises(BarnStorageError, match=r"raft.journal: missing, though .*raft.journal.meta holds"):
        BarnJournal(str(path))


def test_compaction_writes_a_new_file_and_a_link_is_never_followed(tmp_path: Path) -> None:
    path = _written(tmp_path / "raft.journal")
    journal = BarnJournal(str(path))
    inode = path.stat().st_ino
    journal.deleteEntriesTo(4)  # (a crash in an in-place rewrite lost entries already acknowledged)
    journal.add(b"next", 7, 3)
    journal.sync()
    journal._destroy()
    assert path.stat().st_ino != inode
    assert [BarnJournal(str(path))[i][1] for i in range(3)] == [5, 6, 7]
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    linked = tmp_path / "linked.journal"
    linked.symlink_to(outside)
    with pytest.raises(BarnStorageError, match="a symbolic link"):
        BarnJournal(str(linked))
    assert outside.read_bytes() == b"precious"


def test_a_write_that_fails_stops_the_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = BarnJournal(str(tmp_path / "raft.journal"))
    stopped: list[str] = []

    def stop(message: str) -> None:
        stopped.append(message)
        raise SystemExit(74)

    def full(*_: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module, "fail_stop", stop)
    monkeypatch.setattr(journal_module.os, "pwrite", full)
    with pytest.raises(SystemExit):
        journal.add(b"x", 1, 1)
    assert stopped == [f"{tmp_path / 'raft.journal'}: cannot append to the Raft log (No space left on device)"]
    assert len(journal) == 0  # (nothing taken that is not written)


# --- real members -------------------------------------------------------------------------


def _start_fails(cluster: Cluster, name: str) -> str:
    with pytest.raises(AssertionError, match="exited at start") as caught:
        cluster.start(name)
    return str(caught.value)


def test_a_member_with_a_damaged_journal_or_snapshot_does_not_start(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, size=1, options=("--compaction-entries", "20"))
    cluster.start()
    try:
        client = cluster.client()
        for i in range(60):  # (past compaction: a snapshot, then a journal after it)
            client.put(f"/k/{i:03}", f"value {i}".encode())
        client.close()
    finally:
        cluster.stop()
    data = tmp_path / "a"
    dump = data / "raft.dump"
    assert dump.is_file()
    journal = data / "raft.journal"
    _flip(journal, len(HEADER) + RECORD.size)  # (the first record's command: others follow it)
    assert "raft.journal: record 1 (at byte" in _start_fails(cluster, "a")
    _flip(journal, len(HEADER) + RECORD.size)
    _flip(dump, dump.stat().st_size // 2)
    assert "raft.dump: the snapshot does not match its checksum" in _start_fails(cluster, "a")
    _flip(dump, dump.stat().st_size // 2)
    kept = dump.read_bytes()
    dump.unlink()  # (it hung not ready for good, saying nothing of the snapshot)
    assert "raft.dump: missing, though the journal starts at entry" in _start_fails(cluster, "a")
    dump.write_bytes(kept)
    dump.chmod(0o600)
    cluster.start()  # (as it was: it starts and serves every write)
    try:
        client = cluster.client()
        assert [client.get(f"/k/{i:03}").value for i in (0, 59)] == [b"value 0", b"value 59"]  # type: ignore[union-attr]
        client.close()
    finally:
        cluster.stop()


def test_a_full_disk_stops_the_member_with_a_line_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """(pysyncobj wrote through a mapping: a full disk killed the member with SIGBUS, silently)"""
    data = tmp_path / "a"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data)], check=True)
    cluster = Cluster(tmp_path, size=1, options=("--compaction-entries", "1000000"))
    try:
        cluster.start()
        client = cluster.client(timeout=3)
        values = {f"/k/{i:03}": os.urandom(3000) for i in range(400)}  # (~1.2 MB: more than the disk)
        acknowledged = []
        with contextlib.suppress(Exception):
            for key, value in values.items():
                client.put(key, value)
                acknowledged.append(key)
        client.close()
        assert cluster.processes["a"].wait(20) == 74, "the member did not stop"
        log = (tmp_path / "a.log").read_text()
        # (the disk fills at a journal append or at the once-a-second store of the commit index)
        assert re.search(
            r"raft\.journal(: cannot append to the Raft log|\.meta: cannot store the term and vote) "
            r"\((No space left on device|wrote \d+ of \d+ bytes)\): stopping this member",
            log,
        ), log[-2000:]
        assert 0 < len(acknowledged) < len(values)
        subprocess.run(["mount", "-o", "remount,size=8m", str(data)], check=True)
        cluster.start()  # (room again: every acknowledged write is there)
        client = cluster.client()
        assert all(client.get(key).value == values[key] for key in acknowledged)  # type: ignore[union-attr]
        client.close()
    finally:
        cluster.stop()
        subprocess.run(["umount", str(data)], check=False)
