"""The linearizability checker the Barn's fault tests rely on: it must reject what a broken
store does (stale reads, lost writes, invented values) and accept what a correct one may do."""

from __future__ import annotations

import dataclasses
import random
from typing import cast

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


def brute_force(history: list[Op], start: bytes | None = None) -> bool:
    """Linearizability by definition: some subset of the unanswered operations plus every
    answered one, in some order that respects real time, explains every answer."""
    from itertools import permutations

    from runink.testing.linearizability import _REFUSED, _apply

    answered = [op for op in history if op.ret is not None]
    unanswered = [op for op in history if op.ret is None and op.kind != "get"]
    for bits in range(1 << len(unanswered)):
        chosen = answered + [op for n, op in enumerate(unanswered) if bits >> n & 1]
        for order in permutations(chosen):
            # real time: nothing placed after an operation that returned before it was called
            if any(
                later.ret is not None and later.ret < earlier.call
                for n, earlier in enumerate(order)
                for later in order[n + 1 :]
            ):
                continue
            value = start
            for op in order:
                applied = _apply(op, value)
                if applied is _REFUSED:
                    break
                value = cast("bytes | None", applied)  # _apply returns the new value or _REFUSED
            else:
                return True
    return False


def random_small_history(rng: random.Random) -> list[Op]:
    """Arbitrary (mostly wrong) histories over few values, so that every rule of the search is
    exercised: repeated values, deletes, failed and unanswered cas, unanswered writes."""
    values = [b"a", b"b", b"c", None]
    history = []
    for client in range(rng.randint(1, 3)):
        clock = rng.uniform(0, 2)
        for _ in range(rng.randint(1, 3)):
            call = clock + rng.uniform(0, 1)
            ret = call + rng.uniform(0, 2)
            clock = ret
            answered = rng.random() > 0.2
            kind = rng.choice(["put", "put", "get", "get", "delete", "cas"])
            if kind == "put":
                history.append(Op(client, "put", "k", rng.choice(values[:3]), call=call, ret=ret if answered else None))
            elif kind == "get":
                history.append(Op(client, "get", "k", rng.choice(values), call=call, ret=ret))
            elif kind == "delete":
                history.append(Op(client, "delete", "k", None, call=call, ret=ret if answered else None))
            else:
                history.append(
                    Op(
                        client,
                        "cas",
                        "k",
                        rng.choice(values[:3]),
                        expected=rng.choice(values),
                        call=call,
                        ret=ret if answered else None,
                        ok=rng.random() < 0.5,
                    )
                )
            if len(history) == 7:
                return history
    return history


def test_the_search_agrees_with_brute_force_on_small_histories() -> None:
    rng = random.Random(11)
    verdicts = {True: 0, False: 0}
    for _ in range(1_500):
        history = random_small_history(rng)
        expected = brute_force(history)
        assert bool(check(history)) == expected, history
        verdicts[expected] += 1
    assert min(verdicts.values()) > 200, verdicts  # both verdicts really tested


def test_unique_values_with_unanswered_writes_agree_with_brute_force() -> None:
    """Unique written values, as the Barn tests write them."""
    rng = random.Random(5)
    for _ in range(1_500):
        history = random_small_history(rng)
        renamed, n = [], 0
        for op in history:
            if op.kind in ("put", "cas"):
                n += 1
            renamed.append(dataclasses.replace(op, value=b"w%d" % n) if op.kind in ("put", "cas") else op)
        # reads and cas expectations name the written values
        written = [op.value for op in renamed if op.kind in ("put", "cas")] + [None]
        renamed = [
            Op(
                op.client,
                op.kind,
                op.key,
                rng.choice(written) if op.kind == "get" else op.value,
                rng.choice(written) if op.kind == "cas" else None,
                op.call,
                op.ret,
                op.ok,
            )
            for op in renamed
        ]
        assert bool(check(renamed)) == brute_force(renamed), renamed


def test_a_search_too_large_is_reported_undecided_not_passed() -> None:
    history = random_history(seed=3, ops=400, keys=1)
    result = check(history, max_states=5)
    assert not result and not result.decided and "undecided" in result.explanation
