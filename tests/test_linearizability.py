"""The linearizability checker (tests/linearizability.py): it must accept what a correct store
may answer and reject what a broken one does (stale reads, lost writes, invented values),
with an explanation that names the key and the few operations that cannot be ordered."""

from __future__ import annotations

import math
import random

import pytest
from linearizability import Op, Result, check


def put(key: str, value: bytes, call: float, ret: float | None, client: int = 0) -> Op:
    return Op(client, "put", key, value, call=call, ret=ret)


def get(key: str, value: bytes | None, call: float, ret: float | None, client: int = 1) -> Op:
    return Op(client, "get", key, value, call=call, ret=ret)


def delete(key: str, call: float, ret: float | None, client: int = 0) -> Op:
    return Op(client, "delete", key, None, call=call, ret=ret)


def cas(key: str, expected: bytes | None, new: bytes, call: float, ret: float | None, ok: bool = True) -> Op:
    return Op(2, "cas", key, new, expected=expected, call=call, ret=ret, ok=ok)


def rejected(history: list[Op], key: str = "k", initial: dict[str, bytes | None] | None = None) -> Result:
    result = check(history, initial)
    assert not result.ok and not result
    assert result.key == key
    assert repr(key) in result.explanation
    return result


# --- accepted histories ---------------------------------------------------------------------------


def test_the_empty_and_sequential_histories_are_accepted() -> None:
    assert check([]).ok
    history = [
        get("k", None, 0, 1),
        put("k", b"1", 2, 3),
        get("k", b"1", 4, 5),
        put("k", b"2", 6, 7),
        get("k", b"2", 8, 9),
        delete("k", 10, 11),
        get("k", None, 12, 13),
    ]
    result = check(history)
    assert result.ok and bool(result) is True
    assert check(list(reversed(history)))  # the order of the list does not matter, only the times


def test_a_read_overlapping_a_write_may_see_the_old_or_the_new_value() -> None:
    for seen in (None, b"1"):
        assert check([put("k", b"1", 0, 10), get("k", seen, 1, 2)])
    # two overlapping reads: the first saw the new value, the second (after it) too
    assert check([put("k", b"1", 0, 10), get("k", b"1", 1, 2), get("k", b"1", 3, 4)])
    # ... or the first the old one and the second the new one
    assert check([put("k", b"1", 0, 10), get("k", None, 1, 2), get("k", b"1", 3, 4)])
    # concurrent writes may take effect in either order
    assert check([put("k", b"a", 0, 10), put("k", b"b", 0, 10, client=3), get("k", b"b", 1, 2), get("k", b"a", 3, 4)])
    assert check([put("k", b"a", 0, 10), put("k", b"b", 0, 10, client=3), get("k", b"a", 1, 2), get("k", b"b", 3, 4)])


def test_a_return_at_the_very_instant_of_a_call_counts_as_overlapping() -> None:
    assert check([put("k", b"1", 0, 1), get("k", None, 1, 2)])
    assert not check([put("k", b"1", 0, 1), get("k", None, 1.000001, 2)])


def test_the_initial_value() -> None:
    assert check([get("k", b"0", 0, 1)], initial={"k": b"0"})
    rejected([get("k", None, 0, 1)], initial={"k": b"0"})
    assert check([get("k", None, 0, 1)], initial={"other": b"0"})


# --- rejected histories, and what the explanation says ---------------------------------------------


def test_a_stale_read_is_rejected_and_explained() -> None:
    history = [
        put("k", b"1", 0, 1),
        put("k", b"2", 2, 3),
        get("k", b"1", 4, 5),
        get("k", b"2", 6, 7),
        put("k", b"3", 8, 9),
        get("k", b"3", 10, 11),
    ]
    result = rejected(history)
    # exactly the ops needed: the write it saw, the write completed since, and the read
    assert set(result.ops) == set(history[:3])
    assert "get -> b'1'" in result.explanation
    assert "[called 4.000000, returned 5.000000]" in result.explanation  # with its times
    assert "leaves b'2'" in result.explanation  # and why it cannot go anywhere


def test_a_lost_acknowledged_write_is_rejected() -> None:
    history = [
        put("k", b"old", 0, 1),
        put("k", b"new", 2, 3, client=5),
        get("k", b"old", 10, 11),
        get("k", b"old", 12, 13),
        get("k", b"old", 14, 15),
    ]
    result = rejected(history)
    assert len(result.ops) == 3  # the two writes and one of the reads
    assert {op.kind for op in result.ops} == {"put", "get"}
    assert "put b'new'" in result.explanation


def test_a_read_of_a_value_never_written_is_rejected() -> None:
    history = [put("k", b"1", 0, 1), get("k", b"1", 2, 3), get("k", b"other", 4, 5)]
    result = rejected(history)
    assert result.ops == (history[2],)  # on its own: nothing else is needed to refute it
    assert "this operation" in result.explanation
    rejected([get("k", b"x", 0, 1)])


