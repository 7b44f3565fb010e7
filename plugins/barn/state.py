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
  events and ``history_bytes`` of their keys and values (a key overwritten with 1 MiB values
  300 times once held ~1 GiB on every member); an older start revision raises
  ``CompactedError``;
* a command may carry a ``request_id``: applied once, its result is remembered (the last
  ``dedup`` of them), so a client retrying after "outcome unknown" (a leader change, a
  timeout) cannot apply it twice.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from runink.core.errors import BarnError, CompactedError, LeaseNotFoundError
from runink.core.interfaces.barn import KeyValue, WatchEvent, check_key, check_value, short_repr

DEFAULT_HISTORY = 100_000
DEFAULT_HISTORY_BYTES = 256 << 20
DEFAULT_QUOTA_BYTES = 2 << 30  # live keys and values a raft member's leader lets writes reach (etcd's default)
DEFAULT_DEDUP = 10_000
MAX_ID = 2**63 - 1  # lease ids and revisions: what etcd's int64 holds
MAX_TTL = 10 * 365 * 86400.0  # seconds: ten years; deadlines stay finite
MAX_REQUEST_ID = 128  # characters
MAX_TXN_OPS = 4096  # compares, and operations per side (a 1,000-task pipeline writes ~2,000 with its index)

log = logging.getLogger("runink.barn")


@dataclass
class Lease:
    id: int
    ttl: float
    expires_at: float  # in the proposer's clock (seconds since the epoch)
    keys: set[str] = field(default_factory=set)


