"""cgroups for slices, on cgroup v2 (unified) and v1 (one hierarchy per controller).

A slice gets its own cgroup under the cgroup of the process that runs it (so an agent run by
systemd works), below a ``runink`` parent: ``<own cgroup>/runink/<slice id>``. Limits are
written before any process joins, processes join through ``cgroup.procs``, usage is read at
the end, and the cgroup is removed (after killing what is left) when the slice ends.

A herd's slices (a TaskSpec with ``herd_limits``) go one level deeper, under that herd's own
parent capped at its quota: ``<own cgroup>/runink/herd-<name>/<slice>`` (cpu, memory, pids:
whatever caps the caller gives). Several processes make and remove these parents (the
executor and its two launchers), so nothing assumes who was first: the parent is made on
first use (``mkdir`` finding it made is fine) and whoever made it writes the caps; whoever
makes a child under it then checks the caps are in place, once the child exists (it pins
the parent: no one can remove it and make it again uncapped meanwhile), and writes them if
not (the maker may not have yet), so no slice runs under an uncapped parent; a start that
brings other caps (a changed quota) writes them. It is removed once empty
(``remove_herd_if_empty``, by whoever removed a child of it: the kernel refuses the rmdir
while another child is there), and a ``mkdir`` (or write) that finds the parent removed
that moment makes it again.

v2 keeps the "no internal processes" rule: controllers can only be enabled for a cgroup's
children when it holds no process itself, so on v2 ``prepare`` first moves the calling
process into ``<own>/runink-agent`` (a leaf), then enables cpu/memory/pids on ``<own>`` and
on ``<own>/runink``. On v1 each controller has its own hierarchy and none of that applies.

Everything takes a root (``/sys/fs/cgroup``) and a ``/proc`` path so tests can drive a fake
tree; on this project's CI machine v1 runs for real (v2 there has no controllers).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

CONTROLLERS = ("cpu", "memory", "pids", "cpuset")
# v1 keeps cpu usage in its own controller (often co-mounted with cpu, here separate).
V1_CONTROLLERS = (*CONTROLLERS, "cpuacct")
CPU_PERIOD_US = 100_000
HERD_PREFIX = "herd-"
# the Barn's rule for names (records.check_name), checked again here: the name becomes a path
_HERD_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file and the limit."""


@dataclass(frozen=True)
class CgroupLimits:
    cpu: float = 0.0  # cores (0: unlimited)
    memory: int = 0  # bytes (0: unlimited)
    pids: int = 0  # max processes (0: unlimited)
    cpuset: str | None = None  # e.g. "0-1"


@dataclass(frozen=True)
class CgroupUsage:
    cpu_seconds: float
    memory_peak: int
    memory_current: int
    oom_kills: int
    pids_current: int


@dataclass(frozen=True)
class CgroupLayout:
    """What the machine has: the version in use and, per controller, the directory of our own cgroup."""

    version: int  # 2 or 1
    own: dict[str, Path] = field(default_factory=dict)  # controller -> our cgroup's directory
    missing: dict[str, str] = field(default_factory=dict)  # controller -> why it cannot be used

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(c for c in V1_CONTROLLERS if c in self.own)


