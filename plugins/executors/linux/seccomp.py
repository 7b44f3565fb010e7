"""The slices' seccomp filter: what a pipeline step never needs, denied with EPERM.

In the spirit of Docker's default profile, as a deny list (a step may run any Python or
program, so an allow list would break ordinary code): the kernel interfaces a data step has
no use for and that are the usual ways out of a sandbox or into another process.

The filter is built with libseccomp (through ``pyseccomp``) once, in the launcher, and
exported as BPF programs, in two parts so that a slice's start pays for almost none of it:

- the *warm* part (everything but what the payload still needs to set the slice up:
  ``mount``, ``move_mount``, ``unshare``) is loaded by the payload while it waits for its
  request (as root, before any code of a slice exists);
- the *final* part (those three) is loaded after the payload dropped its privileges, just
  before the slice's code runs, unless the slice entered a user namespace of its own, where
  it can make none of those calls anyway (no capability; no nested user namespace).

Filters stack, so the slice runs under both. Compiling with libseccomp in every slice cost
~0.4 ms of its start and loading the whole exported program ~0.12 ms (measured in forks of
the preloaded launcher); the final part is a few instructions. Syscalls of other ABIs
(i386, x32 on x86_64) are killed by libseccomp's architecture check.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import tempfile
from typing import Any

from runink.plugins.executors.linux.syscalls import check, libc

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# name -> why a step never needs it (docs/isolation.md lists the same)
DENIED_SYSCALLS: dict[str, str] = {
    "keyctl": "the kernel keyrings: another process's secrets",
    "add_key": "the kernel keyrings",
    "request_key": "the kernel keyrings",
    "ptrace": "tracing other processes",
    "process_vm_readv": "reading another process's memory",
    "process_vm_writev": "writing another process's memory",
    "pidfd_getfd": "taking another process's open files",
    "process_madvise": "advising on another process's memory",
    "kcmp": "comparing other processes' kernel resources",
    "bpf": "loading kernel programs",
    "perf_event_open": "kernel performance counters (side channels, kernel bugs)",
    "userfaultfd": "pausing the kernel on a page fault (a common exploit aid)",
    "io_uring_setup": "io_uring (bypasses this filter for the operations it submits)",
    "io_uring_enter": "io_uring",
    "io_uring_register": "io_uring",
    "kexec_load": "replacing the kernel",
    "kexec_file_load": "replacing the kernel",
    "reboot": "rebooting the host",
    "init_module": "loading kernel modules",
    "finit_module": "loading kernel modules",
    "delete_module": "unloading kernel modules",
    "mount": "mounting file systems",
    "umount2": "unmounting file systems",
    "pivot_root": "changing the root file system",
    "open_tree": "the new mount API",
    "move_mount": "the new mount API",
    "fsopen": "the new mount API",
    "fsconfig": "the new mount API",
    "fsmount": "the new mount API",
    "fspick": "the new mount API",
    "mount_setattr": "the new mount API",
    "unshare": "new namespaces",
    "setns": "entering other namespaces",
    "open_by_handle_at": "opening files by handle, around the mount tree",
    "name_to_handle_at": "file handles",
    "swapon": "swap",
    "swapoff": "swap",
    "syslog": "the kernel log",
    "acct": "process accounting",
    "quotactl": "disk quotas",
    "quotactl_fd": "disk quotas",
    "settimeofday": "setting the host clock",
    "clock_settime": "setting the host clock",
    "clock_adjtime": "adjusting the host clock",
    "iopl": "raw I/O ports",
    "ioperm": "raw I/O ports",
    "lookup_dcookie": "kernel profiling",
    "vhangup": "hanging up terminals",
    "uselib": "obsolete",
    "_sysctl": "obsolete",
    "ustat": "obsolete",
    "sysfs": "obsolete",
}
# calls answered with another error than EPERM: fallocate took gigabytes of a file the slice
# holds on the host (its log, its status file) at once, between two of the executor's checks
# (a review); EOPNOTSUPP, as a file system without it answers, makes glibc's posix_fallocate
# write instead, as fast as the cap's checks follow
OTHER_ERRNO_SYSCALLS: dict[str, tuple[int, str]] = {
    "fallocate": (errno.EOPNOTSUPP, "taking disk blocks at once (answered EOPNOTSUPP: posix_fallocate writes)"),
}
# ioctl requests denied whatever the fd: typing into a terminal, the Linux console's extras
DENIED_IOCTLS: dict[str, int] = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C}
# clone/clone3 flags that create namespaces (clone3 is denied outright with ENOSYS, as Docker
# does: its flags are in memory a filter cannot read, and libc falls back to clone)
NAMESPACE_CLONE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080,
}


# What the payload needs after its request, as root, to finish the sandbox: denied by the final part.
SETUP_SYSCALLS = ("mount", "move_mount", "unshare")


class SeccompUnavailable(Exception):
    """libseccomp (or its Python binding) is missing."""


def build_program(part: str = "all") -> bytes:
    """The filter as a classic BPF program (``struct sock_filter`` array), built with libseccomp:
    ``all`` of it, the ``warm`` part (all but SETUP_SYSCALLS) or the ``final`` part (those)."""
    if part not in ("all", "warm", "final"):
        raise ValueError(f"unknown filter part {part!r}")
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:  # the binding, or libseccomp.so.2 itself
        raise SeccompUnavailable(f"libseccomp unavailable: {exc}") from exc
    deny = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    if part == "final":
        for name in SETUP_SYSCALLS:
            rules.add_rule(deny, name)
        return _export(rules)
    for name in DENIED_SYSCALLS:
        if part == "warm" and name in SETUP_SYSCALLS:
            continue
        try:
            rules.add_rule(deny, name)
        except (RuntimeError, ValueError, OSError):  # not a syscall of this architecture
            continue
    for name, (number, _why) in OTHER_ERRNO_SYSCALLS.items():
        rules.add_rule(seccomp.ERRNO(number), name)
    for request in DENIED_IOCTLS.values():  # the request is an unsigned int: compare the low 32 bits
        rules.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, request))
    flags_arg = 1 if platform.machine() in ("s390", "s390x") else 0  # clone(stack, flags, ...) there
    for flag in NAMESPACE_CLONE_FLAGS.values():
        rules.add_rule(deny, "clone", seccomp.Arg(flags_arg, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return _export(rules)


def _export(rules: Any) -> bytes:
    with tempfile.TemporaryFile() as out:
        rules.export_bpf(out)
        out.seek(0)
        return out.read()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class LoadableFilter:
    """A BPF program ready to load with one prctl: its buffers are made up front (in the
    launcher, before the fork) so the slice's start allocates nothing for it."""

    def __init__(self, program: bytes) -> None:
        if not program or len(program) % 8:
            raise ValueError("not a BPF program (a whole number of 8-byte instructions)")
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // 8, ctypes.addressof(self._buffer))
        self._prctl = libc.prctl  # (looked up once, before any fork: syscalls.py)

    def warm_up(self) -> None:
        """Make this object's first use cheap in a fork (a harmless prctl through the same path)."""
        self._prctl(21, 0, 0, 0, 0)  # PR_GET_SECCOMP

    def load(self) -> None:
        """Install the filter on this process (no_new_privs must be set, or CAP_SYS_ADMIN held);
        every child and every program it execs keeps it."""
        check(
            self._prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self._fprog), 0, 0), "prctl(PR_SET_SECCOMP)"
        )