class BarnState:
    def __init__(
        self, history: int = DEFAULT_HISTORY, dedup: int = DEFAULT_DEDUP, history_bytes: int = DEFAULT_HISTORY_BYTES
    ) -> None:
        self.revision = 0
        self.compacted = 0  # events up to this revision are gone from the history
        self.kvs: dict[str, KeyValue] = {}
        self._sorted_keys: list[str] = []
        self.leases: dict[int, Lease] = {}
        self.next_lease = 1
        self.events: list[WatchEvent] = []  # in revision order
        self._event_revisions: list[int] = []  # the same, for bisect
        self.history = history
        self.history_bytes = history_bytes
        self._event_bytes = 0  # keys and values in ``events``
        self.live_bytes = 0  # keys and values of ``kvs`` (a member's quota is checked against it)
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
        # Total: whatever the command holds, the answer is a result. An exception escaping here
        # would stop the Raft thread of every replica, and again at every restart (the entry
        # stays in the log), so a command the state refuses is refused alike by every replica.
        try:
            request_id = command.get("request_id") if isinstance(command, dict) else None
            if request_id is not None:
                if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
                    message = (
                        f"a request_id is a string of 1 to {MAX_REQUEST_ID} characters, got {short_repr(request_id)}"
                    )
                    log.warning("Barn command %s refused: %s", _describe(command), message)
                    return {"error": "bad_request", "message": message}
                if request_id in self.results:
                    return self.results[request_id]
            result = self._apply(command)
            if request_id is not None:
                self.results[request_id] = result
                while len(self.results) > self.dedup:
                    self.results.popitem(last=False)
            return result
        except Exception as exc:  # a bug must not wedge the group either
            log.error("Barn command %s failed: %s: %s", _describe(command), type(exc).__name__, exc, exc_info=True)
            return {"error": "internal", "message": f"the Barn could not apply the command: {type(exc).__name__}"}

    def _apply(self, command: Any) -> Any:
        try:
            handler = self._handler(command)
            check_command(command)  # before any change: a refused command changes nothing
            return handler(command)
        except LeaseNotFoundError as exc:
            return {"error": "lease_not_found", "message": str(exc)}
        except BarnError as exc:
            # the servers validate requests before proposing them: a refusal here is a command
            # that bypassed them (an older journal, another client of the Raft port)
            log.warning("Barn command %s refused: %s", _describe(command), exc)
            return {"error": "bad_request", "message": str(exc)}

    def _handler(self, command: Any) -> Any:
        op = command.get("op") if isinstance(command, dict) else None
        handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            raise BarnError(f"unknown Barn command {short_repr(op)}")
        return handler

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
        held = all(self.mod_revision(key) == expected for key, expected in c["compare"])
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

    def scan(self, prefix: str, limit: int | None = None, after: str | None = None) -> list[KeyValue]:
        start = bisect.bisect_left(self._sorted_keys, prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(self._sorted_keys, after))
        found: list[KeyValue] = []
        for key in self._sorted_keys[start:]:
            if not key.startswith(prefix) or (limit is not None and len(found) >= limit):
                break
            found.append(self.kvs[key])
        return found

    def count(self, prefix: str) -> int:
        """How many keys start with ``prefix`` (two bisections of the sorted keys)."""
        start = bisect.bisect_left(self._sorted_keys, prefix)
        past = _past(prefix)
        end = len(self._sorted_keys) if past is None else bisect.bisect_left(self._sorted_keys, past, start)
        return end - start

    def scan_page(
        self, prefix: str, limit: int | None, after: str | None, max_keys: int, max_bytes: int
    ) -> tuple[list[KeyValue], bool]:
        """As ``scan``, at most ``max_keys`` keys and, past the first, ``max_bytes`` of keys and
        values: (the keys, whether these bounds left out more of those asked for)."""
        start = bisect.bisect_left(self._sorted_keys, prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(self._sorted_keys, after))
        found: list[KeyValue] = []
        size = 0
        for key in self._sorted_keys[start:]:
            if not key.startswith(prefix) or (limit is not None and len(found) >= limit):
                return found, False
            kv = self.kvs[key]
            size += len(key) + len(kv.value)
            if len(found) >= max_keys or (found and size > max_bytes):
                return found, True
            found.append(kv)
        return found, False

    def events_since(self, prefix: str, from_revision: int) -> list[WatchEvent]:
        """The kept changes under ``prefix`` with revision >= ``from_revision``."""
        if from_revision <= self.compacted:
            raise CompactedError(
                f"revision {from_revision} is compacted (the Barn keeps changes after {self.compacted})"
            )
        start = bisect.bisect_left(self._event_revisions, from_revision)
        return [e for e in self.events[start:] if e.kv.key.startswith(prefix)]

    def events_page(
        self, prefix: str, from_revision: int, max_events: int, max_bytes: int
    ) -> tuple[list[WatchEvent], bool]:
        """``events_since``, at most ``max_events`` events or ``max_bytes`` of keys and values
        (more only to end a revision: a revision's events go together); and whether that is
        all of them (else the next page starts after the last event's revision)."""
        if from_revision <= self.compacted:
            raise CompactedError(
                f"revision {from_revision} is compacted (the Barn keeps changes after {self.compacted})"
            )
        found: list[WatchEvent] = []
        size = 0
        for index in range(bisect.bisect_left(self._event_revisions, from_revision), len(self.events)):
            event = self.events[index]
            if found and (len(found) >= max_events or size >= max_bytes) and event.revision != found[-1].revision:
                return found, False
            if event.kv.key.startswith(prefix):
                found.append(event)
                size += len(event.kv.key) + len(event.kv.value)
        return found, True

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
    def restore(
        cls,
        data: dict[str, Any],
        history: int = DEFAULT_HISTORY,
        dedup: int = DEFAULT_DEDUP,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> BarnState:
        state = cls(history, dedup, history_bytes)
        state.revision = data["revision"]
        state.compacted = data["compacted"]
        state.kvs = {t[0]: KeyValue(*t) for t in data["kvs"]}
        state._sorted_keys = sorted(state.kvs)
        state.live_bytes = sum(len(kv.key) + len(kv.value) for kv in state.kvs.values())
        state.leases = {i: Lease(i, ttl, exp) for i, ttl, exp in data["leases"]}
        for kv in state.kvs.values():
            if kv.lease is not None and kv.lease in state.leases:
                state.leases[kv.lease].keys.add(kv.key)
        state.next_lease = data["next_lease"]
        state.events = [WatchEvent(t, KeyValue(*kv), r) for t, kv, r in data["events"]]
        state._event_revisions = [e.revision for e in state.events]
        state._event_bytes = sum(_size(e) for e in state.events)
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
        self.live_bytes += len(key) + len(value) - (0 if old is None else len(old.key) + len(old.value))
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
        self.live_bytes -= len(old.key) + len(old.value)
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
        self._event_bytes += _size(event)
        # trimmed in chunks (amortized O(1)), to the bounds: the oldest first
        if len(self.events) > self.history + self.history // 4 + 1:
            self._trim(len(self.events) - self.history)
        elif self._event_bytes > self.history_bytes + self.history_bytes // 4:
            cut, over = 0, self._event_bytes - self.history_bytes
            while cut < len(self.events) - 1 and over > 0:
                over -= _size(self.events[cut])
                cut += 1
            self._trim(cut)

    def _trim(self, cut: int) -> None:
        # a revision's events go together: never keep half of a transaction
        while cut < len(self.events) and self.events[cut].revision == self.events[cut - 1].revision:
            cut += 1
        self.compacted = self.events[cut - 1].revision
        self._event_bytes -= sum(_size(e) for e in self.events[:cut])
        del self.events[:cut], self._event_revisions[:cut]


def _past(prefix: str) -> str | None:
    """The first string after every one that starts with ``prefix`` (None: there is none)."""
    stripped = prefix.rstrip(chr(0x10FFFF))
    if not stripped:
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)