def test_a_value_seen_and_then_unseen_with_no_write_between_is_rejected() -> None:
    # the put is still running, but once a read saw its value, a later read must too
    rejected([put("k", b"1", 0, 10), get("k", b"1", 1, 2), get("k", None, 3, 4)])
    # a value written once cannot come back after being overwritten
    concurrent = [put("k", b"a", 0, 10), put("k", b"b", 0, 10, client=3)]
    rejected([*concurrent, get("k", b"a", 1, 2), get("k", b"b", 3, 4), get("k", b"a", 5, 6)])


def test_deletes() -> None:
    assert check([put("k", b"1", 0, 1), delete("k", 2, 3), get("k", None, 4, 5)])
    assert check([put("k", b"1", 0, 1), delete("k", 2, 6), get("k", b"1", 3, 4), get("k", None, 7, 8)])
    rejected([put("k", b"1", 0, 1), delete("k", 2, 3), get("k", b"1", 4, 5)])
    with pytest.raises(ValueError, match="delete"):
        check([Op(0, "delete", "k", b"x", call=0, ret=1)])


# --- unknown outcomes --------------------------------------------------------------------------------


def test_a_write_with_unknown_outcome_may_or_may_not_have_taken_effect() -> None:
    unknown = put("k", b"u", 0, None)
    assert check([unknown, get("k", b"u", 5, 6)])
    assert check([unknown, get("k", None, 5, 6)])
    assert check([unknown, get("k", None, 5, 6), get("k", b"u", 7, 8)])  # it took effect late: allowed
    assert check([unknown, put("k", b"1", 1, 2), get("k", b"u", 3, 4), get("k", b"u", 5, 6)])  # after the put
    # but not both: seen, then unseen, with no other write
    result = rejected([unknown, get("k", b"u", 5, 6), get("k", None, 7, 8)])
    assert "returned unknown" in result.explanation
    # and never before its call
    rejected([get("k", b"u", 0, 1), put("k", b"u", 2, None)])


def test_a_get_with_unknown_outcome_says_nothing() -> None:
    assert check([put("k", b"1", 0, 1), get("k", b"never written", 2, None)])


def test_unknown_writes_that_must_have_happened_in_one_order() -> None:
    # two unknown writes, seen in the order b, a: both took effect, b first
    history = [put("k", b"a", 0, None), put("k", b"b", 0, None, client=3), get("k", b"b", 5, 6), get("k", b"a", 7, 8)]
    assert check(history)
    rejected([*history, get("k", b"b", 9, 10)])  # b cannot come back


# --- compare-and-set -----------------------------------------------------------------------------------


def test_compare_and_set() -> None:
    assert check([put("k", b"1", 0, 1), cas("k", b"1", b"2", 2, 3), get("k", b"2", 4, 5)])
    assert check([cas("k", None, b"1", 0, 1), get("k", b"1", 2, 3)])  # expected None: the key was absent
    rejected([put("k", b"0", 0, 1), cas("k", b"1", b"2", 2, 3)])  # succeeded against the wrong value
    rejected([put("k", b"1", 0, 1), cas("k", b"1", b"2", 2, 3), get("k", b"1", 4, 5)])  # its write lost
    # a failed cas is a read that saw another value
    assert check([put("k", b"0", 0, 1), cas("k", b"1", b"2", 2, 3, ok=False), get("k", b"0", 4, 5)])
    rejected([put("k", b"1", 0, 1), cas("k", b"1", b"2", 2, 3, ok=False)])  # failed although it matched
    # a failed cas during a write: it saw the value before it
    assert check([put("k", b"0", 0, 1), put("k", b"1", 2, 10), cas("k", b"1", b"2", 3, 4, ok=False)])


def test_compare_and_set_with_unknown_outcome() -> None:
    # ok is meaningless without an answer: it may have succeeded ...
    assert check([put("k", b"1", 0, 1), cas("k", b"1", b"2", 2, None, ok=False), get("k", b"2", 5, 6)])
    # ... or not ...
    assert check([put("k", b"1", 0, 1), cas("k", b"1", b"2", 2, None), get("k", b"1", 5, 6)])
    # ... but only if the value matched when it took effect
    rejected([put("k", b"0", 0, 1), cas("k", b"1", b"2", 2, None), get("k", b"2", 5, 6)])


def test_two_succeeded_cas_from_the_same_value_are_rejected() -> None:
    # a lock taken twice: both cas None -> mine succeeded, with nothing deleting in between
    rejected([cas("k", None, b"a", 0, 2), cas("k", None, b"b", 1, 3)])
    assert check([cas("k", None, b"a", 0, 2), cas("k", None, b"b", 1, 3, ok=False), get("k", b"a", 4, 5)])


# --- keys, input checks ----------------------------------------------------------------------------------


def test_keys_are_independent_registers() -> None:
    fine_a = [put("a", b"1", 0, 1), get("a", b"1", 2, 3), put("a", b"2", 4, 5), get("a", b"2", 6, 7)]
    # the same values on b, in one valid order, then a stale read only on b
    fine_b = [put("b", b"2", 0, 1), put("b", b"1", 2, 3), get("b", b"1", 4, 5)]
    assert check(fine_a + fine_b)
    result = rejected([*fine_a, *fine_b, get("b", b"2", 8, 9)], key="b")
    assert all(op.key == "b" for op in result.ops)
    # a read on one key does not see the other key's writes
    rejected([put("a", b"1", 0, 1), get("b", b"1", 2, 3)], key="b")


