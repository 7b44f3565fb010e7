"""Runs of ``runink run`` kept under the data directory: found again by ``runink jobs list``,
``status``, ``logs`` and ``cancel`` while and after they run, and pruned by age and size.

Each run keeps ``runs/<run id>/run.json`` in the data directory: its job and tasks as the
cluster's API answers them (core/control/views.py), the folder of each attempt's output (its
``stdout.log`` and ``stderr.log``), the datasets each scenario read and wrote, and the process
running it. The runner rewrites the file whenever a task changes state (a temp file renamed
over it: a reader sees the old one or the new one, never half of one) and once more at the
end, with the run folder's size. A run whose process ended before its job did (killed with
SIGKILL, the machine stopped) reads as FAILED, saying so.

Everything here reads what a slice could have touched (its attempt's folder is beside its
work dir) as untrusted: no link is followed, nothing is read unbounded or blocking, and every
field of a record is checked before it is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runink.core.fstree import remove_tree, tree_size
from runink.core.processes import process_start
from runink.core.units import NAME as HERD
from runink.core.units import format_bytes

log = logging.getLogger(__name__)

RUNS = "runs"
RECORD = "run.json"
PRUNED_STAMP = ".pruned"  # its time: when runs were last pruned after a run
PRUNING = ".pruned-"  # a run renamed aside to be removed: .pruned-<run id>-<pid>
# Ended runs as a prune found them, {run id: [started, bytes, job id]}: the next prune reads
# this instead of every record it keeps (~60 us a run: 1,400 runs took ~85 ms, every minute,
# at the end of a `runink run`), and a job id is found without reading every record. A cache:
# a run missing from it is read; an entry whose folder is gone is dropped.
INDEX = ".index.json"
MAX_INDEX = 64 * 1024 * 1024
FORMAT = 1
#: bytes of a run's record read at most (a 1,000-task pipeline's is ~1.5 MiB)
MAX_RECORD = 8 * 1024 * 1024
#: bytes of output one read returns (the CLI reads on until it has all of it)
READ_BYTES = 256 * 1024
RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
ID = re.compile(r"^[a-z0-9][a-z0-9.-]{0,199}$")
LOG_DIR = re.compile(r"^[a-z0-9-]{1,40}/attempt-[0-9]{1,9}$")  # as core/agent/scenarios.py names them
ATTEMPT = re.compile(r"^[0-9]{1,9}$")
STREAMS = ("stdout", "stderr")
FINAL = {"SUCCEEDED", "FAILED", "OOMKILLED", "DEADLINE_EXCEEDED", "CANCELLED", "SKIPPED"}
#: seconds a run's folder without a record is left alone (a run starting writes one at once)
UNRECORDED_GRACE = 3600.0
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class HistoryError(Exception):
    """A kept run cannot be read as asked (an unknown task, a stream never written)."""


def runs_dir(data_dir: Path) -> Path:
    return Path(data_dir) / RUNS


def folder_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed, not counted; any
    depth a slice made walks without recursing: core/fstree.py)."""
    return tree_size(path)


# --- writing: the runner's side ------------------------------------------------------------


class RunRecorder:
    """Keeps one run's record up to date in its folder (``work``, the run's work dir)."""

    def __init__(self, work: Path, run_id: str, pipeline: str, file: str) -> None:
        self.work = work
        self.base = {
            "format": FORMAT,
            "run": run_id,
            "pipeline": pipeline,
            "file": file,
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "started": time.time(),
        }

    def write(
        self,
        answer: dict[str, Any],
        logs: dict[str, dict[str, str]],
        datasets: list[dict[str, Any]],
        *,
        final: bool = False,
    ) -> None:
        """Replace the record: ``answer`` is the job's as ``job_answer`` gives it (explained),
        ``logs`` each task's attempts' folders (relative to the run's), ``datasets`` what each
        scenario read and wrote. ``final``: the run ended; its folder's size is recorded."""
        record = {**self.base, "answer": answer, "logs": logs, "datasets": datasets, "updated": time.time()}
        if final:
            record["ended"] = True
            record["size"] = folder_size(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        temp = self.work / f".{RECORD}.{os.getpid()}.tmp"
        data = json.dumps(record, separators=(",", ":")).encode()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            if final:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.work / RECORD)


