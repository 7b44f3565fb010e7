"""The linux driver's head start: its Python launcher started before any executor is built.

``runink run`` calls ``start`` at its beginning, when its last run with the same config used
this driver (``LinuxExecutor.prestart_entry``): it imports this module only, not the driver's,
so the launcher starts ~55 ms sooner and imports the slices' runtime while the CLI loads its
config. The first executor built takes the launcher over (``take``) and sends it the rest of
its arguments; one nobody takes over ends with the command (the end of its input).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

LAUNCHER_MODULE = "runink.plugins.executors.linux.launcher"
#: the variables of this process's environment a launcher gets (nothing else of it: the slices'
#: environments are their requests'): Arrow's allocator, read when the launcher imports pyarrow
PASSED_ON = ("ARROW_DEFAULT_MEMORY_POOL",)

#: the launcher ``start`` started, until an executor takes it over
_started: subprocess.Popen[str] | None = None
_lock = threading.Lock()


def launcher_popen(command: list[str]) -> subprocess.Popen[str]:
    """Start a launcher (``command``) with pipes for its requests and events."""
    # In a process group of its own: a signal for this process's group (Ctrl-C on a
    # terminal, a service manager's SIGTERM) is this process's to act on; a launcher
    # killed by it mid-request would leave slices half-started. It ends with its stdin.
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": os.defpath, **{k: os.environ[k] for k in PASSED_ON if k in os.environ}},
        process_group=0,
    )


#: what a prestarted launcher may preload: Runink's own modules and pyarrow's (the names come
#: from the CLI's index; another module named there was imported by the launcher, as root)
_PRELOADABLE = re.compile(r"(pyarrow|runink)(\.[A-Za-z_][A-Za-z0-9_]*)*")


def start(*preload: str) -> None:
    """Start the Python launcher now, importing ``preload`` (~0.25 s), to await its other
    arguments (``launcher --await-config``). Only as root (else no executor can use it); once.
    A module not of Runink's own or pyarrow's is left out."""
    global _started
    if os.geteuid() != 0:
        return
    preload = tuple(name for name in preload if _PRELOADABLE.fullmatch(name))
    with _lock:
        if _started is None:
            _started = launcher_popen(
                [sys.executable, "-m", LAUNCHER_MODULE, "--await-config", "--preload", ",".join(preload)]
            )


# what runink run may call from its index (core.cli.prestart.prestart_function, whose module
# this one does not import: it is imported first thing, by every executor too)
start.__runink_prestart__ = True  # type: ignore[attr-defined]


def take() -> subprocess.Popen[str] | None:
    """The launcher ``start`` started, for the first executor that asks (None after that)."""
    global _started
    with _lock:
        launcher, _started = _started, None
    return launcher
