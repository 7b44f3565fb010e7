"""The BarnBackend conformance suite: what every Barn driver must do, as etcd does it.

A driver's tests subclass ``BarnConformance`` and set ``driver_name`` (and
``driver_options``); or override the ``barn`` fixture to build the backend another way (a
client of a running cluster). The history option (``history``) must be small enough for the
compaction test: it writes ``3 * COMPACTION_HISTORY`` changes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import pytest

from runink.core.drivers import load_driver
from runink.core.errors import BarnError, CompactedError, LeaseNotFoundError
from runink.core.interfaces.barn import BarnBackend, TxnOp, WatchEvent

COMPACTION_HISTORY = 50


def take(events: Iterator[WatchEvent], count: int, timeout: float = 10.0) -> list[WatchEvent]:
    """The next ``count`` events of a watch, read in a thread (a watch blocks when idle)."""
    found: list[WatchEvent] = []
    done = threading.Event()

    def read() -> None:
        for event in events:
            found.append(event)
            if len(found) >= count:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), f"got {len(found)} of {count} watch events within {timeout}s: {found}"
    return found


class BarnConformance:
    driver_name: ClassVar[str] = ""
    driver_options: ClassVar[Mapping[str, Any]] = {"history": COMPACTION_HISTORY}

    @pytest.fixture
    def barn(self) -> Iterator[BarnBackend]:
        backend: BarnBackend = load_driver(BarnBackend, self.driver_name, self.driver_options)
        yield backend
        backend.close()

    @pytest.fixture
    def prefix(self) -> str:
        """A fresh key prefix: a shared cluster may hold other tests' keys."""
        return f"/test/{uuid.uuid4().hex[:8]}/"

    # --- keys and revisions --------------------------------------------------------------

    def test_put_get_and_revisions(self, barn: BarnBackend, prefix: str) -> None:
        key = prefix + "a"
        assert barn.get(key) is None
        first = barn.put(key, b"1")
        assert first > 0 and barn.revision() == first
        kv = barn.get(key)
        assert kv is not None
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"1", first, first, 1)
        second = barn.put(key, b"2")
        assert second == first + 1  # every change bumps the revision by one
        kv = barn.get(key)
        assert kv is not None
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"2", first, second, 2)

    def test_delete(self, barn: BarnBackend, prefix: str) -> None:
        key = prefix + "gone"
        barn.put(key, b"x")
        before = barn.revision()
        assert barn.delete(key) is True and barn.get(key) is None
        assert barn.revision() == before + 1
        assert barn.delete(key) is False and barn.revision() == before + 1  # nothing changed: no revision
        again = barn.put(key, b"y")
        kv = barn.get(key)
        assert kv is not None and kv.create_revision == again and kv.version == 1  # a new life

    def test_bad_keys_and_values_are_refused(self, barn: BarnBackend) -> None:
        with pytest.raises(BarnError, match="non-empty string"):
            barn.put("", b"x")
        with pytest.raises(BarnError, match="must be bytes"):
            barn.put("/k", "text")  # type: ignore[arg-type]

    def test_compare_and_set(self, barn: BarnBackend, prefix: str) -> None:
        key = prefix + "cas"
        assert barn.compare_and_set(key, 0, b"created") is True  # 0: only if absent
        assert barn.compare_and_set(key, 0, b"again") is False
        kv = barn.get(key)
        assert kv is not None and kv.value == b"created"
        assert barn.compare_and_set(key, kv.mod_revision + 7, b"stale") is False
        assert barn.compare_and_set(key, kv.mod_revision, b"updated") is True
        updated = barn.get(key)
        assert updated is not None and updated.value == b"updated"

    def test_scan_is_sorted_bounded_and_exact_on_prefix(self, barn: BarnBackend, prefix: str) -> None:
        for name in ("b", "a", "c/1", "c/0"):
            barn.put(prefix + name, name.encode())
        barn.put(prefix.rstrip("/") + "x/other", b"not under the prefix")
        assert [kv.key for kv in barn.scan(prefix)] == [prefix + n for n in ("a", "b", "c/0", "c/1")]
        assert [kv.value for kv in barn.scan(prefix + "c/")] == [b"c/0", b"c/1"]
        assert [kv.key for kv in barn.scan(prefix, limit=2)] == [prefix + "a", prefix + "b"]
        assert barn.scan(prefix + "none/") == []
        # pages: on from the last key of the page before
        assert [kv.key for kv in barn.scan(prefix, limit=2, after=prefix + "b")] == [prefix + "c/0", prefix + "c/1"]
        assert [kv.key for kv in barn.scan(prefix, after=prefix + "c/1")] == []
        assert [kv.key for kv in barn.scan(prefix + "c/", after=prefix)] == [prefix + "c/0", prefix + "c/1"]

    def test_count_is_exact_on_prefix_and_follows_deletes(self, barn: BarnBackend, prefix: str) -> None:
        for name in ("a", "b", "c/0", "c/1", "c/2"):
            barn.put(prefix + name, b"x")
        barn.put(prefix.rstrip("/") + "x/other", b"not under the prefix")
        assert barn.count(prefix) == 5 and barn.count(prefix + "c/") == 3 and barn.count(prefix + "none/") == 0
        barn.delete(prefix + "c/1")
        assert barn.count(prefix + "c/") == 2 and barn.count(prefix + "c/1") == 0
        assert BarnBackend.count(barn, prefix) == barn.count(prefix) == 4  # (the scan-based fallback agrees)

    def test_transaction_is_atomic_and_one_revision(self, barn: BarnBackend, prefix: str) -> None:
        a, b, c = prefix + "a", prefix + "b", prefix + "c"
        barn.put(a, b"1")
        barn.put(c, b"old")
        kv = barn.get(a)
        assert kv is not None
        held, revision = barn.transaction([(a, kv.mod_revision), (b, 0)], [TxnOp(b, b"2"), TxnOp(c, None)])
        assert held and revision == barn.revision()
        new_b = barn.get(b)
        assert new_b is not None and new_b.mod_revision == revision and barn.get(c) is None
        # a failed compare applies the failure branch only
        held, _ = barn.transaction([(a, 0)], [TxnOp(a, b"never")], [TxnOp(prefix + "failed", b"yes")])
        assert not held
        kept = barn.get(a)
        assert kept is not None and kept.value == b"1"
        assert barn.get(prefix + "failed") is not None

    def test_concurrent_writers_lose_nothing(self, barn: BarnBackend, prefix: str) -> None:
        revisions: list[int] = []
        lock = threading.Lock()

        def writer(n: int) -> None:
            for i in range(50):
                revision = barn.put(f"{prefix}{n}/{i}", f"{n}-{i}".encode())
                with lock:
                    revisions.append(revision)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(set(revisions)) == 400  # each write its own revision
        assert len(barn.scan(prefix)) == 400

    def test_a_counter_incremented_with_cas_from_threads(self, barn: BarnBackend, prefix: str) -> None:
        key = prefix + "counter"
        barn.put(key, b"0")

        def increment() -> None:
            for _ in range(20):
                while True:
                    kv = barn.get(key)
                    assert kv is not None
                    if barn.compare_and_set(key, kv.mod_revision, str(int(kv.value) + 1).encode()):
                        break

        threads = [threading.Thread(target=increment) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        final = barn.get(key)
        assert final is not None and final.value == b"80"  # no lost update

    # --- watch ---------------------------------------------------------------------------

    def test_watch_replays_history_then_follows(self, barn: BarnBackend, prefix: str) -> None:
        start = barn.put(prefix + "x", b"1")
        barn.put(prefix.rstrip("/") + "-elsewhere", b"ignored")
        barn.delete(prefix + "x")
        events = barn.watch(prefix, start)
        replayed = take(events, 2)
        assert [(e.type, e.kv.key, e.revision) for e in replayed] == [
            ("PUT", prefix + "x", start),
            ("DELETE", prefix + "x", start + 2),
        ]
        later = barn.put(prefix + "y", b"2")
        (live,) = take(events, 1)
        assert (live.type, live.kv.key, live.kv.value, live.revision) == ("PUT", prefix + "y", b"2", later)

    def test_watch_from_now_sees_only_new_changes(self, barn: BarnBackend, prefix: str) -> None:
        barn.put(prefix + "before", b"old")
        events = barn.watch(prefix, 0)
        revision = barn.put(prefix + "after", b"new")
        (event,) = take(events, 1)
        assert event.kv.key == prefix + "after" and event.revision == revision

    def test_watch_from_a_compacted_revision_is_refused(self, barn: BarnBackend, prefix: str) -> None:
        first = barn.put(prefix + "k", b"0")
        for i in range(3 * COMPACTION_HISTORY):
            barn.put(prefix + "k", str(i).encode())
        with pytest.raises(CompactedError, match="compacted"):
            next(iter(barn.watch(prefix, first)))

    # --- leases --------------------------------------------------------------------------

    def test_a_lease_expires_and_takes_its_keys(self, barn: BarnBackend, prefix: str) -> None:
        lease = barn.grant_lease(0.5)
        barn.put(prefix + "node", b"alive", lease=lease)
        barn.put(prefix + "kept", b"no lease")
        deadline = time.monotonic() + 10
        while barn.get(prefix + "node") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert barn.get(prefix + "node") is None and barn.get(prefix + "kept") is not None
        with pytest.raises(LeaseNotFoundError):
            barn.keep_alive(lease)
        with pytest.raises(LeaseNotFoundError):
            barn.put(prefix + "late", b"x", lease=lease)

    def test_keep_alive_holds_a_lease_and_revoke_ends_it(self, barn: BarnBackend, prefix: str) -> None:
        lease = barn.grant_lease(0.6)
        barn.put(prefix + "node", b"alive", lease=lease)
        for _ in range(8):  # 1.6 s, well past the ttl
            time.sleep(0.2)
            barn.keep_alive(lease)
        assert barn.get(prefix + "node") is not None
        barn.revoke_lease(lease)
        assert barn.get(prefix + "node") is None
        with pytest.raises(LeaseNotFoundError):
            barn.revoke_lease(lease)
