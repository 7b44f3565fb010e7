"""cgroups for slices, on cgroup v2 (unified) and v1 (one hierarchy per controller).

A slice gets its own cgroup under the cgroup of the process that runs it (so an agent run by
systemd works), below a ``runink`` parent: ``<own cgroup>/runink/<slice id>``. Limits are
written before any process joins, processes join through ``cgroup.procs``, usage is read at
the end, and the cgroup is removed (after killing what is left) when the slice ends.

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
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

CONTROLLERS = ("cpu", "memory", "pids", "cpuset")
# v1 keeps cpu usage in its own controller (often co-mounted with cpu, here separate).
V1_CONTROLLERS = (*CONTROLLERS, "cpuacct")
CPU_PERIOD_US = 100_000


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


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


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
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
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


class CgroupManager:
    """Creates slice cgroups under ``<own cgroup>/runink``."""

    def __init__(self, layout: CgroupLayout | None = None, parent_name: str = "runink", prepared: bool = False) -> None:
        self.layout = layout or detect()
        self.parent_name = parent_name
        self._prepared = prepared  # True: the parents exist already (the launcher, after its executor)

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

    def create(self, slice_id: str, limits: CgroupLimits = CgroupLimits()) -> SliceCgroup:
        """A new cgroup for ``slice_id`` with ``limits`` applied (before any process joins)."""
        if not slice_id or "/" in slice_id or slice_id in (".", ".."):
            raise CgroupError(f"invalid slice id {slice_id!r}")
        self.prepare()
        dirs = {}
        try:
            for controller, parent in self.parents().items():
                directory = parent / slice_id
                directory.mkdir(exist_ok=self.layout.version == 2)
                dirs[controller] = directory
            cgroup = SliceCgroup(self.layout, dirs)
            cgroup.apply(limits)
        except FileExistsError:
            raise CgroupError(f"a cgroup for slice {slice_id} exists already") from None
        except Exception:
            for directory in set(dirs.values()):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
        return cgroup

    def leftovers(self) -> list[Path]:
        """Slice cgroups still present under the runink parent(s) (for leak checks)."""
        found: list[Path] = []
        for parent in set(self.parents().values()):
            if parent.exists():
                found.extend(p for p in parent.iterdir() if p.is_dir())
        return sorted(found)
