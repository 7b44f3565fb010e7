"""A linearizability checker for histories of key/value register operations.

A test records every client operation (``Op``) with the time it was invoked (``call``) and
the time its answer arrived (``ret``), then asks ``check(history)`` whether some total order
of the operations explains every answer: each operation must appear to take effect at one
instant between its call and its return (Herlihy & Wing 1990).

Keys are independent registers, and linearizability is *local* (compositional): a history is
linearizable iff the sub-history of every key is. So each key is checked on its own, which
keeps the search small.

Per key the search is the one of Wing & Gong (1993, "Testing and verifying concurrent
objects"), with the memoization of Lowe (2017, "Testing for linearizability"), as Knossos
and Porcupine (https://github.com/anishathalye/porcupine) do it:

* A *state* is (the set of operations linearized so far, the register's value). The set is a
  bitmask (a Python int) over the key's operations sorted by call time.
* An operation may be linearized next iff it is *minimal*: its call is not after the earliest
  return among the operations not linearized yet (otherwise that operation returned before
  this one was called, so it must come first).
* Depth-first: pick a minimal operation that the model accepts in the current value, apply
  it, go on; when nothing fits, backtrack. Every state is visited at most once (``seen``): two
  paths reaching the same set with the same value have the same future.
* The search is iterative (an explicit stack), so its depth is bounded by memory only.

Two refinements keep it fast on real histories:

* A minimal read (a get, or a failed cas) that matches the current value is taken at once,
  without branching. Sound because in any valid order of the remaining operations that read
  may be moved to the front: no pending operation returned before its call (it is minimal),
  it sees the current value there, and it changes nothing for the operations after it.
* Candidates are tried in order of return time, and writes with an unknown outcome last.

Operations whose outcome is unknown (``ret is None``: a timeout, a 503, a lost connection)
may take effect at any time after their call, or never: they get a return time of +infinity
(they are minimal as soon as their call is reached and never hold anything back) and the
search succeeds once every *completed* operation is linearized. A get with an unknown outcome
says nothing and is dropped. A cas that completed with ``ok=False`` is a read that saw a
value other than ``expected``.

When a key fails, the explanation is built from a small sub-history that still fails: ops are
removed greedily (in halves, then quarters, ... then one at a time) as long as the rest stays
non-linearizable, never removing a write whose value a remaining read observed (that would
turn "a stale read" into the misleading "a read of a value nobody wrote"). This shrinking has
a budget of search states; the explanation is always a verified non-linearizable subset, and
1-minimal when the budget suffices (every op listed is needed for the violation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

KINDS = frozenset({"put", "get", "delete", "cas"})

Value = bytes | None

# search states the explanation's shrinking may spend in all (the plain check has no limit)
SHRINK_BUDGET = 200_000


@dataclass(frozen=True)
class Op:
    client: int  # which client thread issued it (informational)
    kind: str  # "put" | "get" | "delete" | "cas"
    key: str
    value: bytes | None  # put: written; get: read (None = key absent); delete: None; cas: the new value
    expected: bytes | None = None  # cas only: value the cas requires (None = key must be absent)
    call: float = 0.0  # time.monotonic() at invocation
    ret: float | None = None  # time.monotonic() at completion; None = outcome unknown (may or may not take effect)
    ok: bool = True  # cas: whether it succeeded (if known); put/delete/get: True when completed (not used)


@dataclass(frozen=True)
class Result:
    ok: bool
    key: str = ""  # the key whose history is not linearizable (when not ok)
    explanation: str = ""  # one readable paragraph (when not ok)
    ops: tuple[Op, ...] = ()  # the small sub-history of ``key`` that cannot be ordered (when not ok)

    def __bool__(self) -> bool:
        return self.ok


def check(history: list[Op], initial: dict[str, bytes | None] | None = None) -> Result:
    """Whether ``history`` is linearizable for a map of independent registers.

    ``initial`` gives a key's value before the history (default: absent, None). The first key
    found not linearizable (keys in sorted order) is reported."""
    initial = initial or {}
    by_key: dict[str, list[Op]] = {}
    for op in history:
        _validate(op)
        by_key.setdefault(op.key, []).append(op)
    for key in sorted(by_key):
        start = initial.get(key)
        ops = _relevant(by_key[key])
        if _Search(ops, start).run().ok is False:
            return _explain(key, _shrink(ops, start), start)
    return Result(True)


def _validate(op: Op) -> None:
    if op.kind not in KINDS:
        raise ValueError(f"unknown operation kind {op.kind!r} in {op}")
    if op.ret is not None and op.ret < op.call:
        raise ValueError(f"operation returns before it is called: {op}")
    if op.kind == "delete" and op.value is not None:
        raise ValueError(f"a delete writes None, not a value: {op}")


def _relevant(ops: list[Op]) -> list[Op]:
    """The operations that constrain the order: a get whose answer never came says nothing."""
    return [op for op in ops if not (op.kind == "get" and op.ret is None)]


# How each operation acts on the register, once compiled for the search.
_READ = 0  # fits iff value == arg; no change (a completed get)
_READ_NOT = 1  # fits iff value != arg; no change (a completed, failed cas)
_WRITE = 2  # always fits; value := new (put, delete)
_CAS = 3  # fits iff value == arg; value := new (a succeeded or unknown cas)


def _compile(op: Op) -> tuple[int, Value, Value]:
    """(action, argument the current value is compared with, new value)."""
    if op.kind == "get":
        return _READ, op.value, None
    if op.kind == "put":
        return _WRITE, None, op.value
    if op.kind == "delete":
        return _WRITE, None, None
    if op.ret is not None and not op.ok:  # a cas known to have failed saw some other value
        return _READ_NOT, op.expected, None
    return _CAS, op.expected, op.value


def _is_read(op: Op) -> bool:
    return _compile(op)[0] in (_READ, _READ_NOT)


@dataclass
class _Outcome:
    ok: bool | None  # None: the state budget ran out before an answer
    path: list[int]  # the longest order found (indices into the sorted ops), for the explanation
    value: Value  # the register's value after ``path``
    mask: int  # the set of ``path``
    states: int = 0  # how many states the search visited


class _Search:
    """The WGL search over one key's operations."""

    def __init__(self, ops: Sequence[Op], start: Value) -> None:
        # by call time; among equal calls the one returning first (it may have to go first)
        self.ops = sorted(ops, key=lambda op: (op.call, math.inf if op.ret is None else op.ret))
        self.start = start
        n = len(self.ops)
        self.calls = [op.call for op in self.ops]
        self.rets = [math.inf if op.ret is None else op.ret for op in self.ops]
        self.actions = [_compile(op) for op in self.ops]
        self.required = sum(1 << i for i, op in enumerate(self.ops) if op.ret is not None)
        # the same set is also kept as a bitmask over ops ranked by return time ("rmask"), so
        # the earliest pending return is the lowest zero bit of that mask: no scan needed
        self.by_ret = sorted(range(n), key=lambda i: (self.rets[i], i))
        self.rank = [0] * n
        for r, i in enumerate(self.by_ret):
            self.rank[i] = r

    def horizon(self, rmask: int) -> float:
        """The earliest return among the operations not linearized in ``rmask``."""
        r = _lowest_zero(rmask)
        return self.rets[self.by_ret[r]] if r < len(self.by_ret) else math.inf

    def take_reads(self, mask: int, rmask: int, value: Value, taken: list[int]) -> tuple[int, int]:
        """Linearize every minimal read that fits ``value`` (appending them to ``taken``).

        One forward pass suffices: the value does not change, so a read that did not fit
        never will, and taking reads only moves the horizon later."""
        horizon = self.horizon(rmask)
        i = _lowest_zero(mask)
        calls, actions = self.calls, self.actions
        while i < len(calls) and calls[i] <= horizon:
            if not mask >> i & 1:
                action, arg, _ = actions[i]
                if (action == _READ and arg == value) or (action == _READ_NOT and arg != value):
                    mask |= 1 << i
                    rmask |= 1 << self.rank[i]
                    taken.append(i)
                    horizon = self.horizon(rmask)
            i += 1
        return mask, rmask

    def moves(self, mask: int, rmask: int, value: Value) -> list[tuple[int, Value]]:
        """(op, value after it) for each minimal write the model accepts now, the one to try
        first last (it is popped): earliest return first, unknown outcomes after all others."""
        horizon = self.horizon(rmask)
        i = _lowest_zero(mask)
        calls, actions = self.calls, self.actions
        found: list[int] = []
        while i < len(calls) and calls[i] <= horizon:
            if not mask >> i & 1:
                action, arg, _ = actions[i]
                if action == _WRITE or (action == _CAS and arg == value):
                    found.append(i)
                # a minimal read that fits was taken by take_reads; the others cannot go now
            i += 1
        found.sort(key=lambda j: self.rets[j], reverse=True)
        return [(j, actions[j][2]) for j in found]

    def run(self, budget: int | None = None) -> _Outcome:
        """Search; stop with ``ok=None`` after ``budget`` new states (no limit when None)."""
        required = self.required
        taken: list[int] = []
        mask, rmask = self.take_reads(0, 0, self.start, taken)
        value = self.start
        seen: set[tuple[int, Value]] = set()
        # frames: (mask, rmask, value, moves not tried yet, ops linearized to reach this state)
        stack: list[tuple[int, int, Value, list[tuple[int, Value]], list[int]]] = []
        best = _Outcome(False, [], value, 0)
        best_depth = -1
        while True:
            if mask & required == required:  # every completed op placed; the unknown rest never happened
                path = [i for frame in stack for i in frame[4]] + taken
                return _Outcome(True, path, value, mask, len(seen))
            if (mask, value) not in seen:
                seen.add((mask, value))
                if budget is not None and len(seen) > budget:
                    return _Outcome(None, best.path, best.value, best.mask, len(seen))
                stack.append((mask, rmask, value, self.moves(mask, rmask, value), taken))
                depth = (mask & required).bit_count()
                if depth > best_depth:  # remember the longest order, to explain a failure
                    best_depth = depth
                    best = _Outcome(False, [i for frame in stack for i in frame[4]], value, mask)
            while stack and not stack[-1][3]:  # backtrack past exhausted states
                stack.pop()
            if not stack:
                best.states = len(seen)
                return best
            frame_mask, frame_rmask, _, moves, _ = stack[-1]
            i, value = moves.pop()
            taken = [i]
            mask, rmask = self.take_reads(frame_mask | 1 << i, frame_rmask | 1 << self.rank[i], value, taken)


