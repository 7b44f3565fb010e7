"""What a server follows of the Barn: one watch of every key, shared.

``BarnFeed`` runs one thread following a Barn watch (of every key, on a server; started again
after an error) and hands every change to its listeners, in the order they listen:
``LiveView`` and ``RecentRecords`` first (so what the others wake finds the change there), then
the control loop (a task to place: a pass at once), ``JobWaits`` (a job's record changed: the
requests waiting for it answer) and the agent service's ``TaskChanges`` (a node's assignments
changed: its agent's long-poll looks again). One watch per server, however many listen: a
commit's changes come in one answer, whatever keys it wrote.

``LiveView`` keeps what a scheduler pass, a submission and an agent's long-poll read (the
nodes, the herds' index and the live tasks' index), so they need no Barn read: see its
docstring for why each may read it.

``RecentRecords`` keeps the newest value seen of the jobs' and tasks' records, for reads that
only start a commit comparing that record's revision (an agent's report), and for a waiter's
answer when one commit wrote a job and all its tasks: a stale value only fails the compare,
and the commit is made again from a read of the Barn.

``JobWaits`` lets ``GET /v1/jobs/{id}?wait=S&after=REV`` wait until the job's record is past
revision ``REV`` (or ``S`` seconds pass) instead of the client polling: a waiter is an asyncio
event on the API's event loop, set from the feed's thread, so a waiting request holds no
thread. At most ``max_waiters`` wait at once; past that a request answers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence

from runink.core.control.records import RecordError, SchedulerEpoch, keys
from runink.core.control.store import ClusterStore, herd_of_live
from runink.core.interfaces.barn import BarnBackend, KeyValue, TxnOp, WatchEvent
from runink.core.report import printable

log = logging.getLogger(__name__)

RETRY_AFTER = 1.0  # seconds before the watch is started again after an error
REPEAT_LOG_AFTER = 30.0  # seconds before the same failure is logged again

Listener = Callable[[WatchEvent], None]


class BarnFeed:
    """``prefix``: the keys watched (a server's feed: all of them)."""

    def __init__(self, barn: BarnBackend, stop: threading.Event, *, prefix: str = "/", name: str = "barn-feed") -> None:
        self.barn = barn
        self.stop = stop
        self.prefix = prefix
        self.name = name
        # the watch runs: every change from now on reaches the listeners (else they wait for a
        # restart, which ``on_restart`` says)
        self.following = False
        self._listeners: list[Listener] = []
        self._resets: list[Callable[[], None]] = []

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` with every change (from the feed's thread: it must be quick)."""
        self._listeners.append(listener)

    def on_restart(self, reset: Callable[[], None]) -> None:
        """Call ``reset`` each time the watch starts (again): changes made while none ran are
        not delivered, so what a listener learnt from the feed may be behind."""
        self._resets.append(reset)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._follow, name=self.name, daemon=True)
        thread.start()
        return thread

    def _follow(self) -> None:
        last_logged = 0.0
        while not self.stop.is_set():
            try:
                start = self.barn.revision() + 1
                for reset in self._resets:
                    reset()
                self.following = True  # (from ``start`` on: nothing after it is missed)
                for event in self.barn.watch(self.prefix, start):
                    for listener in self._listeners:
                        listener(event)
                    if self.stop.is_set():
                        return
            except Exception as exc:  # the Barn away for a while: listeners have their own rounds
                self.following = False
                now = time.monotonic()
                if now - last_logged > REPEAT_LOG_AFTER:
                    log.warning("watch of %s failed: %s", self.prefix, printable(str(exc), 300))
                    last_logged = now
                self.stop.wait(RETRY_AFTER)


SEEN_KEPT = 10_000  # jobs whose last revision the feed remembers (the oldest forgotten first)
# records whose newest value RecentRecords keeps, the least recently changed going first (a few
# KB each: ~10-20 MB at most; past it, reports read the Barn as before)
RECENT_KEPT = 5_000


class RecentRecords:
    """(a BarnFeed listener) The newest value the feed saw of each job and task record
    (``/herds/H/jobs/J``, ``/herds/H/tasks/T``) changed since it started, at most ``kept`` of
    them: ``get`` is ``ClusterStore.recent``. A value is never older than one the Barn held,
    but may be older than the Barn's now: use it only where a commit compares its revision."""

    def __init__(self, kept: int = RECENT_KEPT) -> None:
        self.kept = kept
        self._lock = threading.Lock()
        self._values: OrderedDict[str, KeyValue] = OrderedDict()

    def get(self, key: str) -> KeyValue | None:
        with self._lock:
            return self._values.get(key)

    def reset(self) -> None:
        """(a BarnFeed restart) Forget everything: a change made while the watch was down
        is not delivered, and a kept value would stay older than it for good."""
        with self._lock:
            self._values.clear()

    def on_change(self, event: WatchEvent) -> None:
        if keys.record_of(event.kv.key) is None:
            return
        with self._lock:
            if event.type != "PUT":
                self._values.pop(event.kv.key, None)
                return
            known = self._values.pop(event.kv.key, None)  # (re-inserted: the newest change last)
            self._values[event.kv.key] = known if known and known.mod_revision > event.kv.mod_revision else event.kv
            if len(self._values) > self.kept:
                self._values.popitem(last=False)


class LiveView:
    """(a BarnFeed listener, the first) The keys a scheduler pass, a submission and an agent's
    long-poll read, as this server's watch delivered them: the nodes, the herds' index and the
    live tasks' index (``ClusterStore.view``). Each may read it, not the Barn, because:

    - a submission only checks that a task could fit some node, and compares the herd's
      revision in its commit (the index copy is written with the herd's key: same revision);
    - an agent's long-poll is woken by its node's index entries changing (``TaskChanges``),
      after this view has them: it reads what woke it, or newer;
    - a scheduler pass must count every placement, or it could overfill a node. Only the
      leader's scheduler places, through its own store, whose commits are applied here as
      they are made (``wrote``); and a new leader reads here only once the view has its
      claim of the scheduling epoch, so every placement before it (``ClusterStore.view_floor``).
      What others write (submissions, ends) may be seen a moment late: a task then waits for
      the next pass, room is freed a pass later, and a commit still compares each task's
      revision.

    While the watch is not following, or being started again, ``scan`` answers None: read the
    Barn. Values are the Barn's bytes; the store parses them (and only the changed ones again).
    """

    PREFIXES = (keys.NODES, ClusterStore.HERD_INDEX, ClusterStore.LIVE, keys.SCHEDULER)
    # kept apart, so a scan of one (a node's assignments, the tasks waiting) looks at it only
    PARTS = (keys.NODES, ClusterStore.HERD_INDEX, ClusterStore.ASSIGNED, ClusterStore.PENDING, keys.SCHEDULER)
    CATCH_UP = 0.5  # seconds a read waits for the watch to reach its floor before reading the Barn

    def __init__(self, barn: BarnBackend, feed: BarnFeed) -> None:
        self._barn = barn
        self._feed = feed
        self._changed = threading.Condition()
        self._parts: dict[str, dict[str, KeyValue]] = {part: {} for part in self.PARTS}
        # herd -> its live entries (ASSIGNED and PENDING): its tasks not ended, counted as the
        # entries come and go (admission asks at every submission: no scan)
        self._live: Counter[str] = Counter()
        self._live_bytes: Counter[str] = Counter()  # herd -> bytes of its live entries (records)
        self._ready = False  # filled since the watch last started
        self.revision = 0  # the newest change the watch delivered (every earlier one is here)
        # own commits not yet delivered by the watch: key -> (revision, value or None: deleted),
        # applied again over a restart's scan that may predate them
        self._local: dict[str, tuple[int, KeyValue | None]] = {}
        self._local_top = 0
        self._waiting = 0
        self._epoch: tuple[int, str] = (0, "")  # (the scheduling epoch's revision, its API)
        if not all(prefix.startswith(feed.prefix) for prefix in self.PREFIXES):
            raise ValueError(f"a LiveView needs a feed of every key it keeps, not only of {feed.prefix}")
        feed.on_restart(self.reset)
        feed.listen(self.on_change)

    def reset(self) -> None:
        """(the watch starts again) Read the keys anew: changes made while no watch ran are not
        delivered. The watch starts before this read: what it replays is applied by revision."""
        with self._changed:
            self._ready = False
        at = self._barn.revision()
        found: dict[str, dict[str, KeyValue]] = {part: {} for part in self.PARTS}
        for prefix in self.PREFIXES:
            for kv in self._barn.scan(prefix):
                part = _part(self.PARTS, kv.key)
                if part is not None:
                    found[part][kv.key] = kv
        with self._changed:
            self._parts = found
            self._live = Counter(herd_of_live(key) for part in _LIVE_PARTS for key in found[part])
            self._live_bytes = Counter()
            for part in _LIVE_PARTS:
                for key, kv in found[part].items():
                    self._live_bytes[herd_of_live(key)] += len(kv.value)
            for key, (revision, value) in self._local.items():
                if revision > at:
                    self._put(key, revision, value)
            self.revision = max(self.revision, at)
            self._ready = True
            self._changed.notify_all()

    def on_change(self, event: WatchEvent) -> None:
        key = event.kv.key
        with self._changed:
            if key.startswith(self.PREFIXES):
                self._put(key, event.revision, event.kv if event.type == "PUT" else None)
            self.revision = max(self.revision, event.revision)  # (a restart's replay: already in)
            if self._local and self.revision >= self._local_top:
                self._local.clear()
            if self._waiting:
                self._changed.notify_all()

    def wrote(self, ops: Sequence[TxnOp], revision: int) -> None:
        """(a store's commit) Apply the writes committed at ``revision`` now, before the watch
        delivers them (values as the watch will: the same bytes, that revision)."""
        with self._changed:
            for op in ops:
                if op.key.startswith(self.PREFIXES):
                    kv = None if op.value is None else KeyValue(op.key, op.value, revision, revision, 0)
                    self._put(op.key, revision, kv)
                    self._local[op.key] = (revision, kv)
            self._local_top = max(self._local_top, revision)

    def _put(self, key: str, revision: int, kv: KeyValue | None) -> None:
        part = _part(self.PARTS, key)
        if part is None:  # (under LIVE, not an entry of the index)
            return
        kept = self._parts[part]
        known = kept.get(key)
        if known is not None and known.mod_revision >= revision:
            return  # (a replay, or an own commit the watch is only now delivering)
        local = self._local.get(key)
        if local is not None and local[0] > revision:
            return  # (an older change than an own commit: a deleted key must stay deleted)
        if part in _LIVE_PARTS:
            herd = herd_of_live(key)
            if (known is None) != (kv is None):
                self._live[herd] += 1 if known is None else -1
                if not self._live[herd]:
                    del self._live[herd]  # (deleted herds leave nothing)
            self._live_bytes[herd] += (0 if kv is None else len(kv.value)) - (0 if known is None else len(known.value))
            if self._live_bytes[herd] <= 0:
                del self._live_bytes[herd]
        if kv is None:
            kept.pop(key, None)
        else:
            kept[key] = kv

    def scan(self, prefix: str, floor: int = 0) -> list[KeyValue] | None:
        """The keys under ``prefix`` (one of PREFIXES or under one), in key order, once the
        view has every change up to revision ``floor``; None when it cannot say (the watch is
        not following, or did not reach ``floor`` within CATCH_UP): read the Barn then."""
        if not prefix.startswith(self.PREFIXES):
            raise ValueError(f"{prefix}: not a prefix this view keeps")
        with self._changed:
            if not self._current(floor):
                return None
            parts = [kept for part, kept in self._parts.items() if part.startswith(prefix) or prefix.startswith(part)]
            found = [kv for kept in parts for key, kv in kept.items() if key.startswith(prefix)]
        return sorted(found, key=lambda kv: kv.key)

    def any_under(self, prefix: str) -> bool | None:
        """Whether the view holds a key under ``prefix`` (a part of PARTS); None: it cannot say."""
        with self._changed:
            if not self._current(0):
                return None
            return bool(self._parts[prefix])

    def live_tasks(self, herd: str) -> int | None:
        """How many of ``herd``'s tasks have a live entry (not ended: waiting, placed, running,
        or cancelled and not yet stopped); None: the view cannot say."""
        with self._changed:
            if not self._current(0):
                return None
            return self._live[herd]

    def live_bytes(self, herd: str) -> int | None:
        """The bytes of ``herd``'s live entries (its tasks not ended, as stored); None: the
        view cannot say."""
        with self._changed:
            if not self._current(0):
                return None
            return self._live_bytes[herd]

    def get(self, key: str) -> tuple[bool, KeyValue | None]:
        """(whether the view can say, as ``scan``; the key's value, None: absent)"""
        if not key.startswith(self.PREFIXES):
            raise ValueError(f"{key}: not a key this view keeps")
        with self._changed:
            if not self._current(0):
                return False, None
            part = _part(self.PARTS, key)
            return True, None if part is None else self._parts[part].get(key)

    def scheduling_api(self) -> str:
        """The API of the server that schedules now, as its claim of the epoch names it ("":
        not known, or it names none): answers tell clients to submit there."""
        known, kv = self.get(keys.SCHEDULER)
        if not known or kv is None:
            return ""
        if self._epoch[0] != kv.mod_revision:
            try:
                api = SchedulerEpoch.model_validate_json(kv.value).api
            except RecordError:
                api = ""
            if not _API.fullmatch(api):  # (it goes into a header: an address, nothing else)
                api = ""
            self._epoch = (kv.mod_revision, api)
        return self._epoch[1]

    def _current(self, floor: int) -> bool:
        """(holding the lock) Whether the view may be read: following, and past ``floor``."""
        if not (self._ready and self._feed.following):
            return False
        if self.revision >= floor:
            return True
        self._waiting += 1
        try:
            caught_up = self._changed.wait_for(lambda: self.revision >= floor or not self._ready, self.CATCH_UP)
            return caught_up and self._ready
        finally:
            self._waiting -= 1


_API = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


_LIVE_PARTS = (ClusterStore.ASSIGNED, ClusterStore.PENDING)


def _part(parts: Sequence[str], key: str) -> str | None:
    return next((part for part in parts if key.startswith(part)), None)


class JobWaits:
    def __init__(self, max_waiters: int = 10_000) -> None:
        self.max_waiters = max_waiters
        self._lock = threading.Lock()
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._count = 0
        self._seen: dict[str, tuple[int, str]] = {}  # job -> (its record's revision the feed saw last, herd)

    def reset(self) -> None:
        """(a BarnFeed restart) Forget the revisions seen, and wake every waiting request to
        read the Barn: a change made while the feed's watch was down is not delivered."""
        with self._lock:
            self._seen.clear()
            waiters = [waiter for entries in self._waiting.values() for waiter in entries]
        for loop, woken in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(woken.set)

    def seen(self, job_id: str) -> tuple[int, str] | None:
        """The revision of the job's record the feed saw last, and its herd (None: not seen).
        The feed may lag behind the Barn, never run ahead of it: a reader that was answered
        revision R and is told R here has nothing newer to read yet."""
        with self._lock:
            return self._seen.get(job_id)

    def on_change(self, event: WatchEvent) -> None:
        """(a BarnFeed listener) Note the job's revision and wake the requests waiting for it."""
        found = keys.record_of(event.kv.key)
        if found is None or found[0] != "jobs":
            return
        _, herd, job_id = found
        with self._lock:
            self._seen.pop(job_id, None)  # (re-inserted: the dict keeps the most recent last)
            self._seen[job_id] = (event.revision, herd)
            if len(self._seen) > SEEN_KEPT:
                del self._seen[next(iter(self._seen))]
            waiters = list(self._waiting.get(job_id, ()))
        for loop, woken in waiters:
            with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits any more
                loop.call_soon_threadsafe(woken.set)

    @contextlib.asynccontextmanager
    async def waiter(self, job_id: str) -> AsyncIterator[asyncio.Event | None]:
        """An event set when the job's record changes, registered before the caller reads the
        record (so no change between its read and its wait is missed); None when too many
        wait already (the caller answers at once)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            registered = self._count < self.max_waiters
            if registered:
                self._waiting.setdefault(job_id, set()).add(entry)
                self._count += 1
        try:
            yield entry[1] if registered else None
        finally:
            if registered:
                with self._lock:
                    waiting = self._waiting.get(job_id)
                    if waiting is not None:
                        waiting.discard(entry)
                        if not waiting:
                            del self._waiting[job_id]
                    self._count -= 1
