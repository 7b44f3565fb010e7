"""@network: the slice's own net namespace (slirp4netns); the host's listening ports stay out of
reach of every slice, granted or not. Real launchers, real slices, real listeners.

The topology this test builds (and removes), so that no packet goes anywhere but to loopback
or to a namespace the test created:

    host netns: a listener on 127.0.0.1:P and one on 10.254.N.1:P, the host's side of a veth
                pair (an address of the host's own, like an external IP)
    test netns: the veth's far side, 10.254.N.2, with a listener on P: "the outside"

A granted slice must reach the outside (through slirp4netns, whose sockets live in the host
netns: the peer sees the connection come from 10.254.N.1) and nothing of the host's.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import close_linux
from launcher_client import Launcher as LauncherClient

from runink.plugins.executors.linux.launcher import slirp4netns_path
from runink.plugins.executors.linux.namespaces import probe

IP = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or probe("net") is not None or probe("pid") is not None or IP is None,
    reason="needs root, net and pid namespaces, and iproute2 (ip) to build the test topology",
)
needs_slirp = pytest.mark.skipif(
    slirp4netns_path() is None, reason="slirp4netns not installed (apt install slirp4netns)"
)

# What a slice runs: connect to each host on the port, print what answered (or the errno),
# then show its interfaces and routes, and whether it may change a route.
PROBE = r"""
import errno, socket, sys
port = int(sys.argv[1])
for host in sys.argv[2:]:
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            print(f"{host}: reached", conn.recv(100).decode())
    except OSError as exc:
        print(f"{host}: failed", errno.errorcode.get(exc.errno, exc.errno))
print("interfaces:", " ".join(sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])))
for line in open("/proc/net/route").readlines()[1:]:
    fields = line.split()
    if fields[1] == "00000000":
        print("default:", "via", socket.inet_ntoa(bytes.fromhex(fields[2])[::-1]), "dev", fields[0])
import fcntl, struct
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    try:
        answer = fcntl.ioctl(s, 0x8915, struct.pack("256s", b"tap0"))  # SIOCGIFADDR
        print("tap0:", socket.inet_ntoa(answer[20:24]))
    except OSError:
        print("tap0: none")
from runink.plugins.executors.linux import netguard
try:
    netguard.prohibit(((socket.AF_INET, bytes([10, 254, 255, 9]), 32),))
    print("route change: allowed")
except OSError as exc:
    print("route change:", errno.errorcode.get(exc.errno, exc.errno))
"""

PEER_SERVER = r"""
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(16)
print("listening", flush=True)
while True:
    conn, (address, _port) = server.accept()
    conn.sendall(f"outside(from {address})".encode())
    conn.close()
