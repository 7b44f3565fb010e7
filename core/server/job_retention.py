"""Ended jobs' retention: the leading server removes jobs that ended longer ago than
``[cluster] jobs_keep_for``, and each herd's ended jobs past its ``jobs_keep_max`` newest, with
their tasks and their output, oldest first. Without it every job ever run stayed in the Barn:
each server's view, every herd's cost and a herd's deletion read them all, and the Barn's
members held them in memory for good; with the age alone, one herd running many short jobs
could fill the Barn within the week it keeps them."""

from __future__ import annotations

import logging

from runink.core.control.store import ClusterStore

log = logging.getLogger(__name__)

EVERY = 60.0  # seconds between two looks
PER_ROUND = 200  # jobs removed per round of the loop, at most: a backlog goes over the next rounds


class JobRetention:
    """A chore of the leading server's control loop: ``__call__(now)``."""

    def __init__(self, store: ClusterStore, keep_for: float | None, keep_max: int = 0, *, every: float = EVERY) -> None:
        self.store = store
        self.keep_for = keep_for
        self.keep_max = keep_max  # ended jobs a herd keeps at most (its newest; 0: no bound)
        self.every = every
        self._looked = -1e18
        self._indexed = False  # (jobs ended before the entries existed: indexed at the first look)

    def __call__(self, now: float) -> int:
        """Remove what ended before the retention (if ``every`` went by since the last look, or
        the last one left some); returns how many jobs went."""
        if (self.keep_for is None and not self.keep_max) or now - self._looked < self.every:
            return 0
        self._looked = now
        if not self._indexed:
            if indexed := self.store.index_ended():
                log.info("%d job(s) that ended before this version indexed for the retention", indexed)
            self._indexed = True
        before = -1e18 if self.keep_for is None else now - self.keep_for
        removed, more = self.store.forget_ended(before, PER_ROUND, self.keep_max)
        if more:
            self._looked = -1e18  # the next round goes on
        if removed:
            log.info(
                "%d ended job(s) removed: ended over %s s ago, or past the %s newest a herd keeps"
                " ([cluster] jobs_keep_for, jobs_keep_max)",
                removed,
                "-" if self.keep_for is None else f"{self.keep_for:g}",
                self.keep_max or "-",
            )
        return removed
