"""The memory Barn passes the Barn conformance suite; the state machine's own edge cases."""

from __future__ import annotations

import pytest

from runink.core.errors import CompactedError
from runink.core.interfaces.barn import herd_key
from runink.plugins.barn.state import BarnState
from runink.testing import BarnConformance


class TestMemoryBarn(BarnConformance):
    driver_name = "memory"


def test_herd_keys_cannot_reach_into_another_herd() -> None:
    assert herd_key("finance", "jobs", "j-1") == "/herds/finance/jobs/j-1"
    for herd, part in (("fin/ance", "x"), ("finance", "../hr"), ("", "x"), ("finance", "")):
        with pytest.raises(ValueError, match="invalid"):
            herd_key(herd, part)


def test_a_retried_request_applies_once() -> None:
    """A client that retries after "outcome unknown" reuses its request id: no double apply."""
    state = BarnState()
    first = state.apply({"op": "put", "key": "/k", "value": b"1", "lease": None, "request_id": "r-1"})
    again = state.apply({"op": "put", "key": "/k", "value": b"1", "lease": None, "request_id": "r-1"})
    assert first == again == 1 and state.revision == 1
    kv = state.get("/k")
    assert kv is not None and kv.version == 1


def test_the_state_survives_a_snapshot() -> None:
    state = BarnState(history=10)
    lease = state.apply({"op": "grant", "ttl": 5, "now": 100.0})
    state.apply({"op": "put", "key": "/a", "value": b"1", "lease": lease})
    for i in range(30):
        state.apply({"op": "put", "key": "/b", "value": str(i).encode(), "lease": None, "request_id": f"r{i}"})
    copy = BarnState.restore(state.snapshot(), history=10)
    assert copy.snapshot() == state.snapshot()
    assert copy.apply({"op": "expire", "now": 104.0}) == [] and copy.get("/a") is not None
    assert copy.apply({"op": "expire", "now": 105.0}) == [lease] and copy.get("/a") is None  # leases kept their keys
    assert copy.apply({"op": "put", "key": "/b", "value": b"x", "lease": None, "request_id": "r29"}) == 31  # deduped


def test_history_is_trimmed_whole_revisions_at_a_time() -> None:
    state = BarnState(history=4)
    for i in range(10):
        state.apply({"op": "txn", "compare": [], "success": [(f"/k{i}/a", b"1", None), (f"/k{i}/b", b"1", None)]})
    assert state.compacted > 0
    revisions = [e.revision for e in state.events]
    assert revisions[0] == state.compacted + 1 and revisions.count(revisions[0]) == 2  # no half transaction kept


def test_a_batch_applies_each_command_as_if_alone() -> None:
    """The raft server proposes several clients' commands as one entry: each keeps its own
    revision, its dedup and its result, and one refused command spoils none of the others."""
    alone, batched = BarnState(), BarnState()
    commands = [
        {"op": "put", "key": "/a", "value": b"1", "lease": None, "request_id": "r1"},
        {"op": "grant", "ttl": -1, "now": 0.0},
        {"op": "put", "key": "/b", "value": b"2", "lease": 99},
        {"op": "put", "key": "/a", "value": b"1", "lease": None, "request_id": "r1"},  # a retry
        {"op": "delete", "key": "/a"},
    ]
    expected = [alone.apply(command) for command in commands]
    assert batched.apply({"op": "batch", "commands": commands}) == expected
    assert expected[0] == 1 and expected[3] == 1 and expected[4] is True
    assert expected[1]["error"] == "bad_request" and expected[2]["error"] == "lease_not_found"
    assert batched.snapshot() == alone.snapshot()


