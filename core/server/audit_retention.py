"""The audit log's retention: the leading server removes records older than ``[cluster]
audit_keep_for``, a day at a time (records are kept by UTC day: ``/cluster/audit/DAY/...``,
changes not made, refused or failed, under ``/cluster/audit-undone/DAY/...``), and the
oldest past the ``audit_keep_max`` newest (a tenth of that for changes not made), once a
minute. Records are never changed, only removed, oldest first. The count bound is what keeps
a busy cluster's Barn from filling: every submission writes a record, and at 10 a second a
year of days is ~100 GiB."""

from __future__ import annotations

import logging

from runink.core.interfaces.barn import BarnBackend, TxnOp
from runink.core.server.auth import AUDIT, AUDIT_UNDONE, audit_day

log = logging.getLogger(__name__)

EVERY = 60.0  # seconds between two looks
BATCH = 1000  # records removed per Barn transaction
MAX_BATCHES = 5  # per round of the loop: a backlog goes over the next rounds, never holding one long


#: changes not made (refused, or failed) kept at most, against ``audit_keep_max`` made ones
#: (their own bound: a caller's refusals and failures never push a change made out)
UNDONE_SHARE = 10


class AuditRetention:
    """A chore of the leading server's control loop: ``__call__(now)``. Changes made
    (``AUDIT``) and those not made (``AUDIT_UNDONE``) are bounded apart: ``keep_max`` of the
    first, an UNDONE_SHARE-th of it of the second."""

    def __init__(self, barn: BarnBackend, keep_for: float | None, keep_max: int = 0, *, every: float = EVERY) -> None:
        self.barn = barn
        self.keep_for = keep_for
        self.keep_max = keep_max  # records kept at most, the newest (0: no bound by count)
        self.every = every
        self._looked = -1e18

    def __call__(self, now: float) -> int:
        """Remove what is past the retention (if ``every`` went by since the last look, or the
        last one left some); returns how many records went."""
        if (self.keep_for is None and not self.keep_max) or now - self._looked < self.every:
            return 0
        self._looked = now
        oldest_kept = None if self.keep_for is None else audit_day(now - self.keep_for)  # days before go
        undone_max = max(1, self.keep_max // UNDONE_SHARE) if self.keep_max else 0
        removed, left = 0, False
        for prefix, keep_max in ((AUDIT, self.keep_max), (AUDIT_UNDONE, undone_max)):
            gone, more = self._trim(prefix, keep_max, oldest_kept)
            removed, left = removed + gone, left or more
        if left:  # more may be left: the next round goes on
            self._looked = -1e18
        if removed:
            log.info(
                "audit log: %d record(s) removed: from before %s, or past the %s newest kept"
                " ([cluster] audit_keep_for, audit_keep_max)",
                removed,
                oldest_kept or "-",
                self.keep_max or "-",
            )
        return removed

    def _trim(self, prefix: str, keep_max: int, oldest_kept: str | None) -> tuple[int, bool]:
        """Remove ``prefix``'s records past the ``keep_max`` newest or from before the day
        ``oldest_kept``, MAX_BATCHES transactions at most; returns (how many went, whether more
        may be left)."""
        over = max(0, self.barn.count(prefix) - keep_max) if keep_max else 0
        removed = 0
        for _ in range(MAX_BATCHES):
            if over > removed:  # the oldest records, whatever their day
                batch = self.barn.scan(prefix, limit=min(BATCH, over - removed))
            else:
                first = self.barn.scan(prefix, limit=1)
                day = first[0].key[len(prefix) :].split("/", 1)[0] if first else None
                if day is None or oldest_kept is None or day >= oldest_kept:
                    return removed, False
                batch = self.barn.scan(f"{prefix}{day}/", limit=BATCH)
            self.barn.transaction([], [TxnOp(kv.key, None) for kv in batch])
            removed += len(batch)
        return removed, True
