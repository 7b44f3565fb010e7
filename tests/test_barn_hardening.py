"""The Barn against hostile or broken input (issue 17, items 15-18): a command that cannot be
applied never stops a replica, every field of every request is validated, the HTTP server
cannot be starved, and no background thread dies of an error."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import math
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysyncobj.pickle as raft_pickle
import pytest
from barn_cluster import Cluster, free_ports
from fixture_types import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runink.plugins.barn.raft._vendor.pysyncobj import syncobj
from runink.plugins.barn.raft.journal import BarnJournal
from runink.plugins.barn.raft.server import BarnServer, Member, ServerConfig
from runink.plugins.barn.state import BarnState

# --- 15: applying a committed command is total ------------------------------------------


def test_a_command_that_raises_is_an_error_result_and_the_state_goes_on() -> None:
    state = BarnState()
    # 1e400 in JSON is inf: int(inf) raised OverflowError inside apply (every replica, every tick)
    for poison in (
        {"op": "put", "key": "/k", "value": b"v", "lease": math.inf},
        {"op": "put", "key": "/k", "value": b"v", "lease": "1"},
        {"op": "txn", "compare": [(1, 0)], "success": [], "failure": []},
        {"op": "grant", "ttl": 10**400, "now": 0.0},
        {"op": "put", "key": "/k", "value": b"v", "lease": None, "request_id": ["unhashable"]},
        ["not", "a", "command"],
    ):
        # a poison that is not a dict at all is the point: apply must answer it, not raise
        result = state.apply(poison)  # type: ignore[arg-type]
        assert isinstance(result, dict) and result["error"] == "bad_request", poison
    assert state.revision == 0 and state.scan("") == []  # refused whole: nothing half applied
    assert state.apply({"op": "put", "key": "/k", "value": b"v", "lease": None}) == 1
    assert [kv.key for kv in state.scan("")] == ["/k"]


def _poison_journal(journal_path: Path) -> None:
    """Append a committed put whose lease is inf to a stopped member's journal, as if the
    HTTP validation had been bypassed (what `"lease": 1e400` made before it existed)."""
    journal = BarnJournal(str(journal_path))
    try:
        regular = [entry for entry in (journal[i] for i in range(len(journal))) if entry[0][:1] == b"\x00"]
        func_id = raft_pickle.loads(regular[-1][0][1:])[0]  # BarnReplica.apply's id in this log
        command = {"op": "put", "key": "/poison", "value": b"x", "lease": math.inf}
        _, last_idx, last_term = journal[len(journal) - 1]
        journal.add(b"\x00" + raft_pickle.dumps((func_id, (command,))), last_idx + 1, last_term)
        journal.setRaftCommitIndex(last_idx + 1)  # committed: each member applies it at start
        journal.onOneSecondTimer()  # stores the commit index
        journal.flush()
    finally:
        journal._destroy()


def _wait_for_keys(cluster: Cluster, name: str, expected: set[str]) -> None:
    own = cluster.client(name)
    try:
        deadline = time.monotonic() + 10
        while {kv.key for kv in own.scan("/", serializable=True)} != expected:
            assert time.monotonic() < deadline, f"{name} has not applied {sorted(expected)}"
            time.sleep(0.05)
    finally:
        own.close()


def test_a_group_whose_log_holds_a_poisoned_entry_recovers_on_restart(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.start()
        client = cluster.client()
        for i in range(5):
            client.put(f"/before/{i}", b"v")
        client.close()
        for name in cluster.names:  # every journal holds them (a majority's would do for commit)
            _wait_for_keys(cluster, name, {f"/before/{i}" for i in range(5)})
        cluster.stop()
        for name in cluster.names:
            _poison_journal(tmp_path / name / "raft.journal")
        cluster.start()
        cluster.leader()
        client = cluster.client(timeout=10)
        assert client.put("/after", b"ok") > 0  # the group serves: the entry did not wedge it
        client.close()
        for name in cluster.names:  # and every member applied past it
            _wait_for_keys(cluster, name, {*(f"/before/{i}" for i in range(5)), "/after"})
        logs = "".join((tmp_path / f"{name}.log").read_text() for name in cluster.names)
        assert "Barn command 'put' (request None) refused: lease must be an integer" in logs
    finally:
        cluster.stop()


# --- 16: every field of every request validated (a live group, generated bodies) --------


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("barn-hardening")), options=("--max-connections", "40"))
    try:
        cluster.start()
        cluster.leader()
        yield cluster
    finally:
        cluster.stop()


CLOSED_PORT = free_ports(1)[0]  # nothing listens there: a member address that cannot be reached
MEMBER_NAMES = ("a", "b", "c")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
keys = st.text(min_size=1, max_size=12).map(lambda t: "/h/" + t)
values = st.binary(max_size=32).map(lambda b: base64.b64encode(b).decode())
request_ids = st.none() | st.text(min_size=1, max_size=16)
leases = st.none() | st.integers(1, 5)
ops = st.fixed_dictionaries({"key": keys}, optional={"value": st.none() | values})
valid_bodies: dict[str, Any] = {
    "/v1/put": st.fixed_dictionaries(
        {"key": keys, "value": values}, optional={"lease": leases, "request_id": request_ids}
    ),
    "/v1/delete": st.fixed_dictionaries({"key": keys}, optional={"request_id": request_ids}),
    "/v1/txn": st.fixed_dictionaries(
        {
            "compare": st.lists(st.tuples(keys, st.integers(0, 50)), max_size=3),
            "success": st.lists(ops, max_size=3),
            "failure": st.lists(ops, max_size=3),
        },
        optional={"request_id": request_ids},
    ),
    "/v1/get": st.fixed_dictionaries({"key": keys}, optional={"serializable": st.booleans()}),
    "/v1/scan": st.fixed_dictionaries(
        {},
        optional={"prefix": st.text(max_size=6), "limit": st.none() | st.integers(0, 5), "serializable": st.booleans()},
    ),
    "/v1/revision": st.just({}),
    "/v1/watch": st.fixed_dictionaries(
        {"from_revision": st.integers(-3, 10**6)}, optional={"prefix": st.text(max_size=6), "wait": st.floats(0, 0.05)}
    ),
    "/v1/lease/grant": st.fixed_dictionaries({"ttl": st.floats(0.2, 100)}, optional={"request_id": request_ids}),
    "/v1/lease/keepalive": st.fixed_dictionaries({"lease": st.integers(1, 5)}),
    "/v1/lease/revoke": st.fixed_dictionaries({"lease": st.integers(1, 5)}, optional={"request_id": request_ids}),
    "/v1/members/add": st.fixed_dictionaries(
        {"name": st.from_regex(r"\Ax[a-z0-9]{0,6}\Z"), "raft": st.just(f"127.0.0.1:{CLOSED_PORT}")},
        optional={"http": st.just(f"127.0.0.1:{CLOSED_PORT}")},
    ),
    "/v1/members/remove": st.fixed_dictionaries({"name": st.from_regex(r"\Ax[a-z0-9]{0,6}\Z")}),
}
ROUTES = sorted(valid_bodies)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """A route and a body: valid, valid with one field wrong, missing or added, any JSON, or
    bytes that are not JSON."""
    route = draw(st.sampled_from(ROUTES))
    kind = draw(st.sampled_from(["valid", "changed", "dropped", "added", "any", "bytes"]))
    if kind == "bytes":
        return route, draw(st.binary(max_size=40))
    # a copy: st.just({}) hands out the same dict every time, and the changes below would
    # carry over to later examples (hypothesis then finds its data generation inconsistent)
    body: Any = copy.deepcopy(draw(valid_bodies[route]))
    if kind == "any":
        body = draw(json_values)
    elif body and kind in ("changed", "dropped"):
        field = draw(st.sampled_from(sorted(body)))
        if kind == "changed":
            body[field] = draw(json_values)
        else:
            del body[field]
    elif kind == "added":
        body[draw(st.text(max_size=8))] = draw(json_values)
    return route, json.dumps(body).encode()


def _tame(route: str, raw: bytes) -> bytes:
    """What a generated body must not do to the group under test: remove a real member, make
    a member connect anywhere but to a closed loopback port, or make a watch wait long."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(body, dict):
        return raw
    if route.startswith("/v1/members/"):
        if body.get("name") in MEMBER_NAMES:
            body["name"] = "x" + body["name"]
        for field in ("raft", "http"):
            if isinstance(body.get(field), str):
                body[field] = f"127.0.0.1:{CLOSED_PORT}"
    if route == "/v1/watch":
        wait = body.get("wait")
        number = isinstance(wait, int | float) and not isinstance(wait, bool)
        if "wait" not in body or (number and math.isfinite(wait) and wait > 0.05):
            body["wait"] = 0.01
    return json.dumps(body).encode()


