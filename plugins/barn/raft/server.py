"""A Barn server: one member of a Raft group, serving the Barn's HTTP API.

    python -m runink.plugins.barn.raft.server --name a --raft 127.0.0.1:7001 --http 127.0.0.1:8001 \\
        --peer b=127.0.0.1:7002,127.0.0.1:8002 --peer c=127.0.0.1:7003,127.0.0.1:8003 --data-dir /var/lib/runink/barn-a

(or ``runink barn serve`` with the same options). Each member keeps the Barn's state machine
(``BarnState``) and applies the commands pysyncobj (patched: see ``syncobj.py``) commits in the
same order everywhere.

* Writes return only after commit (a majority has the entry, flushed to disk: see fsync).
* Reads are linearizable: the leader commits a no-op first (a read barrier: there is no
  ReadIndex in pysyncobj) and reads its state once that is applied; concurrent requests are
  batched into the same append (group commit), so the barrier costs one round trip.
* A follower forwards each request to the leader's HTTP API; with no leader (or no quorum)
  the answer is 503 with Retry-After, never a stale value. A 503 on a write means its outcome
  is unknown: clients retry with the same ``request_id``, which the state applies once.
* Durability: the Raft journal (pysyncobj's file journal) plus full snapshots (``fullDumpFile``)
  in ``--data-dir``; with ``--fsync`` (the default) the journal is msynced before a member
  acknowledges an entry and before the leader counts its own copy, so an acknowledged write
  survives a power loss of a minority, and a full-cluster restart.

HTTP API (JSON; keys are strings, values base64): POST /v1/put, /v1/get, /v1/delete, /v1/txn,
/v1/scan, /v1/watch (long poll), /v1/lease/grant, /v1/lease/keepalive, /v1/lease/revoke,
/v1/revision; GET /v1/status; POST /v1/members/add, /v1/members/remove. ``"serializable": true``
on /v1/get and /v1/scan reads the answering member's own copy (possibly stale, like etcd's).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pysyncobj import SyncObjConf
from pysyncobj.syncobj import SyncObjException

from runink.core.errors import BarnError, CompactedError, LeaseNotFoundError
from runink.core.interfaces.barn import KeyValue, WatchEvent, check_key
from runink.plugins.barn.raft.syncobj import SyncObj, replicated
from runink.plugins.barn.state import BarnState, raise_for

COMMIT_TIMEOUT = 5.0  # seconds a write waits for its commit before answering 503
RETRY_AFTER = 1  # seconds, in 503 answers
LEASE_CHECK = 0.05  # seconds between the leader's looks for expired leases
WATCH_WAIT_MAX = 30.0
FORWARDED = "X-Runink-Forwarded"  # set on a request a follower passed to the leader

log = logging.getLogger("runink.barn")


@dataclass(frozen=True)
class Member:
    name: str
    raft: str  # host:port of its Raft transport
    http: str  # host:port of its client API


@dataclass
class ServerConfig:
    me: Member
    peers: list[Member]
    data_dir: Path
    fsync: bool = True
    election_timeout: float = 0.3  # seconds (the minimum; the maximum is twice that)
    compaction_entries: int = 10_000  # compact the log past this many entries...
    compaction_seconds: float = 60.0  # ...at most this often
    history: int = 100_000  # changes kept for watches
    extra: dict[str, Any] = field(default_factory=dict)  # tests: other SyncObjConf options


class UnknownPath(Exception):
    """No such API path: answer 404."""


class NoLeader(Exception):
    """No leader is known, or the commit did not happen in time: answer 503."""


class BarnNode(SyncObj):
    """The replicated part: pysyncobj commits commands, ``_command`` applies them."""

    def __init__(self, config: ServerConfig) -> None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        timeout = config.election_timeout
        conf = SyncObjConf(
            autoTick=True,
            autoTickPeriod=0.001,  # commits wait on ticks: 10 ms gave 11 ms a write, 1 ms ~2.5 ms (idle: 3.5% cpu)
            appendEntriesPeriod=timeout / 6,
            raftMinTimeout=timeout,
            raftMaxTimeout=2 * timeout,
            leaderFallbackTimeout=timeout,  # an isolated leader steps down within the election timeout
            # default 5 s: members started one after the other could not elect a leader without
            # the first (the survivors were not yet connected to each other) for up to 5 s
            connectionRetryTime=timeout,
            appendEntriesUseBatch=True,  # group commit: every queued command goes in one append
            journalFile=str(config.data_dir / "raft.journal"),
            fullDumpFile=str(config.data_dir / "raft.dump"),  # without it a restart after compaction loses all
            logCompactionMinEntries=config.compaction_entries,
            logCompactionMinTime=config.compaction_seconds,
            dynamicMembershipChange=True,
            useFork=False,  # this process has threads (HTTP): never fork to write a snapshot
            commandsWaitLeader=False,
            **config.extra,
        )
        conf.runinkFsync = config.fsync
        self._lock = threading.Condition()  # guards the state: applied by the tick thread, read by HTTP threads
        self._state = BarnState(history=config.history)
        super().__init__(config.me.raft, [p.raft for p in config.peers], conf)

    @replicated
    def _command(self, command: dict[str, Any]) -> Any:
        with self._lock:
            result = self._state.apply(command)
            self._lock.notify_all()
        return result

    def commit(self, command: dict[str, Any], timeout: float = COMMIT_TIMEOUT) -> Any:
        """Propose on this member (the leader) and wait for the commit; NoLeader if it fails."""
        try:
            return self._command(command, sync=True, timeout=timeout)
        except SyncObjException as exc:  # timeout, LEADER_CHANGED, NOT_LEADER...: outcome unknown
            raise NoLeader(f"the write was not committed ({exc.errorCode})") from None

    def read(self, reader: Any) -> Any:
        """A linearizable read: commit a no-op (the read barrier), then read the applied state."""
        self.commit({"op": "noop"})
        with self._lock:
            return reader(self._state)


# --- JSON forms ---------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def kv_json(kv: KeyValue | None) -> dict[str, Any] | None:
    if kv is None:
        return None
    return {
        "key": kv.key,
        "value": b64(kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    }


def event_json(event: WatchEvent) -> dict[str, Any]:
    return {"type": event.type, "kv": kv_json(event.kv), "revision": event.revision}


# --- the server ---------------------------------------------------------------------------


class BarnServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.members = {m.name: m for m in [config.me, *config.peers]}
        self.node = BarnNode(config)
        self.closed = threading.Event()
        self.http = ThreadingHTTPServer(_split(config.me.http), _handler(self))
        self.http.daemon_threads = True
        self._threads = [
            threading.Thread(target=self.http.serve_forever, name="barn-http", daemon=True),
            threading.Thread(target=self._expire_leases, name="barn-leases", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self.closed.set()
        self.http.shutdown()
        self.http.server_close()
        with self.node._lock:
            self.node._lock.notify_all()
        self.node.destroy_synchronous()

    # leadership
    def leader(self) -> Member | None:
        leader = self.node._getLeader()
        if leader is None:
            return None
        address = getattr(leader, "address", str(leader))
        return next((m for m in self.members.values() if m.raft == address), None)

    def is_leader(self) -> bool:
        return bool(self.node._isLeader())

    def _expire_leases(self) -> None:
        while not self.closed.wait(LEASE_CHECK):
            if not self.is_leader():
                continue
            now = time.time()
            with self.node._lock:
                due = self.node._state.due_leases(now)
            if due:
                with contextlib.suppress(NoLeader):
                    self.node.commit({"op": "expire", "now": now})

    # operations (on the leader)
    def handle(self, path: str, body: dict[str, Any]) -> Any:
        node = self.node
        if path == "/v1/put":
            lease = body.get("lease")
            command = {"op": "put", "key": check_key(body.get("key")), "value": unb64(body["value"]), "lease": lease}
            return {"revision": raise_for(node.commit(_with_id(command, body)))}
        if path == "/v1/delete":
            return {"deleted": bool(node.commit(_with_id({"op": "delete", "key": check_key(body.get("key"))}, body)))}
        if path == "/v1/txn":
            ops = {
                side: [(op["key"], None if op.get("value") is None else unb64(op["value"]), None) for op in body[side]]
                for side in ("success", "failure")
            }
            command = {"op": "txn", "compare": [(k, int(r)) for k, r in body["compare"]], **ops}
            held, revision = node.commit(_with_id(command, body))
            return {"succeeded": held, "revision": revision}
        if path == "/v1/get":
            return {"kv": kv_json(node.read(lambda s: s.get(check_key(body.get("key")))))}
        if path == "/v1/scan":
            kvs = node.read(lambda s: s.scan(str(body.get("prefix", "")), body.get("limit")))
            return {"kvs": [kv_json(kv) for kv in kvs]}
        if path == "/v1/revision":
            return {"revision": node.read(lambda s: s.revision)}
        if path == "/v1/watch":
            return self._watch(body)
        if path == "/v1/lease/grant":
            grant = {"op": "grant", "ttl": float(body["ttl"]), "now": time.time()}
            return {"lease": node.commit(_with_id(grant, body))}
        if path == "/v1/lease/keepalive":
            result = node.commit({"op": "keep_alive", "lease": int(body["lease"]), "now": time.time()})
            return {"expires_at": raise_for(result)}
        if path == "/v1/lease/revoke":
            return {"revision": raise_for(node.commit(_with_id({"op": "revoke", "lease": int(body["lease"])}, body)))}
        raise UnknownPath(path)

    def local_read(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """This member's applied state, without a barrier or the leader (etcd's "serializable"
        reads): may be stale; for diagnostics and checks of each member's copy."""
        with self.node._lock:
            state = self.node._state
            if path == "/v1/get":
                return {"kv": kv_json(state.get(check_key(body.get("key")))), "revision": state.revision}
            kvs = state.scan(str(body.get("prefix", "")), body.get("limit"))
            return {"kvs": [kv_json(kv) for kv in kvs], "revision": state.revision}

    def _watch(self, body: dict[str, Any]) -> dict[str, Any]:
        """Events under ``prefix`` from ``from_revision``: at once if there are some, else
        waiting up to ``wait`` seconds. ``next`` is where the client's next call starts."""
        prefix = str(body.get("prefix", ""))
        start = self.node.read(lambda s: int(body["from_revision"]) if body["from_revision"] > 0 else s.revision + 1)
        deadline = time.monotonic() + min(float(body.get("wait", 10.0)), WATCH_WAIT_MAX)
        with self.node._lock:
            while True:
                state = self.node._state
                events = state.events_since(prefix, start)  # CompactedError: 400
                if events or time.monotonic() >= deadline or self.closed.is_set():
                    return {"events": [event_json(e) for e in events], "next": max(start, state.revision + 1)}
                self.node._lock.wait(min(0.5, deadline - time.monotonic()))

    def status(self) -> dict[str, Any]:
        status = self.node.getStatus()
        leader = self.leader()
        peers = {}
        for member in self.config.peers:
            peers[member.name] = {
                "raft": member.raft,
                "http": member.http,
                "connected": bool(self.node.isNodeConnected(_node_for(self.node, member.raft))),
                "match_index": status.get(f"match_idx_server_{member.raft}"),
            }
        return {
            "name": self.config.me.name,
            "state": {0: "follower", 1: "candidate", 2: "leader"}.get(status["state"], str(status["state"])),
            "leader": leader.name if leader else None,
            "term": status["raft_term"],
            "commit_index": status["commit_idx"],
            "last_applied": status["last_applied"],
            "log_len": status["log_len"],
            "has_quorum": bool(status["has_quorum"]),
            "revision": self.node._state.revision,
            "peers": peers,
        }