def test_malformed_operations_are_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        check([Op(0, "append", "k", b"x", call=0, ret=1)])
    with pytest.raises(ValueError, match="before"):
        check([put("k", b"x", 2, 1)])


# --- a large simulated history -------------------------------------------------------------------


def simulate(
    seed: int, ops: int = 3_000, keys: int = 30, clients: int = 16, unknown: float = 0.05, timeout: float = 0.01
) -> list[Op]:
    """What a correct (linearizable) store answers: each client issues operations one after the
    other, each takes effect at one instant between its call and its return, where the register
    is updated. A fraction ``unknown`` of the operations time out: the client gives up after
    ``timeout`` and moves on, and the operation takes effect before that, long after (a Raft
    entry committed by a later leader), or never."""
    rng = random.Random(seed)
    names = [f"k{i}" for i in range(keys)]
    planned: list[tuple[float, int, int, str, str, float, float | None]] = []  # effect, client, seq, ...
    for client in range(clients):
        t = rng.uniform(0, 0.002)
        for seq in range(ops // clients + (client < ops % clients)):
            kind = rng.choices(["get", "put", "delete", "cas"], weights=[45, 35, 5, 15])[0]
            call = t
            effect = call + rng.expovariate(500)
            ret: float | None = effect + rng.expovariate(500)
            if rng.random() < unknown:
                ret, t = None, call + timeout
                fate = rng.random()
                effect = math.inf if fate < 0.3 else call + rng.uniform(0, 20 * timeout)
            else:
                assert ret is not None
                t = ret
            t += rng.expovariate(1_000)  # think time
            planned.append((effect, client, seq, kind, rng.choice(names), call, ret))

    values: dict[str, bytes | None] = {}
    seen_by: dict[tuple[int, str], bytes | None] = {}  # what each client last saw of a key (for its cas)
    history = []
    for effect, client, seq, kind, key, call, ret in sorted(planned):
        happened = effect != math.inf
        current = values.get(key)
        if kind == "get":
            history.append(get(key, current, call, ret, client))
            seen_by[client, key] = current
            continue
        new = None if kind == "delete" else f"{client}-{seq}".encode()
        ok = True
        expected = None
        if kind == "cas":
            expected = seen_by.get((client, key)) if rng.random() < 0.8 else b"stale"
            ok = current == expected
            if ret is None:
                ok = rng.random() < 0.5  # meaningless without an answer
        if happened and (kind != "cas" or current == expected):
            values[key] = new
            seen_by[client, key] = new
        assert new is not None or kind == "delete"
        history.append(Op(client, kind, key, new, expected=expected, call=call, ret=ret, ok=ok))
    rng.shuffle(history)
    return history


def stale_read(history: list[Op]) -> tuple[int, bytes]:
    """A completed get g and a value x such that reading x at g is certainly wrong: x was written
    once, by P, and another completed write Q came entirely after P and entirely before g."""
    writes = [op for op in history if op.kind != "get" and op.ret is not None and op.ok]  # completed, took effect
    gets = sorted((i for i, op in enumerate(history) if op.kind == "get" and op.ret is not None), key=lambda i: -i)
    for i in gets:
        g = history[i]
        assert g.ret is not None
        for p in writes:
            if p.key != g.key or p.value is None or p.value == g.value or p.ret is None:
                continue
            if any(q.key == g.key and q.call > p.ret and q.ret is not None and q.ret < g.call for q in writes):
                return i, p.value
    raise AssertionError("no stale read to make")


def test_a_large_simulated_history_is_accepted_and_a_single_wrong_read_is_found() -> None:
    history = simulate(seed=1)
    assert len(history) == 3_000
    assert len({op.key for op in history}) == 30
    assert sum(op.ret is None for op in history) > 100
    result = check(history)
    assert result, result.explanation

    # one get answers a value nobody wrote
    reads = [i for i, op in enumerate(history) if op.kind == "get" and op.ret is not None and op.value is not None]
    victim = reads[len(reads) // 2]
    invented = history.copy()
    invented[victim] = get(history[victim].key, b"never written", history[victim].call, history[victim].ret)
    result = rejected(invented, key=history[victim].key)
    assert result.ops == (invented[victim],)

    # one get answers a value that had certainly been overwritten
    victim, old = stale_read(history)
    stale = history.copy()
    stale[victim] = get(history[victim].key, old, history[victim].call, history[victim].ret)
    result = rejected(stale, key=history[victim].key)
    assert stale[victim] in result.ops
    assert len(result.ops) <= 5


def test_a_hot_key_with_many_concurrent_clients() -> None:
    history = simulate(seed=2, ops=400, keys=1, clients=16)
    assert check(history)
    reads = [i for i, op in enumerate(history) if op.kind == "get" and op.ret is not None and op.value is not None]
    victim = reads[len(reads) // 2]
    history[victim] = get("k0", b"never written", history[victim].call, history[victim].ret)
    assert not check(history)
