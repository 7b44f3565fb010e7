"""Which Linux namespaces this process may create, probed for real (in a child process).

Python 3.11 has no ``os.unshare``, so the probe calls libc's ``unshare(2)`` through ctypes in a
short-lived child: the calling process (an agent, the CLI) stays untouched. A process with one
thread (the CLI) forks that child from itself (~1 ms a probe); one with more (an agent: its
gRPC threads, whose locks a fork would copy held) starts a Python child (~25 ms) that runs this
module's same probe, forking itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

# unshare(2) flags
NAMESPACE_FLAGS = {
    "pid": 0x20000000,  # CLONE_NEWPID
    "mount": 0x00020000,  # CLONE_NEWNS
    "uts": 0x04000000,  # CLONE_NEWUTS
    "ipc": 0x08000000,  # CLONE_NEWIPC
    "net": 0x40000000,  # CLONE_NEWNET
    "user": 0x10000000,  # CLONE_NEWUSER
}

# The Python child of a process with threads: this module's file run (standard library only,
# no site: ``-S``), its _forked_unshare's answer printed as JSON. Arguments: the module's path,
# "1" to drop to nobody first, the kinds.
_CHILD = """
import json, runpy, sys
probe = runpy.run_path(sys.argv[1])["_forked_unshare"]
print(json.dumps(probe(sys.argv[3:], as_nobody=sys.argv[2] == "1")))
"""


PROBE_TIMEOUT = 10.0  # seconds a probe's child may take


class _Child:
    """A probe's child process, started at once: the caller does other work while it runs
    (a Python start is ~25 ms) and reads ``answer()`` when it needs it."""

    def __init__(self, args: list[str]) -> None:
        self.failure: str | None = None
        self.process: subprocess.Popen[str] | None = None
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-S", "-c", _CHILD, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as exc:
            self.failure = f"probe failed: {exc}"

    def answer(self) -> tuple[int, str, str] | str:
        """(exit status, stdout, stderr), or why there is none."""
        if self.process is None:
            return self.failure or "probe failed"
        try:
            out, err = self.process.communicate(timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            self.process.kill()
            self.process.communicate()
            return f"probe failed: {exc}"
        return self.process.returncode, out, err


REASON_MAX = 512  # bytes of a forked probe's reason read


def _single_threaded() -> bool:
    """Whether this process has one thread: a fork of it then copies no lock another holds."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _forked_unshare(names: list[str], *, as_nobody: bool = False) -> dict[str, str | None]:
    """Each kind of ``names`` -> None if ``unshare(2)`` of it was allowed in a fork of this
    (single-threaded) process, else the kernel's reason. One fork tries them all, ``user``
    last (in a new user namespace the others would be allowed); ``as_nobody``: after dropping
    root as a slice does."""
    order = sorted(names, key=lambda name: name == "user")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only these calls, then _exit (never back into the caller's code)
        try:
            os.close(read)
            if as_nobody:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
            libc = ctypes.CDLL(None, use_errno=True)
            for name in order:
                refused = os.strerror(ctypes.get_errno()) if libc.unshare(NAMESPACE_FLAGS[name]) != 0 else ""
                os.write(write, f"{name}\t{refused}\n".encode())
        except BaseException as exc:
            os.write(write, f"\t{type(exc).__name__}: {exc}\n".encode()[:REASON_MAX])
        finally:
            os._exit(0)
    os.close(write)
    chunks: list[bytes] = []
    try:
        while (chunk := os.read(read, REASON_MAX)) and sum(map(len, chunks)) < REASON_MAX * len(names):
            chunks.append(chunk)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    found: dict[str, str] = {}
    failure = "refused"
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        name, _, reason = line.partition("\t")
        if not name:
            failure = reason.strip() or failure
        elif name in names:
            found[name] = reason.strip()
    return {name: (found[name] or None) if name in found else failure for name in names}


class _Probe:
    """``_forked_unshare(names, as_nobody=...)`` started now (in a Python child where this
    process has threads), answered by ``found()``."""

    def __init__(self, names: list[str], *, as_nobody: bool = False) -> None:
        self.names = names
        self._found: dict[str, str | None] = {}
        self._child: _Child | None = None
        if _single_threaded():
            self._found = _forked_unshare(names, as_nobody=as_nobody)
        else:
            self._child = _Child([__file__, "1" if as_nobody else "0", *names])

    def found(self) -> dict[str, str | None]:
        """Each kind -> None (permitted here) or the reason it is not."""
        if self._child is None:
            return dict(self._found)
        answer = self._child.answer()
        if isinstance(answer, str):
            return dict.fromkeys(self.names, answer)
        _, out, err = answer
        try:
            found = json.loads(out)
        except ValueError:
            found = None
        if not isinstance(found, dict):
            lines = err.strip().splitlines()
            return dict.fromkeys(self.names, lines[-1] if lines else "refused")
        return {name: None if found.get(name) is None else str(found[name]) for name in self.names}


class NamespaceProbe(_Probe):
    """``probe_many`` started now, answered by ``result()``."""

    def result(self) -> dict[str, str | None]:
        """Each namespace kind -> None (permitted here) or the reason it is not."""
        return self.found()


def probe(name: str) -> str | None:
    """None when the namespace can be created here, else the reason (the kernel's error)."""
    return probe_many([name])[name]


def probe_many(names: list[str]) -> dict[str, str | None]:
    """Each namespace kind of ``names`` -> None (permitted here) or the reason it is not."""
    return NamespaceProbe(names).result()


class UnprivilegedUserProbe(_Probe):
    """Whether an unprivileged process (a slice, after it dropped root) may create a user
    namespace here, started now; needs root to drop from."""

    def __init__(self) -> None:
        super().__init__(["user"], as_nobody=True)

    def result(self) -> str | None:
        """None if it may, else the reason."""
        refused = self.found()["user"]
        return None if refused is None else f"unprivileged user namespaces refused: {refused}"


def probe_unprivileged_user() -> str | None:
    """(``UnprivilegedUserProbe``, waited for)"""
    return UnprivilegedUserProbe().result()


def probe_all() -> dict[str, str | None]:
    """Every namespace kind -> None (permitted) or the reason it is not."""
    return probe_many(list(NAMESPACE_FLAGS))