def _lowest_zero(bits: int) -> int:
    """Index of the lowest 0 bit of a non-negative int."""
    return (~bits & (bits + 1)).bit_length() - 1


# --- explaining a failure -------------------------------------------------------------------------


def _shrink(ops: list[Op], start: Value) -> list[Op]:
    """A small subset of ``ops`` that is still not linearizable (see the module docstring)."""
    budget = SHRINK_BUDGET

    def still_fails(trial: list[Op]) -> bool:
        nonlocal budget
        if budget <= 0:
            return False
        outcome = _Search(trial, start).run(budget)
        budget -= outcome.states
        return outcome.ok is False  # None (out of budget) keeps the ops: the subset stays verified

    current = sorted(ops, key=lambda op: op.call)
    # reads first (removing them never orphans a write), then any op; in chunks, coarse to fine
    for pool in (_is_read, lambda _op: True):
        chunk = max(1, len(current) // 2)
        while True:
            changed = False
            start_at = 0
            while start_at < len(current):
                window = {j for j in range(start_at, min(start_at + chunk, len(current))) if pool(current[j])}
                removed = [op for j, op in enumerate(current) if j in window]
                rest = [op for j, op in enumerate(current) if j not in window]
                if removed and _removable(removed, rest) and still_fails(rest):
                    current = rest
                    changed = True
                else:
                    start_at += chunk
            if chunk == 1 and not changed:
                break
            chunk = max(1, chunk // 2)
    return current


def _removable(removed: list[Op], rest: list[Op]) -> bool:
    """Whether no write in ``removed`` wrote a value a remaining op observed."""
    observed: set[Value] = set()
    for op in rest:
        action, arg, _ = _compile(op)
        if action in (_READ, _CAS):
            observed.add(arg)
    return not any(_compile(op)[0] in (_WRITE, _CAS) and op.value in observed for op in removed)


def _explain(key: str, ops: list[Op], start: Value) -> Result:
    search = _Search(ops, start)
    outcome = search.run(SHRINK_BUDGET)
    listing = "; ".join(_show(op) for op in search.ops)
    these = "this operation" if len(ops) == 1 else f"these {len(ops)} operations"
    text = (
        f"key {key!r} is not linearizable: no order of {these} on it explains every answer "
        f"(each must take effect at one instant between its call and its return, and one whose outcome is "
        f"unknown at any time after its call or never; the key starts as {_value(start)}): {listing}."
    )
    if outcome.ok is False:
        path = [search.ops[i] for i in outcome.path]
        horizon = search.horizon(sum(1 << search.rank[i] for i in outcome.path))
        blocked = [
            op
            for i, op in enumerate(search.ops)
            if not outcome.mask >> i & 1
            and op.ret is not None
            and op.call <= horizon
            and not _fits(search.actions[i], outcome.value)
        ]
        order = ", ".join(_short(op) for op in path[:12]) + (", ..." if len(path) > 12 else "")
        text += f" The longest consistent order found ({order or 'nothing'}) leaves {_value(outcome.value)}"
        if blocked:
            text += ", which the next operations contradict: " + "; ".join(_show(op) for op in blocked) + "."
        else:
            text += ", and every operation that may come next leads to a dead end."
    return Result(False, key, text, tuple(search.ops))


def _fits(action: tuple[int, Value, Value], value: Value) -> bool:
    kind, arg, _ = action
    return arg != value if kind == _READ_NOT else kind == _WRITE or arg == value


def _value(value: Value) -> str:
    if value is None:
        return "absent"
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _short(op: Op) -> str:
    if op.kind == "get":
        return f"get -> {_value(op.value)}"
    if op.kind == "put":
        return f"put {_value(op.value)}"
    if op.kind == "delete":
        return "delete"
    outcome = "unknown" if op.ret is None else "ok" if op.ok else "failed"
    return f"cas {_value(op.expected)} -> {_value(op.value)} ({outcome})"


def _show(op: Op) -> str:
    ret = "unknown" if op.ret is None else f"{op.ret:.6f}"
    return f"client {op.client} {_short(op)} [called {op.call:.6f}, returned {ret}]"