# --- reading: the CLI's side -----------------------------------------------------------------


def _read_bounded(fd: int, limit: int) -> bytes:
    chunks = []
    left = limit + 1
    while left > 0:
        data = os.read(fd, min(left, 1024 * 1024))
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


@contextlib.contextmanager
def _opened(folder: Path, parts: tuple[str, ...], *, directory: bool = False) -> Iterator[int]:
    """An fd of ``folder/parts...``, no link followed on the way nor at the end; a file must be
    regular (opened without blocking). OSError otherwise."""
    fd = os.open(folder, _DIRECTORY)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = _DIRECTORY if (directory or not last) else _FILE
            step = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = step
        if not directory and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{folder.joinpath(*parts)}: not a regular file")
        yield fd
    finally:
        os.close(fd)


def _str(value: object, what: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise ValueError(f"{what}: not what a run's record holds")
    return value


@dataclass
class KeptRun:
    """One run's folder and its record (``record`` None: a run that left no readable record,
    e.g. one made by an older Runink or killed before it wrote one)."""

    run_id: str
    path: Path
    record: dict[str, Any] | None
    mtime: float
    problem: str | None = None  # why the record could not be read
    # (pid, its start) of a record that is JSON but failed the checks: whether it still runs
    process: tuple[int, Any] | None = None
    _alive: bool | None = field(default=None, repr=False)

    @property
    def job(self) -> dict[str, Any] | None:
        return self.record["answer"]["job"] if self.record else None

    @property
    def job_id(self) -> str | None:
        return self.job["id"] if self.job else None

    @property
    def started(self) -> float:
        return float(self.record["started"]) if self.record else self.mtime

    @property
    def alive(self) -> bool:
        """Whether the process running it is still there (the same process: its start time
        is checked, not only its pid)."""
        if self._alive is None:
            if self.record is not None:
                record = self.record
                pid, start = record.get("pid"), record.get("pid_start")
                ended = bool(record.get("ended"))
            else:  # unreadable: still running if the process it names is (never removed then)
                pid, start = self.process or (None, None)
                ended = False
            self._alive = (
                not ended and type(pid) is int and pid > 0 and start is not None and process_start(pid) == start
            )
        return bool(self._alive)

    @property
    def ended(self) -> bool:
        """Its job ended, or it never will (its process is gone)."""
        return not self.alive

    def answer(self, *, explain: bool = False) -> dict[str, Any]:
        """The job as ``GET /v1/jobs/{id}`` answers it. A run whose process is gone before its
        job ended reads as FAILED, its unfinished tasks saying why."""
        if self.record is None:
            raise HistoryError(f"run {self.run_id}: {self.problem or 'no record'}")
        answer: dict[str, Any] = json.loads(json.dumps(self.record["answer"]))  # (a copy to change)
        job = answer["job"]
        if job["state"] not in FINAL and not self.alive:
            why = f"the runink run process (pid {self.record.get('pid')}) ended before this task did"
            for task in answer["tasks"]:
                if task.get("state") not in FINAL:
                    task.update(state="FAILED", message=why, usage=None)
            job.update(state="FAILED", finished=job.get("finished") or self.record.get("updated"))
        if not explain:
            for task in answer["tasks"]:
                task.pop("explain", None)
                task.pop("pending_reason", None)
        return answer

    def size(self) -> int:
        recorded = (self.record or {}).get("size")
        return recorded if type(recorded) is int and recorded >= 0 else folder_size(self.path)

    def read_log(self, task_id: str | None, stream: str, offset: int, attempt: int | None) -> dict[str, Any]:
        """``GET /v1/jobs/{id}/logs``'s answer from the attempt's log file: at most READ_BYTES
        from ``offset``; ``more``: there is more to read now."""
        if stream not in STREAMS:
            raise HistoryError(f"stream {stream!r}: expected stdout or stderr")
        answer = self.answer()
        job = answer["job"]
        task_id = task_id or job["tasks"][0]
        task = next((t for t in answer["tasks"] if t["id"] == task_id), None)
        if task is None:
            raise HistoryError(f"task {task_id!r}: not a task of job {job['id']}")
        number = int(task["attempt"]) if attempt is None else attempt
        data, end = b"", 0
        attempts = ((self.record or {}).get("logs") or {}).get(task_id)
        relative = attempts.get(str(number)) if isinstance(attempts, dict) else None
        if number > 0 and relative is not None:
            parts = (*_str(relative, "an attempt's folder", LOG_DIR).split("/"), f"{stream}.log")
            try:
                with _opened(self.path, parts) as fd:
                    end = os.fstat(fd).st_size
                    if offset < end:
                        data = os.pread(fd, min(READ_BYTES, end - offset), offset)
            except FileNotFoundError:
                pass  # not written (yet)
            except OSError as exc:
                log.warning("run %s: cannot read %s of task %s: %s", self.run_id, stream, task_id, exc)
        start = min(offset, end)
        return {
            "job": job["id"],
            "state": job["state"],
            "task": task_id,
            "attempt": number,
            "stream": stream,
            "offset": start,
            "next_offset": start + len(data),
            "dropped": 0,
            "kept_bytes": end,
            "more": start + len(data) < end,
            "data": data,
        }


def _load(runs: Path, name: str) -> KeptRun | None:
    """The run in ``runs/name``; None when ``name`` is not a run's folder."""
    if not RUN_ID.fullmatch(name):
        return None
    path = runs / name
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return None  # a link or a file: not one Runink made
    kept = KeptRun(name, path, None, info.st_mtime)
    parsed: Any = None
    try:
        with _opened(path, (RECORD,)) as fd:
            data = _read_bounded(fd, MAX_RECORD)
        if len(data) > MAX_RECORD:
            raise ValueError(f"larger than {MAX_RECORD} bytes")
        parsed = json.loads(data)
        kept.record = _checked(parsed, name)
    except FileNotFoundError:
        kept.problem = "it left no record"
    except RecursionError:  # (nested past the interpreter's depth: not a record this module wrote)
        kept.problem = "its record cannot be read: nested too deeply"
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        kept.problem = f"its record cannot be read: {exc}"
        kept.process = _process_of(parsed)
    return kept


def _process_of(parsed: Any) -> tuple[int, Any] | None:
    """The process a record that failed its checks names, if it names one."""
    if not isinstance(parsed, dict):
        return None
    pid, start = parsed.get("pid"), parsed.get("pid_start")
    return (pid, start) if type(pid) is int and pid > 0 and isinstance(start, int | float | str) else None


def _checked(record: Any, run_id: str) -> dict[str, Any]:
    """The record if it has the shape this module writes (the fields the readers use)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("run") != run_id:
        raise ValueError("not a run record of this version")
    answer = record["answer"]
    job = answer["job"]
    _str(job["id"], "job id", ID)
    _str(job["herd"], "herd", HERD)
    _str(job["state"], "job state")
    if not isinstance(job["tasks"], list) or not job["tasks"] or not isinstance(answer["tasks"], list):
        raise ValueError("a job without tasks")
    for task in answer["tasks"]:
        _str(task["id"], "task id", ID)
        if type(task["attempt"]) is not int:
            raise ValueError("task attempt: not a number")
    logs = record.get("logs", {})
    if not isinstance(logs, dict):
        raise ValueError("logs: not what a run's record holds")
    for task_id, attempts in logs.items():
        _str(task_id, "a log's task", ID)
        if not isinstance(attempts, dict):
            raise ValueError("logs: not what a run's record holds")
        for number, folder in attempts.items():
            _str(number, "a log's attempt", ATTEMPT)
            _str(folder, "an attempt's folder", LOG_DIR)
    datasets = record.get("datasets", [])
    if not isinstance(datasets, list) or not all(_is_dataset(item) for item in datasets):
        raise ValueError("datasets: not what a run's record holds")
    for number in ("started", "updated"):
        value = record.get(number)
        if not (isinstance(value, int | float) and type(value) is not bool and math.isfinite(value)):
            raise ValueError(f"{number}: not a number")
    return record


def _is_dataset(item: Any) -> bool:
    """One scenario's entry as runner._datasets writes it (what `runink status` shows)."""
    return (
        isinstance(item, dict)
        and isinstance(item.get("scenario"), str)
        and all(
            isinstance(item.get(kind), list)
            and all(
                isinstance(uri, dict)
                and isinstance(uri.get("uri"), str)
                and (uri.get("rows") is None or type(uri.get("rows")) is int)
                for uri in item[kind]
            )
            for kind in ("read", "wrote")
        )
    )


@dataclass(frozen=True)
class Settled:
    """An ended run as the index keeps it."""

    started: float
    size: int
    job: str | None


class RunHistory:
    """The runs kept under a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.runs = runs_dir(data_dir)

    def _names(self) -> list[str]:
        try:
            return [name for name in os.listdir(self.runs) if RUN_ID.fullmatch(name)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def all(self) -> list[KeptRun]:
        """Every kept run, oldest first."""
        found = [kept for name in self._names() if (kept := _load(self.runs, name)) is not None]
        return sorted(found, key=lambda kept: (kept.started, kept.run_id))

    def find(self, ident: str) -> KeptRun | None:
        """The run with this run id or job id (None: not a run of this machine)."""
        if RUN_ID.fullmatch(ident):
            kept = _load(self.runs, ident)
            return kept if kept is not None and kept.record is not None else None
        if not ident.startswith("job-"):
            return None
        index = self._read_index()
        for name, settled in index.items():  # an ended run, by the index; its record says for sure
            if settled.job == ident and (kept := _load(self.runs, name)) is not None and kept.job_id == ident:
                return kept
        # the others first (newer, not indexed yet), then the indexed ones too: an index is a hint
        names = sorted(self._names(), key=lambda name: name in index)
        found = (kept for name in names if (kept := _load(self.runs, name)) is not None)
        return next((kept for kept in found if kept.job_id == ident), None)

    def _read_index(self) -> dict[str, Settled]:
        """The index's entries that are well formed (none if it cannot be read: it is a cache)."""
        try:
            with _opened(self.runs, (INDEX,)) as fd:
                data = _read_bounded(fd, MAX_INDEX)
            entries = json.loads(data) if len(data) <= MAX_INDEX else {}
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(entries, dict):
            return {}
        index = {}
        for name, entry in entries.items():
            if not (RUN_ID.fullmatch(name) and isinstance(entry, list) and len(entry) == 3):
                continue
            started, size, job = entry
            if (
                type(started) in (int, float)
                and math.isfinite(started)
                and type(size) is int
                and size >= 0
                and (job is None or (isinstance(job, str) and ID.fullmatch(job)))
            ):
                index[name] = Settled(float(started), size, job)
        return index

    def _write_index(self, index: dict[str, Settled]) -> None:
        data = json.dumps({name: [s.started, s.size, s.job] for name, s in index.items()}, separators=(",", ":"))
        temp = self.runs / f".{INDEX}.{os.getpid()}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data.encode())
            finally:
                os.close(fd)
            os.replace(temp, self.runs / INDEX)
        except OSError as exc:  # a cache: the next prune reads the records again
            log.debug("could not write %s: %s", self.runs / INDEX, exc)
            with contextlib.suppress(OSError):
                os.unlink(temp)

    def due(self, every: float) -> bool:
        """Whether the last automatic prune was more than ``every`` seconds ago (and note this
        one): each run after it pays no prune (with the index, ~3 ms for 1,000 kept runs)."""
        stamp = self.runs / PRUNED_STAMP
        with contextlib.suppress(FileNotFoundError):
            if 0 <= time.time() - os.lstat(stamp).st_mtime < every:
                return False
        self.runs.mkdir(parents=True, exist_ok=True)
        os.close(os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        os.utime(stamp, follow_symlinks=False)
        return True

    def prune(
        self,
        *,
        older_than: float | None,
        max_bytes: int | None,
        dry_run: bool = False,
        keep: tuple[str, ...] = (),
        now: float | None = None,
    ) -> list[tuple[KeptRun, int, str]]:
        """Remove ended runs started more than ``older_than`` seconds ago, then the oldest
        ended ones until the rest take at most ``max_bytes``. A running one and those in
        ``keep`` stay. Returns (run, bytes, why) of each removed (or, ``dry_run``, that would be)."""
        try:
            return self._prune(
                self._read_index(), older_than=older_than, max_bytes=max_bytes, dry_run=dry_run, keep=keep, now=now
            )
        except _IndexWrong:  # (an entry its run's record contradicts: decided again from the records)
            return self._prune({}, older_than=older_than, max_bytes=max_bytes, dry_run=dry_run, keep=keep, now=now)

    def _prune(
        self,
        index: dict[str, Settled],
        *,
        older_than: float | None,
        max_bytes: int | None,
        dry_run: bool,
        keep: tuple[str, ...],
        now: float | None,
    ) -> list[tuple[KeptRun, int, str]]:
        now = time.time() if now is None else now
        self._remove_leftovers()
        settled: dict[str, Settled] = {}
        runs: list[tuple[float, str, int, KeptRun | None]] = []  # (started, run id, bytes, the run if read)
        for name in self._names():
            known = index.get(name)
            if known is not None:  # ended, its size recorded: its record is read only if it goes
                settled[name] = known
                runs.append((known.started, name, known.size, None))
                continue
            kept = _load(self.runs, name)
            if kept is None:
                continue
            size = kept.size()
            if kept.record is not None and kept.ended:
                settled[name] = _settled(kept)
            runs.append((kept.started, name, size, kept))
        total = sum(size for _, _, size, _ in runs)
        chosen: list[tuple[KeptRun, int, str]] = []
        for started, name, size, read in sorted(runs):  # oldest first
            if name in keep:
                continue
            if read is not None and not read.ended:
                continue
            if read is not None and read.record is None and now - read.mtime < UNRECORDED_GRACE:
                continue  # perhaps a run starting now, its record not written yet
            if older_than is not None and now - started > older_than:
                why = f"older than {_age(older_than)}"
            elif max_bytes is not None and total > max_bytes:
                why = f"runs take more than {format_bytes(max_bytes)}"
            else:
                continue
            kept = read or _load(self.runs, name)
            if kept is None:  # (removed meanwhile)
                settled.pop(name, None)
                continue
            if read is None and (kept.record is None or not kept.ended or settled[name] != _settled(kept)):
                raise _IndexWrong(name)
            chosen.append((kept, size, why))
            total -= size
        if not dry_run:
            chosen = [item for item in chosen if self._remove(item[0])]
            for kept, _, _ in chosen:
                settled.pop(kept.run_id, None)
            if settled != index:
                self._write_index(settled)
        return chosen

    def _remove(self, kept: KeptRun) -> bool:
        """Renamed aside first (a reader sees the run whole or not at all), then removed; links
        inside are removed, never followed. False when another process removed it meanwhile."""
        aside = self.runs / f"{PRUNING}{kept.run_id}-{os.getpid()}"
        try:
            os.rename(kept.path, aside)
        except FileNotFoundError:
            return False
        _remove_tree(aside)
        return True

    def _remove_leftovers(self) -> None:
        """What a prune renamed aside and could not remove (it was killed, or a folder was
        not writable then): removed now."""
        try:
            names = [name for name in os.listdir(self.runs) if name.startswith(PRUNING)]
        except OSError:
            return
        for name in names:
            _remove_tree(self.runs / name)  # (a link or a file there goes too, never followed)


def _remove_tree(path: Path) -> None:
    """Remove ``path``: links removed, never followed; folders a slice left read-only given
    back their permissions; any depth (core/fstree.py). What cannot be removed stays, for the
    next prune."""
    with contextlib.suppress(OSError):
        remove_tree(path)


class _IndexWrong(Exception):
    """An index entry that its run's record contradicts."""


def _settled(kept: KeptRun) -> Settled:
    return Settled(kept.started, kept.size(), kept.job_id)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
