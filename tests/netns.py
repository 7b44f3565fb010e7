"""Several "hosts" on one machine, for tests that cut networks: ``NetLab``.

Each host is a network namespace with one veth link to a bridge; the bridge lives in a
namespace of its own (the "switch"), so no firewall rule of the machine's applies to traffic
between hosts. The test process reaches every host through one more veth link from its own
namespace to the switch, on a private /24 that only these namespaces use. ``cut`` partitions
hosts with blackhole routes on both sides (packets are dropped, as a pulled cable would);
``heal`` removes them. Needs root (CAP_NET_ADMIN) and the ``ip`` command.

    with NetLab(["a", "b", "c"]) as lab:
        lab.address["a"]                  # "10.231.17.1"
        subprocess.Popen(lab.run_in("a") + ["python", "-m", "..."])
        lab.cut(["a"], ["b", "c"])
        lab.heal()
"""

from __future__ import annotations

import os
import shutil
import subprocess


def available() -> str | None:
    """Why a NetLab cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    return None


class NetLab:
    def __init__(self, hosts: list[str], subnet: int | None = None) -> None:
        self.hosts = list(hosts)
        tag = os.getpid() % 100_000
        self.subnet = subnet if subnet is not None else _free_subnet(10 + tag % 240)  # 10.231.<subnet>.0/24
        self.prefix = f"rk{tag}"  # names of namespaces and links (links: at most 15 characters)
        self.switch = f"{self.prefix}sw"
        self.namespace = {h: f"{self.prefix}-{h}" for h in self.hosts}
        self.address = {h: f"10.231.{self.subnet}.{i + 1}" for i, h in enumerate(self.hosts)}
        self.gateway = f"10.231.{self.subnet}.254"  # the test process's own end
        self._cuts: list[tuple[str, str]] = []

    # --- set-up and tear-down -------------------------------------------------------------

    def __enter__(self) -> NetLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        sw = self.switch
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        _ip("-n", sw, "link", "set", "lo", "up")
        # the test process's link: <prefix>t here, "uplink" on the switch's bridge
        _ip("link", "add", f"{self.prefix}t", "type", "veth", "peer", "name", "uplink", "netns", sw)
        _ip("-n", sw, "link", "set", "uplink", "master", "br0", "up")
        _ip("addr", "add", f"{self.gateway}/24", "dev", f"{self.prefix}t")
        _ip("link", "set", f"{self.prefix}t", "up")
        for i, host in enumerate(self.hosts):
            ns = self.namespace[host]
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"h{i}", "netns", sw)
            _ip("-n", sw, "link", "set", f"h{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.address[host]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def close(self) -> None:
        """Remove every namespace and link this lab made (links go with their namespaces)."""
        subprocess.run(["ip", "link", "del", f"{self.prefix}t"], capture_output=True, check=False)
        for ns in [*self.namespace.values(), self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    # --- use ------------------------------------------------------------------------------

    def run_in(self, host: str) -> list[str]:
        """The command prefix that runs a program on ``host``."""
        return ["ip", "netns", "exec", self.namespace[host]]

    def cut(self, side: list[str], other: list[str]) -> None:
        """Drop every packet between a host of ``side`` and a host of ``other``, both ways.
        The test process still reaches every host."""
        for a in side:
            for b in other:
                for src, dst in ((a, b), (b, a)):
                    _ip("-n", self.namespace[src], "route", "add", "blackhole", f"{self.address[dst]}/32")
                    self._cuts.append((src, dst))

    def heal(self) -> None:
        for src, dst in self._cuts:
            _ip("-n", self.namespace[src], "route", "del", "blackhole", f"{self.address[dst]}/32")
        self._cuts.clear()


def _free_subnet(start: int) -> int:
    """The first 10.231.N.0/24 from ``start`` on that no link of this namespace has: tests in
    parallel (pytest-xdist workers) each build their own lab."""
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False).stdout
    used = {int(part.split(".")[2]) for part in shown.split() if part.startswith("10.231.")}
    return next((10 + (start - 10 + i) % 240 for i in range(240) if 10 + (start - 10 + i) % 240 not in used), start)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


__all__ = ["NetLab", "available"]
