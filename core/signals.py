"""Waiting, in a long-running process's main thread, for the signal that stops it."""

from __future__ import annotations

import signal
import threading

#: seconds between the main thread's looks at whether a stop signal came
LOOK_EVERY = 0.5


def wait_for_stop(signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> signal.Signals:
    """Block the main thread until one of ``signals`` arrives; returns it. Waits in slices of
    LOOK_EVERY seconds, not at once: the kernel may hand a process's signal to any of its
    threads (a member or server has many), which only notes it, and Python runs the handler in
    the main thread when that thread next wakes; an untimed wait might never wake (seen after a
    SIGSTOP/SIGCONT: SIGTERM ignored for good)."""
    came: list[signal.Signals] = []
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        came.append(signal.Signals(signum))
        stop.set()

    for signum in signals:
        signal.signal(signum, handler)
    while not stop.wait(LOOK_EVERY):
        pass
    return came[0]
