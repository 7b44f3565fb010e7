"""The Barn's Raft log and vote on disk: every record checked, nothing followed, fail-stop.

pysyncobj's own journal trusted its files: no checksum, so one flipped bit in a follower's last
record's term made it win an election and its peers cut acknowledged entries from their logs;
a record cut short was read as whole; a garbage vote file read as "voted for nobody" (a member
could vote twice in one term); compaction rewrote the live file in place (a crash there lost
entries); and it wrote through a mapping, so a full disk killed the member with SIGBUS.

Here (a review's reproductions in tests/test_barn_storage.py):

* ``raft.journal``: a header, then records ``length, crc32, index, term, command``. At start
  every record is checked: a checksum that does not match or an index out of sequence stops
  the member with one line naming the file and the byte (it is damaged: the other members
  still hold the log; see docs/barn.md). Only the last record may be cut short or not match,
  as a crash while it was appended leaves it (the file's new size on disk, not its bytes): it
  is dropped, with a warning, and the leader sends it again if it was committed (a member
  behind by an entry catches up; one refusing to start after a power loss would not).
* ``raft.journal.meta`` (the term, the vote, the commit index): JSON with its checksum,
  written to a new file, fsynced and renamed into place; a damaged one stops the member.
* Compaction writes the kept records to a new file, fsynced, and renames it into place.
* A write or sync that fails (a full disk, an I/O error) stops the member at once
  (``fail_stop``): carrying on would answer from a log that is not on disk.
* Files are opened without following a symbolic link; journals of pysyncobj's format are
  read once and rewritten in this one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from typing import Any, NoReturn

from pysyncobj.journal import Journal

from runink.core.errors import BarnError
from runink.core.fstree import replace_file

log = logging.getLogger(__name__)

MAGIC = b"RUNINK-BARN-JOURNAL\n"
FORMAT = 2
HEADER = MAGIC + struct.pack("<I", FORMAT)
RECORD = struct.Struct("<IIQQ")  # the command's length, crc32 of the rest, index, term
META_MAGIC = b"RUNINK-BARN-META\n"
#: pysyncobj's journal header (its format 1), read once and rewritten in this format
PYSYNCOBJ_NAME, PYSYNCOBJ_FIRST_RECORD, PYSYNCOBJ_LAST_OFFSET_AT = b"PYSYNCOBJ", 40, 36
EX_IOERR = 74  # sysexits: an input/output error
_OPEN = os.O_NOFOLLOW | os.O_CLOEXEC


class BarnStorageError(BarnError):
    """A file of a member's data dir is damaged or cannot be read: the member does not start."""


def fail_stop(message: str) -> NoReturn:
    """Stop the member now: its log could not be made durable, and answering from a log that
    is not on disk would lose acknowledged writes."""
    log.critical("%s: stopping this member (it starts again from what its files hold)", message)
    logging.shutdown()
    os._exit(EX_IOERR)


