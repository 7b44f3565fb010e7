"""The audit log's retention: the leading server removes records older than ``[cluster]
audit_keep_for``, a day at a time (records are kept by UTC day: ``/cluster/audit/DAY/...``),
once an hour. Records are never changed; only whole days past the retention go."""

from __future__ import annotations

import logging

from runink.core.interfaces.barn import BarnBackend, TxnOp
from runink.core.server.auth import AUDIT, audit_day

log = logging.getLogger(__name__)

EVERY = 3600.0  # seconds between two looks
BATCH = 1000  # records removed per Barn transaction
MAX_BATCHES = 5  # per round of the loop: a backlog goes over the next rounds, never holding one long


class AuditRetention:
    """A chore of the leading server's control loop: ``__call__(now)``."""

    def __init__(self, barn: BarnBackend, keep_for: float | None, *, every: float = EVERY) -> None:
        self.barn = barn
        self.keep_for = keep_for
        self.every = every
        self._looked = -1e18

    def __call__(self, now: float) -> int:
        """Remove what is past the retention (if an hour went by since the last look); returns
        how many records went."""
        if self.keep_for is None or now - self._looked < self.every:
            return 0
        self._looked = now
        oldest_kept = audit_day(now - self.keep_for)  # days before this one go
        removed = 0
        for _ in range(MAX_BATCHES):
            first = self.barn.scan(AUDIT, limit=1)
            day = first[0].key[len(AUDIT) :].split("/", 1)[0] if first else None
            if day is None or day >= oldest_kept:
                break
            batch = self.barn.scan(f"{AUDIT}{day}/", limit=BATCH)
            self.barn.transaction([], [TxnOp(kv.key, None) for kv in batch])
            removed += len(batch)
        else:  # more may be left: the next round goes on
            self._looked = -1e18
        if removed:
            log.info("audit log: %d record(s) from before %s removed ([cluster] audit_keep_for)", removed, oldest_kept)
        return removed
