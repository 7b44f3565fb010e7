"""The ``memory`` Barn: the Barn's state machine in one process (``runink run``, unit tests).

Every call applies one command to a ``BarnState`` under a lock, so reads are linearizable and
a write is "durable" once it returns, for as long as the process lives. Nothing is written
to disk: the embedded single-machine run does not need its state after it exits.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from runink.core.driverload import OptionsSchema
from runink.core.errors import BarnError
from runink.core.interfaces.barn import BarnBackend, KeyValue, TxnOp, WatchEvent, check_key, check_value
from runink.plugins.barn.state import DEFAULT_HISTORY, BarnState, raise_for

WATCH_POLL = 0.5  # seconds a watch waits before looking again whether the Barn was closed


def txn_command(
    compare: Sequence[tuple[str, int]], success: Sequence[TxnOp], failure: Sequence[TxnOp]
) -> dict[str, Any]:
    def ops(items: Sequence[TxnOp]) -> list[tuple[str, bytes | None, None]]:
        return [(check_key(op.key), None if op.value is None else check_value(op.key, op.value), None) for op in items]

    return {
        "op": "txn",
        "compare": [(check_key(key), int(rev)) for key, rev in compare],
        "success": ops(success),
        "failure": ops(failure),
    }


class MemoryBarn(BarnBackend):
    name: ClassVar[str] = "memory"
    # clock: a callable returning seconds (tests pass a fake one)
    options_schema: ClassVar[OptionsSchema] = {"history": int, "lease_check_interval": float, "clock": object}

    def __init__(
        self,
        *,
        history: int = DEFAULT_HISTORY,
        lease_check_interval: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = BarnState(history=int(history))
        self._changed = threading.Condition()
        self._clock = clock
        self._lease_check_interval = float(lease_check_interval)
        self._expirer: threading.Thread | None = None
        self._closed = threading.Event()

    # --- writes ---------------------------------------------------------------------------

    def _apply(self, command: dict[str, Any]) -> Any:
        with self._changed:
            if self._closed.is_set():
                raise BarnError("the Barn is closed")
            result = self._state.apply(command)
            self._changed.notify_all()
        return raise_for(result)

    def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        command = {"op": "put", "key": check_key(key), "value": check_value(key, value), "lease": lease}
        return int(self._apply(command))

    def delete(self, key: str) -> bool:
        return bool(self._apply({"op": "delete", "key": check_key(key)}))

    def transaction(
        self, compare: Sequence[tuple[str, int]], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> tuple[bool, int]:
        held, revision = self._apply(txn_command(compare, success, failure))
        return bool(held), int(revision)

    # --- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        with self._changed:
            return self._state.get(check_key(key))

    def scan(self, prefix: str, *, limit: int | None = None, after: str | None = None) -> list[KeyValue]:
        with self._changed:
            return self._state.scan(prefix, limit, after)

    def count(self, prefix: str) -> int:
        with self._changed:
            return self._state.count(prefix)

    def revision(self) -> int:
        with self._changed:
            return self._state.revision

    def watch(self, prefix: str, from_revision: int) -> Iterator[WatchEvent]:
        """Changes under ``prefix`` from ``from_revision`` (<= 0: from now on), then live ones,
        until the Barn is closed. Raises CompactedError at once if the start is too old."""
        with self._changed:
            start = from_revision if from_revision > 0 else self._state.revision + 1
            first = self._state.events_since(prefix, start)
            seen = self._state.revision
        return self._follow(prefix, first, seen)

    def _follow(self, prefix: str, pending: list[WatchEvent], seen: int) -> Iterator[WatchEvent]:
        while True:
            yield from pending
            with self._changed:
                while self._state.revision <= seen and not self._closed.is_set():
                    self._changed.wait(WATCH_POLL)
                if self._closed.is_set():
                    return
                pending = self._state.events_since(prefix, seen + 1)
                seen = self._state.revision

    # --- leases ---------------------------------------------------------------------------

    def grant_lease(self, ttl: float) -> int:
        lease = int(self._apply({"op": "grant", "ttl": float(ttl), "now": self._clock()}))
        self._start_expirer()
        return lease

    def keep_alive(self, lease: int) -> None:
        self._apply({"op": "keep_alive", "lease": int(lease), "now": self._clock()})

    def revoke_lease(self, lease: int) -> None:
        self._apply({"op": "revoke", "lease": int(lease)})

    def _start_expirer(self) -> None:
        with self._changed:
            if self._expirer is None:
                self._expirer = threading.Thread(target=self._expire_leases, name="runink-barn-leases", daemon=True)
                self._expirer.start()

    def _expire_leases(self) -> None:
        while not self._closed.wait(self._lease_check_interval):
            now = self._clock()
            with self._changed:
                due = self._state.due_leases(now)
            if due:
                with contextlib.suppress(BarnError):  # closed meanwhile
                    self._apply({"op": "expire", "now": now})

    def close(self) -> None:
        self._closed.set()
        with self._changed:
            self._changed.notify_all()
        if self._expirer is not None:
            self._expirer.join(5)
