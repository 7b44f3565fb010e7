"""The ``raft`` Barn backend: a client of a group of Barn servers (``runink barn serve``).

Options: ``endpoints`` (the servers' HTTP addresses, host:port), ``timeout`` (seconds a call
keeps retrying while the group has no leader before raising NoQuorumError), and for servers
started with ``--tls-*``: ``tls_ca`` (the cluster CA's certificate: HTTPS, the server's name
checked against its certificate), ``tls_cert`` and ``tls_key`` (this client's certificate of
that CA, which those servers require), or instead of a certificate ``token`` (a token of the
cluster granting cluster-admin, for servers started with ``--auth-key`` too), and
``follow_leader``: send calls to the leader a member names even when it is not one of the
``endpoints`` (a control-plane server's client of its own member: no forwarding hop through
that member; ``leads`` still asks the first endpoint).

Any member answers (a follower forwards to the leader). A write carries a request id, so
retrying it after a lost answer or a 503 ("outcome unknown") cannot apply it twice. Each
thread keeps its own keep-alive connection.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from runink.core.driverload import OptionsSchema
from runink.core.errors import BarnError, NoQuorumError
from runink.core.http_connection import HttpConnection
from runink.core.interfaces.barn import (
    REMOTE_CLIENT_OPTIONS,
    BarnBackend,
    KeyValue,
    TxnOp,
    WatchEvent,
    check_key,
    check_value,
)
from runink.plugins.barn.raft.wire import (
    LEADER_HEADER,
    b64,
    error_from_answer,
    event_from_json,
    kv_from_json,
    new_request_id,
)

WATCH_WAIT = 5.0  # seconds one watch long-poll waits on the server
MAX_LEARNED = 8  # leaders' addresses a follow_leader client adds to its endpoints, at most


class RaftBarn(BarnBackend):
    name: ClassVar[str] = "raft"
    remote: ClassVar[bool] = True
    options_schema: ClassVar[OptionsSchema] = {
        **REMOTE_CLIENT_OPTIONS,
        "token": (str, type(None)),
        "follow_leader": bool,
    }

    def __init__(
        self,
        *,
        endpoints: Sequence[str] | str,
        timeout: float = 10.0,
        history: int | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        token: str | None = None,
        follow_leader: bool = False,
    ) -> None:
        # ``history`` is the servers' setting (accepted so the conformance options fit both drivers)
        self.endpoints = [e.strip() for e in (endpoints.split(",") if isinstance(endpoints, str) else endpoints)]
        if not self.endpoints or not all(self.endpoints):
            raise BarnError("the raft Barn needs endpoints: host:port of one or more Barn servers")
        self.timeout = float(timeout)
        self.follow_leader = bool(follow_leader)
        self._given = len(self.endpoints)  # (the rest: leaders learnt, with follow_leader)
        self._learn_lock = threading.Lock()
        self._local = threading.local()
        self._preferred = 0  # the endpoint that answered last
        self._closed = threading.Event()
        self._tls = _tls_context(tls_ca, tls_cert, tls_key)
        # a cluster admin's token, sent on every request: what a client without a certificate
        # shows a TLS member started with --auth-key
        self._headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}

    # --- transport ------------------------------------------------------------------------

    def _connection(self, index: int) -> HttpConnection:
        connections: dict[int, HttpConnection] = self._local.__dict__.setdefault("connections", {})
        if index not in connections:
            host, _, port = self.endpoints[index].rpartition(":")
            connections[index] = HttpConnection(host.strip("[]"), int(port), self.timeout, self._tls)
        return connections[index]

    def _drop(self, index: int) -> None:
        connection = self._local.__dict__.get("connections", {}).pop(index, None)
        if connection is not None:
            connection.close()

    def call(
        self, path: str, body: dict[str, Any] | None = None, method: str = "POST", *, first: bool = False
    ) -> dict[str, Any]:
        """One request, retried on other members and while there is no leader (503); with
        ``first``, asked of the first endpoint only."""
        data = json.dumps(body or {}).encode()
        deadline = time.monotonic() + self.timeout
        last = "no answer"
        attempt = 0
        while not self._closed.is_set():
            index = 0 if first else (self._preferred + attempt) % len(self.endpoints)
            attempt += 1
            try:
                connection = self._connection(index)
                # an answer is due within a share of the call's timeout (a write not answered by
                # then is retried elsewhere with its request id) plus a watch's wait: a member
                # that accepts connections but never answers (paused) took the whole timeout,
                # and no other member was asked; set only when it changes (a system call)
                budget = self._attempt_timeout() + float((body or {}).get("wait", 0))
                if connection.timeout != budget:
                    connection.settimeout(budget)
                answer = connection.request(method, path, data if method == "POST" else None, self._headers)
                payload = json.loads(answer.body or b"{}")
            except (OSError, ValueError) as exc:
                self._drop(index)
                last = f"{self.endpoints[index]}: {exc}"
                if not first and index == self._preferred:  # (the next calls start elsewhere)
                    self._preferred = (index + 1) % len(self.endpoints)
                wait = 0.05 if attempt % len(self.endpoints) else 0.2
            else:
                if not first:
                    self._prefer(answer.header(LEADER_HEADER), index)
                if answer.status == 200:
                    return dict(payload)
                if answer.status != 503:
                    raise error_from_answer(answer.status, payload)
                last = f"{self.endpoints[index]}: {payload.get('message')}"
                wait = min(float(answer.header("Retry-After") or 1), 0.2)
            if time.monotonic() + wait > deadline:
                break
            time.sleep(wait)
        raise NoQuorumError(f"the Barn did not answer {path} within {self.timeout:g}s ({last})")

    def _attempt_timeout(self) -> float:
        """How long one member is waited for: the call's timeout shared by up to three members
        (one member alone: all of it)."""
        return self.timeout / min(3, max(1, len(self.endpoints)))

    def _prefer(self, leader: str | None, answered: int) -> None:
        """Send the next calls to the leader the server named, if it is one of ours (a
        follower would forward them: one more hop) or ``follow_leader`` learns it, else to the
        member that answered."""
        if leader and leader not in self.endpoints and self.follow_leader:
            self._learn(leader)
        self._preferred = self.endpoints.index(leader) if leader in self.endpoints else answered

    def _learn(self, leader: str) -> None:
        """Add a leader's address a member named (host:port; bounded) to the endpoints."""
        host, _, port = leader.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or len(leader) > 300:
            return
        with self._learn_lock:
            if leader not in self.endpoints and len(self.endpoints) < self._given + MAX_LEARNED:
                self.endpoints.append(leader)  # (appended: each thread's connections keep their index)

    # --- writes ---------------------------------------------------------------------------

    def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        value = check_value(key, value)
        body = {"key": check_key(key), "value": b64(value), "lease": lease, "request_id": new_request_id()}
        return int(self.call("/v1/put", body)["revision"])

    def delete(self, key: str) -> bool:
        return bool(self.call("/v1/delete", {"key": check_key(key), "request_id": new_request_id()})["deleted"])

    def transaction(
        self, compare: Sequence[tuple[str, int]], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> tuple[bool, int]:
        def ops(items: Sequence[TxnOp]) -> list[dict[str, Any]]:
            return [
                {
                    "key": check_key(op.key),
                    "value": None if op.value is None else b64(check_value(op.key, op.value)),
                }
                for op in items
            ]

        body = {
            "compare": [(check_key(k), int(r)) for k, r in compare],
            "success": ops(success),
            "failure": ops(failure),
            "request_id": new_request_id(),
        }
        answer = self.call("/v1/txn", body)
        return bool(answer["succeeded"]), int(answer["revision"])

    # --- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        return kv_from_json(self.call("/v1/get", {"key": check_key(key)})["kv"])

    def scan(
        self, prefix: str, *, limit: int | None = None, after: str | None = None, serializable: bool = False
    ) -> list[KeyValue]:
        """``serializable``: the answering member's own copy, maybe stale (see the server). A
        member answers a page at most ("more": the rest asked for, from the last key), so a
        large scan is several reads, not one snapshot."""
        found: list[KeyValue] = []
        while True:
            left = None if limit is None else limit - len(found)
            asked = {"prefix": prefix, "limit": left, "after": after, "serializable": serializable}
            answer = self.call("/v1/scan", asked)
            found += [kv for kv in (kv_from_json(x) for x in answer["kvs"]) if kv is not None]
            if not answer.get("more") or not answer["kvs"] or (limit is not None and len(found) >= limit):
                return found
            after = found[-1].key

    def count(self, prefix: str) -> int:
        return int(self.call("/v1/count", {"prefix": prefix})["count"])

    def revision(self) -> int:
        return int(self.call("/v1/revision")["revision"])

    def watch(self, prefix: str, from_revision: int) -> Iterator[WatchEvent]:
        first = self.call("/v1/watch", {"prefix": prefix, "from_revision": from_revision, "wait": 0})
        return self._follow(prefix, first)

    def _follow(self, prefix: str, answer: dict[str, Any]) -> Iterator[WatchEvent]:
        while True:
            for event in answer["events"]:
                yield event_from_json(event)
            if self._closed.is_set():
                return
            answer = self.call("/v1/watch", {"prefix": prefix, "from_revision": answer["next"], "wait": WATCH_WAIT})

    def status(self) -> dict[str, Any]:
        return self.call("/v1/status", method="GET")

    def leads(self) -> bool | None:
        """Whether the first endpoint's member is the leader (a server's own member)."""
        return bool(self.call("/v1/status", method="GET", first=True).get("state") == "leader")

    # --- leases ---------------------------------------------------------------------------

    def grant_lease(self, ttl: float) -> int:
        return int(self.call("/v1/lease/grant", {"ttl": float(ttl), "request_id": new_request_id()})["lease"])

    def keep_alive(self, lease: int) -> None:
        self.call("/v1/lease/keepalive", {"lease": int(lease)})

    def revoke_lease(self, lease: int) -> None:
        self.call("/v1/lease/revoke", {"lease": int(lease), "request_id": new_request_id()})

    def close(self) -> None:
        self._closed.set()
        for connection in self._local.__dict__.get("connections", {}).values():
            connection.close()


def _tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """HTTPS to servers with a certificate of the CA ``ca``, presenting ``cert``/``key``."""
    if ca is None:
        if cert is not None or key is not None:
            raise BarnError("the raft Barn's tls_cert and tls_key need tls_ca (the CA of the servers' certificates)")
        return None
    from runink.core.server import pki  # cryptography: only for TLS

    try:
        return pki.client_context(cert, key, ca)
    except (ValueError, OSError) as exc:
        raise BarnError(f"the raft Barn's TLS options: {exc}") from None
