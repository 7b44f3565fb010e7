"""Ended jobs' retention: the leading server removes jobs that ended longer ago than
``[cluster] jobs_keep_for``, with their tasks and their output, oldest first. Without it every
job ever run stayed in the Barn: each server's view, every herd's cost and a herd's deletion
read them all, and the Barn's members held them in memory for good."""

from __future__ import annotations

import logging

from runink.core.control.store import ClusterStore

log = logging.getLogger(__name__)

EVERY = 60.0  # seconds between two looks
PER_ROUND = 200  # jobs removed per round of the loop, at most: a backlog goes over the next rounds


class JobRetention:
    """A chore of the leading server's control loop: ``__call__(now)``."""

    def __init__(self, store: ClusterStore, keep_for: float | None, *, every: float = EVERY) -> None:
        self.store = store
        self.keep_for = keep_for
        self.every = every
        self._looked = -1e18
        self._indexed = False  # (jobs ended before the entries existed: indexed at the first look)

    def __call__(self, now: float) -> int:
        """Remove what ended before the retention (if ``every`` went by since the last look, or
        the last one left some); returns how many jobs went."""
        if self.keep_for is None or now - self._looked < self.every:
            return 0
        self._looked = now
        if not self._indexed:
            if indexed := self.store.index_ended():
                log.info("%d job(s) that ended before this version indexed for the retention", indexed)
            self._indexed = True
        removed, more = self.store.forget_ended(now - self.keep_for, PER_ROUND)
        if more:
            self._looked = -1e18  # the next round goes on
        if removed:
            log.info("%d job(s) that ended over %gs ago removed ([cluster] jobs_keep_for)", removed, self.keep_for)
        return removed