def _node_for(node: BarnNode, address: str) -> Any:
    for other in getattr(node, "_SyncObj__otherNodes", ()):  # pysyncobj wants its Node object
        if getattr(other, "address", None) == address:
            return other
    return address


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _with_id(command: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    if body.get("request_id"):
        command["request_id"] = str(body["request_id"])
    return command


def _handler(server: BarnServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one connection per client thread
        # headers and body are two writes: without TCP_NODELAY the body waits for the client's
        # delayed ACK (~40 ms a request); buffered, they leave in one segment anyway
        disable_nagle_algorithm = True
        wbufsize = 1 << 16

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _unavailable(self, why: str) -> None:
            self._send(503, {"error": "unavailable", "message": why}, {"Retry-After": str(RETRY_AFTER)})

        def do_GET(self) -> None:
            if self.path == "/v1/status":
                self._send(200, server.status())
            else:
                self._send(404, {"error": "not_found", "message": f"no {self.path}"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except ValueError as exc:
                self._send(400, {"error": "bad_request", "message": f"invalid JSON: {exc}"})
                return
            if self.path.startswith("/v1/members/"):
                self._members(body)
                return
            if self.path in ("/v1/get", "/v1/scan") and body.get("serializable"):
                self._send(200, server.local_read(self.path, body))
                return
            if not server.is_leader():
                self._forward(raw)
                return
            try:
                self._send(200, server.handle(self.path, body))
            except NoLeader as exc:
                self._unavailable(str(exc))
            except CompactedError as exc:
                self._send(400, {"error": "compacted", "message": str(exc)})
            except LeaseNotFoundError as exc:
                self._send(404, {"error": "lease_not_found", "message": str(exc)})
            except (BarnError, ValueError, TypeError) as exc:
                self._send(400, {"error": "bad_request", "message": str(exc)})
            except KeyError as exc:  # a field the request lacks
                self._send(400, {"error": "bad_request", "message": f"missing field {exc}"})
            except UnknownPath as exc:
                self._send(404, {"error": "not_found", "message": f"no {exc}"})

        def _forward(self, raw: bytes) -> None:
            leader = server.leader()
            if leader is None or self.headers.get(FORWARDED) or leader.name == server.config.me.name:
                self._unavailable("no leader: an election is in progress or there is no quorum")
                return
            try:
                connection = http.client.HTTPConnection(*_split(leader.http), timeout=COMMIT_TIMEOUT + 35)
                connection.request("POST", self.path, raw, {"Content-Type": "application/json", FORWARDED: "1"})
                answer = connection.getresponse()
                data = answer.read()
                connection.close()
            except OSError as exc:
                self._unavailable(f"the leader {leader.name} cannot be reached: {exc}")
                return
            payload = json.loads(data)
            retry = answer.getheader("Retry-After")
            self._send(answer.status, payload, {"Retry-After": retry} if retry else None)

        def _members(self, body: dict[str, Any]) -> None:
            """Add or remove a member (pysyncobj's dynamic membership, one change at a time)."""
            done = threading.Event()
            outcome: list[Any] = []
            member = Member(str(body["name"]), str(body["raft"]), str(body.get("http", "")))

            def callback(result: Any, error: Any) -> None:
                outcome.append(error)
                done.set()

            if self.path == "/v1/members/add":
                server.node.addNodeToCluster(member.raft, callback=callback)
            else:
                server.node.removeNodeFromCluster(member.raft, callback=callback)
            if not done.wait(COMMIT_TIMEOUT) or outcome[0] != 0:
                self._unavailable(f"membership change not committed (error {outcome[0] if outcome else 'timeout'})")
                return
            if self.path == "/v1/members/add":
                server.members[member.name] = member
            else:
                server.members.pop(member.name, None)
            self._send(200, {"members": sorted(server.members)})

    return Handler


def parse_member(text: str) -> Member:
    """``name=raft_host:port,http_host:port``."""
    name, _, addresses = text.partition("=")
    raft, _, http_address = addresses.partition(",")
    if not name or not raft or not http_address:
        raise argparse.ArgumentTypeError(f"a member is name=raft_host:port,http_host:port, got {text!r}")
    return Member(name, raft, http_address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runink.plugins.barn.raft.server", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--name", required=True)
    parser.add_argument("--raft", required=True, help="host:port of this member's Raft transport")
    parser.add_argument("--http", required=True, help="host:port of this member's client API")
    parser.add_argument("--peer", action="append", type=parse_member, default=[], help="name=raft,http (repeat)")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--no-fsync", action="store_true", help="do not msync the journal (faster, not durable)")
    parser.add_argument("--election-timeout", type=float, default=0.3, help="seconds (minimum; max is twice)")
    parser.add_argument("--history", type=int, default=100_000, help="changes kept for watches")
    args = parser.parse_args(argv)
    config = ServerConfig(
        Member(args.name, args.raft, args.http),
        args.peer,
        args.data_dir,
        fsync=not args.no_fsync,
        election_timeout=args.election_timeout,
        history=args.history,
    )
    logging.basicConfig(level=logging.WARNING, format=f"barn {args.name}: %(levelname)s %(message)s")
    server = BarnServer(config)
    server.start()
    print(json.dumps({"event": "serving", "name": args.name, "http": args.http, "pid": os.getpid()}), flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
