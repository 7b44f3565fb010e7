"""How a Runink program ends (the `runink` script, the linux executor's launcher): once
everything an exit runs that matters has run, without the interpreter's teardown of its modules.

That teardown frees every object of every module (pyarrow, pydantic, rich ...) one by one:
~12-20 ms after the last line of a `runink exec`, ~46 ms after that of a `runink run` of 1M
rows (strace: last write to exit_group), ~15 ms at a launcher's end, time nobody waits for
usefully, as the kernel takes the memory back at once anyway. What an exit does that matters
runs first, in the interpreter's own order: the wait for the threads that are not daemons,
with the threading module's exit hooks (a ThreadPoolExecutor's workers are told to stop), then
the ``atexit`` functions (logging's flush, weakref finalizers such as a TemporaryDirectory's
removal), then the standard streams are flushed. Only a program's entry point ends this way:
a caller of the CLI's ``main(argv)`` gets SystemExit as usual.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import NoReturn


def end_now(status: int) -> NoReturn:
    """End the process with ``status`` (see the module's docstring)."""
    threading = sys.modules.get("threading")
    shutdown = getattr(threading, "_shutdown", None)
    if threading is not None and shutdown is None:  # (a Python without it: the ordinary exit)
        sys.exit(status)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # (a reader that went away: nothing more to say)
            stream.flush()
    os._exit(status)