class Members:
    """One keep-alive connection per member, reopened after the server closes one."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.connections: dict[str, http.client.HTTPConnection] = {}

    def post(self, name: str, route: str, raw: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            connection = self.connections.get(name)
            if connection is None:
                host, _, port = self.cluster.http[name].rpartition(":")
                connection = self.connections[name] = http.client.HTTPConnection(host, int(port), timeout=20)
            try:
                connection.request("POST", route, raw, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                return answer.status, answer.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                del self.connections[name]
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()


def test_generated_requests_get_2xx_or_4xx_and_the_group_keeps_serving(group: Cluster) -> None:
    members = Members(group)
    seen: dict[int, int] = {}
    # every member knows the leader before the first example (until then a member answers 503,
    # rightly: the group fixture only waited for a leader to exist)
    deadline = time.monotonic() + 15
    for name in MEMBER_NAMES:
        while members.post(name, "/v1/revision", b"{}")[0] != 200:
            assert time.monotonic() < deadline, f"member {name} knows no leader after 15 s"
            time.sleep(0.05)

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(requests(), st.sampled_from(MEMBER_NAMES))
    # the requests that broke the group before: a lease of 1e400 (OverflowError in every
    # replica's Raft thread) or "1", a txn with an integer key, a ttl of 1e400
    @example(("/v1/put", b'{"key": "/k", "value": "eA==", "lease": 1e400}'), "a")
    @example(("/v1/put", b'{"key": "/k", "value": "eA==", "lease": "1"}'), "b")
    @example(("/v1/txn", b'{"compare": [[1, 0]], "success": [{"key": 2, "value": "eA=="}]}'), "c")
    @example(("/v1/txn", b'{"compare": [], "success": [{"key": "/t", "value": null}, {"key": "/t"}]}'), "a")
    @example(("/v1/lease/grant", b'{"ttl": 1e400}'), "a")
    @example(("/v1/watch", b'{"from_revision": 1, "wait": 1e400}'), "b")
    @example(("/v1/scan", b'{"limit": -1}'), "c")
    @example(("/v1/get", b'{"key": "\\ud800"}'), "a")
    def check(request: tuple[str, bytes], member: str) -> None:
        route, raw = request
        status, payload = members.post(member, route, _tame(route, raw))
        seen[status] = seen.get(status, 0) + 1
        assert 200 <= status < 500, (route, raw[:200], status, payload[:300])
        json.loads(payload)  # every answer is JSON

    try:
        check()
    finally:
        members.close()
    assert seen.get(200) and seen.get(400), seen  # both kinds were exercised

    for name in group.names:  # every member still serves: writes, reads, its own copy
        client = group.client(name, timeout=10)
        assert client.put(f"/h/after-{name}", b"ok") > 0
        assert client.get(f"/h/after-{name}") is not None
        assert client.scan("/", serializable=True) is not None
        assert group.status(name)["leader"] is not None
        client.close()


# --- 17: the HTTP server cannot be starved; member add checks the address ---------------


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _stream_until_answered(address: tuple[str, int], head: bytes, filler: bytes, total: int) -> bytes:
    """Send ``head`` then ``filler`` repeatedly up to ``total`` bytes, stopping as soon as the
    server answers; returns the answer (b"" if none came)."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)
        sent = len(head)
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(filler)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(filler)
        try:
            readable = select.select([sock], [], [], 5)[0]
            return sock.recv(65536) if readable else b""
        except ConnectionResetError:
            return b""


