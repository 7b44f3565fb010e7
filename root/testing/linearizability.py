"""A linearizability checker for a history of key/value operations (``check``).

For tests of a Barn backend under faults: record every operation a test's clients make, with
the time each was sent and answered, and ask whether some order of them explains every answer.

Each key is an independent register, and linearizability is local (Herlihy & Wing 1990): a
history is linearizable iff each key's sub-history is. Per key this is the search of Wing &
Gong (1993) with Lowe's memoization (2017, as in Knossos and Porcupine): repeatedly pick an
operation that may go next (one called before every pending operation's return), apply it to
the model, and backtrack when none fits, remembering (done-set, value) pairs already tried.

Operations whose outcome the client never learnt (``ret is None``: a timeout, a 503) may take
effect at any time after their call, or never. A get that matches the current value is taken
at once without branching: a read changes nothing, so taking it early never hides a solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby


@dataclass(frozen=True)
class Op:
    client: int  # which client issued it (for the explanation)
    kind: str  # "put" | "get" | "delete" | "cas"
    key: str
    value: bytes | None  # put/cas: written; get: read (None: absent); delete: None
    expected: bytes | None = None  # cas: the value it requires (None: the key is absent)
    call: float = 0.0  # when it was sent (time.monotonic())
    ret: float | None = None  # when it was answered; None: outcome unknown
    ok: bool = True  # cas: whether it succeeded (when known)


@dataclass
class Result:
    ok: bool
    key: str = ""
    explanation: str = ""

    def __bool__(self) -> bool:
        return self.ok


def check(history: list[Op], initial: dict[str, bytes | None] | None = None) -> Result:
    initial = initial or {}
    ordered = sorted(history, key=lambda op: op.key)
    for key, ops in groupby(ordered, key=lambda op: op.key):
        result = _check_key(key, list(ops), initial.get(key))
        if not result:
            return result
    return Result(True)


def _check_key(key: str, ops: list[Op], start: bytes | None) -> Result:
    ops = [op for op in ops if not (op.kind == "get" and op.ret is None)]  # an unanswered read says nothing
    ops.sort(key=lambda op: op.call)
    calls = [op.call for op in ops]
    rets = [math.inf if op.ret is None else op.ret for op in ops]
    known = 0
    for i, op in enumerate(ops):
        if op.ret is not None:
            known |= 1 << i
    seen: set[tuple[int, bytes | None]] = set()
    best = (0, 0, start)  # (ops placed, mask, value) of the deepest point reached: for the explanation

    # the search, iteratively: each frame is (mask, value, candidates left to try)
    stack: list[tuple[int, bytes | None, list[tuple[int, bytes | None]]]] = []
    mask, value = 0, start
    while True:
        mask, value = _take_reads(ops, calls, rets, mask, value)
        if mask & known == known:
            return Result(True)
        if (mask, value) not in seen:
            seen.add((mask, value))
            placed = bin(mask).count("1")
            if placed > best[0]:
                best = (placed, mask, value)
            stack.append((mask, value, _moves(ops, calls, rets, mask, value)))
        while stack and not stack[-1][2]:
            stack.pop()
        if not stack:
            return Result(False, key, _explain(key, ops, rets, best[1], best[2]))
        mask, value, moves = stack[-1]
        index, value = moves.pop()
        mask |= 1 << index


def _first_return(rets: list[float], mask: int) -> float:
    return min((r for i, r in enumerate(rets) if not mask >> i & 1), default=math.inf)


def _take_reads(
    ops: list[Op], calls: list[float], rets: list[float], mask: int, value: bytes | None
) -> tuple[int, bytes | None]:
    """Take every read that may go next and saw the current value (repeatedly)."""
    progress = True
    while progress:
        progress = False
        horizon = _first_return(rets, mask)
        for i, op in enumerate(ops):
            if calls[i] > horizon:
                break
            if not mask >> i & 1 and op.kind == "get" and op.value == value:
                mask |= 1 << i
                progress = True
                horizon = _first_return(rets, mask)
    return mask, value


def _moves(
    ops: list[Op], calls: list[float], rets: list[float], mask: int, value: bytes | None
) -> list[tuple[int, bytes | None]]:
    """(operation, value after it) for each operation that may go next and fits the model;
    the one returning first is tried first (popped last)."""
    horizon = _first_return(rets, mask)
    moves = []
    for i, op in enumerate(ops):
        if calls[i] > horizon:
            break
        if mask >> i & 1:
            continue
        after = _apply(op, value)
        if after is not _REFUSED:
            moves.append((rets[i], i, after))
    moves.sort(key=lambda m: -m[0])
    return [(i, after) for _, i, after in moves]


_REFUSED = object()


def _apply(op: Op, value: bytes | None) -> object:
    if op.kind == "put":
        return op.value
    if op.kind == "delete":
        return None
    if op.kind == "get":
        return value if op.value == value else _REFUSED
    if op.kind == "cas":
        if op.ret is not None and not op.ok:  # a failed cas is a read of another value
            return value if value != op.expected else _REFUSED
        return op.value if value == op.expected else _REFUSED
    raise ValueError(f"unknown operation kind {op.kind!r}")


def _explain(key: str, ops: list[Op], rets: list[float], mask: int, value: bytes | None) -> str:
    horizon = _first_return(rets, mask)
    stuck = [op for i, op in enumerate(ops) if not mask >> i & 1 and op.call <= horizon]
    shown = "; ".join(_show(op) for op in stuck[:6])
    placed = bin(mask).count("1")
    return (
        f"key {key!r} is not linearizable: after the best ordering of {placed} of its {len(ops)} operations "
        f"the value is {value!r}, and none of the operations that may go next fits it: {shown}"
    )


def _show(op: Op) -> str:
    ret = "unknown" if op.ret is None else f"{op.ret:.6f}"
    what = {"get": f"get -> {op.value!r}", "put": f"put {op.value!r}", "delete": "delete"}.get(
        op.kind, f"cas {op.expected!r} -> {op.value!r} ({'ok' if op.ok else 'failed'})"
    )
    return f"client {op.client} {what} [{op.call:.6f}, {ret}]"