"""


def _ip(*args: str) -> None:
    assert IP is not None
    done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Topology:
    port: int
    host_address: str  # the host's own (on its veth side)
    peer_address: str  # in the test's namespace: "the outside"
    netns: str  # its name (a mount at /run/netns/<name>, shared with every mount namespace copied from the host's)

    def netns_mounted(self) -> bool:
        return f" /run/netns/{self.netns} " in Path("/proc/self/mountinfo").read_text()


def _serve(server: socket.socket, name: str) -> None:
    with contextlib.suppress(OSError):
        while True:
            conn, _ = server.accept()
            with conn:
                conn.sendall(name.encode())


@pytest.fixture
def topology() -> Iterator[Topology]:
    with build_topology() as built:
        yield built


@contextlib.contextmanager
def build_topology() -> Iterator[Topology]:
    tag = uuid.uuid4().hex[:6]
    netns, host_if, peer_if = f"rtest-{tag}", f"rth{tag}", f"rtp{tag}"
    subnet = random.randrange(1, 250)
    host_address, peer_address = f"10.254.{subnet}.1", f"10.254.{subnet}.2"
    servers: list[socket.socket] = []
    peer = None
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", netns)
        _ip("addr", "add", f"{host_address}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", netns, "addr", "add", f"{peer_address}/30", "dev", peer_if)
        _ip("-n", netns, "link", "set", peer_if, "up")
        loopback = socket.create_server(("127.0.0.1", 0))
        servers.append(loopback)
        port = loopback.getsockname()[1]
        for _ in range(50):  # the veth address needs a moment (IPv4 DAD does not apply; bind may race the up)
            try:
                servers.append(socket.create_server((host_address, port)))
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"cannot listen on {host_address}:{port}")
        for server, name in zip(servers, ("host-loopback", "host-address"), strict=True):
            threading.Thread(target=_serve, args=(server, name), daemon=True).start()
        assert IP is not None
        peer = subprocess.Popen(
            [IP, "netns", "exec", netns, sys.executable, "-c", PEER_SERVER, peer_address, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert peer.stdout is not None and peer.stdout.readline().strip() == "listening"
        yield Topology(port, host_address, peer_address, netns)
    finally:
        if peer is not None:
            peer.kill()
            peer.wait(10)
        for server in servers:
            server.close()
        with contextlib.suppress(OSError):
            _ip("link", "del", host_if)  # both ends
        _ip("netns", "del", netns)


class Launcher(LauncherClient):
    def slirps(self) -> set[int]:
        """Its slirp4netns children (the warm network sandbox's, and any running slice's)."""
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
                    if name == "slirp4netns" and int(rest[1]) == self.process.pid and rest[0] != "Z":
                        found.add(int(entry.name))
        return found


@pytest.fixture(params=["runink-init", "python-init"])
def launcher(request: pytest.FixtureRequest) -> Iterator[Launcher]:
    """Both inits: each holds the exit fd of its sandbox's slirp4netns."""
    running = Launcher(*(["--python-init"] if request.param == "python-init" else []))
    yield running
    running.close()


def _probe(launcher: Launcher, tmp_path: Path, topology: Topology, *, network: bool) -> dict[str, str]:
    work = tmp_path / f"work-{uuid.uuid4().hex[:6]}"
    work.mkdir()
    os.chmod(work, 0o777)
    targets = ["127.0.0.1", "10.0.2.2", topology.host_address, topology.peer_address]
    request = {
        "id": f"n-{uuid.uuid4().hex[:8]}",
        "command": [sys.executable, "-c", PROBE, str(topology.port), *targets],
        "env": {"PATH": "/usr/bin:/bin"},
        "cwd": str(work),
        "binds": [{"path": str(work), "writable": True}],
        "uid": 100001,
        "gid": 100001,
        "network": network,
        "stdout": str(work / "out.log"),
        "stderr": str(work / "err.log"),
    }
    ended = launcher.run(request)
    assert ended.get("code") == 0, (ended, (work / "err.log").read_text() if (work / "err.log").exists() else "")
    lines = (work / "out.log").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def test_a_slice_without_the_grant_reaches_nothing_of_the_host(
    launcher: Launcher, tmp_path: Path, topology: Topology
) -> None:
    seen = _probe(launcher, tmp_path, topology, network=False)
    assert seen["127.0.0.1"] == "failed ECONNREFUSED"  # its own loopback: nobody listens there
    assert seen["10.0.2.2"] == "failed ENETUNREACH"
    assert seen[topology.host_address] == "failed ENETUNREACH"
    assert seen[topology.peer_address] == "failed ENETUNREACH"  # no way out either
    assert seen["interfaces"] == "lo"


