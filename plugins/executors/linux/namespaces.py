"""Which Linux namespaces this process may create, probed for real (in a child process).

Python 3.11 has no ``os.unshare``, so the probe calls libc's ``unshare(2)`` through ctypes in a
short-lived child: the calling process (an agent, the CLI) stays untouched.
"""

from __future__ import annotations

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

# One child probes every kind asked for, each in a fork of its own (a fresh process per probe,
# as if each had its own child, for ~1 ms instead of a Python start each): "NAME\tREASON" lines,
# REASON empty when the kernel allowed it.
_PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for name, flag in zip(sys.argv[1::2], sys.argv[2::2]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        if libc.unshare(int(flag)) != 0:
            os.write(write, os.strerror(ctypes.get_errno()).encode())
            os._exit(1)
        os._exit(0)
    os.close(write)
    reason = os.read(read, 512).decode(errors="replace").replace("\\t", " ").replace("\\n", " ")
    os.close(read)
    status = os.waitpid(pid, 0)[1]
    print(name + "\\t" + ("" if status == 0 else reason or "refused"), flush=True)
"""


PROBE_TIMEOUT = 10.0  # seconds a probe's child may take


class _Child:
    """A probe's child process, started at once: the caller does other work while it runs
    (a Python start is ~25 ms) and reads ``answer()`` when it needs it."""

    def __init__(self, script: str, args: list[str]) -> None:
        self.failure: str | None = None
        self.process: subprocess.Popen[str] | None = None
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-S", "-c", script, *args],
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


class NamespaceProbe:
    """``probe_many`` started now, answered by ``result()``."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._child = _Child(_PROBE, [str(part) for name in names for part in (name, NAMESPACE_FLAGS[name])])

    def result(self) -> dict[str, str | None]:
        """Each namespace kind -> None (permitted here) or the reason it is not."""
        answer = self._child.answer()
        if isinstance(answer, str):
            return dict.fromkeys(self.names, answer)
        _, out, err = answer
        found: dict[str, str | None] = {}
        for line in out.splitlines():
            name, _, reason = line.partition("\t")
            if name in self.names:
                found[name] = reason.strip() or None  # the kernel's reason, e.g. "Operation not permitted"
        lines = err.strip().splitlines()
        failure = lines[-1] if lines else "refused"
        return {name: found.get(name, failure) for name in self.names}


def probe(name: str) -> str | None:
    """None when the namespace can be created here, else the reason (the kernel's error)."""
    return probe_many([name])[name]


def probe_many(names: list[str]) -> dict[str, str | None]:
    """Each namespace kind of ``names`` -> None (permitted here) or the reason it is not."""
    return NamespaceProbe(names).result()


_PROBE_UNPRIVILEGED_USER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
if libc.unshare(0x10000000) != 0:
    print(os.strerror(ctypes.get_errno()))
    sys.exit(1)
"""


class UnprivilegedUserProbe:
    """Whether an unprivileged process (a slice, after it dropped root) may create a user
    namespace here, started now; needs root to drop from."""

    def __init__(self) -> None:
        self._child = _Child(_PROBE_UNPRIVILEGED_USER, [])

    def result(self) -> str | None:
        """None if it may, else the reason."""
        answer = self._child.answer()
        if isinstance(answer, str):
            return answer
        status, out, err = answer
        if status == 0:
            return None
        lines = (out.strip() or err.strip() or "refused").splitlines()
        return f"unprivileged user namespaces refused: {lines[-1]}"


def probe_unprivileged_user() -> str | None:
    """(``UnprivilegedUserProbe``, waited for)"""
    return UnprivilegedUserProbe().result()


def probe_all() -> dict[str, str | None]:
    """Every namespace kind -> None (permitted) or the reason it is not."""
    return probe_many(list(NAMESPACE_FLAGS))
