"""The Barn's patched pysyncobj keeps every acknowledged write; stock pysyncobj 0.3.17 does not.

A message-level simulation (tests/raft_sim.py): the test delivers, delays, duplicates and
reorders the nodes' messages itself, so the bad interleaving happens every time.
"""

from __future__ import annotations

import logging
import os
import select
import time
from typing import Any

import pysyncobj.syncobj as stock
import pytest
import raft_sim

import runink.plugins.barn.raft._vendor.pysyncobj.syncobj as patched


@pytest.mark.slow  # ~12 s: a check on the upstream library, not on the Barn (rerun it when pysyncobj changes)
def test_stock_pysyncobj_loses_acknowledged_writes() -> None:
    """Why the Barn ships a patched copy: if this starts passing on a new pysyncobj, drop the copy."""
    acknowledged, replicated = raft_sim.stale_append_loses_acknowledged_writes(stock)
    assert {1, 2, 3} <= set(acknowledged)  # the client was told 1, 2 and 3 are committed
    assert not {1, 2, 3} <= set(replicated)  # ...and the cluster lost some of them


def test_patched_pysyncobj_keeps_acknowledged_writes() -> None:
    acknowledged, replicated = raft_sim.stale_append_loses_acknowledged_writes(patched)
    assert acknowledged == [1, 2, 3, 4]
    assert replicated == [1, 2, 3, 4]


# One seed in the default run; the soak (`tox -e slow`) tries many more interleavings.
@pytest.mark.parametrize("seed", [1, *(pytest.param(seed, marks=pytest.mark.slow) for seed in range(2, 21))])
def test_patched_pysyncobj_under_message_chaos(seed: int) -> None:
    """Random delays, duplicates and reorders, then the leader is cut off: the survivors agree
    on one history that holds every acknowledged write."""
    acknowledged, values = raft_sim.chaos(patched, seed)
    assert -1 in acknowledged, "no write was acknowledged after the failover"
    histories = {tuple(v) for v in values.values()}
    assert len(histories) == 1, f"the survivors diverged: {values}"
    (history,) = histories
    assert set(acknowledged) <= set(history)
    assert len(history) == len(set(history))  # nothing applied twice


class _Poller:
    """Stands in for pysyncobj's poller: keeps what subscribes, and says whether a fd is readable."""

    def __init__(self) -> None:
        self.callbacks: dict[int, Any] = {}

    def subscribe(self, descr: int, callback: Any, mask: int) -> None:
        self.callbacks[descr] = callback

    def readable(self) -> list[int]:
        return [fd for fd in self.callbacks if select.select([fd], [], [], 0)[0]]


def test_the_tick_threads_wake_up_is_never_lost() -> None:
    """[runink fix] 10: another thread wakes the tick thread's poll through a pipe, one byte
    per wake-up. A wake-up asked for while the tick thread drains the pipe must not leave the
    waker believing a byte is pending when none is: every later wake-up would be skipped, and
    each write wait for the poll's timeout (it did, once, in a run of the Barn bench)."""
    syncobj = patched
    poller = _Poller()
    wake = syncobj._RuninkWake(poller)
    (fd,) = poller.callbacks
    drain = poller.callbacks[fd]
    wake.notify()
    wake.notify()  # (one byte for both)
    assert poller.readable() == [fd] and os.read(fd, 16) == b"w"
    os.write(wake._RuninkWake__write, b"w")  # put the byte back for the drain

    real_read = os.read
    interleaved = []

    def read_while_woken(descr: int, size: int) -> bytes:  # the other thread wakes mid-drain
        if not interleaved:
            interleaved.append(True)
            wake.notify()
        return real_read(descr, size)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(syncobj.os, "read", read_while_woken)
        drain(fd, 0)
    assert interleaved and poller.readable() == []
    wake.notify()  # a later wake-up is written
    assert poller.readable() == [fd]


def test_entries_sent_in_chunks_reach_every_follower(caplog: pytest.LogCaptureFixture) -> None:
    """An entry larger than appendEntriesBatchSizeBytes goes to followers in chunks. Stock
    pysyncobj marked the last one by the length of the entry's command, not of the pickled
    entry: where the pickle's few extra bytes crossed a chunk boundary, a follower unpickled a
    cut-short entry (an EOFError in its tick) at every resend, and could stay stuck for good
    (the soak test's group lost its quorum so). Three real nodes on loopback commit entries of
    every size around two chunks: every node applies them all, and no tick fails."""
    from pysyncobj import SyncObjConf

    from runink.core.ports import free_ports

    chunk = 4096

    class Sizes(patched.SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, others: list[str]) -> None:
            conf = SyncObjConf(appendEntriesBatchSizeBytes=chunk, dynamicMembershipChange=False)
            super().__init__(me, others, conf)
            self.sizes: list[int] = []

        @patched.replicated
        def add(self, value: bytes) -> int:
            self.sizes.append(len(value))
            return len(value)

    caplog.set_level(logging.ERROR, logger=patched.logger.name)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(3)]
    nodes = [Sizes(me, [a for a in addresses if a != me]) for me in addresses]
    try:
        deadline = time.monotonic() + 20
        while not any(node._isLeader() for node in nodes):
            assert time.monotonic() < deadline, "no leader elected"
            time.sleep(0.05)
        leader = next(node for node in nodes if node._isLeader())
        sizes = list(range(2 * chunk - 80, 2 * chunk + 8))  # (the pickle adds a few dozen bytes)
        for size in sizes:
            assert leader.add(b"x" * size, sync=True, timeout=10) == size
        deadline = time.monotonic() + 20
        while any(node.sizes != sizes for node in nodes):
            assert time.monotonic() < deadline, [len(node.sizes) for node in nodes]
            time.sleep(0.05)
    finally:
        for node in nodes:
            node.destroy()
    failed = [r for r in caplog.records if r.name == patched.logger.name and r.levelno >= logging.ERROR]
    assert not failed, [(r.getMessage(), r.exc_info[1] if r.exc_info else None) for r in failed[:3]]
