"""The linearizability checker the Barn's fault tests rely on: it must reject what a broken
store does (stale reads, lost writes, invented values) and accept what a correct one may do."""

from __future__ import annotations

import random

from runink.testing.linearizability import Op, check


def put(key: str, value: bytes, call: float, ret: float | None, client: int = 0) -> Op:
    return Op(client, "put", key, value, call=call, ret=ret)


def get(key: str, value: bytes | None, call: float, ret: float, client: int = 1) -> Op:
    return Op(client, "get", key, value, call=call, ret=ret)


def test_sequential_and_overlapping_histories_are_accepted() -> None:
    assert check([put("k", b"1", 0, 1), get("k", b"1", 2, 3), put("k", b"2", 4, 5), get("k", b"2", 6, 7)])
    # a read overlapping a write may see either value, and two overlapping reads may differ in order
    assert check([put("k", b"1", 0, 10), get("k", None, 1, 2), get("k", b"1", 3, 4)])
    assert check([put("k", b"1", 0, 10), get("k", b"1", 1, 2, client=1), get("k", b"1", 3, 4, client=2)])


def test_a_stale_read_is_rejected_and_named() -> None:
    history = [put("k", b"1", 0, 1), put("k", b"2", 2, 3), get("k", b"1", 4, 5)]
    result = check(history)
    assert not result
    assert result.key == "k" and "get -> b'1'" in result.explanation


def test_a_lost_acknowledged_write_is_rejected() -> None:
    history = [put("k", b"old", 0, 1), put("k", b"new", 2, 3), get("k", b"old", 10, 11), get("k", b"old", 12, 13)]
    assert not check(history)


def test_a_read_of_a_value_nobody_wrote_is_rejected() -> None:
    assert not check([put("k", b"1", 0, 1), get("k", b"other", 2, 3)])
    assert not check([get("k", b"x", 0, 1)])


def test_a_read_seeing_a_write_then_one_not_seeing_it_is_rejected() -> None:
    assert not check([put("k", b"1", 0, 10), get("k", b"1", 1, 2), get("k", None, 3, 4)])


def test_a_write_with_unknown_outcome_may_or_may_not_have_happened_but_not_both() -> None:
    unknown = put("k", b"u", 0, None)
    assert check([unknown, get("k", b"u", 5, 6)])
    assert check([unknown, get("k", None, 5, 6)])
    assert check([unknown, get("k", None, 5, 6), get("k", b"u", 7, 8)])  # it took effect late
    assert not check([unknown, get("k", b"u", 5, 6), get("k", None, 7, 8)])


def test_compare_and_set() -> None:
    cas_ok = Op(0, "cas", "k", b"2", expected=b"1", call=2, ret=3, ok=True)
    assert check([put("k", b"1", 0, 1), cas_ok, get("k", b"2", 4, 5)])
    assert not check([put("k", b"0", 0, 1), cas_ok])  # succeeded against the wrong value
    cas_failed = Op(0, "cas", "k", b"2", expected=b"1", call=2, ret=3, ok=False)
    assert check([put("k", b"0", 0, 1), cas_failed, get("k", b"0", 4, 5)])
    assert not check([put("k", b"1", 0, 1), cas_failed])  # failed although the value matched


def test_keys_are_checked_independently() -> None:
    history = [put("a", b"1", 0, 1), get("a", b"1", 2, 3), put("b", b"1", 0, 1), put("b", b"2", 2, 3)]
    assert check(history)
    result = check([*history, get("b", b"1", 4, 5)])
    assert not result and result.key == "b"


def random_history(seed: int, ops: int = 3_000, keys: int = 30, clients: int = 16) -> list[Op]:
    """What a correct register does: each operation takes effect at one instant between its
    call and its return; 5% of the writes are never answered."""
    rng = random.Random(seed)
    planned = []
    for _ in range(ops):
        call = rng.uniform(0, ops / 10)
        effect = call + rng.expovariate(2)
        planned.append((effect, call, effect + rng.expovariate(2), f"k{rng.randrange(keys)}", rng.randrange(clients)))
    values: dict[str, bytes] = {}
    history = []
    for n, (_effect, call, ret, key, client) in enumerate(sorted(planned)):
        if rng.random() < 0.5:
            values[key] = str(n).encode()
            history.append(put(key, values[key], call, None if rng.random() < 0.05 else ret, client))
        else:
            history.append(get(key, values.get(key), call, ret, client))
    return history


def test_a_large_correct_history_is_accepted_and_one_wrong_read_in_it_is_found() -> None:
    history = random_history(seed=7)
    assert check(history), check(history).explanation
    reads = [i for i, op in enumerate(history) if op.kind == "get" and op.value is not None]
    victim = history[reads[len(reads) // 2]]
    history[reads[len(reads) // 2]] = get(victim.key, b"never written", victim.call, victim.ret or 0.0)
    result = check(history)
    assert not result and result.key == victim.key