def _size(event: WatchEvent) -> int:
    return len(event.kv.key) + len(event.kv.value)


def check_command(c: dict[str, Any]) -> None:
    """Every field of a command, before it changes anything (BarnError naming the field).

    The servers validate each request against their schema before proposing it; this checks
    again, so that a command that reached the log some other way (an older version's journal,
    a client of the Raft port) is refused whole instead of half applied or raising."""
    op = c["op"]
    if op in ("put", "delete"):
        key = check_key(c.get("key"))
        if op == "put":
            check_value(key, c.get("value"))
            _optional_id(c.get("lease"), "lease")
    elif op == "txn":
        compare = _sequence(c.get("compare"), "compare")
        for item in compare:
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise BarnError(f"a txn compare is [key, mod_revision], got {short_repr(item)}")
            check_key(item[0])
            _integer(item[1], "compare mod_revision", 0)
        for side in ("success", "failure"):
            seen: set[str] = set()
            for item in _sequence(c.get(side, []), side):
                if not isinstance(item, list | tuple) or len(item) != 3:
                    raise BarnError(f"a txn operation is [key, value or null, lease], got {short_repr(item)}")
                key = check_key(item[0])
                if key in seen:
                    raise BarnError(f"key {short_repr(key)} appears twice in the txn's {side}")
                seen.add(key)
                if item[1] is not None:
                    check_value(key, item[1])
                _optional_id(item[2], "lease")
    elif op == "grant":
        ttl = _number(c.get("ttl"), "ttl")
        if not 0 < ttl <= MAX_TTL:
            raise BarnError(f"lease ttl must be in (0, {MAX_TTL:g}] seconds, got {ttl}")
        _number(c.get("now"), "now")
    elif op in ("keep_alive", "revoke"):
        _integer(c.get("lease"), "lease", 1)
        if op == "keep_alive":
            _number(c.get("now"), "now")
    elif op == "expire":
        _number(c.get("now"), "now")
    elif op == "batch":
        if not isinstance(c.get("commands"), list):
            raise BarnError("a batch's commands must be a list")
    elif op == "member":
        for name in ("name",) if c.get("removed") else ("name", "raft", "http"):
            if not isinstance(c.get(name), str) or not c[name]:
                raise BarnError(f"a member's {name} must be a non-empty string, got {short_repr(c.get(name))}")


def _integer(value: object, what: str, low: int) -> int:
    if type(value) is not int or not low <= value <= MAX_ID:  # bool is an int: refused too
        raise BarnError(f"{what} must be an integer from {low} to {MAX_ID}, got {short_repr(value)}")
    return value


def _optional_id(value: object, what: str) -> None:
    if value is not None:
        _integer(value, what, 1)


def _number(value: object, what: str) -> float:
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an int beyond a float's range
            number = float(value)
    if not math.isfinite(number):
        raise BarnError(f"{what} must be a finite number, got {short_repr(value)}")
    return number


def _sequence(value: object, what: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_TXN_OPS:
        raise BarnError(f"a txn's {what} must be a list of at most {MAX_TXN_OPS} items, got {short_repr(value)}")
    return value


def _describe(command: object) -> str:
    """A command for a log line: its op and request id, never its (maybe huge) values."""
    if not isinstance(command, dict):
        return f"of type {type(command).__name__}"
    return f"{short_repr(command.get('op'))} (request {short_repr(command.get('request_id'))})"


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
