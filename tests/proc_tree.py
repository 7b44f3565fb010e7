"""Processes below a pid, read from /proc (leak checks that other test runs cannot disturb)."""

from __future__ import annotations

from pathlib import Path


def descendants(root: int) -> list[tuple[int, int]]:
    """(pid, uid) of every process below ``root``, from /proc."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            except OSError:
                continue
            parents[int(entry.name)] = (int(status["PPid"]), int(status["Uid"].split()[0]))
    found: list[tuple[int, int]] = []
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, (parent, uid) in parents.items():
            if parent == pid:
                found.append((child, uid))
                frontier.append(child)
    return found


def host_mounts() -> int:
    """The mounts this process sees, but the network namespaces' (``/run/netns/NAME``) and
    those in pytest's temporary folders (a read-only tmpfs of test_pipeline_run's): tests in
    other pytest-xdist workers make and remove those while a leak check runs."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return sum(1 for line in lines if " /run/netns/" not in line and " /tmp/pytest-of-" not in line)
