"""ClusterStore: the cluster's records in a Barn, every write checked against what was read.

Each read returns a record with the revision it was read at (``Versioned``); a write names
the revisions it read and happens only if none of those keys changed since (one Barn
transaction), else it raises ``Conflict`` and the caller reads again. So two servers, or a
server and a late agent, never overwrite each other's change unseen, and a batch (a batch of
the scheduler's placements, a job and its tasks) is all or nothing.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from runink.core.control.records import (
    Herd,
    JobRecord,
    NodeRecord,
    Record,
    RecordError,
    RunState,
    ScalingState,
    TaskRecord,
    keys,
)
from runink.core.errors import RuninkError
from runink.core.interfaces.barn import BarnBackend, KeyValue, TxnOp
from runink.core.units import check_name

R = TypeVar("R", bound=Record)
T = TypeVar("T")
MAX_CONFLICT_RETRIES = 20
READ_THREADS = 8  # reads a process's stores have in flight at once through ``later``
DELETE_BATCH = 500  # deletions per Barn transaction (a raft Barn caps one at 4,096 operations)
HERDS_OF_JOBS_KEPT = 100_000  # job id -> herd entries ClusterStore keeps
# keys per Barn request when reading all of a herd's jobs or tasks: 200 tasks of 1 MiB in one
# answer once took a member past 10 s, and the herd's cost and its deletion failed
SCAN_PAGE = 256
JOBS_READ_PER_PAGE = 20_000  # job records one page of a job list may read (a state filter skips)
# keys and values of one transaction, at most: well under every Barn's request limit (the raft
# Barn's is 16 MiB of JSON, values in base64). Past it a write is refused before it is sent: a
# pass of large placements once sent one over the limit, got a 413 on every round, and
# placed nothing for anyone again.
MAX_COMMIT_BYTES = 8 << 20


class _PageFull(Exception):
    """A page of a job list read what it may (ClusterStore.jobs_page)."""


class Conflict(RuninkError):
    """What was read changed before the write: read again and retry."""


class StaleRead(Conflict):
    """A value a write was computed from (given to compare) changed: compute it again."""


class NotFound(RuninkError):
    """No such herd, node or job (the API answers 404)."""


class Refused(RuninkError):
    """A request that cannot be done as asked (the API answers 4xx with this text)."""


class TooLarge(RuninkError):
    """A transaction past MAX_COMMIT_BYTES, refused before it was sent (the API answers 413)."""


class View(Protocol):
    """What a server's watch keeps of the keys most read (core/server/feed.py ``LiveView``)."""

    revision: int  # the newest change it has (every earlier one too)

    def scan(self, prefix: str, floor: int = 0) -> list[KeyValue] | None:
        """The keys under ``prefix`` once every change up to ``floor`` is in; None: read the Barn."""

    def get(self, key: str) -> tuple[bool, KeyValue | None]:
        """(whether the view can say; the key's value, None: absent)"""

    def wrote(self, ops: Sequence[TxnOp], revision: int) -> None:
        """Apply a commit made through a store at once."""

    def any_under(self, prefix: str) -> bool | None:
        """Whether it holds a key under ``prefix``; None: it cannot say."""

    def live_tasks(self, herd: str) -> int | None:
        """How many of ``herd``'s tasks have a live entry; None: it cannot say."""

    def live_bytes(self, herd: str) -> int | None:
        """The bytes of ``herd``'s live entries; None: it cannot say."""


@dataclass(frozen=True)
class Versioned(Generic[R]):
    record: R
    revision: int  # the key's mod_revision when read (0: not stored yet)