class BarnJournal(Journal):  # type: ignore[misc]  # (pysyncobj has no type hints)
    """pysyncobj's Journal interface over ``path`` (``path.meta`` beside it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dirty = False  # written since the last sync (a replaced tail too, not only a longer log)
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []  # where each record starts in the file
        self._meta = _read_meta(path + ".meta")
        self._meta_saved = True
        self._fd = self._open()

    # --- reading at start -------------------------------------------------------------------

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | _OPEN)
        except FileNotFoundError:
            if self._meta:  # (the log went: starting empty would lose every write it held)
                raise BarnStorageError(
                    f"{self.path}: missing, though {self.path}.meta holds this member's term and commit index: "
                    "its Raft log is lost (move this member's data dir away and add it again)"
                ) from None
            try:
                self._replace_file([])
                return os.open(self.path, os.O_RDWR | _OPEN)
            except OSError as exc:
                raise BarnStorageError(f"{self.path}: cannot create the Raft log: {_why(exc)}") from None
        except OSError as exc:
            raise BarnStorageError(f"{self.path}: {_why(exc)}") from None
        try:
            data = _read_all(fd)
            if data.startswith(PYSYNCOBJ_NAME):
                entries = _pysyncobj_records(data, self.path)
                log.warning("%s: pysyncobj's journal, %d records: rewritten with checksums", self.path, len(entries))
                self._replace_file(entries)
                fresh = os.open(self.path, os.O_RDWR | _OPEN)
                os.close(fd)
                fd = fresh
                data = _read_all(fd)
            end = self._load(data)
            if end < len(data):
                os.ftruncate(fd, end)
                os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _load(self, data: bytes) -> int:
        """Check and take the records of ``data``; where the good ones end."""
        if not data.startswith(HEADER):
            why = "not a Barn journal of this version (its header)" if data else "empty (no header)"
            raise BarnStorageError(f"{self.path}: {why}: the file is damaged")
        offset = len(HEADER)
        while offset < len(data):
            if offset + RECORD.size > len(data):
                return self._torn(offset, len(data), "was cut short")
            length, crc, index, term = RECORD.unpack_from(data, offset)
            end = offset + RECORD.size + length
            if end > len(data):
                return self._torn(offset, len(data), "was cut short")
            command = data[offset + RECORD.size : end]
            if zlib.crc32(command, zlib.crc32(data[offset + 8 : offset + RECORD.size])) != crc:
                if end == len(data):  # the last one: a crash while it was written (its size on disk, not its bytes)
                    return self._torn(offset, len(data), "does not match its checksum")
                raise self._damaged(offset, "does not match its checksum")
            if self._entries and index != self._entries[-1][1] + 1:
                raise self._damaged(offset, f"has index {index} after {self._entries[-1][1]}")
            self._entries.append((command, index, term))
            self._offsets.append(offset)
            offset = end
        return offset

    def _torn(self, offset: int, size: int, why: str) -> int:
        """The last record, torn by a crash while it was appended (or damaged: either way this
        member drops it and takes it again from the leader, as any entry it lacks)."""
        log.warning(
            "%s: its last record (at byte %d, %d bytes) %s, as a stop while it was written leaves it: "
            "dropped (the leader sends it again if it was committed)",
            self.path,
            offset,
            size - offset,
            why,
        )
        return offset

    def _damaged(self, offset: int, why: str) -> BarnStorageError:
        return BarnStorageError(
            f"{self.path}: record {len(self._entries) + 1} (at byte {offset}) {why}: the file is damaged "
            "(move this member's data dir away and add it again: the others hold the log)"
        )

    # --- pysyncobj's interface ---------------------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        record = _record(command, idx, term)
        offset = self._offsets[-1] + RECORD.size + len(self._entries[-1][0]) if self._entries else len(HEADER)
        try:
            written = os.pwrite(self._fd, record, offset)
            if written != len(record):
                raise OSError(f"wrote {written} of {len(record)} bytes")
        except OSError as exc:
            fail_stop(f"{self.path}: cannot append to the Raft log ({_why(exc)})")
        self._entries.append((command, idx, term))
        self._offsets.append(offset)
        self.dirty = True

    def clear(self) -> None:
        self._truncate(0)

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # (pysyncobj's names)
        self._truncate(entryFrom)

    def deleteEntriesTo(self, entryTo: int) -> None:
        """(log compaction) Keep the records from ``entryTo`` on: a new file, renamed into place."""
        kept = self._entries[entryTo:]
        os.close(self._fd)
        try:
            self._replace_file(kept)
            self._fd = os.open(self.path, os.O_RDWR | _OPEN)
        except (OSError, BarnStorageError) as exc:
            fail_stop(f"{self.path}: cannot rewrite the Raft log after a snapshot ({exc})")
        self._entries, self._offsets = [], []
        offset = len(HEADER)
        for entry in kept:
            self._entries.append(entry)
            self._offsets.append(offset)
            offset += RECORD.size + len(entry[0])
        self.dirty = False

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def flush(self) -> None:
        self.sync()

    def sync(self) -> None:
        """Make what was written durable (before it is acknowledged or counted)."""
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            fail_stop(f"{self.path}: cannot sync the Raft log ({_why(exc)})")
        self.dirty = False

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        self._meta["raftCommitIndex"] = raftCommitIndex
        self._meta_saved = False

    def getRaftCommitIndex(self) -> int:
        return int(self._meta.get("raftCommitIndex", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        # Raft: the term and the vote are durable before any message that reflects them
        self._meta["currentTerm"] = term
        self._meta["votedForNodeId"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:
        return int(self._meta.get("currentTerm", 0))

    def getVotedForNodeId(self) -> str | None:
        voted = self._meta.get("votedForNodeId")
        return None if voted is None else str(voted)

    def onOneSecondTimer(self) -> None:
        if not self._meta_saved:
            self._store_meta()

    # --- writing -----------------------------------------------------------------------------

    def _truncate(self, keep: int) -> None:
        end = self._offsets[keep] if keep < len(self._offsets) else None
        del self._entries[keep:]
        del self._offsets[keep:]
        if end is None and keep > 0:
            return  # (nothing past them)
        try:
            os.ftruncate(self._fd, end if end is not None else len(HEADER))
        except OSError as exc:
            fail_stop(f"{self.path}: cannot cut the Raft log ({_why(exc)})")
        self.dirty = True

    def _replace_file(self, entries: list[tuple[bytes, int, int]]) -> None:
        """``path`` holding exactly ``entries``: written to a new file, synced, renamed over it."""
        _write_replacing(self.path, HEADER + b"".join(_record(*entry) for entry in entries))

    def _store_meta(self) -> None:
        body = json.dumps(self._meta, sort_keys=True).encode()
        try:
            _write_replacing(self.path + ".meta", META_MAGIC + b"%08x\n" % zlib.crc32(body) + body)
        except OSError as exc:
            fail_stop(f"{self.path}.meta: cannot store the term and vote ({_why(exc)})")
        self._meta_saved = True


def _record(command: bytes, idx: int, term: int) -> bytes:
    numbers = struct.pack("<QQ", idx, term)
    return struct.pack("<II", len(command), zlib.crc32(command, zlib.crc32(numbers))) + numbers + command


def _read_meta(path: str) -> dict[str, Any]:
    """The term, vote and commit index (none yet: {}); BarnStorageError if the file is damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _OPEN)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BarnStorageError(f"{path}: {_why(exc)}") from None
    try:
        data = _read_all(fd)
    finally:
        os.close(fd)
    if data.startswith(META_MAGIC):
        stored, _, body = data[len(META_MAGIC) :].partition(b"\n")
        try:
            meta = json.loads(body)
            intact = int(stored, 16) == zlib.crc32(body) and isinstance(meta, dict)
        except ValueError:
            intact = False
        if intact:
            return dict(meta)
    else:  # (pysyncobj's own: a pickled dict, from before this format; our own private file)
        with contextlib.suppress(Exception):
            from pysyncobj.pickle import loads

            meta = loads(data)
            if isinstance(meta, dict) and set(meta) <= {"currentTerm", "votedForNodeId", "raftCommitIndex"}:
                return dict(meta)
    raise BarnStorageError(
        f"{path}: the member's term and vote are damaged (starting without them could vote twice in a term): "
        "move this member's data dir away and add it again"
    )


