"""The Barn's HTTP API on one member: routes, forwarding to the leader, the event loop.

HTTP API (JSON; keys are strings, values base64: ``wire.py``): POST /v1/put, /v1/get,
/v1/delete, /v1/txn, /v1/scan, /v1/count, /v1/watch (long poll), /v1/lease/grant,
/v1/lease/keepalive, /v1/lease/revoke, /v1/revision; GET /v1/status; POST /v1/members/add,
/v1/members/remove. ``"serializable": true`` on /v1/get, /v1/scan and /v1/count reads the answering member's own copy
(possibly stale, like etcd's). Every body is validated against ``schema.py`` before anything is
proposed (400 otherwise); the transport's limits (timeouts, the connection cap, 413/414/431) are
in ``http_protocol.py``. The leader proposes and reads through the replica (``replica.py``); a
follower forwards each request to the leader.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import socket
import threading
import time
from typing import Any

try:
    import uvloop
except ImportError:  # optional: the standard loop works, a little slower
    uvloop = None  # type: ignore[assignment]

from runink.core.errors import BarnError
from runink.core.interfaces.barn import KeyValue
from runink.core.server.auth import LEEWAY, MAX_TTL, ClusterTokens
from runink.core.server.revocations import Revocations
from runink.plugins.barn.raft import schema
from runink.plugins.barn.raft.http_protocol import Limits, Request, Response, serve
from runink.plugins.barn.raft.replica import (
    COMMIT_TIMEOUT,
    BarnNode,
    Member,
    NoLeader,
    ServerConfig,
    expire_leases,
    peer,
)
from runink.plugins.barn.raft.wire import (
    FORWARDED,
    FORWARDED_RAW,
    LEADER_HEADER,
    Answer,
    error_answer,
    event_json,
    kv_json,
    not_found,
    unavailable,
)

FORWARD_THREADS = 32  # requests a follower forwards to the leader at once
# ... and watches, apart: a long poll holds its thread up to its wait, and 32 watches sent to a
# follower once took every thread (a put through it then waited 28 s)
WATCH_FORWARD_THREADS = 64
MEMBER_CHECK_TIMEOUT = 2.0  # seconds to connect to a member being added
# a watch answer at most (its client goes on from "next"): built under the replica's lock and
# on the loop's thread, 4 watches of a history of 200 1 MiB values once stalled writes 7.8 s
MAX_WATCH_EVENTS = 1_000
MAX_WATCH_BYTES = 4 << 20
# a scan answer at most, for the same reasons ("more": the client asks for the next page): a
# scan of every key was one answer of the whole state
MAX_SCAN_KEYS = 10_000
MAX_SCAN_BYTES = 4 << 20


class BarnServer:
    """The API of one member, served on one event loop (http_protocol.py).

    One loop thread serves every connection (threads per connection fought the tick thread
    for the GIL), the tick thread runs Raft, a small pool forwards requests to the leader
    when this member is a follower, and a thread expires leases on the leader.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.configured = {m.name: m for m in [config.me, *config.peers]}
        self._leader: Member | None = None
        self.node = BarnNode(config)
        self.closed = threading.Event()
        self._forwarders = concurrent.futures.ThreadPoolExecutor(FORWARD_THREADS, thread_name_prefix="barn-forward")
        self._watch_forwarders = concurrent.futures.ThreadPoolExecutor(
            WATCH_FORWARD_THREADS, thread_name_prefix="barn-forward-watch"
        )
        self._forward_connections = threading.local()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._threads = [
            threading.Thread(target=self._serve, name="barn-http", daemon=True),
            threading.Thread(target=expire_leases, args=(self.node, self.closed), name="barn-leases", daemon=True),
        ]
        self.socket = socket.create_server(_split(config.me.http), family=_family(config.me.http), backlog=1024)
        # with TLS: clients (a follower forwarding too) present a certificate of the cluster CA
        self._tokens = ClusterTokens(config.auth_keys) if config.auth_keys and config.tls is not None else None
        if self._tokens is not None:  # a revoked admin token is refused here too (read from this member's copy)
            self._tokens.revocations = Revocations(_OwnCopy(self.node), max_ttl=MAX_TTL, leeway=LEEWAY)
        tokens_too = self._tokens is not None
        self._tls_server = config.tls.http_server_context(tokens_too=tokens_too) if config.tls is not None else None
        self._tls_client = config.tls.http_client_context() if config.tls is not None else None
        self._serving = threading.Event()

    def _token_refusal(self, authorization: bytes | None) -> str:
        """Why a request without a client certificate is refused ("" if its token is a cluster admin's)."""
        assert self._tokens is not None
        return self._tokens.admin_refusal(None if authorization is None else authorization.decode("latin-1"))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._serving.wait(10)

    def close(self) -> None:
        self.closed.set()
        if self._loop is not None and self._stopped is not None:
            with contextlib.suppress(RuntimeError):  # the loop has stopped already
                self._loop.call_soon_threadsafe(self._stopped.set)
                self._loop.call_soon_threadsafe(self.node.wake_watchers)
        self._threads[0].join(10)
        self._forwarders.shutdown(wait=False, cancel_futures=True)
        self._watch_forwarders.shutdown(wait=False, cancel_futures=True)
        self.node.destroy_synchronous()

    def _serve(self) -> None:
        """The event loop thread: every client connection, every proposal's answer."""
        loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self.node.bind(loop)
        self._stopped = asyncio.Event()
        loop.call_soon(self._serving.set)
        try:
            limits = Limits() if self.config.max_connections is None else Limits(self.config.max_connections)
            token_check = None if self._tokens is None else self._token_refusal
            loop.run_until_complete(
                serve(self.request, self.socket, self._stopped, limits, self._tls_server, token_check=token_check)
            )
        finally:
            loop.close()

    @property
    def members(self) -> dict[str, Member]:
        """The group now: the configured members, changed by the replicated add/remove records."""
        members = dict(self.configured)
        with self.node.replica.lock:
            changes = dict(self.node.replica.state.members)
        for name, addresses in changes.items():
            if addresses is None:
                members.pop(name, None)
            else:
                members[name] = Member(name, *addresses)
        return members

    # leadership
    def leader(self) -> Member | None:
        leader = self.node._getLeader()
        if leader is None:
            return None
        address = getattr(leader, "address", str(leader))
        if self._leader is None or self._leader.raft != address:  # asked on every answer: cached
            self._leader = next((m for m in self.members.values() if m.raft == address), None)
        return self._leader

    # --- HTTP ---------------------------------------------------------------------------

    async def request(self, request: Request) -> Response:
        """One HTTP request: answer it, and say who leads (clients go there next)."""
        forwarded = FORWARDED_RAW in request.headers
        answer = await self.answer(request.method, request.path, request.body, forwarded=forwarded)
        headers = list(answer.headers.items())
        leader = self.leader()
        if leader is not None:
            headers.append((LEADER_HEADER, leader.http))
        return Response(answer.status, json.dumps(answer.payload).encode(), headers)

    async def answer(self, method: str, path: str, raw: bytes, forwarded: bool = False) -> Answer:
        if method == "GET":
            if path == "/v1/status":
                return Answer(200, self.status())
            return not_found(path)
        try:
            # every field checked against the route's schema, here and on the leader again if
            # forwarded: a bad request is a 400 and never reaches the Raft log
            body = schema.parse(path, raw)
        except schema.UnknownRoute:
            return not_found(path)
        except BarnError as exc:
            return error_answer(BarnError(f"{path}: {exc}"))
        try:
            if isinstance(body, schema.Get | schema.Scan | schema.Count) and body.serializable:
                return Answer(200, self.local_read(body))
            if not self.node.is_leader():
                watch = isinstance(body, schema.Watch)
                return await self._forward(path, raw, forwarded, self._watch_forwarders if watch else self._forwarders)
            if isinstance(body, schema.MemberAdd | schema.MemberRemove):
                return Answer(200, await self._members(body))
            return Answer(200, await self.handle(body))
        except NoLeader as exc:
            return unavailable(str(exc))
        except BarnError as exc:  # the state refused the command (its result was an error)
            return error_answer(exc)

    # operations (on the leader)
    async def handle(self, body: schema.Body) -> Any:
        node = self.node
        if isinstance(body, schema.Put | schema.Txn):
            self._check_quota(body)
        if isinstance(body, schema.Put):
            command: dict[str, Any] = {"op": "put", "key": body.key, "value": body.value, "lease": body.lease}
            return {"revision": await node.commit(_with_id(command, body.request_id))}
        if isinstance(body, schema.Delete):
            deleted = await node.commit(_with_id({"op": "delete", "key": body.key}, body.request_id))
            return {"deleted": bool(deleted)}
        if isinstance(body, schema.Txn):
            command = {
                "op": "txn",
                "compare": [(key, revision) for key, revision in body.compare],
                "success": [(op.key, op.value, None) for op in body.success],
                "failure": [(op.key, op.value, None) for op in body.failure],
            }
            held, revision = await node.commit(_with_id(command, body.request_id))
            return {"succeeded": held, "revision": revision}
        if isinstance(body, schema.Get):
            key = body.key
            return {"kv": kv_json(await node.read(lambda s: s.get(key)))}
        if isinstance(body, schema.Scan):
            prefix, limit, after = body.prefix, body.limit, body.after
            kvs, more = await node.read(lambda s: s.scan_page(prefix, limit, after, MAX_SCAN_KEYS, MAX_SCAN_BYTES))
            return {"kvs": [kv_json(kv) for kv in kvs], "more": more}
        if isinstance(body, schema.Count):
            prefix = body.prefix
            return {"count": await node.read(lambda s: s.count(prefix))}
        if isinstance(body, schema.Nothing):  # /v1/revision
            return {"revision": await node.read(lambda s: s.revision)}
        if isinstance(body, schema.Watch):
            return await self._watch(body)
        if isinstance(body, schema.Grant):
            grant = {"op": "grant", "ttl": body.ttl, "now": time.time()}
            return {"lease": await node.commit(_with_id(grant, body.request_id))}
        if isinstance(body, schema.KeepAlive):
            result = await node.commit({"op": "keep_alive", "lease": body.lease, "now": time.time()})
            return {"expires_at": result}
        if isinstance(body, schema.Revoke):
            revoked = await node.commit(_with_id({"op": "revoke", "lease": body.lease}, body.request_id))
            return {"revision": revoked}
        raise AssertionError(f"no handler for {type(body).__name__}")  # schema.ROUTES and this agree

    def local_read(self, body: schema.Get | schema.Scan | schema.Count) -> dict[str, Any]:
        """This member's applied state, without a barrier or the leader (etcd's "serializable"
        reads): may be stale; for diagnostics and checks of each member's copy."""
        with self.node.replica.lock:
            state = self.node.replica.state
            if isinstance(body, schema.Get):
                return {"kv": kv_json(state.get(body.key)), "revision": state.revision}
            if isinstance(body, schema.Count):
                return {"count": state.count(body.prefix), "revision": state.revision}
            kvs, more = state.scan_page(body.prefix, body.limit, body.after, MAX_SCAN_KEYS, MAX_SCAN_BYTES)
            return {"kvs": [kv_json(kv) for kv in kvs], "more": more, "revision": state.revision}

    async def _watch(self, body: schema.Watch) -> dict[str, Any]:
        """Events under ``prefix`` from ``from_revision``: at once if there are some, else
        waiting up to ``wait`` seconds. ``next`` is where the client's next call starts."""
        prefix, from_revision = body.prefix, body.from_revision
        if from_revision > 0 and self.node.is_leader():
            # A watch going on (its client's next call): no read round. Its events come from
            # applied, so committed, entries only; a leader cut off meanwhile has none new to
            # give and steps down within the election timeout: the next call goes elsewhere.
            start = from_revision
        else:  # (where it starts, and that this member leads: confirmed by a majority)
            start = await self.node.read(lambda s: from_revision if from_revision > 0 else s.revision + 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body.wait
        looked_from = start  # what the last look saw nothing from: each wake looks at what is new only
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            self.node._watchers.add(waiter)  # before looking: a change applied meanwhile wakes it
            with self.node.replica.lock:
                state = self.node.replica.state
                # CompactedError: 400. A page at most: the answer is built on the loop's thread
                events, complete = state.events_page(prefix, looked_from, MAX_WATCH_EVENTS, MAX_WATCH_BYTES)
                revision = state.revision
            left = deadline - loop.time()
            if events or left <= 0 or self.closed.is_set():
                self.node._watchers.discard(waiter)
                after = revision + 1 if complete else events[-1].revision + 1
                return {"events": [event_json(e) for e in events], "next": max(start, after)}
            looked_from = max(looked_from, revision + 1)
            await asyncio.wait([waiter], timeout=left)

    def _check_quota(self, body: schema.Put | schema.Txn) -> None:
        """Refuse a write that would take the live keys and values past the member's quota
        (``--quota-mib``): checked by the leader before it proposes, as etcd does, so every
        member applies the same commands whatever its own flag. Deletes always go through."""
        quota = self.config.quota_bytes
        if quota is None:
            return
        if isinstance(body, schema.Put):
            adding = len(body.key) + len(body.value)
        else:
            adding = sum(len(op.key) + len(op.value) for op in (*body.success, *body.failure) if op.value is not None)
        live = self.node.replica.state.live_bytes
        if adding and live + adding > quota:
            raise BarnError(
                f"the Barn is full: {live:,} bytes of keys and values, this write {adding:,} more, its quota "
                f"{quota:,} (runink barn serve --quota-mib); delete what is not needed"
            )

    async def _members(self, body: schema.MemberAdd | schema.MemberRemove) -> dict[str, Any]:
        """Add or remove a member (pysyncobj's dynamic membership, one change at a time)."""
        member = Member(body.name, body.raft, body.http)
        adding = isinstance(body, schema.MemberAdd)
        members = self.members
        known = members.get(member.name)
        # a name and its addresses pair for good: a record that paired them otherwise than the
        # Raft group does made members lose their leader (a name given another's address)
        others = [m for m in members.values() if m.name != member.name]
        holder = next((m for m in others if m.raft == member.raft or (adding and m.http == member.http)), None)
        if holder is not None:
            raise BarnError(
                f"cannot {'add' if adding else 'remove'} {member.name}: that address is member {holder.name}'s"
            )
        if adding and known is not None and (known.raft, known.http) != (member.raft, member.http):
            raise BarnError(
                f"cannot add {member.name}: a member of that name has Raft {known.raft} and HTTP {known.http}; "
                "remove it first"
            )
        if not adding:
            if known is None and not body.raft:
                raise BarnError(f"no member named {member.name!r}")
            if known is not None and body.raft and body.raft != known.raft:
                raise BarnError(f"cannot remove {member.name}: its Raft address is {known.raft}, not {body.raft}")
            member = known or member  # removing by name: its address is known
        # Idempotent: the change is made only if needed, the address recorded in any case. So a
        # repeated add (or remove) completes one whose leader died between the two steps.
        in_group = member.raft == self.config.me.raft or peer(self.node, member.raft) is not None
        if adding:
            # a member that cannot be reached would count towards the quorum from now on (and
            # with 2 members, stop the group): refuse it before changing anything
            loop = asyncio.get_running_loop()
            for what, address in (("Raft", member.raft), ("HTTP", member.http)):
                problem = await loop.run_in_executor(self._forwarders, _unreachable, address)
                if problem:
                    raise BarnError(f"cannot add {member.name}: its {what} address {address} {problem}")
        if adding != in_group:
            await self.node.membership(adding, member.raft)
        record = {"op": "member", "name": member.name, "raft": member.raft, "http": member.http}
        await self.node.commit(record if adding else {**record, "removed": True})
        return {"members": sorted(self.members)}

    async def _forward(
        self, path: str, raw: bytes, forwarded: bool, threads: concurrent.futures.ThreadPoolExecutor
    ) -> Answer:
        leader = self.leader()
        if leader is None or forwarded or leader.name == self.config.me.name:
            return unavailable("no leader: an election is in progress or there is no quorum")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(threads, self._forward_blocking, leader, path, raw)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return unavailable(f"the leader {leader.name} cannot be reached: {exc}")

    def _forward_blocking(self, leader: Member, path: str, raw: bytes) -> Answer:
        """One forwarded request, on a keep-alive connection this pool thread keeps to the leader.
        A kept connection the leader has closed meanwhile (its idle timeout) fails at once: the
        request is sent again on a new one, once (as a client would retry it: a write's request
        id makes it apply once)."""
        reused = getattr(self._forward_connections, "connection", None) is not None
        try:
            return self._forward_once(leader, path, raw)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            return self._forward_once(leader, path, raw)

    def _forward_once(self, leader: Member, path: str, raw: bytes) -> Answer:
        cached = getattr(self._forward_connections, "connection", None)
        if cached is None or cached[0] != leader.http:
            if cached is not None:
                cached[1].close()
            host, port = _split(leader.http)
            timeout = COMMIT_TIMEOUT + schema.WATCH_WAIT_MAX + 5
            connection = (
                http.client.HTTPConnection(host, port, timeout=timeout)
                if self._tls_client is None
                else http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls_client)
            )
            cached = (leader.http, connection)
            self._forward_connections.connection = cached
        connection = cached[1]
        try:
            connection.request("POST", path, raw, {"Content-Type": "application/json", FORWARDED: "1"})
            reply = connection.getresponse()
            data = reply.read()
        except Exception:
            connection.close()
            self._forward_connections.connection = None
            raise
        retry = reply.getheader("Retry-After")
        return Answer(reply.status, json.loads(data), {"Retry-After": retry} if retry else {})

    def status(self) -> dict[str, Any]:
        status = self.node.getStatus()
        leader = self.leader()
        peers = {}
        for member in self.members.values():
            if member.name == self.config.me.name:
                continue
            peers[member.name] = {
                "raft": member.raft,
                "http": member.http,
                # pysyncobj wants its Node object (a removed member has none: not connected)
                "connected": bool(self.node.isNodeConnected(peer(self.node, member.raft) or member.raft)),
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
            "revision": self.node.replica.state.revision,
            "peers": peers,
        }


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if address.startswith("[") else socket.AF_INET


def _with_id(command: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    if request_id:
        command["request_id"] = request_id
    return command


def _unreachable(address: str) -> str | None:
    """Why a TCP connection to ``address`` fails (None: it connects)."""
    try:
        host, port = _split(address)
        with socket.create_connection((host, port), timeout=MEMBER_CHECK_TIMEOUT):
            return None
    except TimeoutError:
        return f"did not answer within {MEMBER_CHECK_TIMEOUT:g}s"
    except (OSError, ValueError) as exc:
        return f"cannot be reached: {getattr(exc, 'strerror', None) or exc}"


class _OwnCopy:
    """This member's applied state, read as a Barn's ``scan`` (may lag the leader by a few
    milliseconds: a revocation counts here as soon as this member applied it)."""

    def __init__(self, node: BarnNode) -> None:
        self.node = node

    def scan(self, prefix: str, *, limit: int | None = None, after: str | None = None) -> list[KeyValue]:
        with self.node.replica.lock:
            return self.node.replica.state.scan(prefix, limit, after)
