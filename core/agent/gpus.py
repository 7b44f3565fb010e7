"""A node's GPUs: found with ``nvidia-smi``, offered to the scheduler by id, granted to slices.

The agent fingerprints its NVIDIA GPUs at start (``find_gpus``) and registers their UUIDs; the
scheduler gives each placed task that asks for N GPUs N of its node's free UUIDs (stored with
the task: a restarted agent or a new leader sees the same assignment). The agent turns them
back into device nodes with its own inventory (``grant_gpus``), never with a path from the
server: a task is given its GPUs' ``/dev/nvidiaN`` nodes and the driver's shared control
nodes (``nvidiactl``, ``nvidia-uvm``...), and ``CUDA_VISIBLE_DEVICES`` naming them. An
executor that isolates devices (the linux one) shows the slice only those nodes, so another
slice's GPU cannot be opened; one that cannot refuses a task with devices unless degraded.

``nvidia-smi``'s output is read as untrusted: bounded, time-limited, checked field by field.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runink.core.errors import RuninkError
from runink.core.interfaces.executor import TaskSpec

log = logging.getLogger("runink.agent")

QUERY = "index,uuid,name,memory.total,pci.bus_id"
MAX_GPUS = 64
MAX_OUTPUT = 64 * 1024
SMI_TIMEOUT = 10.0
# Device nodes every GPU slice needs besides its GPUs' own (those present on the node)
CONTROL_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
GPU_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,95}$")
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]{1,80}$")
_BUS = re.compile(r"^([0-9A-Fa-f]{4,8}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2}\.[0-7])$")


@dataclass(frozen=True)
class Gpu:
    """One GPU of this node: its UUID (its id in the cluster), model, memory and device node."""

    uuid: str
    index: int
    name: str
    memory: int  # bytes
    device: str  # the host path of its character device (/dev/nvidia<minor>)


@dataclass(frozen=True)
class GpuInventory:
    """The GPUs an agent offers and the shared control devices a slice using one needs."""

    gpus: tuple[Gpu, ...] = ()
    control: tuple[str, ...] = ()  # host paths

    @property
    def ids(self) -> list[str]:
        return [g.uuid for g in self.gpus]

    def limited_to(self, count: int | None) -> GpuInventory:
        """The first ``count`` GPUs (None: all). Raises RuninkError past what was found."""
        if count is None:
            return self
        if count > len(self.gpus):
            raise RuninkError(f"--gpus {count}: this node has {len(self.gpus)} usable GPU(s) (nvidia-smi)")
        return dataclasses.replace(self, gpus=self.gpus[:count])


def find_gpus(device_dir: str | Path = "/dev", smi: str | None = None) -> GpuInventory:
    """This node's NVIDIA GPUs, from ``nvidia-smi`` (on PATH unless ``smi``); none without it.

    A GPU whose device node is missing or not a character device is left out, with a warning:
    the agent could not give it to a slice alone.
    """
    program = smi or shutil.which("nvidia-smi")
    if program is None:
        return GpuInventory()
    try:
        done = subprocess.run(
            [program, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            timeout=SMI_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi: %s; no GPU offered", exc)
        return GpuInventory()
    if done.returncode != 0:
        first = done.stderr[:400].decode(errors="replace").strip().splitlines()
        log.warning("nvidia-smi exited %d%s; no GPU offered", done.returncode, f": {first[0]}" if first else "")
        return GpuInventory()
    directory = Path(device_dir)
    gpus: list[Gpu] = []
    for number, line in enumerate(done.stdout[:MAX_OUTPUT].decode(errors="replace").splitlines()[:MAX_GPUS], 1):
        if not line.strip():
            continue
        try:
            gpu = parse_gpu(line, directory)
        except ValueError as exc:
            log.warning("nvidia-smi line %d: %s; that GPU is not offered", number, exc)
            continue
        if gpu.uuid in {g.uuid for g in gpus}:
            log.warning("nvidia-smi line %d: GPU %s listed twice", number, gpu.uuid)
            continue
        gpus.append(gpu)
    control = tuple(str(directory / name) for name in CONTROL_DEVICES if _is_char_device(directory / name))
    return GpuInventory(tuple(gpus), control)


def parse_gpu(line: str, device_dir: Path) -> Gpu:
    """One line of ``nvidia-smi --query-gpu=index,uuid,name,memory.total,pci.bus_id`` (csv,
    noheader, nounits). Raises ValueError naming the bad field."""
    fields = [f.strip() for f in line.split(",")]
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields ({QUERY}), got {len(fields)}")
    index_text, uuid, name, memory_text, bus = fields
    if not index_text.isdigit() or int(index_text) >= 4096:
        raise ValueError(f"index {index_text[:40]!r} is not a small whole number")
    if not _UUID.fullmatch(uuid) or not GPU_ID.fullmatch(uuid):
        raise ValueError(f"uuid {uuid[:100]!r} is not a GPU UUID")
    if not memory_text.isdigit():
        raise ValueError(f"memory.total {memory_text[:40]!r} is not a number of MiB")
    clean_name = "".join(c for c in name if c.isprintable())[:128]
    index = int(index_text)
    minor = _device_minor(bus)
    device = device_dir / f"nvidia{index if minor is None else minor}"
    if not _is_char_device(device):
        raise ValueError(f"GPU {uuid}: {device} is not a character device")
    return Gpu(uuid, index, clean_name, int(memory_text) * 1024 * 1024, str(device))


def _device_minor(bus: str) -> int | None:
    """The device's minor number from the driver (/proc/driver/nvidia/gpus/<bus>/information);
    None where it cannot be read (the minor is then taken to be the index, as it mostly is)."""
    match = _BUS.fullmatch(bus)
    if match is None:
        return None
    domain, number, function = match.groups()
    path = Path("/proc/driver/nvidia/gpus") / f"{int(domain, 16):04x}:{number}:{function}".lower() / "information"
    try:
        with open(path, "rb") as info:
            text = info.read(8192).decode(errors="replace")
    except OSError:
        return None
    found = re.search(r"^Device Minor:\s*(\d{1,4})\s*$", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _is_char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(os.lstat(path).st_mode)
    except OSError:
        return False


def grant_gpus(spec: TaskSpec, assigned: Iterable[str], inventory: GpuInventory) -> TaskSpec:
    """``spec`` given the GPUs the scheduler ``assigned`` it (UUIDs): their device nodes and the
    control ones, and ``CUDA_VISIBLE_DEVICES``/``NVIDIA_VISIBLE_DEVICES`` naming them. Raises
    RuninkError for an id this node does not have (the task then fails, naming it)."""
    wanted = list(assigned)
    if not wanted:
        return spec
    by_id = {g.uuid: g for g in inventory.gpus}
    missing = [g for g in wanted if g not in by_id]
    if missing:
        raise RuninkError(f"task {spec.id}: GPU {missing[0][:100]!r} is not one of this node's")
    gpus = [by_id[g] for g in wanted]
    visible = ",".join(g.uuid for g in gpus)
    env = {**spec.env, "CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible}
    devices = (*spec.devices, *(g.device for g in gpus), *inventory.control)
    return dataclasses.replace(spec, env=env, devices=tuple(dict.fromkeys(devices)))
