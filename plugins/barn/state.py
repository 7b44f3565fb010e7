"""The Barn's state machine: keys, revisions, leases and the change history, as etcd has them.

Both Barn drivers apply the same commands to a ``BarnState``: ``memory`` directly, ``raft``
after pysyncobj has committed them in the same order on every server. So ``apply`` must be
deterministic: it reads no clock (lease deadlines are computed from the ``now`` the command
carries, chosen by the leader that proposed it) and no randomness.

Semantics (etcd's):

* every change bumps one cluster-wide revision; a transaction (or a lease revoke deleting
  several keys) is one revision;
* a key records ``create_revision``, ``mod_revision`` and ``version`` (puts since created);
* ``compare_and_set`` and transactions compare ``mod_revision`` (0: the key is absent);
* the history of changes is kept for ``watch`` from a past revision, up to ``history``
  events; an older start revision raises ``CompactedError``;
* a command may carry a ``request_id``: applied once, its result is remembered (the last
  ``dedup`` of them), so a client retrying after "outcome unknown" (a leader change, a
  timeout) cannot apply it twice.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from runink.core.errors import BarnError, CompactedError, LeaseNotFoundError
from runink.core.interfaces.barn import KeyValue, WatchEvent

DEFAULT_HISTORY = 100_000
DEFAULT_DEDUP = 10_000


@dataclass
class Lease:
    id: int
    ttl: float
    expires_at: float  # in the proposer's clock (seconds since the epoch)
    keys: set[str] = field(default_factory=set)


class BarnState:
    def __init__(self, history: int = DEFAULT_HISTORY, dedup: int = DEFAULT_DEDUP) -> None:
        self.revision = 0
        self.compacted = 0  # events up to this revision are gone from the history
        self.kvs: dict[str, KeyValue] = {}
        self._sorted_keys: list[str] = []
        self.leases: dict[int, Lease] = {}
        self.next_lease = 1
        self.events: list[WatchEvent] = []  # in revision order
        self._event_revisions: list[int] = []  # the same, for bisect
        self.history = history
        self.dedup = dedup
        self.results: OrderedDict[str, Any] = OrderedDict()
        # Barn servers added or removed at runtime: name -> (raft, http), None once removed.
        # Not keys: no revision, no watch event; every server learns the others' HTTP addresses.
        self.members: dict[str, tuple[str, str] | None] = {}

    # --- commands -------------------------------------------------------------------------

    def apply(self, command: dict[str, Any]) -> Any:
        """Apply one command; returns its result (or the remembered one for a seen request_id).

        Errors that depend only on the state (an unknown lease) are results too, returned as
        ``{"error": ...}`` rather than raised, so every replica ends in the same state.
        """
        request_id = command.get("request_id")
        if request_id is not None and request_id in self.results:
            return self.results[request_id]
        op = command["op"]
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            return {"error": "bad_request", "message": f"unknown Barn command {op!r}"}
        try:
            result = handler(command)
        except LeaseNotFoundError as exc:
            result = {"error": "lease_not_found", "message": str(exc)}
        except (BarnError, ValueError, TypeError, KeyError) as exc:
            # a command the state refuses is refused alike by every replica; raising here would
            # stop the Raft thread on each of them, again at every restart (a poison entry)
            result = {"error": "bad_request", "message": str(exc)}
        if request_id is not None:
            self.results[request_id] = result
            while len(self.results) > self.dedup:
                self.results.popitem(last=False)
        return result

    def _op_put(self, c: dict[str, Any]) -> int:
        self._check_lease(c.get("lease"))
        self.revision += 1
        self._put(c["key"], c["value"], c.get("lease"))
        return self.revision

    def _op_delete(self, c: dict[str, Any]) -> bool:
        if c["key"] not in self.kvs:
            return False
        self.revision += 1
        self._delete(c["key"])
        return True

    def _op_txn(self, c: dict[str, Any]) -> tuple[bool, int]:
        held = all(self.mod_revision(key) == int(expected) for key, expected in c["compare"])
        ops = c["success"] if held else c.get("failure", [])
        for _key, value, lease in ops:
            if value is not None:
                self._check_lease(lease)
        changes = [(key, value, lease) for key, value, lease in ops if value is not None or key in self.kvs]
        if changes:
            self.revision += 1
            for key, value, lease in changes:
                if value is None:
                    self._delete(key)
                else:
                    self._put(key, value, lease)
        return held, self.revision

    def _op_grant(self, c: dict[str, Any]) -> int:
        ttl = float(c["ttl"])
        if ttl <= 0:
            raise BarnError(f"lease ttl must be positive, got {ttl}")
        lease = Lease(self.next_lease, ttl, float(c["now"]) + ttl)
        self.next_lease += 1
        self.leases[lease.id] = lease
        return lease.id

    def _op_keep_alive(self, c: dict[str, Any]) -> float:
        lease = self._lease(c["lease"])
        lease.expires_at = float(c["now"]) + lease.ttl
        return lease.expires_at

    def _op_revoke(self, c: dict[str, Any]) -> int:
        self._revoke(self._lease(c["lease"]))
        return self.revision

    def _op_expire(self, c: dict[str, Any]) -> list[int]:
        """Revoke every lease whose deadline is past ``now`` (the leader proposes this)."""
        expired = [lease for lease in self.leases.values() if lease.expires_at <= float(c["now"])]
        for lease in expired:
            self._revoke(lease)
        return [lease.id for lease in expired]

    def _op_batch(self, c: dict[str, Any]) -> list[Any]:
        """Commands of several clients proposed together as one log entry (the raft server's
        group commit): each applied in turn, with its own revision, dedup and result."""
        return [self.apply(command) for command in c["commands"]]

    def _op_member(self, c: dict[str, Any]) -> None:
        self.members[c["name"]] = None if c.get("removed") else (c["raft"], c["http"])

    def _op_noop(self, c: dict[str, Any]) -> int:
        """A read barrier: committed after every write acknowledged before it."""
        return self.revision

    # --- reads -----------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        return self.kvs.get(key)

    def mod_revision(self, key: str) -> int:
        kv = self.kvs.get(key)
        return kv.mod_revision if kv else 0

    def scan(self, prefix: str, limit: int | None = None) -> list[KeyValue]:
        start = bisect.bisect_left(self._sorted_keys, prefix)
        found: list[KeyValue] = []
        for key in self._sorted_keys[start:]:
            if not key.startswith(prefix) or (limit is not None and len(found) >= limit):
                break
            found.append(self.kvs[key])
        return found

    def events_since(self, prefix: str, from_revision: int) -> list[WatchEvent]:
        """The kept changes under ``prefix`` with revision >= ``from_revision``."""
        if from_revision <= self.compacted:
            raise CompactedError(
                f"revision {from_revision} is compacted (the Barn keeps changes after {self.compacted})"
            )
        start = bisect.bisect_left(self._event_revisions, from_revision)
        return [e for e in self.events[start:] if e.kv.key.startswith(prefix)]

    def due_leases(self, now: float) -> bool:
        return any(lease.expires_at <= now for lease in self.leases.values())

    # --- snapshots -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything, as plain data (the history is kept: watches survive a restart)."""
        return {
            "revision": self.revision,
            "compacted": self.compacted,
            "kvs": [_kv_tuple(kv) for kv in self.kvs.values()],
            "leases": [(lease.id, lease.ttl, lease.expires_at) for lease in self.leases.values()],
            "next_lease": self.next_lease,
            "events": [(e.type, _kv_tuple(e.kv), e.revision) for e in self.events],
            "results": list(self.results.items()),
            "members": dict(self.members),
        }

    @classmethod
    def restore(cls, data: dict[str, Any], history: int = DEFAULT_HISTORY, dedup: int = DEFAULT_DEDUP) -> BarnState:
        state = cls(history, dedup)
        state.revision = data["revision"]
        state.compacted = data["compacted"]
        state.kvs = {t[0]: KeyValue(*t) for t in data["kvs"]}
        state._sorted_keys = sorted(state.kvs)
        state.leases = {i: Lease(i, ttl, exp) for i, ttl, exp in data["leases"]}
        for kv in state.kvs.values():
            if kv.lease is not None and kv.lease in state.leases:
                state.leases[kv.lease].keys.add(kv.key)
        state.next_lease = data["next_lease"]
        state.events = [WatchEvent(t, KeyValue(*kv), r) for t, kv, r in data["events"]]
        state._event_revisions = [e.revision for e in state.events]
        state.results = OrderedDict((k, v) for k, v in data["results"])
        state.members = {n: None if m is None else (m[0], m[1]) for n, m in data.get("members", {}).items()}
        return state

    # --- internals -------------------------------------------------------------------------

    def _check_lease(self, lease: int | None) -> None:
        if lease is not None:
            self._lease(lease)

    def _lease(self, lease_id: int) -> Lease:
        lease = self.leases.get(int(lease_id))
        if lease is None:
            raise LeaseNotFoundError(f"lease {lease_id} not found (expired or revoked)")
        return lease

    def _put(self, key: str, value: bytes, lease: int | None) -> None:
        old = self.kvs.get(key)
        if old is None:
            bisect.insort(self._sorted_keys, key)
            kv = KeyValue(key, value, self.revision, self.revision, 1, lease)
        else:
            kv = KeyValue(key, value, old.create_revision, self.revision, old.version + 1, lease)
            if old.lease is not None and old.lease != lease and old.lease in self.leases:
                self.leases[old.lease].keys.discard(key)
        if lease is not None:
            self.leases[lease].keys.add(key)
        self.kvs[key] = kv
        self._record(WatchEvent("PUT", kv, self.revision))

    def _delete(self, key: str) -> None:
        old = self.kvs.pop(key)
        del self._sorted_keys[bisect.bisect_left(self._sorted_keys, key)]
        if old.lease is not None and old.lease in self.leases:
            self.leases[old.lease].keys.discard(key)
        tombstone = KeyValue(key, b"", old.create_revision, self.revision, 0, None)
        self._record(WatchEvent("DELETE", tombstone, self.revision))

    def _revoke(self, lease: Lease) -> None:
        del self.leases[lease.id]
        keys = sorted(k for k in lease.keys if k in self.kvs)
        if keys:
            self.revision += 1
            for key in keys:
                self._delete(key)

    def _record(self, event: WatchEvent) -> None:
        self.events.append(event)
        self._event_revisions.append(event.revision)
        if len(self.events) > self.history + self.history // 4 + 1:  # trimmed in chunks: amortized O(1)
            cut = len(self.events) - self.history
            # a revision's events go together: never keep half of a transaction
            while cut < len(self.events) and self.events[cut].revision == self.events[cut - 1].revision:
                cut += 1
            self.compacted = self.events[cut - 1].revision
            del self.events[:cut], self._event_revisions[:cut]


def raise_for(result: Any) -> Any:
    """The other half of ``apply``'s convention: a state-dependent error came back as a
    result (so every replica ends alike); the caller that proposed it raises it here."""
    if isinstance(result, dict) and "error" in result:
        if result["error"] == "lease_not_found":
            raise LeaseNotFoundError(result["message"])
        raise BarnError(result["message"])
    return result


def _kv_tuple(kv: KeyValue) -> tuple[str, bytes, int, int, int, int | None]:
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
