"""What a server follows of the Barn: one watch of the herds' records, shared.

``HerdsFeed`` runs one thread following a Barn watch of ``/herds/`` (started again after an
error) and hands every change to its listeners: ``RecentRecords`` (first, so what the others
wake finds the change there), the control loop (a task that may be placed: a pass at once),
``JobWaits`` (a job's record changed: the requests waiting for it answer) and the agent
service's ``TaskChanges`` (a node's task written: its agent's long-poll looks again). One
watch per server, however many listen.

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
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from runink.core.control.records import keys
from runink.core.interfaces.barn import BarnBackend, KeyValue, WatchEvent
from runink.core.report import printable

log = logging.getLogger(__name__)

PREFIX = keys.HERDS
RETRY_AFTER = 1.0  # seconds before the watch is started again after an error
REPEAT_LOG_AFTER = 30.0  # seconds before the same failure is logged again

Listener = Callable[[WatchEvent], None]


class HerdsFeed:
    def __init__(self, barn: BarnBackend, stop: threading.Event, *, name: str = "herds-feed") -> None:
        self.barn = barn
        self.stop = stop
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
                for event in self.barn.watch(PREFIX, start):
                    for listener in self._listeners:
                        listener(event)
                    if self.stop.is_set():
                        return
            except Exception as exc:  # the Barn away for a while: listeners have their own rounds
                self.following = False
                now = time.monotonic()
                if now - last_logged > REPEAT_LOG_AFTER:
                    log.warning("watch of %s failed: %s", PREFIX, printable(str(exc), 300))
                    last_logged = now
                self.stop.wait(RETRY_AFTER)


SEEN_KEPT = 10_000  # jobs whose last revision the feed remembers (the oldest forgotten first)
# records whose newest value RecentRecords keeps, the least recently changed going first (a few
# KB each: ~10-20 MB at most; past it, reports read the Barn as before)
RECENT_KEPT = 5_000


class RecentRecords:
    """(a HerdsFeed listener) The newest value the feed saw of each job and task record
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
        """(a HerdsFeed restart) Forget everything: a change made while the watch was down
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


class JobWaits:
    def __init__(self, max_waiters: int = 10_000) -> None:
        self.max_waiters = max_waiters
        self._lock = threading.Lock()
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._count = 0
        self._seen: dict[str, tuple[int, str]] = {}  # job -> (its record's revision the feed saw last, herd)

    def reset(self) -> None:
        """(a HerdsFeed restart) Forget the revisions seen, and wake every waiting request to
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
        """(a HerdsFeed listener) Note the job's revision and wake the requests waiting for it."""
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