def _mountinfo(proc: Path) -> list[tuple[str, str, str, list[str]]]:
    """(mount root, mount point, fs type, super options) of every cgroup mount of this process."""
    mounts = []
    for line in (proc / "self" / "mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append((fields[3], fields[4], rest[0], rest[2].split(",")))
    return mounts


def _own_paths(proc: Path) -> dict[str, str]:
    """controller (or "" for v2) -> our cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in (proc / "self" / "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _join(mount_point: str, mount_root: str, path: str) -> Path:
    relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else path.lstrip("/")
    return Path(mount_point) / ("" if relative == "." else relative)


def detect(proc: Path = Path("/proc"), fs_root: Path | None = None) -> CgroupLayout:
    """Find the cgroup version in use and our own cgroup for each controller.

    v2 wins when its mount lists the controllers (pure v2, or a hybrid that gave them to v2);
    otherwise v1 controllers are used. ``fs_root`` re-roots mount points (fake trees in tests).
    """
    mounts = _mountinfo(proc)
    own = _own_paths(proc)

    def place(point: str) -> Path:
        return Path(str(fs_root) + point) if fs_root is not None else Path(point)

    for root, point, fstype, _options in mounts:
        if fstype != "cgroup2":
            continue
        base = _join(str(place(point)), root, own.get("", "/"))
        try:
            enabled = set((place(point) / "cgroup.controllers").read_text().split())
        except OSError:
            enabled = set()
        if {"memory", "pids"} <= enabled:
            found = {c: base for c in CONTROLLERS if c in enabled}
            missing = {c: "not enabled in the cgroup v2 hierarchy" for c in CONTROLLERS if c not in enabled}
            return CgroupLayout(2, found, missing)
    found, missing = {}, {}
    for controller in V1_CONTROLLERS:
        mount = next(((r, p) for r, p, t, opts in mounts if t == "cgroup" and controller in opts), None)
        if mount is None:
            missing[controller] = "no cgroup v1 hierarchy has it and cgroup v2 does not offer it"
            continue
        found[controller] = _join(str(place(mount[1])), mount[0], own.get(controller, "/"))
    return CgroupLayout(1, found, missing)


def herd_dir_name(herd: str) -> str:
    """The directory of ``herd``'s parent, ``herd-<name>``. Refuses anything but a plain name of
    1-63 characters (a ``/`` or ``..`` would put the cgroup somewhere else)."""
    if not isinstance(herd, str) or not _HERD_NAME.fullmatch(herd) or ".." in herd:
        raise CgroupError(
            f"herd {herd!r}: not usable as a cgroup name (expected 1-63 of a-z 0-9 . _ -, "
            "starting and ending with a letter or digit, no '..')"
        )
    return HERD_PREFIX + herd


class _Gone(CgroupError):
    """The cgroup written to was removed (a herd parent removed as empty, by another process)."""


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        error = _Gone if exc.errno in (errno.ENOENT, errno.ENODEV) else CgroupError  # (ENODEV: being removed)
        raise error(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def _read_text(path: Path) -> str:
    """A cgroup file's text; _Gone when its cgroup was removed (or is being: ENODEV)."""
    try:
        return path.read_text().strip()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            raise _Gone(f"cannot read {path}: {exc.strerror}") from None
        raise


def _read_int(path: Path, default: int = 0) -> int:
    try:
        text = path.read_text().strip()
    except OSError:
        return default
    return default if text in ("", "max") else int(text)


def _read_keyed(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


PIN_BATCH = 256  # processes pinned (a pidfd each) at once by SliceCgroup.send_signal


class SliceCgroup:
    """One slice's cgroup (one directory per controller on v1, one directory on v2)."""

    def __init__(self, layout: CgroupLayout, dirs: dict[str, Path]) -> None:
        self.layout = layout
        self.dirs = dirs  # controller -> directory

    @property
    def procs_files(self) -> list[Path]:
        return sorted({d / "cgroup.procs" for d in self.dirs.values()})

    def apply(self, limits: CgroupLimits) -> None:
        """Write the limits; a limit asked for on a missing controller is an error naming it."""
        for name, wanted in (
            ("cpu", limits.cpu),
            ("memory", limits.memory),
            ("pids", limits.pids),
            ("cpuset", limits.cpuset),
        ):
            if wanted and name not in self.dirs:
                raise CgroupError(
                    f"{name} limit requested but the {name} controller is unavailable: "
                    f"{self.layout.missing.get(name, 'unknown')}"
                )
        v2 = self.layout.version == 2
        if limits.cpu:
            quota = max(1000, int(limits.cpu * CPU_PERIOD_US))
            if v2:
                _write(self.dirs["cpu"] / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(quota))
        if limits.memory:
            if v2:
                _write(self.dirs["memory"] / "memory.max", str(limits.memory))
                if (self.dirs["memory"] / "memory.swap.max").exists():
                    _write(self.dirs["memory"] / "memory.swap.max", "0")
            else:
                _write(self.dirs["memory"] / "memory.limit_in_bytes", str(limits.memory))
                memsw = self.dirs["memory"] / "memory.memsw.limit_in_bytes"
                if memsw.exists():  # no swapping past the limit either
                    _write(memsw, str(limits.memory))
                _limit_tcp(self.dirs["memory"], limits.memory)
        if limits.pids:
            _write(self.dirs["pids"] / "pids.max", str(limits.pids))
        if not v2 and "cpuset" in self.dirs:
            # v1 cpusets start empty and no task can join an empty one: inherit the parent's
            # cpus and mems unless a cpuset was asked for.
            parent = self.dirs["cpuset"].parent
            _write(self.dirs["cpuset"] / "cpuset.mems", (parent / "cpuset.mems").read_text().strip())
            cpus = limits.cpuset or (parent / "cpuset.cpus").read_text().strip()
            _write(self.dirs["cpuset"] / "cpuset.cpus", cpus)
        elif limits.cpuset:
            _write(self.dirs["cpuset"] / "cpuset.cpus", limits.cpuset)

    def update(self, limits: CgroupLimits, previous: CgroupLimits) -> None:
        """Change the limits from ``previous`` to ``limits``, writing only what differs
        (a limit back to 0 means unlimited again)."""
        if limits == previous:
            return
        v2 = self.layout.version == 2
        for name, wanted in (("cpu", limits.cpu), ("memory", limits.memory), ("pids", limits.pids)):
            if wanted and name not in self.dirs:
                raise CgroupError(
                    f"{name} limit requested but the {name} controller is unavailable: "
                    f"{self.layout.missing.get(name, 'unknown')}"
                )
        if limits.cpu != previous.cpu:
            quota = max(1000, int(limits.cpu * CPU_PERIOD_US)) if limits.cpu else 0
            if v2:
                _write(self.dirs["cpu"] / "cpu.max", f"{quota or 'max'} {CPU_PERIOD_US}")
            else:
                _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(quota or -1))
        if limits.memory != previous.memory:
            memory = self.dirs["memory"]
            if v2:
                _write(memory / "memory.max", str(limits.memory or "max"))
                if (memory / "memory.swap.max").exists():
                    _write(memory / "memory.swap.max", "0" if limits.memory else "max")
            else:
                value = str(limits.memory or -1)
                files = [memory / "memory.limit_in_bytes"]
                if (memory / "memory.memsw.limit_in_bytes").exists():
                    files.append(memory / "memory.memsw.limit_in_bytes")
                # memsw may never be below the memory limit: lower memory first, raise memsw first
                raising = not limits.memory or (previous.memory and limits.memory > previous.memory)
                for path in reversed(files) if raising else files:
                    _write(path, value)
                _limit_tcp(memory, limits.memory)
        if limits.pids != previous.pids:
            _write(self.dirs["pids"] / "pids.max", str(limits.pids or "max"))
        if limits.cpuset != previous.cpuset and "cpuset" in self.dirs:
            parent = self.dirs["cpuset"].parent
            cpus = limits.cpuset or (parent / "cpuset.cpus").read_text().strip()
            _write(self.dirs["cpuset"] / "cpuset.cpus", cpus)

    def attach(self, pid: int) -> None:
        for procs in self.procs_files:
            _write(procs, str(pid))

    def pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(x) for x in procs.read_text().split())
        return sorted(found)

    def usage(self) -> CgroupUsage:
        if self.layout.version == 2:
            cpu = _read_keyed(self.dirs["cpu"] / "cpu.stat").get("usage_usec", 0) / 1e6 if "cpu" in self.dirs else 0.0
            memory = self.dirs.get("memory")
            peak = _read_int(memory / "memory.peak") if memory else 0
            current = _read_int(memory / "memory.current") if memory else 0
            ooms = _read_keyed(memory / "memory.events").get("oom_kill", 0) if memory else 0
            pids = _read_int(self.dirs["pids"] / "pids.current") if "pids" in self.dirs else 0
            return CgroupUsage(cpu, peak, current, ooms, pids)
        cpuacct = self.dirs.get("cpuacct")
        usage_ns = _read_int(cpuacct / "cpuacct.usage") if cpuacct else 0
        memory = self.dirs.get("memory")
        peak = _read_int(memory / "memory.max_usage_in_bytes") if memory else 0
        current = _read_int(memory / "memory.usage_in_bytes") if memory else 0
        ooms = _read_keyed(memory / "memory.oom_control").get("oom_kill", 0) if memory else 0
        pids = _read_int(self.dirs["pids"] / "pids.current") if "pids" in self.dirs else 0
        return CgroupUsage(usage_ns / 1e9, peak, current, ooms, pids)

    def send_signal(self, signum: int, pids: list[int] | None = None) -> None:
        """Send ``signum`` to every process in the cgroup, and to no other.

        A pid read from cgroup.procs may be another process's by the time it is signalled: the
        one read ended, was reaped (by the slice's init) and its number was given again, which
        takes no time where pids wrap early (``kernel.pid_max`` is 32768 on many hosts). So each
        is pinned first (a pidfd), cgroup.procs read again, and only a pid still listed there is
        signalled, through its pidfd: the process the pidfd holds either still had that pid then
        (it is this cgroup's) or has ended (the signal goes nowhere). ``pids``: cgroup.procs as
        the caller has just read it."""
        pids = self.pids() if pids is None else pids
        for start in range(0, len(pids), PIN_BATCH):  # (a slice may hold more processes than this may hold fds)
            self._send_pinned(pids[start : start + PIN_BATCH], signum)

    def _send_pinned(self, pids: list[int], signum: int) -> None:
        pinned: dict[int, int] = {}
        try:
            for pid in pids:
                try:
                    pinned[pid] = os.pidfd_open(pid)
                except ProcessLookupError:  # (ended already)
                    continue
                except OSError as exc:
                    if exc.errno != errno.ENOSYS:
                        raise
                    with contextlib.suppress(ProcessLookupError):  # (a kernel before 5.3: the old way)
                        os.kill(pid, signum)
            still = set(self.pids()) if pinned else set()
            for pid, pidfd in pinned.items():
                if pid in still:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(pidfd, signum)
        finally:
            for pidfd in pinned.values():
                os.close(pidfd)

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the cgroup (cgroup.kill where the kernel has it) and wait until empty."""
        deadline = time.monotonic() + timeout
        kill_file = next((d / "cgroup.kill" for d in self.dirs.values() if (d / "cgroup.kill").exists()), None)
        while True:
            pids = self.pids()
            if not pids:
                return
            if kill_file is not None:
                _write(kill_file, "1")
            else:
                self.send_signal(signal.SIGKILL, pids)
            if time.monotonic() > deadline:
                raise CgroupError(f"processes {pids} still in {self.procs_files[0].parent} after SIGKILL")
            time.sleep(0.01)

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left and remove the directories (rmdir retries while the kernel lets go)."""
        self.kill(timeout)
        deadline = time.monotonic() + timeout
        for directory in sorted(set(self.dirs.values())):
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise CgroupError(f"cannot remove {directory}: {exc.strerror}") from None
                    time.sleep(0.01)