class ClusterStore:
    JOB_INDEX = "/cluster/jobs/"  # job id -> its herd, so a job is found by its id alone
    # herd name -> a copy of the herd's record: the herds are listed in one scan, without
    # scanning /herds/ (which holds every job and task too) nor reading each herd. Written in
    # the same transaction as the herd's key, by every write of it here (``_herd_ops``, and
    # ``commit`` for a Herd); an entry written before the copies (empty) is read from the key.
    HERD_INDEX = "/cluster/herds/"
    # The live tasks: a copy of each task record that a scheduler pass or an agent must look
    # at, so those are small scans, not scans of every task ever run. Written in the same
    # transaction as the task (``_index_ops``, from ``commit`` and ``submit``: every write of a
    # task goes through one of them), so a copy has its task key's mod_revision and a compare
    # of one holds for the other. Under one prefix: a pass reads them all in one scan.
    LIVE = "/cluster/live/"
    # node/herd/task while that node's agent must run or stop it (``assigned_to``): an agent's
    # assignments and a dead node's tasks
    ASSIGNED = LIVE + "on/"
    # herd/task while it is PENDING: what a pass may place
    PENDING = LIVE + "pending/"
    # set once every live task has its entries (``index_live``: a Barn from before the index)
    LIVE_BUILT = "/cluster/live-built"
    # where assigned tasks were indexed before (emptied by ``index_live``)
    OLD_ASSIGNED, OLD_ASSIGNED_BUILT = "/cluster/assigned/", "/cluster/assigned-built"

    def __init__(self, barn: BarnBackend) -> None:
        self.barn = barn
        # prefix -> key -> (mod_revision, record): a scan parses only what changed since the
        # last scan of that prefix (done tasks pile up; re-validating them each pass was most
        # of a pass). Records read are shared between callers: change them with model_copy.
        self._parsed: dict[str, dict[str, tuple[int, Record]]] = {}
        # (key, revision) every commit also compares: the scheduling epoch a leader claimed
        # (ControlLoop), so a server that still thinks it leads writes nothing once another took over
        self.fence: tuple[str, int] | None = None
        # job id -> its herd, from JOB_INDEX: never changes while the job exists, so a job is
        # one read (reports and the API's job reads are many); bounded by clearing it when full
        self._herd_of: dict[str, str] = {}
        # key -> the newest value of a job's or task's record a watch of this server saw, or
        # None (core/server/feed.py RecentRecords): where a read only starts a commit that
        # compares that record's revision (``recent=True``), it starts from this value, no
        # round trip; a stale one fails the compare, and the caller reads the Barn then
        self.recent: Callable[[str], KeyValue | None] | None = None
        # The nodes, the herds' index and the live tasks as this server's watch keeps them
        # (``recent=True`` reads; None: every read is the Barn's). This store's commits are
        # applied there as made; a read of it waits until it has every change up to
        # ``view_floor`` (the scheduling epoch a new leader claimed: every placement before it).
        self.view: View | None = None
        self.view_floor = 0

    # --- reading -----------------------------------------------------------------------

    def later(self, read: Callable[[], T]) -> Callable[[], T]:
        """``read``'s answer, taken by calling what this returns: on a remote Barn the read
        starts now on another thread, so its round trip overlaps the caller's next ones (a
        scheduler pass's three scans, a submission's two reads); else it reads when taken."""
        if not self.barn.remote:
            return read
        return _reads().submit(read).result

    def _get(self, key: str, model: type[R], *, recent: bool = False) -> Versioned[R] | None:
        kv = self.recent(key) if recent and self.recent is not None else None
        if kv is None:
            kv = self.barn.get(key)
        if kv is None:
            return None
        return Versioned(_parse(model, kv.value, key), kv.mod_revision)

    def _kvs(self, prefix: str, recent: bool, paged: bool = False) -> list[KeyValue]:
        """The keys under ``prefix``: from the view when ``recent`` and it can say, else the
        Barn's (``paged``: a page of SCAN_PAGE keys a request, for a herd's whole history)."""
        kvs = self.view.scan(prefix, self.view_floor) if recent and self.view is not None else None
        if kvs is None:
            kvs = self._pages(prefix) if paged else self.barn.scan(prefix)
        return kvs

    def pages(self, prefix: str, size: int = SCAN_PAGE, after: str | None = None) -> Iterator[list[KeyValue]]:
        """The keys under ``prefix`` (past the key ``after``), ``size`` of them a Barn request,
        page after page (not one snapshot: for what never changes once written, a herd's ended
        jobs, the audit log)."""
        while page := self.barn.scan(prefix, limit=size, after=after):
            yield page
            if len(page) < size:
                return
            after = page[-1].key

    def _pages(self, prefix: str) -> list[KeyValue]:
        """Every key under ``prefix``, a page at a time (``pages``)."""
        return [kv for page in self.pages(prefix) for kv in page]

    def _scan(
        self, prefix: str, model: type[R], suffix: str = "", *, recent: bool = False, paged: bool = False
    ) -> list[Versioned[R]]:
        kvs = self._kvs(prefix, recent, paged)
        before = self._parsed.get(prefix, {})
        now: dict[str, tuple[int, Record]] = {}
        found: list[Versioned[R]] = []
        for kv in kvs:
            if not kv.key.endswith(suffix):
                continue
            known = before.get(kv.key)
            if known is not None and known[0] == kv.mod_revision and type(known[1]) is model:
                record = known[1]
            else:
                record = _parse(model, kv.value, kv.key)
            now[kv.key] = (kv.mod_revision, record)
            found.append(Versioned(record, kv.mod_revision))
        # only the keys this scan saw are kept: deleted records do not pile up here
        self._parsed[prefix] = now
        return found

    def herd(self, name: str, *, recent: bool = False) -> Versioned[Herd]:
        """``recent``: from this server's view (``view``) when it has the herd, for a commit
        that compares the herd's revision (its index copy is written with it: the same one)."""
        if recent and self.view is not None:
            known, kv = self.view.get(self.HERD_INDEX + check_name(name, "herd"))
            if known and kv is not None and kv.value:
                return Versioned(_parse(Herd, kv.value, kv.key), kv.mod_revision)
        found = self._get(keys.herd(name), Herd)
        if found is None:
            raise NotFound(f"herd {name!r}: no such herd")
        return found

    def herds(self, *, recent: bool = False) -> list[Herd]:
        """``recent``: from this server's view (``view``), if it has them."""
        found: list[Herd] = []
        for kv in self._kvs(self.HERD_INDEX, recent):
            if kv.value:
                found.append(_parse(Herd, kv.value, kv.key))
            elif (herd := self._get(keys.herd(kv.key[len(self.HERD_INDEX) :]), Herd)) is not None:
                found.append(herd.record)
        return found

    def node(self, node_id: str) -> Versioned[NodeRecord]:
        found = self._get(keys.node(node_id), NodeRecord)
        if found is None:
            raise NotFound(f"node {node_id!r}: no such node")
        return found

    def nodes(self, *, recent: bool = False) -> list[Versioned[NodeRecord]]:
        """``recent``: from this server's view (``view``), if it has them."""
        return self._scan(keys.NODES, NodeRecord, recent=recent)

    def job(self, job_id: str) -> Versioned[JobRecord]:
        check_name(job_id, "job")
        herd = self._herd_of.get(job_id)
        if herd is None:
            indexed = self.barn.get(self.JOB_INDEX + job_id)
            if indexed is None:
                raise NotFound(f"job {job_id!r}: no such job")
            herd = indexed.value.decode()
            if len(self._herd_of) >= HERDS_OF_JOBS_KEPT:
                self._herd_of.clear()
            self._herd_of[job_id] = herd
        try:
            return self.job_in(herd, job_id)
        except NotFound:  # deleted with its herd
            self._herd_of.pop(job_id, None)
            raise NotFound(f"job {job_id!r}: no such job") from None

    def job_in(self, herd: str, job_id: str, *, recent: bool = False) -> Versioned[JobRecord]:
        """A job whose herd is known (a task's): no JOB_INDEX read. ``recent``: as ``task``'s."""
        found = self._get(keys.job(herd, check_name(job_id, "job")), JobRecord, recent=recent)
        if found is None:
            raise NotFound(f"job {job_id!r} of herd {herd!r}: no such job")
        return found

    def recent_job(self, herd: str, job_id: str) -> tuple[Versioned[JobRecord], list[Versioned[TaskRecord]]] | None:
        """The job and its tasks as this server's watch saw them last (``recent``: no round
        trip), when they are one commit's: every task's record written by the commit that wrote
        the job's (as a one-task job's submission and end are). Else None: read them."""
        if self.recent is None:
            return None
        found = self.recent(keys.job(herd, job_id))
        if found is None:
            return None
        job = _parse(JobRecord, found.value, found.key)
        tasks = []
        for task_id in job.tasks:
            task = self.recent(keys.task(herd, task_id))
            if task is None or task.mod_revision != found.mod_revision:
                return None
            tasks.append(Versioned(_parse(TaskRecord, task.value, task.key), task.mod_revision))
        return Versioned(job, found.mod_revision), tasks

    def jobs(self, herd: str | None = None) -> list[JobRecord]:
        herds = [herd] if herd is not None else [h.name for h in self.herds()]
        return [v.record for name in herds for v in self._scan(keys.jobs(name), JobRecord, paged=True)]

    def jobs_page(
        self, herds: Sequence[str], *, after: str | None, limit: int, state: RunState | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """At most ``limit`` jobs of ``herds`` in ``state`` (None: any), in id order (each
        herd's merged), past the job id ``after``; and the id to pass as ``after`` for the
        next page (None: no more). A page reads about JOBS_READ_PER_PAGE records from the Barn
        at most (and one scan of a few per herd, at least one job past ``after`` whatever it
        costs): where few jobs are in ``state`` the page is short, its next id given."""
        # each herd's first scan is small (a page merges them all), the next ones grow
        size = max(2, min(limit + 1, SCAN_PAGE, -(-(limit + 1) // max(1, len(herds))) + 1))
        fetched, consumed = [0], [False]

        def of(herd: str) -> Iterator[tuple[str, KeyValue]]:
            prefix = keys.jobs(herd)
            position, asked = (None if after is None else prefix + after), size
            while True:
                if fetched[0] >= JOBS_READ_PER_PAGE and consumed[0]:
                    raise _PageFull  # (this herd's next jobs are not read: the page ends here)
                page = self.barn.scan(prefix, limit=asked, after=position)
                fetched[0] += len(page)
                for kv in page:
                    yield kv.key[len(prefix) :], kv
                if len(page) < asked:
                    return
                position, asked = page[-1].key, min(asked * 4, SCAN_PAGE)

        found: list[JobRecord] = []
        last = after
        merged = heapq.merge(*(of(herd) for herd in herds), key=lambda pair: pair[0])
        try:
            for job_id, kv in merged:
                if len(found) == limit:
                    return found, found[-1].id
                last, consumed[0] = job_id, True
                job = _parse(JobRecord, kv.value, kv.key)
                if state is None or job.state is state:
                    found.append(job)
        except _PageFull:
            return found, last
        return found, None

    def task(self, herd: str, task_id: str, *, recent: bool = False) -> Versioned[TaskRecord]:
        """``recent``: the value this server's watch saw last if it has one (``self.recent``),
        for a commit that compares the task's revision: it may be stale."""
        found = self._get(keys.task(herd, task_id), TaskRecord, recent=recent)
        if found is None:
            raise NotFound(f"task {task_id!r} of herd {herd!r}: no such task")
        return found

    def tasks(self, herd: str | None = None) -> list[Versioned[TaskRecord]]:
        herds = [herd] if herd is not None else [h.name for h in self.herds()]
        return [v for name in herds for v in self._scan(keys.tasks(name), TaskRecord, paged=True)]

    def job_tasks(self, job: JobRecord) -> list[Versioned[TaskRecord]]:
        """The job's tasks, in its order. Those named ``<job id>.<n>`` (a pipeline job's) are
        one scan of that prefix, not one read each: every report of a task reads its siblings."""
        prefix = f"{job.id}."
        if len(job.tasks) < 2 or not all(t.startswith(prefix) for t in job.tasks):
            return [self.task(job.herd, task_id) for task_id in job.tasks]
        where = keys.tasks(job.herd) + prefix
        found = {kv.key[len(keys.tasks(job.herd)) :]: kv for kv in self.barn.scan(where)}
        tasks = []
        for task_id in job.tasks:
            kv = found.get(task_id)
            if kv is None:
                raise NotFound(f"task {task_id!r} of herd {job.herd!r}: no such task")
            tasks.append(Versioned(_parse(TaskRecord, kv.value, kv.key), kv.mod_revision))
        return tasks

    def scaling(self) -> Versioned[ScalingState]:
        """The autoscaler's state (revision 0: none written yet)."""
        return self._get(keys.SCALING, ScalingState) or Versioned(ScalingState(), 0)

    def live(self, *, recent: bool = False) -> list[Versioned[TaskRecord]]:
        """Every task that is PENDING or assigned to a node (``assigned_to``), from the index:
        one scan, however many tasks ended before. Each revision is its task key's.
        ``recent``: from this server's view (``view``), if it has them."""
        return self._scan(self.LIVE, TaskRecord, recent=recent)

    def assigned(self, node_id: str | None = None, *, recent: bool = False) -> list[Versioned[TaskRecord]]:
        """The tasks ``node_id``'s agent must run or stop (``assigned_to``; None: every node's),
        from the index: one scan of those entries. Each revision is its task key's (written
        together). ``recent``: from this server's view (``view``), if it has them."""
        where = "" if node_id is None else f"{check_name(node_id, 'node')}/"
        return self._scan(self.ASSIGNED + where, TaskRecord, recent=recent)

    def not_ended(self, herd: str) -> int:
        """How many of ``herd``'s tasks have not ended (waiting, placed, running, or cancelled
        and not yet stopped by their agent): its live entries. From this server's view when it
        can say (a count kept as they change, a moment behind the Barn), else the Barn's index
        (a page at a time)."""
        known = self.view.live_tasks(herd) if self.view is not None else None
        if known is not None:
            return known
        # (the waiting counted in the Barn; the placed are keyed by node first: read, a page at a time)
        pending = self.barn.count(f"{self.PENDING}{herd}/")
        return pending + sum(herd_of_live(kv.key) == herd for kv in self._pages(self.ASSIGNED))

    def not_ended_bytes(self, herd: str) -> int:
        """The stored bytes of ``herd``'s tasks not ended (their live entries: copies of their
        records). From this server's view when it can say, else the Barn (a page at a time)."""
        known = self.view.live_bytes(herd) if self.view is not None else None
        if known is not None:
            return known
        pending = sum(len(kv.value) for kv in self._pages(f"{self.PENDING}{herd}/"))
        return pending + sum(len(kv.value) for kv in self._pages(self.ASSIGNED) if herd_of_live(kv.key) == herd)

    # --- writing -----------------------------------------------------------------------

    def commit(self, read: Iterable[tuple[str, int]], writes: Sequence[tuple[str, Record | None]]) -> int:
        """Write (``None``: delete) only if every key read is still at the revision read
        (0: still absent). Returns the revision after; raises Conflict otherwise."""
        ops = []
        for key, record in writes:
            value = None if record is None else record.model_dump_json().encode()
            ops.append(TxnOp(key, value))
            if isinstance(record, TaskRecord):
                ops += _index_ops(record, value)
            elif isinstance(record, Herd):
                ops.append(TxnOp(self.HERD_INDEX + record.name, value))
            elif isinstance(record, JobRecord) and record.finished is not None:
                ops.append(TxnOp(ended_key(record), b""))
        _fits(ops)
        compare = [*read, self.fence] if self.fence is not None else list(read)
        held, revision = self.barn.transaction(compare, ops)
        if not held:
            raise Conflict("a record changed since it was read")
        if self.view is not None:
            self.view.wrote(ops, revision)
        return revision

    def index_live(self) -> int:
        """Give every live task its index entries, once: a Barn written before the index (or
        before its PENDING entries) holds tasks without them (a pass would not place them, their
        agents would not see them). Each such task is written again as it is, comparing its
        revision (``commit`` adds the entries; one changed meanwhile got them from that write);
        then the entries of the index's old place go. Returns how many tasks were indexed."""
        if self.barn.get(self.LIVE_BUILT) is not None:
            return 0
        indexed = 0
        entries = {kv.key for kv in self.barn.scan(self.LIVE)}
        for versioned in self.tasks():
            task = versioned.record
            node = assigned_to(task)
            if task.state is RunState.PENDING:
                if pending_key(task) in entries:
                    continue
            elif node is None or assigned_key(node, task) in entries:
                continue
            key = keys.task(task.herd, task.id)
            try:
                self.commit([(key, versioned.revision)], [(key, task)])
                indexed += 1
            except Conflict:
                continue
        old = [kv.key for kv in self.barn.scan(self.OLD_ASSIGNED)] + [self.OLD_ASSIGNED_BUILT]
        for start in range(0, len(old), DELETE_BATCH):
            self.barn.transaction([], [TxnOp(key, None) for key in old[start : start + DELETE_BATCH]])
        self.barn.transaction([(self.LIVE_BUILT, 0)], [TxnOp(self.LIVE_BUILT, b"1")])
        return indexed

    def _herd_ops(self, herd: Herd) -> list[TxnOp]:
        """The writes of ``herd``: its key and its HERD_INDEX entry (a copy)."""
        value = herd.model_dump_json().encode()
        return [TxnOp(keys.herd(herd.name), value), TxnOp(self.HERD_INDEX + herd.name, value)]

    def create_herd(self, herd: Herd) -> None:
        held, _ = self.barn.transaction([(keys.herd(herd.name), 0)], self._herd_ops(herd))
        if not held:
            raise Refused(f"herd {herd.name!r} exists already")

    def update(self, key: str, model: type[R], change: Callable[[R], R | None]) -> R:
        """Read, change, write back, again while another writer gets there first. ``change``
        returns the new record, or None to leave it as it is; it may raise to refuse."""
        for _ in range(MAX_CONFLICT_RETRIES):
            current = self._get(key, model)
            if current is None:
                raise NotFound(f"{keys.named(key)}: not found")
            changed = change(current.record)
            if changed is None:
                return current.record
            try:
                self.commit([(key, current.revision)], [(key, changed)])
                return changed
            except Conflict:
                continue
        raise Conflict(f"{key}: changed by others {MAX_CONFLICT_RETRIES} times in a row")

    def submit(
        self,
        job: JobRecord,
        tasks: Sequence[TaskRecord],
        herd: Versioned[Herd] | None = None,
        also: Sequence[TxnOp] = (),
        compare: Sequence[tuple[str, int]] = (),
        *,
        recheck: Callable[[Herd], None] | None = None,
    ) -> int:
        """Store a job and its tasks at once (all or none); returns the revision. The herd's
        key is compared too (``herd``: as the caller read it, else read here): a herd deleted
        (or being deleted: marking it changes the key) meanwhile refuses the job rather than
        holding one nobody lists. (Its HERD_INDEX entry is created and deleted with the key.)
        ``also``: more writes made in the same transaction (the API's audit record of it, the
        herd's rate bucket), computed from the values at the revisions in ``compare``: one of
        them changed raises StaleRead at once (compute them again). ``recheck``: called with the
        herd each time it is read again here (it raises to refuse the job on what it is now)."""
        writes: list[tuple[str, Record | None]] = [(keys.job(job.herd, job.id), job)]
        writes += [(keys.task(t.herd, t.id), t) for t in tasks]
        ops = [TxnOp(self.JOB_INDEX + job.id, job.herd.encode())]
        ops += [TxnOp(key, None if r is None else r.model_dump_json().encode()) for key, r in writes]
        ops += [entry for task, op in zip(tasks, ops[2:], strict=True) for entry in _index_ops(task, op.value)]
        ops += also
        _fits(ops)
        absent = [*((key, 0) for key, _ in writes), (self.JOB_INDEX + job.id, 0)]
        for attempt in range(MAX_CONFLICT_RETRIES):
            if attempt or herd is None:
                herd = self._get(keys.herd(job.herd), Herd)
            if herd is None:
                raise NotFound(f"herd {job.herd!r}: no such herd")
            if herd.record.deleting:
                raise Refused(f"herd {job.herd!r}: being deleted")
            if attempt and recheck is not None:
                recheck(herd.record)
            held, revision = self.barn.transaction([(keys.herd(job.herd), herd.revision), *absent, *compare], ops)
            if held:
                if self.view is not None:
                    self.view.wrote(ops, revision)
                return revision
            if any(self.barn.get(key) is not None for key, _ in absent):
                raise Refused(f"job {job.id}: exists already")
            if any(_mod_revision(self.barn.get(key)) != read for key, read in compare):
                raise StaleRead(f"herd {job.herd}: what the job was admitted on changed meanwhile")
            # the herd changed (its quota, or a delete began): read it again
        raise Conflict(f"herd {job.herd}: changed by others {MAX_CONFLICT_RETRIES} times in a row")

    def forget_ended(self, before: float, limit: int, keep: int = 0) -> tuple[int, bool]:
        """Remove up to ``limit`` jobs that ended before ``before`` (seconds since the epoch),
        and, with ``keep``, each herd's ended jobs past its ``keep`` newest; each herd's oldest
        first (its ``ended_key`` entries), with their tasks and their tasks' logs. A job goes
        last, in a transaction comparing its record: a look cut short leaves it (and its entry)
        for the next, never tasks without a job. A job with a task its agent must still stop
        (``assigned_to``) is left for a later look. Returns (jobs removed, whether the look
        stopped at ``limit`` with more maybe left)."""
        removed = 0
        for herd in sorted(h.name for h in self.herds()):
            prefix = f"{keys.HERDS}{herd}/ended/"
            budget = limit - removed
            if budget <= 0:  # (a limit of 0 is no limit to some Barns)
                return removed, True
            entries = self.barn.scan(prefix, limit=budget)
            past_count = max(0, self.barn.count(prefix) - keep) if keep and entries else 0
            for index, entry in enumerate(entries):
                when, _, job_id = entry.key[len(prefix) :].partition("/")
                if not when.isdigit() or not job_id or "/" in job_id:  # (not ours: never read again)
                    self.barn.transaction([], [TxnOp(entry.key, None)])
                    continue
                if int(when) >= before and index >= past_count:
                    break
                removed += self._forget_job(entry.key, herd, job_id)
            else:
                if len(entries) == budget:
                    return removed, True
        return removed, False

    def index_ended(self) -> int:
        """Give every ended job its ``ended_key`` entry if it has none (jobs that ended before
        the entries were written: the retention would never see them). A page at a time;
        returns how many entries were written."""
        written = 0
        for herd in sorted(h.name for h in self.herds()):
            have = {kv.key for kv in self._pages(f"{keys.HERDS}{herd}/ended/")}
            jobs = (_parse(JobRecord, kv.value, kv.key) for kv in self._pages(keys.jobs(herd)))  # (none kept)
            ops = [
                TxnOp(ended_key(job), b"") for job in jobs if job.finished is not None and ended_key(job) not in have
            ]
            for start in range(0, len(ops), DELETE_BATCH):
                self.barn.transaction([], ops[start : start + DELETE_BATCH])
            written += len(ops)
        return written

    def _forget_job(self, entry: str, herd: str, job_id: str) -> int:
        key = keys.job(herd, job_id)
        current = self._get(key, JobRecord)
        if current is None or current.record.finished is None or ended_key(current.record) != entry:
            self.barn.transaction([], [TxnOp(entry, None)])  # gone, or ended again since: its own entry says when
            return 0
        doomed: list[str] = []
        for task_id in current.record.tasks:
            task = self._get(keys.task(herd, task_id), TaskRecord)
            if task is not None and assigned_to(task.record) is not None:
                return 0  # (cancelled while running: kept until its agent says it stopped)
            doomed.append(keys.task(herd, task_id))
            doomed += [kv.key for kv in self.barn.scan(f"/herds/{herd}/logs/{task_id}/")]
        for start in range(0, len(doomed), DELETE_BATCH):
            self.barn.transaction([], [TxnOp(k, None) for k in doomed[start : start + DELETE_BATCH]])
        last = [TxnOp(key, None), TxnOp(self.JOB_INDEX + job_id, None), TxnOp(entry, None)]
        held, _ = self.barn.transaction([(key, current.revision)], last)
        self._herd_of.pop(job_id, None)
        return 1 if held else 0

    def delete_herd(self, name: str, marked_hook: Callable[[], None] | None = None) -> None:
        """Delete a herd with its jobs, tasks and logs. Refused while any of its jobs has not
        ended. The herd is first marked ``deleting`` (so submissions are refused, and one racing
        the mark fails its compare of the herd's key), then its records go in transactions of at
        most DELETE_BATCH operations, each comparing the herd's key (a second delete that
        finished first stops this one), and last the herd's key and index entry. A delete cut
        short (a crash, a conflict) leaves the herd marked; deleting it again finishes.
        ``marked_hook``: called once the herd is marked and none of its jobs is live (what the
        deletion takes with it outside the store: the herd's tokens)."""
        herd_key, index_key = keys.herd(name), self.HERD_INDEX + name
        for _ in range(MAX_CONFLICT_RETRIES):
            herd = self.herd(name)
            self._check_ended(name)
            if herd.record.deleting:
                marked = herd.revision
                break
            held, marked = self.barn.transaction(
                [(herd_key, herd.revision)], self._herd_ops(herd.record.model_copy(update={"deleting": True}))
            )
            if held:
                break
        else:
            raise Conflict(f"herd {name}: changed by others {MAX_CONFLICT_RETRIES} times in a row")
        try:
            # no job is submitted past the mark: what is read now is all there is
            self._check_ended(name)
        except Refused:
            self.barn.transaction(
                [(herd_key, marked)], self._herd_ops(herd.record.model_copy(update={"deleting": False}))
            )
            raise
        if marked_hook is not None:
            marked_hook()
        # the job index first: a delete cut short after it still finds the jobs to finish with
        doomed = [self.JOB_INDEX + kv.key.rsplit("/", 1)[-1] for kv in self._pages(keys.jobs(name))]
        doomed += [kv.key for kv in self._pages(f"{keys.HERDS}{name}/") if kv.key != herd_key]
        # (a cancelled task whose node never said it stopped keeps its entry: ended, yet indexed)
        doomed += [kv.key for kv in self.barn.scan(self.ASSIGNED) if herd_of_live(kv.key) == name]
        doomed += [kv.key for kv in self.barn.scan(f"{self.PENDING}{name}/")]
        for start in range(0, len(doomed), DELETE_BATCH):
            batch = [TxnOp(key, None) for key in doomed[start : start + DELETE_BATCH]]
            held, _ = self.barn.transaction([(herd_key, marked)], batch)
            if not held:
                raise Conflict(f"herd {name}: changed while being deleted")
        index = self.barn.get(index_key)
        held, _ = self.barn.transaction(
            [(herd_key, marked), (index_key, index.mod_revision if index else 0)],
            [TxnOp(herd_key, None), TxnOp(index_key, None)],
        )
        if not held:
            raise Conflict(f"herd {name}: changed while being deleted")

    def _check_ended(self, name: str) -> None:
        for versioned in self._scan(keys.jobs(name), JobRecord, paged=True):
            job = versioned.record
            if not job.state.final:
                raise Refused(f"herd {name!r}: job {job.id} has not ended ({job.state}); cancel it first")


@functools.cache
def _reads() -> ThreadPoolExecutor:
    """The threads ``ClusterStore.later`` reads on (one process's stores share them)."""
    return ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="barn-read")


def assigned_to(task: TaskRecord) -> str | None:
    """The node whose agent must run or stop ``task`` now: its node while it is SCHEDULED or
    RUNNING there, and after it was cancelled there while running, until the agent says that
    attempt ended (the report takes its node away); else None."""
    if task.node is None:
        return None
    if task.state in (RunState.SCHEDULED, RunState.RUNNING):
        return task.node
    if (
        task.state is RunState.CANCELLED
        and len(task.transitions) >= 2
        and task.transitions[-2].state in (RunState.SCHEDULED, RunState.RUNNING)
    ):
        return task.node
    return None


def entry_node(task: TaskRecord) -> str | None:
    """The node whose ASSIGNED entry a write of ``task`` puts (``assigned_to``) or deletes
    (the last node it was on; see ``_index_ops``): the one node whose assignments the write
    may change. None: on no node yet."""
    node = assigned_to(task)
    if node is not None:
        return node
    return task.node or next((t.node for t in reversed(task.transitions) if t.node is not None), None)


def assigned_key(node_id: str, task: TaskRecord) -> str:
    return f"{ClusterStore.ASSIGNED}{node_id}/{task.herd}/{task.id}"


def pending_key(task: TaskRecord) -> str:
    return f"{ClusterStore.PENDING}{task.herd}/{task.id}"


def herd_of_live(key: str) -> str:
    """The herd of a live entry's key: ``ASSIGNED``node/herd/task or ``PENDING``herd/task."""
    if key.startswith(ClusterStore.ASSIGNED):
        return key[len(ClusterStore.ASSIGNED) :].split("/")[1]
    return key[len(ClusterStore.PENDING) :].split("/", maxsplit=1)[0]


def ended_key(job: JobRecord) -> str:
    """``/herds/HERD/ended/<when it ended: 11 digits of seconds>/<job id>``, written with the
    job's final record: a herd's oldest ended jobs first in one scan, for the retention
    (``forget_ended``); under the herd's prefix, so a herd's deletion takes them too."""
    assert job.finished is not None
    when = min(max(int(job.finished), 0), 10**11 - 1)
    return f"{keys.HERDS}{job.herd}/ended/{when:011d}/{job.id}"


def _fits(ops: list[TxnOp]) -> None:
    size = sum(len(op.key) + len(op.value or b"") for op in ops)
    if size > MAX_COMMIT_BYTES:
        raise TooLarge(f"{len(ops)} writes of {size:,} bytes in all: at most {MAX_COMMIT_BYTES:,} in one transaction")


def _index_ops(task: TaskRecord, value: bytes | None) -> list[TxnOp]:
    """What keeps ``task``'s live entries right as it is written (``value``: its record).

    ASSIGNED: its copy under the node it is assigned to, else no entry under the last node it
    was on. A task is assigned only by the scheduler, from PENDING (on no node), and leaves its
    node by a write that records the move in a transition naming that node (or keeps the node
    set): so the last node named is the only one that can hold an entry.

    PENDING: its copy while it is PENDING, else no entry. (Every other write deletes it: the
    record cannot say whether it was PENDING before this write, which may make several
    transitions at once; the Barn drops the delete of a key that is not there.)"""
    ops: list[TxnOp] = []
    node = entry_node(task)
    if node is not None:
        ops.append(TxnOp(assigned_key(node, task), value if assigned_to(task) is not None else None))
    if task.state is RunState.PENDING:
        ops.append(TxnOp(pending_key(task), value))
    else:
        ops.append(TxnOp(pending_key(task), None))
    return ops


def _parse(model: type[R], value: bytes, key: str) -> R:
    try:
        return model.model_validate_json(value)
    except RecordError as exc:  # written by a newer version, or by hand: say where
        raise RuninkError(f"Barn key {key}: {exc}") from None


def _mod_revision(found: KeyValue | None) -> int:
    return 0 if found is None else found.mod_revision