@needs_slirp
def test_a_granted_slice_gets_out_through_its_own_namespace_and_never_reaches_the_host(
    launcher: Launcher, tmp_path: Path, topology: Topology
) -> None:
    seen = _probe(launcher, tmp_path, topology, network=True)
    # its own namespace: slirp4netns's tap0, default route through slirp's gateway
    assert seen["interfaces"] == "lo tap0"
    assert seen["default"] == "via 10.0.2.2 dev tap0"
    assert seen["tap0"] == "10.0.2.100"
    # outbound: the outside answers, and saw the connection come from the host (slirp's NAT)
    assert seen[topology.peer_address] == f"reached outside(from {topology.host_address})"
    # the host: its loopback (directly: the slice's own lo; through slirp's gateway alias) and its own address
    assert seen["127.0.0.1"] == "failed ECONNREFUSED"
    assert seen["10.0.2.2"].startswith("failed")  # --disable-host-loopback
    assert seen[topology.host_address] == "failed EACCES"  # a prohibit route
    assert seen["route change"] == "EPERM"  # the slice cannot lift it
    # starting slirp4netns left the host's mounts alone (its sandbox once unmounted /run/netns/*)
    assert topology.netns_mounted()


@needs_slirp
def test_an_address_the_host_gains_after_the_warm_sandbox_was_built_is_blocked_too(tmp_path: Path) -> None:
    launcher = Launcher()
    try:
        with build_topology() as first:  # a network slice: from then on one sandbox with the network is kept warm
            _probe(launcher, tmp_path, first, network=True)
        for _ in range(200):  # the warm network sandbox (built after that slice) has its slirp4netns
            if launcher.slirps():
                break
            time.sleep(0.05)
        else:
            pytest.fail("no warm network sandbox within 10 s")
        with contextlib.ExitStack() as stack:
            topology = stack.enter_context(build_topology())
            seen = _probe(launcher, tmp_path, topology, network=True)
            assert seen[topology.host_address] == "failed EACCES"
            assert seen[topology.peer_address].startswith("reached outside")
    finally:
        launcher.close()


@needs_slirp
def test_slirp4netns_ends_with_its_sandbox(launcher: Launcher, tmp_path: Path, topology: Topology) -> None:
    seen_slirps: set[int] = set()
    for _ in range(3):
        seen_slirps |= launcher.slirps()
        _probe(launcher, tmp_path, topology, network=True)
        seen_slirps |= launcher.slirps()
    # after the slices: only the warm sandbox's (the used ones' ended with their sandboxes)
    for _ in range(100):
        if len(launcher.slirps()) <= 1:
            break
        time.sleep(0.05)
    assert len(launcher.slirps()) <= 1
    assert len(seen_slirps) >= 3
    # its warm sandboxes end: so do their slirp4netns (by their exit fd), reaped by the
    # launcher before it exits (none outlives it)
    launcher.close()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    assert not [pid for pid in seen_slirps if alive(pid)]


def test_without_slirp4netns_a_granted_task_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Never the host's network instead: refused, or with ``degrade`` run with its loopback only."""
    from runink.core.errors import TaskRejectedError
    from runink.core.interfaces.executor import TaskSpec, TaskState
    from runink.plugins.executors.linux import executor as linux_executor

    if linux_executor.LinuxExecutor._detect_problems():
        pytest.skip("the linux executor cannot isolate here")
    monkeypatch.setattr(linux_executor, "slirp4netns_path", lambda: None)
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(work, 0o777)
    command = ("sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1")

    def spec() -> TaskSpec:
        task_id = f"n-{uuid.uuid4().hex[:8]}"
        return TaskSpec(task_id, command, tmp_path / task_id, env={"PATH": "/usr/bin:/bin"}, cwd=work, network=True)

    for degrade in (False, True):
        linux = linux_executor.LinuxExecutor(degrade=degrade, cgroup_parent=f"runink-test-{uuid.uuid4().hex[:8]}")
        try:
            assert "slirp4netns" in linux.capabilities().unenforced["network grant"]
            task = spec()
            if not degrade:
                with pytest.raises(TaskRejectedError) as refused:
                    linux.start(task)
                message = str(refused.value)
                assert "\n" not in message and "slirp4netns" in message and "apt-get install slirp4netns" in message
                continue
            linux.start(task)
            result = linux.wait(task.id, 30)
            assert result is not None and result.state is TaskState.SUCCEEDED, result
            assert linux.read_log(task.id).split() == ["lo"]  # its own loopback, not the host's interfaces
        finally:
            close_linux(linux)
