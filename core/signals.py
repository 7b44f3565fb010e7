"""Waiting, in a long-running process's main thread, for the signal that stops it."""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading

#: seconds between the main thread's looks at whether a stop signal came
LOOK_EVERY = 0.5
#: a stop that takes longer than this (seconds from the signal) writes every thread's stack
#: to stderr, once: where a slow stop hangs is in the process's log
SLOW_STOP_REPORT = 3.0


def wait_for_stop(signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> signal.Signals:
    """Block the main thread until one of ``signals`` arrives; returns it. Waits in slices of
    LOOK_EVERY seconds, not at once: the kernel may hand a process's signal to any of its
    threads (a member or server has many), which only notes it, and Python runs the handler in
    the main thread when that thread next wakes; an untimed wait might never wake (seen after a
    SIGSTOP/SIGCONT: SIGTERM ignored for good). Once the signal came, a stop that then takes
    more than SLOW_STOP_REPORT seconds writes every thread's stack to stderr (the process goes
    on stopping)."""
    came: list[signal.Signals] = []
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        came.append(signal.Signals(signum))
        stop.set()

    for signum in signals:
        signal.signal(signum, handler)
    while not stop.wait(LOOK_EVERY):
        pass
    faulthandler.dump_traceback_later(SLOW_STOP_REPORT, exit=False, file=sys.stderr)
    return came[0]