def test_a_watch_page_is_bounded_and_ends_on_a_whole_revision() -> None:
    """A watch answer is built under the replica's lock: a page at most, never half of a
    transaction's events (the next page starts after the last event's revision)."""
    state = BarnState()
    for i in range(5):  # revisions 1..5: two events each
        state.apply(
            {"op": "txn", "compare": [], "success": [(f"/w/{i}/a", b"x" * 100, None), (f"/w/{i}/b", b"1", None)]}
        )
    state.apply({"op": "put", "key": "/other", "value": b"1", "lease": None})  # revision 6, another prefix
    state.apply({"op": "put", "key": "/w/last", "value": b"1", "lease": None})  # revision 7

    page, complete = state.events_page("/w/", 1, max_events=3, max_bytes=1 << 20)
    assert [e.revision for e in page] == [1, 1, 2, 2] and not complete  # 3 asked: revision 2 kept whole
    page, complete = state.events_page("/w/", 3, max_events=100, max_bytes=200)
    assert [e.revision for e in page] == [3, 3, 4, 4] and not complete  # past 200 bytes at revision 4's end
    page, complete = state.events_page("/w/", 5, max_events=100, max_bytes=1 << 20)
    assert [(e.revision, e.kv.key) for e in page] == [(5, "/w/4/a"), (5, "/w/4/b"), (7, "/w/last")] and complete

    everything = [e for e in state.events_since("/w/", 1)]
    paged, start = [], 1
    while True:
        page, complete = state.events_page("/w/", start, max_events=1, max_bytes=1)
        paged += page
        if complete:
            break
        start = page[-1].revision + 1
    assert paged == everything


def test_the_history_is_bounded_by_bytes_too() -> None:
    """Overwriting one key with large values kept every old value for watches (300 MiB of
    history for one live key); the oldest go once the history passes its bytes."""
    state = BarnState(history=1000, history_bytes=10 * 1024)
    for i in range(100):
        state.apply({"op": "put", "key": "/one", "value": bytes([i]) * 1024, "lease": None})
    kept = sum(len(e.kv.key) + len(e.kv.value) for e in state.events)
    assert kept <= 10 * 1024 + 10 * 1024 // 4 and len(state.events) < 20
    assert state.compacted == state.events[0].revision - 1
    with pytest.raises(CompactedError):
        state.events_since("/one", 1)
    restored = BarnState.restore(state.snapshot(), history=1000, history_bytes=10 * 1024)
    restored.apply({"op": "put", "key": "/one", "value": b"x" * 1024, "lease": None})
    assert sum(len(e.kv.key) + len(e.kv.value) for e in restored.events) <= 10 * 1024 + 10 * 1024 // 4


def test_the_live_bytes_follow_puts_deletes_leases_and_a_snapshot() -> None:
    """What a raft member's quota is checked against (``--quota-mib``)."""
    state = BarnState()
    state.apply({"op": "put", "key": "/a", "value": b"x" * 100, "lease": None})
    state.apply({"op": "put", "key": "/a", "value": b"x" * 10, "lease": None})  # (replaced: not added)
    lease = state.apply({"op": "grant", "ttl": 5, "now": 100.0})
    state.apply({"op": "txn", "compare": [], "success": [("/b", b"y" * 50, None), ("/c", b"z", lease)]})
    assert state.live_bytes == (2 + 10) + (2 + 50) + (2 + 1)
    state.apply({"op": "delete", "key": "/b"})
    state.apply({"op": "expire", "now": 106.0})  # the lease's key goes
    assert state.live_bytes == 2 + 10
    assert BarnState.restore(state.snapshot()).live_bytes == 2 + 10


def test_a_scan_page_stops_at_its_key_and_byte_bounds_and_says_more_were_left() -> None:
    state = BarnState()
    for n in range(5):
        state.apply({"op": "put", "key": f"/p/{n}", "value": b"x" * 10, "lease": None})
    state.apply({"op": "put", "key": "/q", "value": b"", "lease": None})
    keys = lambda kvs: [kv.key for kv in kvs]  # noqa: E731
    found, more = state.scan_page("/p/", None, None, 2, 1 << 20)
    assert keys(found) == ["/p/0", "/p/1"] and more
    found, more = state.scan_page("/p/", None, "/p/1", 10, 30)  # 14 bytes a key: two fit in 30
    assert keys(found) == ["/p/2", "/p/3"] and more
    assert state.scan_page("/p/", None, "/p/3", 10, 30) == ([state.get("/p/4")], False)
    assert state.scan_page("/p/", 3, None, 3, 1 << 20)[1] is False  # (the limit asked, not a bound)
    big, more = state.scan_page("/p/", None, None, 10, 1)  # the first key always, past the bytes
    assert keys(big) == ["/p/0"] and more