def test_a_huge_url_gets_414_and_a_huge_header_431_without_the_server_buffering_them(group: Cluster) -> None:
    name = group.leader()
    host, _, port = group.http[name].rpartition(":")
    pid = group.processes[name].pid
    before = _rss_peak_kib(pid)
    chunk = b"a" * (1 << 20)
    answer = _stream_until_answered((host, int(port)), b"GET /", chunk, 64 << 20)
    assert answer.startswith(b"HTTP/1.1 414"), answer[:200]
    answer = _stream_until_answered((host, int(port)), b"POST /v1/get HTTP/1.1\r\nX-Big: ", chunk, 64 << 20)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    many = b"POST /v1/revision HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n"
    answer = _stream_until_answered((host, int(port)), many, b"", 0)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    # 64 MiB went in twice; the server kept at most its limits (its peak grew by far less)
    assert _rss_peak_kib(pid) - before < 32 << 10, (before, _rss_peak_kib(pid))
    client = group.client(name)
    assert client.put("/h/after-big-heads", b"ok") > 0
    client.close()


def test_connections_past_the_cap_are_refused_and_the_group_keeps_working(group: Cluster) -> None:
    name = group.leader()
    host, _, port = group.http[name].rpartition(":")
    kept = group.client(name)  # a client connected before the flood
    assert kept.put("/h/before-flood", b"x") > 0
    flood = []
    try:
        for _ in range(60):  # the members were started with --max-connections 40
            flood.append(socket.create_connection((host, int(port)), timeout=5))
        answered: set[socket.socket] = set()
        deadline = time.monotonic() + 5
        while len(answered) < 20 and time.monotonic() < deadline:
            answered.update(select.select([s for s in flood if s not in answered], [], [], 0.2)[0])
        refused = 0
        for sock in answered:
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
            assert b"too many connections" in answer
            refused += 1
        assert refused >= 20, refused  # 40 held (less the client's own), every one past it refused
        assert kept.put("/h/during-flood", b"y") > 0  # Raft and the journal still work
    finally:
        for sock in flood:
            sock.close()
    kept.close()
    time.sleep(0.3)  # the server sees the closes
    fresh = group.client()
    assert fresh.get("/h/during-flood") is not None
    fresh.close()