def _write_caps(layout: CgroupLayout, dirs: dict[str, Path], caps: CgroupLimits) -> None:
    """Write every cap of a herd parent, 0 as unlimited (what was there before is not known:
    another process may have made the parent)."""
    for name, wanted in (("cpu", caps.cpu), ("memory", caps.memory), ("pids", caps.pids)):
        if wanted and name not in dirs:
            raise CgroupError(
                f"herd {name} cap requested but the {name} controller is unavailable: "
                f"{layout.missing.get(name, 'unknown')}"
            )
    v2 = layout.version == 2
    if "cpu" in dirs:
        quota = max(1000, int(caps.cpu * CPU_PERIOD_US)) if caps.cpu else 0
        if v2:
            _write(dirs["cpu"] / "cpu.max", f"{quota or 'max'} {CPU_PERIOD_US}")
        else:
            _write(dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(dirs["cpu"] / "cpu.cfs_quota_us", str(quota or -1))
    if "memory" in dirs:
        memory = dirs["memory"]
        if v2:
            _write(memory / "memory.max", str(caps.memory or "max"))
            if (memory / "memory.swap.max").exists():
                _write(memory / "memory.swap.max", "0" if caps.memory else "max")
        else:
            files = [memory / "memory.limit_in_bytes"]
            if (memory / "memory.memsw.limit_in_bytes").exists():  # no swapping past the cap either
                files.append(memory / "memory.memsw.limit_in_bytes")
            value = str(caps.memory or -1)
            # memsw may never be below the memory limit: lowering writes memory first, raising
            # memsw first. Another process may remove the empty parent and make it again
            # (unlimited) between two writes, so a few tries of both orders.
            for tries_left in range(2, -1, -1):
                try:
                    for path in files:
                        _write(path, value)
                    break
                except CgroupError:
                    try:
                        for path in reversed(files):
                            _write(path, value)
                        break
                    except CgroupError:
                        if not tries_left:
                            raise
            _limit_tcp(memory, caps.memory)
    if "pids" in dirs:
        _write(dirs["pids"] / "pids.max", str(caps.pids or "max"))


def _cap(path: Path) -> int:
    """A cap as written to ``path``: 0 for none ("max", -1, or v1's huge "unlimited")."""
    text = path.read_text().strip()
    value = 0 if text == "max" else int(text)
    return 0 if value < 0 or value >= 2**62 else value


def _caps_in_place(layout: CgroupLayout, dirs: dict[str, Path], caps: CgroupLimits) -> bool:
    """Whether a herd parent's files say ``caps`` already (memory as the kernel rounds it: pages)."""
    page = os.sysconf("SC_PAGE_SIZE")
    quota = max(1000, int(caps.cpu * CPU_PERIOD_US)) if caps.cpu else 0
    try:
        if "cpu" in dirs:
            if layout.version == 2:
                if (dirs["cpu"] / "cpu.max").read_text().split() != [str(quota or "max"), str(CPU_PERIOD_US)]:
                    return False
            elif _cap(dirs["cpu"] / "cpu.cfs_quota_us") != quota or _cap(dirs["cpu"] / "cpu.cfs_period_us") != (
                CPU_PERIOD_US
            ):
                return False
        if "memory" in dirs:
            name = "memory.max" if layout.version == 2 else "memory.limit_in_bytes"
            if _cap(dirs["memory"] / name) != caps.memory // page * page:
                return False
        return "pids" not in dirs or _cap(dirs["pids"] / "pids.max") == caps.pids
    except (OSError, ValueError):
        return False


class CgroupManager:
    """Creates slice cgroups under ``<own cgroup>/runink`` (a herd's under ``runink/herd-<name>``)."""

    def __init__(self, layout: CgroupLayout | None = None, parent_name: str = "runink", prepared: bool = False) -> None:
        self.layout = layout or detect()
        self.parent_name = parent_name
        self._prepared = prepared  # True: the parents exist already (the launcher, after its executor)
        self._herd_caps: dict[str, CgroupLimits] = {}  # herd -> the caps this manager last wrote

    def parents(self) -> dict[str, Path]:
        return {c: own / self.parent_name for c, own in self.layout.own.items()}

    def prepare(self) -> None:
        """Create the ``runink`` parent(s); on v2 also move this process to a leaf and delegate controllers."""
        if self._prepared:
            return
        if self.layout.version == 2 and self.layout.own:
            own = next(iter(self.layout.own.values()))
            leaf = own / f"{self.parent_name}-agent"
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", str(os.getpid()))
            wanted = " ".join(f"+{c}" for c in self.layout.available if c in CONTROLLERS)
            _write(own / "cgroup.subtree_control", wanted)
            parent = own / self.parent_name
            parent.mkdir(exist_ok=True)
            _write(parent / "cgroup.subtree_control", wanted)
        else:
            for parent in self.parents().values():
                parent.mkdir(exist_ok=True)
                if parent.parent.name != "" and (parent / "cpuset.cpus").exists():
                    # v1 cpuset children start empty: inherit the parent's cpus and mems
                    for name in ("cpuset.cpus", "cpuset.mems"):
                        if not (parent / name).read_text().strip():
                            _write(parent / name, (parent.parent / name).read_text().strip())
        self._prepared = True

    def herd_parents(self, herd: str) -> dict[str, Path]:
        name = herd_dir_name(herd)
        return {c: parent / name for c, parent in self.parents().items()}

    def caps_written(self, herd: str) -> CgroupLimits | None:
        """The caps this manager last put in place on ``herd``'s parent (None: none, or it
        removed the parent since): the launcher's start of a slice skips ``ensure_herd``
        when they are the request's, as its sandbox's cgroup under that parent shows the
        parent exists."""
        return self._herd_caps.get(herd)

    def ensure_herd(self, herd: str, caps: CgroupLimits, *, rewrite: bool = False) -> dict[str, Path]:
        """``herd``'s parent, made if missing, with ``caps`` in place before it returns: written
        when it was made now, with ``rewrite``, or when its files say other caps (a changed
        quota; or another process made it a moment ago and is about to write them). Safe
        against other processes making or removing it at the same time (module docstring)."""
        self.prepare()
        dirs = self.herd_parents(herd)
        for attempt in range(5):
            try:
                made = self._make_herd(dirs)
                if made or rewrite or not _caps_in_place(self.layout, dirs, caps):
                    _write_caps(self.layout, dirs, caps)
                break
            except (_Gone, FileNotFoundError):
                if attempt == 4:
                    raise
                # removed as empty that moment (its last child went, in another process): again
        self._herd_caps[herd] = caps
        return dirs

    def _make_herd(self, dirs: dict[str, Path]) -> bool:
        """Make the herd parent's directories that are missing; whether any was."""
        made = False
        for controller, directory in dirs.items():
            try:
                directory.mkdir()
                made = True
            except FileExistsError:
                if not (self.layout.version == 1 and controller == "cpuset"):
                    continue
            if self.layout.version == 1 and controller == "cpuset":
                # v1 cpuset children start empty: inherit the runink parent's cpus and mems. Made
                # by another process a moment ago, it may be empty still: a sandbox under it then
                # copied nothing and could not take its process (ENOSPC), so whoever sees it empty
                # fills it (the same values: writing them twice is harmless)
                for name in ("cpuset.cpus", "cpuset.mems"):
                    if not _read_text(directory / name):
                        _write(directory / name, _read_text(directory.parent / name))
        if made and self.layout.version == 2 and dirs:
            directory = next(iter(dirs.values()))
            wanted = " ".join(f"+{c}" for c in self.layout.available if c in CONTROLLERS)
            _write(directory / "cgroup.subtree_control", wanted)
        return made

    def create(
        self,
        slice_id: str,
        limits: CgroupLimits = CgroupLimits(),
        *,
        herd: str | None = None,
        herd_caps: CgroupLimits | None = None,
    ) -> SliceCgroup:
        """A new cgroup for ``slice_id`` with ``limits`` applied (before any process joins);
        with ``herd``, under that herd's parent, capped at ``herd_caps`` (see ``ensure_herd``)."""
        if not slice_id or "/" in slice_id or slice_id in (".", ".."):
            raise CgroupError(f"invalid slice id {slice_id!r}")
        self.prepare()
        for attempt in range(3):
            parents = self.parents() if herd is None else self.ensure_herd(herd, herd_caps or CgroupLimits())
            dirs = {}
            try:
                for controller, parent in parents.items():
                    directory = parent / slice_id
                    directory.mkdir(exist_ok=self.layout.version == 2)
                    dirs[controller] = directory
                if herd is not None:
                    # Checked again now that the child pins the parent: the one ensure_herd saw
                    # may have been removed and made again since by a process yet to write caps.
                    caps, herd_dirs = herd_caps or CgroupLimits(), {c: d.parent for c, d in dirs.items()}
                    if not _caps_in_place(self.layout, herd_dirs, caps):
                        _write_caps(self.layout, herd_dirs, caps)
                cgroup = SliceCgroup(self.layout, dirs)
                cgroup.apply(limits)
            except FileExistsError:
                raise CgroupError(f"a cgroup for slice {slice_id} exists already") from None
            except FileNotFoundError:
                for directory in set(dirs.values()):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                if herd is None or attempt == 2:
                    raise
                continue  # the herd's parent was removed as empty (its last slice ended) just now: again
            except Exception:
                for directory in set(dirs.values()):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                raise
            return cgroup
        raise AssertionError("unreachable")

    def relative_name(self, cgroup: SliceCgroup) -> str | None:
        """The cgroup's path below the runink parent: ``sandbox-1-2`` or ``herd-a/sandbox-1-2``."""
        parents = self.parents()
        for controller, directory in cgroup.dirs.items():
            with contextlib.suppress(KeyError, ValueError):
                return str(directory.relative_to(parents[controller]))
        return None

    def remove_herd_if_empty(self, dirs: dict[str, Path]) -> None:
        """After a cgroup in ``dirs`` was removed: remove its herd parent too, unless it holds
        another cgroup still (the kernel refuses the rmdir then; that is the check)."""
        parents = self.parents()
        for controller, directory in dirs.items():
            herd = directory.parent
            if herd.name.startswith(HERD_PREFIX) and herd.parent == parents.get(controller):
                with contextlib.suppress(OSError):
                    herd.rmdir()
                    self._herd_caps.pop(herd.name.removeprefix(HERD_PREFIX), None)

    def leftovers(self) -> list[Path]:
        """Slice cgroups (and herd parents) still present under the runink parent(s) (for leak checks)."""
        found: list[Path] = []
        for parent in set(self.parents().values()):
            if parent.exists():
                found.extend(p for p in parent.iterdir() if p.is_dir())
        return sorted(found)


def _limit_tcp(memory: Path, limit: int) -> None:
    """cgroup v1 counts a cgroup's TCP buffers only once ``memory.kmem.tcp.limit_in_bytes`` is
    set: without it a slice queued 512 MiB in loopback sockets under a 64 MiB limit (v2
    counts socket memory with the rest). Set to the memory limit (0: unlimited); a kernel
    without the file, or one that refuses it, keeps v1's default."""
    tcp = memory / "memory.kmem.tcp.limit_in_bytes"
    if tcp.exists():
        with contextlib.suppress(CgroupError):
            _write(tcp, str(limit or -1))