def _pysyncobj_records(data: bytes, path: str) -> list[tuple[bytes, int, int]]:
    """The records of a journal pysyncobj wrote (no checksums: each length checked)."""
    (last,) = struct.unpack_from("<I", data, PYSYNCOBJ_LAST_OFFSET_AT)
    if not PYSYNCOBJ_FIRST_RECORD <= last <= len(data):
        raise BarnStorageError(f"{path}: pysyncobj's journal ends at byte {last}, past its size: the file is damaged")
    entries, offset = [], PYSYNCOBJ_FIRST_RECORD
    while offset < last:
        (size,) = struct.unpack_from("<I", data, offset)
        end = offset + 4 + size + 4
        if size < 16 or end > last or struct.unpack_from("<I", data, end - 4)[0] != size:
            raise BarnStorageError(f"{path}: pysyncobj's record at byte {offset} is damaged")
        idx, term = struct.unpack_from("<QQ", data, offset + 4)
        entries.append((bytes(data[offset + 20 : end - 4]), idx, term))
        offset = end
    return entries


def _write_replacing(path: str, data: bytes) -> None:
    """``data`` as ``path``, whole or not at all, synced with its folder (OSError when it
    cannot be)."""
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_file(folder, os.path.basename(path), data, 0o600)
    finally:
        os.close(folder)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _why(exc: OSError) -> str:
    if exc.errno == 40:  # ELOOP
        return "a symbolic link (a member's files are opened through none)"
    return exc.strerror or str(exc)


def first_index(path: str) -> int | None:
    """The index of the first record of the journal at ``path`` (1 unless the log was
    compacted: its entries before it are in the snapshot), or None if it has none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _OPEN)
    except OSError:
        return None
    try:
        head = os.read(fd, len(HEADER) + RECORD.size)
    finally:
        os.close(fd)
    if not head.startswith(HEADER) or len(head) < len(HEADER) + RECORD.size:
        return None
    return int(RECORD.unpack_from(head, len(HEADER))[2])