def test_member_add_refuses_an_address_it_cannot_reach(group: Cluster, run_cli: CliRunner) -> None:
    endpoints = ",".join(group.http[n] for n in group.names)
    unreachable = f"127.0.0.1:{CLOSED_PORT}"
    out = run_cli("barn", "member", "add", "d", unreachable, unreachable, "--endpoints", endpoints)
    assert out.returncode != 0
    assert f"cannot add d: its Raft address {unreachable} cannot be reached" in out.stdout + out.stderr
    assert set(group.status(group.leader())["peers"]) == set(group.names) - {group.leader()}


# --- 18: background threads survive -------------------------------------------------------


def test_the_lease_expirer_survives_a_failed_commit_of_any_kind(tmp_path: Path) -> None:
    raft, http_port = free_ports(2)
    config = ServerConfig(Member("solo", f"127.0.0.1:{raft}", f"127.0.0.1:{http_port}"), [], tmp_path / "solo")
    server = BarnServer(config)
    server.start()
    try:
        barn = _client(http_port)
        lease = barn.grant_lease(0.3)
        barn.put("/h/leased", b"v", lease=lease)
        real = server.node.replica.apply
        failures = [syncobj.SyncObjException("Timeout"), RuntimeError("disk on fire")]

        def flaky(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("sync") and failures:  # the expirer's proposals fail twice, then work
                raise failures.pop(0)
            return real(*args, **kwargs)

        server.node.replica.apply = flaky
        deadline = time.monotonic() + 10
        while barn.get("/h/leased") is not None:
            assert time.monotonic() < deadline, "the lease never expired: the barn-leases thread died"
            time.sleep(0.05)
        assert not failures
        assert any(t.name == "barn-leases" and t.is_alive() for t in threading.enumerate())
        barn.close()
    finally:
        server.close()


def _client(port: int) -> Any:
    from runink.plugins.barn.raft.client import RaftBarn

    return RaftBarn(endpoints=[f"127.0.0.1:{port}"], timeout=10)
