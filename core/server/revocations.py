"""Tokens the cluster signed, revoked before they expire: one token (by its ``jti``) or every
token of a subject issued up to a moment (a service account's, a node's).

"Up to a moment" is told without clocks for the tokens this version mints. A subject's
revocation record's Barn revision (``mod_revision``, which only grows, whoever writes it) is
its epoch, and a token carries, in its ``rev`` claim, the epoch its server had read for each
subject it may be revoked under (its own, and ``herd:NAME`` for every herd it holds a role in)
when it was signed, read afresh then. A token is revoked under a subject when it carries an
older epoch than the subject's: signed before its server had seen the revocation, whatever the
servers' clocks say. (A record's count kept in its value went back to 1 once its lease ended,
and back with two revocations at once: a token minted in between outlived the next one.) A
token issued more than the clock leeway before the revocation's time is revoked too, whatever
it carries (a Barn made anew under the same signing keys numbers from the start again). A
token without the claim (an earlier version's) is judged by its ``iat`` against ``before``.

Revocations live in the Barn under ``/cluster/revoked/``, each on a lease that ends when it no
longer matters (a token's once the token expired; a subject's once no token issued before it
can still be valid, MAX_TTL later), so the list stays as short as the tokens are. Every server
reads the list at most once a second (a revoked token is refused by every server within a
second, by the one that revoked it at once); a server that cannot read it for STALE_AFTER
seconds refuses every token of the cluster's rather than take a revoked one.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any, NamedTuple, Protocol

from runink.core.errors import BarnError
from runink.core.interfaces.barn import BarnBackend, KeyValue

PREFIX = "/cluster/revoked/"
TOKENS = PREFIX + "tokens/"  # JTI -> {subject, expires, at, by}
SUBJECTS = PREFIX + "subjects/"  # base64url(subject) -> {subject, before, at, by}
FRESH_FOR = 1.0  # seconds a server trusts the list it read
STALE_AFTER = 10.0  # seconds without a successful read after which every cluster token is refused
MAX_SUBJECT = 256  # characters of a subject
MAX_JTI = 64
# seconds a node's certificate lives at most (pki.py issues them for 365 days): a node's
# revocation is kept that long, its certificate refused (a certificate alone lets an agent in)
NODE_CERTIFICATE_TTL = 366 * 86400


class Scans(Protocol):
    """Where the revocations are read: a Barn (a server's), or a Barn member's own copy."""

    def scan(self, prefix: str, *, limit: int | None = None, after: str | None = None) -> list[KeyValue]: ...


class RevocationsUnknown(Exception):
    """The list could not be read for STALE_AFTER seconds: no token can be taken."""


def subject_key(subject: str) -> str:
    return SUBJECTS + base64.urlsafe_b64encode(subject.encode()).decode().rstrip("=")


class Revocations:
    def __init__(self, barn: Scans, *, max_ttl: float, leeway: float, clock: Any = time.time) -> None:
        self.barn = barn
        self.max_ttl = max_ttl
        self.leeway = leeway
        self.clock = clock
        self._lock = threading.Lock()
        self._read_at = -1e18  # monotonic time of the last successful read
        self._tokens: set[str] = set()
        self._subjects: dict[str, _Subject] = {}
        self._generation = 0  # revocations made here (a read begun before one is not taken whole)

    # --- checking -------------------------------------------------------------------------

    def why_revoked(self, subject: str, jti: object, issued: object, seen: int | None = None) -> str | None:
        """Why a token of ``subject`` with ``jti`` issued at ``issued`` (its claims) is
        revoked, or None. ``seen``: the epoch of ``subject``'s revocations the token carries
        (its ``rev`` claim; 0 for none seen), None for a token without the claim (judged by
        ``issued``). RevocationsUnknown when the list is too old to tell."""
        self._refresh()
        with self._lock:
            if isinstance(jti, str) and jti in self._tokens:
                return "revoked"
            found = self._subjects.get(subject)
        if found is None:
            return None
        when = float(issued) if isinstance(issued, int | float) else None
        if seen is not None:  # (the epoch it carries; or issued surely before, by any clock)
            revoked = seen < found.epoch or (when is not None and when < found.at - self.leeway)
        else:  # (a token of an earlier version: its iat)
            revoked = when is not None and when <= found.before
        if revoked:
            at = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(found.before))
            return f"every token of {subject} issued up to {at} was revoked"
        return None

    def epochs(self, subjects: list[str]) -> dict[str, int]:
        """The epoch of each subject's last revocation (0: never revoked), read afresh: what a
        token signed now carries. RevocationsUnknown when the list cannot be read."""
        self._refresh(afresh=True)
        with self._lock:
            return {subject: found.epoch if (found := self._subjects.get(subject)) else 0 for subject in subjects}

    def revoked_up_to(self, subject: str, *, afresh: bool = False) -> float | None:
        """Until when ``subject``'s tokens (a node's certificates) are revoked, or None (with
        ``afresh``: the list read now). RevocationsUnknown when the list is too old to tell, or
        cannot be read afresh (the last list still stands for every other check)."""
        self._refresh(afresh=afresh)
        with self._lock:
            found = self._subjects.get(subject)
        return None if found is None else found.before

    def fresh(self) -> bool:
        """Whether a check now needs no read of the list (it was read under FRESH_FOR ago)."""
        return time.monotonic() - self._read_at < FRESH_FOR

    def _refresh(self, afresh: bool = False) -> None:
        """Read the list unless it was read under FRESH_FOR ago (``afresh``: read it now, and
        RevocationsUnknown if it cannot be)."""
        now = time.monotonic()
        if now - self._read_at < FRESH_FOR and not afresh:
            return
        with self._lock:
            generation = self._generation
        try:
            found = self.barn.scan(PREFIX)
        except BarnError as exc:
            if afresh or now - self._read_at > STALE_AFTER:
                raise RevocationsUnknown(f"the revoked tokens cannot be read ({exc})") from None
            return  # the last list, a few seconds old, still stands
        tokens, subjects = set(), {}
        for kv in found:
            try:
                record = json.loads(kv.value)
                if kv.key.startswith(TOKENS):
                    tokens.add(kv.key[len(TOKENS) :])
                elif kv.key.startswith(SUBJECTS):
                    at = float(record.get("at", record["before"]))
                    subjects[str(record["subject"])] = _Subject(float(record["before"]), at, kv.mod_revision)
            except (ValueError, KeyError, TypeError):
                continue  # (written by this module only: not one of its records)
        with self._lock:
            if generation != self._generation:
                # this server revoked something while the list was read (maybe before the read
                # saw it): what it holds stays, and the list is read again at the next check
                self._tokens |= tokens
                self._subjects = {**subjects, **self._subjects}
                return
            self._tokens, self._subjects, self._read_at = tokens, subjects, now

    def forget_cache(self) -> None:
        """Read the list again at the next check (this server just changed it)."""
        with self._lock:
            self._generation += 1
            self._read_at = -1e18

    # --- revoking -------------------------------------------------------------------------

    def revoke_token(self, jti: str, subject: str, expires: float | None, by: str) -> dict[str, Any]:
        """Revoke the token ``jti`` (``expires``: when it expires anyway; None: not known, kept
        MAX_TTL)."""
        now = self.clock()
        until = expires if expires is not None else now + self.max_ttl
        ttl = max(1.0, until - now + self.leeway)
        record = {"jti": jti, "subject": subject, "expires": until, "at": now, "by": by}
        self._put(TOKENS + jti, record, ttl)
        with self._lock:  # (held at once, whatever a read in flight finds)
            self._tokens.add(jti)
        return record

    def revoke_subject(self, subject: str, by: str, *, ahead: float = 0.0) -> dict[str, Any]:
        """Revoke every token of ``subject`` issued up to this second (tokens say when they were
        issued to the second: one minted in the next second stays good), or up to ``ahead``
        seconds from now (another server's clock may run that far ahead of this one's); a
        node's certificates too (``node:NAME``: kept as long as a certificate lives, not a
        token). A subject revoked again keeps its record's lease, renewed (each revocation
        granted a lease of its own before: 300 revocations, 300 leases in the Barn)."""
        now = self.clock()
        record = {"subject": subject, "before": float(int(now + ahead)), "at": now, "by": by}
        lives = max(self.max_ttl, NODE_CERTIFICATE_TTL) if subject.startswith("node:") else self.max_ttl
        revision = self._put(subject_key(subject), record, lives + self.leeway + ahead)
        with self._lock:  # (held at once: this server's next read of the list brings the same)
            known = self._subjects.get(subject)
            before = record["before"] if known is None else max(record["before"], known.before)
            self._subjects[subject] = _Subject(before, now, revision)
        return record

    def _put(self, key: str, record: dict[str, Any], ttl: float) -> int:
        """Write ``record`` under ``key``; the Barn's revision of the write."""
        if not isinstance(self.barn, BarnBackend):
            raise TypeError("revocations are written through a Barn client, not a member's copy")
        known = self.barn.get(key)
        lease = None
        if known is not None and known.lease:
            try:  # (its ttl is this key's every time: renewed, it lives as long as a new one)
                self.barn.keep_alive(known.lease)
                lease = known.lease
            except BarnError:  # (LeaseNotFoundError too: expired meanwhile)
                lease = None
        if lease is None:
            lease = self.barn.grant_lease(ttl)
        revision = self.barn.put(key, json.dumps(record).encode(), lease=lease)
        self.forget_cache()
        return revision


class _Subject(NamedTuple):
    """A subject's revocation as read: tokens issued up to ``before`` (an earlier version's,
    told by their iat) are revoked; made at ``at`` (the revoking server's clock); ``epoch``: its
    record's Barn revision."""

    before: float
    at: float
    epoch: int
