"""Stopping a long-running process on SIGTERM/SIGINT, whichever of its threads gets the signal.

Python runs a signal's handler in the main thread, between two bytecodes, whatever that thread
is doing: a handler that takes a lock the main thread holds there deadlocks. Setting a
``threading.Event`` from a handler did, now and then, while the main thread was inside a wait
on that same Event (a Barn member ignored SIGTERM for good). And when the kernel hands the
signal to another thread, the handler waits until the main thread next wakes.

So the handlers here take no lock: the signal's number reaches a pipe through Python's
C-level wakeup fd (``signal.set_wakeup_fd``, written at once by whichever thread got the
signal; the Python-level handler writes it again), and a thread of its own reads it and sets
an Event, as an ordinary thread, holding no lock of the main thread's.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading

#: a stop that takes longer than this (seconds from the signal) writes every thread's stack
#: to stderr, once: where a slow stop hangs is in the process's log
SLOW_STOP_REPORT = 3.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal(threading.Event):
    """Set when one of its signals came; ``came`` is the first of them."""

    came: signal.Signals | None = None


def stop_event(signals: tuple[signal.Signals, ...] = STOP_SIGNALS, slow_after: float | None = None) -> StopSignal:
    """An Event set when one of ``signals`` arrives. Call from the main thread (Python lets only
    it set handlers), once per process: it takes the process's one wakeup fd. Once set, a stop
    that takes more than ``slow_after`` seconds (default SLOW_STOP_REPORT; longer for a
    process that drains) writes every thread's stack to stderr, once; the process goes on
    stopping."""
    stop = StopSignal()
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_end, False)  # (the C handler must never block: a full pipe drops bytes)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    wanted = {int(s): s for s in signals}

    def again(signum: int, _frame: object) -> None:
        """(the Python-level handler, in the main thread when it next runs) The number once
        more, lock-free: should other code take the wakeup fd over, the signal still arrives."""
        with contextlib.suppress(OSError):
            os.write(write_end, bytes([signum]))

    def watch() -> None:
        while True:
            try:
                data = os.read(read_end, 64)
            except InterruptedError:
                continue
            if not data:
                return
            came = [wanted[number] for number in data if number in wanted]
            if came and not stop.is_set():
                stop.came = came[0]
                report = SLOW_STOP_REPORT if slow_after is None else slow_after
                faulthandler.dump_traceback_later(report, exit=False, file=sys.stderr)
                stop.set()

    threading.Thread(target=watch, daemon=True, name="stop-signals").start()
    for signum in signals:
        signal.signal(signum, again)
    return stop
