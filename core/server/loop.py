"""The control loop of a server: while its Barn member leads, watch node liveness and run
scheduler passes; while it does not, do nothing and forget what it saw of the nodes.

Forgetting matters: liveness counts a node's silence on this server's own clock from when it
last saw the node's heartbeat change. A server that leads again after a while must not count
the time it was not looking, so each leadership starts with a new Liveness and every node gets
a full timeout again.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from runink.core.control.liveness import Liveness
from runink.core.control.records import SchedulerEpoch, TaskRecord, keys
from runink.core.control.scheduler import PassResult, Scheduler
from runink.core.control.store import ClusterStore, Conflict
from runink.core.interfaces.barn import WatchEvent
from runink.core.report import printable

log = logging.getLogger(__name__)
T = TypeVar("T")

REPEAT_LOG_AFTER = 30.0  # seconds before the same failure is logged again (a round runs every interval)
#: seconds between scheduler passes while the last one left no task waiting and nothing poked
#: the loop (a change the watch missed, while it started again, is placed within this)
IDLE_PASS_EVERY = 0.25
#: liveness looks at the nodes every this much of its timeout (and at most every interval): a
#: node is found dead within 5% past its timeout, with one read of every node 2 times a second
#: at the default 10 s, not 20 (each read on a job's way: a pass waits behind it)
OBSERVE_FRACTION = 0.05
#: seconds one round may run before the loop counts as hung (``hung``; `[scheduler]
#: hung_after`): then its server stops beating its Barn member, which hands its lead, and so
#: the scheduling, to another server. A round's Barn calls give up after 10 s each, and one
#: pass placed 20,000 tasks on 1,000 nodes in 7.3-7.6 s here (bench/cluster): well past both,
#: so a busy leader keeps its lead
HUNG_AFTER = 60.0
#: seconds a submission waits for a pass under way before it is stored PENDING instead of
#: placed at once (a hung pass held every submission to its server)
PLACE_WAIT = 1.0


class ControlLoop:
    def __init__(
        self,
        store: ClusterStore,
        scheduler: Scheduler,
        liveness: Liveness,
        is_leader: Callable[[], bool],
        interval: float = 0.05,
        *,
        chores: Sequence[Callable[[float], object]] = (),
        hung_after: float = HUNG_AFTER,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"control loop interval: {interval!r} (expected seconds > 0)")
        self.store = store
        self.scheduler = scheduler
        self.liveness = liveness
        self.is_leader = is_leader
        self.interval = interval
        self.chores = chores  # (the leader's housekeeping, each given the wall clock every round)
        self.hung_after = hung_after
        self._leading = False
        # the last pass left tasks waiting (or there was none yet): a task's end may let one in
        self.waiting = True
        self._wake = threading.Event()
        # held by each pass and by a submission placed at once (``place_with``) until its commit
        # is in the view: the next one counts what the last one placed
        self._placing = threading.Lock()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"  # (for people reading the epoch)
        self.api = ""  # this server's API, written with each claim for clients (SchedulerEpoch.api)
        self._last_failure = ("", 0.0)
        self._round_began: float | None = None  # (monotonic) while a round runs
        self._hung_logged: float | None = None  # the round (its start) said hung in the log

    def step(
        self, now_wall: float, now_monotonic: float, *, observe: bool = True, schedule: bool = True
    ) -> PassResult | None:
        """One round; returns the scheduler pass's result, or None when this server does not lead
        (or ``schedule`` is false). ``now_wall`` is the clock retries' backoff is dated with;
        ``now_monotonic`` liveness's. ``observe``: look at the nodes' liveness too (``run`` looks
        every ``OBSERVE_FRACTION`` of its timeout, at most every ``interval``: a Barn read less
        on most jobs' way to their node). ``schedule``: run a scheduler pass (``run`` skips it in rounds
        nothing poked after a pass that left no task waiting: each pass reads every task)."""
        if not self.is_leader():
            if self._leading:
                log.info("no longer the leader: scheduling stops here")
            self._leading = False
            self.liveness = Liveness(self.store, self.liveness.timeout)
            return None
        if not self._leading:
            if not self._claim():
                return None
            indexed = self.store.index_live()  # (a Barn from before the index: once)
            if indexed:
                log.info("indexed %d live tasks (placed or pending)", indexed)
            log.info("leader: scheduling here (every node gets a full liveness timeout)")
            self._leading = True
        dead = self.liveness.observe(now_monotonic) if observe else []
        if dead:
            log.warning("nodes found dead (their tasks are placed again): %s", ", ".join(dead))
            schedule = True  # their tasks wait again
        if schedule:
            with self._placing:
                result = self.scheduler.run_pass(now_wall)
        else:
            result = None
        if result is not None:
            self.waiting = bool(result.pending) or not result.committed
        for chore in self.chores:
            try:
                chore(now_wall)
            except Exception as exc:  # a chore's failure is its own: scheduling goes on
                self._log_failure(exc)
        return result

    def _claim(self) -> bool:
        """Bump the scheduling epoch and fence this loop's writes with it: a server that still
        believes it leads (its leader check is cached, an election is under way) can write no
        placement or node death once this one claimed, so two cannot overfill a node together."""
        self.store.fence = None
        current = self.store.barn.get(keys.SCHEDULER)
        epoch = SchedulerEpoch() if current is None else SchedulerEpoch.model_validate_json(current.value)
        claimed = SchedulerEpoch(epoch=epoch.epoch + 1, holder=self.holder, api=self.api)
        try:
            revision = self.store.commit(
                [(keys.SCHEDULER, current.mod_revision if current else 0)], [(keys.SCHEDULER, claimed)]
            )
        except Conflict:  # another server claimed at the same moment: the next round looks again
            return False
        self.store.fence = (keys.SCHEDULER, revision)
        # this server's view of the Barn serves the passes once it has the claim, and so every
        # placement an earlier leader made (ClusterStore.view)
        self.store.view_floor = revision
        return True

    def place_with(self, tasks: list[TaskRecord], commit: Callable[[list[TaskRecord], tuple[str, int]], T]) -> T | None:
        """Place a submission's ``tasks`` (not stored yet) at once, and have ``commit`` store
        them so with the scheduling epoch this leader claimed (a compare its commit must make:
        a server that no longer leads stores nothing); returns what ``commit`` returned. None,
        having called nothing, when this server does not schedule now, tasks wait already, a
        pass has held the placing for PLACE_WAIT seconds, or one does not fit
        (``Scheduler.place_new``): store them PENDING, a pass places them. One commit on a
        job's way instead of two. Exceptions from ``commit`` propagate."""
        fence = self.store.fence
        if not self._leading or fence is None or self.waiting:
            return None
        if not self._placing.acquire(timeout=PLACE_WAIT):  # (a pass placing meanwhile could take the same room)
            return None
        try:
            began = time.perf_counter()
            result = self.scheduler.place_new(tasks, time.time())
            if result is None:
                return None
            stored = commit([result.records[t.id] for t in tasks], fence)
        finally:
            self._placing.release()
        self.scheduler.report(result, time.perf_counter() - began)
        return stored

    def poke(self) -> None:
        """Run the next round now (something changed: a submission, a report, a node), not at
        the end of the interval."""
        self._wake.set()

    def hung(self) -> bool:
        """Whether the round under way has run ``hung_after`` seconds or more (a deadlock, a
        plugin that never returns, a call stuck past its timeout). Said in the log once per
        hung round. From any thread, without blocking."""
        began = self._round_began
        if began is None or time.monotonic() - began < self.hung_after:
            return False
        if self._hung_logged != began:  # (once a round: keyed by its start, never another's)
            self._hung_logged = began
            log.error(
                "the control loop's round has run for %g s or more ([scheduler] hung_after): this server "
                "stops leading (its Barn member hands its lead over, or its etcd lease ends) and another schedules",
                self.hung_after,
            )
        return True

    def run(self, stop: threading.Event) -> None:
        """Rounds every ``interval``, or at once when poked, until ``stop`` is set; a round that
        raises is logged in one line (the same failure again only after REPEAT_LOG_AFTER
        seconds) and the next one runs."""
        observed = passed = -math.inf  # when liveness last looked, the last pass (monotonic clock)
        poked = True
        while not stop.is_set():
            self._wake.clear()  # (a poke from here on starts another round)
            now = time.monotonic()
            observe = now - observed >= max(self.interval, self.liveness.timeout * OBSERVE_FRACTION)
            schedule = poked or self.waiting or now - passed >= IDLE_PASS_EVERY
            self._round_began = now
            try:
                result = self.step(time.time(), now, observe=observe, schedule=schedule)
                if observe:
                    observed = now
                if result is not None:
                    passed = now
                elif schedule:  # not leading: once it leads, its first round places at once
                    self.waiting = True
            except Exception as exc:  # the loop must outlive any one round
                self.waiting = True
                self._log_failure(exc)
            finally:
                self._round_began = None
                if self._hung_logged == now:
                    log.warning("the control loop's round ended after %.1f s", time.monotonic() - now)
            poked = self._wake.wait(self.interval)

    def on_change(self, event: WatchEvent) -> None:
        """(a BarnFeed listener, after the LiveView: a pass it wakes finds the change there) Poke
        the loop on a change of the live tasks' index that may let a pass place something: a
        task's PENDING entry written (a submission, a retry, a reason changed), or an entry
        deleted while the last pass left tasks waiting (a task placed, ended, moved, cancelled:
        room, or a dependency settled). An entry written on a node (a placement, a start) pokes
        nothing, nor a deletion with nothing waiting: that pass would find nothing to do."""
        key = event.kv.key
        if not key.startswith(ClusterStore.LIVE):
            return
        if key.startswith(ClusterStore.PENDING) if event.type == "PUT" else self.waiting:
            self.poke()

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="control-loop", daemon=True)
        thread.start()
        return thread

    def _log_failure(self, exc: Exception) -> None:
        line = printable(f"control loop round failed: {type(exc).__name__}: {exc}", 1000)
        now = time.monotonic()
        last, at = self._last_failure
        if line != last or now - at >= REPEAT_LOG_AFTER:
            log.error("%s", line)
            self._last_failure = (line, now)
