"""The ``etcd`` Barn: the cluster's state in an etcd a site already runs, over etcd's v3 gRPC API.

Keys, revisions, transactions, watches and leases are etcd's own (the Barn's semantics were
etcd's from the start), so each call is one etcd request:

* ``get``/``scan``: Range (``scan``: the prefix's range, sorted by key, ``limit``);
* ``put``/``delete``: Put/DeleteRange; ``transaction``: Txn comparing each key's
  ``mod_revision`` (0: absent, as etcd's ``create_revision == 0``);
* ``watch``: a Watch stream from ``from_revision`` (0: from now); a start etcd compacted is
  ``CompactedError``. etcd keeps every revision until compacted: this driver compacts what is
  older than ``history`` revisions itself, at most every ``history // 2`` writes it makes;
* leases: LeaseGrant (etcd grants whole seconds, at least its minimum TTL), LeaseKeepAlive,
  LeaseRevoke; an unknown or expired lease is ``LeaseNotFoundError``.

``endpoints`` are tried in turn: a call that cannot reach one goes to the next (an etcd
member forwards writes to its leader itself). With ``tls_ca`` (and ``tls_cert``/``tls_key``
for a client certificate) the channel is TLS.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import grpc

from runink.core.driverload import OptionsSchema
from runink.core.errors import BarnError, CompactedError, LeaseNotFoundError
from runink.core.interfaces.barn import (
    REMOTE_CLIENT_OPTIONS,
    BarnBackend,
    KeyValue,
    TxnOp,
    WatchEvent,
    check_key,
    check_value,
)
from runink.plugins.barn.etcd.proto import etcd_rpc_pb2 as pb
from runink.plugins.barn.etcd.proto import etcd_rpc_pb2_grpc as rpc

DEFAULT_HISTORY = 100_000
#: etcd's answers for a lease it does not have (expired, revoked, never granted)
LEASE_GONE = ("lease not found", "requested lease not found")
#: gRPC codes that mean this endpoint could not answer: the next one is tried
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
CLOSE_WAIT = 2.0  # seconds close() waits for each open watch's closer to end


def _range_end(prefix: bytes) -> bytes:
    """The end of the range of keys starting with ``prefix`` (etcd's clientv3.GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for index in range(len(end) - 1, -1, -1):
        if end[index] < 0xFF:
            end[index] += 1
            return bytes(end[: index + 1])
    return b"\0"  # every key


def _kv(kv: Any) -> KeyValue:
    return KeyValue(kv.key.decode(), bytes(kv.value), kv.create_revision, kv.mod_revision, kv.version, kv.lease or None)


class EtcdBarn(BarnBackend):
    name: ClassVar[str] = "etcd"
    remote: ClassVar[bool] = True
    options_schema: ClassVar[OptionsSchema] = dict(REMOTE_CLIENT_OPTIONS)

    def __init__(
        self,
        *,
        endpoints: Sequence[str] | str = ("127.0.0.1:2379",),
        timeout: float = 10.0,
        history: int | None = DEFAULT_HISTORY,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        found = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.endpoints = [e.strip().removeprefix("etcd://").removeprefix("http://") for e in found if e.strip()]
        if not self.endpoints:
            raise BarnError("etcd Barn: no endpoints given")
        self.timeout = float(timeout)
        self.history = history
        credentials = None
        if tls_ca is not None:
            try:
                with open(tls_ca, "rb") as ca:
                    root = ca.read()
                chain = key = None
                if tls_cert is not None and tls_key is not None:
                    with open(tls_cert, "rb") as cert, open(tls_key, "rb") as private:
                        chain, key = cert.read(), private.read()
            except OSError as exc:
                raise BarnError(f"etcd Barn: cannot read its TLS files: {exc}") from None
            credentials = grpc.ssl_channel_credentials(root, key, chain)
        self._channels = [
            grpc.secure_channel(e, credentials) if credentials is not None else grpc.insecure_channel(e)
            for e in self.endpoints
        ]
        self._current = 0
        self._lock = threading.Lock()
        self._writes = 0  # since the last compaction this client made
        self._closed = threading.Event()
        self._closers: set[threading.Thread] = set()  # (each open watch's: joined by close)
        self._keepers: dict[int, _KeepAlive] = {}

    # --- calls ---------------------------------------------------------------------------

    def _call(self, stub: Callable[[grpc.Channel], Any], method: str, request: Any) -> Any:
        """``request`` to the current endpoint, or the next ones it cannot reach."""
        if self._closed.is_set():
            raise BarnError("the etcd Barn is closed")
        failures = []
        for step in range(len(self._channels)):
            index = (self._current + step) % len(self._channels)
            try:
                answer = getattr(stub(self._channels[index]), method)(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                code = exc.code()
                if code in UNREACHABLE:
                    failures.append(f"{self.endpoints[index]}: {code.name}")
                    continue
                raise _barn_error(exc) from None
            self._current = index
            return answer
        raise BarnError(f"no etcd endpoint answered ({'; '.join(failures)})")

    def _kv(self, method: str, request: Any) -> Any:
        return self._call(rpc.KVStub, method, request)

    # --- keys ----------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        answer = self._kv("Range", pb.RangeRequest(key=check_key(key).encode()))
        return _kv(answer.kvs[0]) if answer.kvs else None

    def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        request = pb.PutRequest(key=check_key(key).encode(), value=check_value(key, value), lease=lease or 0)
        revision = int(self._kv("Put", request).header.revision)
        self._wrote(revision)
        return revision

    def delete(self, key: str) -> bool:
        answer = self._kv("DeleteRange", pb.DeleteRangeRequest(key=check_key(key).encode()))
        if answer.deleted:
            self._wrote(int(answer.header.revision))
        return bool(answer.deleted)

    def scan(self, prefix: str, *, limit: int | None = None, after: str | None = None) -> list[KeyValue]:
        start = check_key(prefix).encode()
        first = start if after is None else max(start, after.encode() + b"\0")  # (the key right after it)
        request = pb.RangeRequest(key=first, range_end=_range_end(start), limit=limit or 0)
        return [_kv(kv) for kv in self._kv("Range", request).kvs]  # (etcd answers sorted by key)

    def count(self, prefix: str) -> int:
        start = check_key(prefix).encode()
        return int(self._kv("Range", pb.RangeRequest(key=start, range_end=_range_end(start), count_only=True)).count)

    def transaction(
        self, compare: Sequence[tuple[str, int]], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> tuple[bool, int]:
        def ops(items: Sequence[TxnOp]) -> list[Any]:
            found = []
            for op in items:
                key = check_key(op.key).encode()
                if op.value is None:
                    found.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key)))
                else:
                    put = pb.PutRequest(key=key, value=check_value(op.key, op.value))
                    found.append(pb.RequestOp(request_put=put))
            return found

        compares = [
            pb.Compare(
                result=pb.Compare.EQUAL,
                target=pb.Compare.MOD,
                key=check_key(key).encode(),
                mod_revision=int(revision),
            )
            for key, revision in compare
        ]
        request = pb.TxnRequest(compare=compares, success=ops(success), failure=ops(failure))
        answer = self._kv("Txn", request)
        revision = int(answer.header.revision)
        if success if answer.succeeded else failure:
            self._wrote(revision)
        return bool(answer.succeeded), revision

    def revision(self) -> int:
        answer = self._kv("Range", pb.RangeRequest(key=b"\0", count_only=True))  # (a linearizable read)
        return int(answer.header.revision)

    def leads(self) -> bool | None:
        answer = self._call(rpc.MaintenanceStub, "Status", pb.StatusRequest())
        return bool(answer.leader == answer.header.member_id)

    def _wrote(self, revision: int) -> None:
        """Compact what is older than ``history`` revisions, every ``history // 2`` writes."""
        if self.history is None:
            return
        with self._lock:
            self._writes += 1
            due = self._writes >= max(1, self.history // 2)
            if due:
                self._writes = 0
        if due and revision > self.history:
            with contextlib.suppress(BarnError):  # (another client compacted past it: nothing to do)
                self._kv("Compact", pb.CompactionRequest(revision=revision - self.history))

    # --- watch ---------------------------------------------------------------------------

    def watch(self, prefix: str, from_revision: int) -> Iterator[WatchEvent]:
        start = check_key(prefix).encode()
        create = pb.WatchCreateRequest(key=start, range_end=_range_end(start), start_revision=max(0, from_revision))
        stream, first, requests = self._open_watch(pb.WatchRequest(create_request=create))
        if first.canceled or first.compact_revision:
            requests.put(None)
            stream.cancel()
            if first.compact_revision:
                raise CompactedError(
                    f"watch of {prefix} from revision {from_revision}: compacted (the oldest kept is "
                    f"{first.compact_revision})"
                )
            raise BarnError(f"watch of {prefix}: refused by etcd ({first.cancel_reason or 'canceled'})")
        return self._events(stream, requests, first, prefix)

    def _open_watch(self, create: Any) -> tuple[Any, Any, queue.Queue[Any]]:
        """A Watch stream sent ``create``, its first answer and the queue of what it sends next
        (None ends it), from the current endpoint or the next ones it cannot reach (as
        ``_call``): each try with a queue of its own."""
        if self._closed.is_set():
            raise BarnError("the etcd Barn is closed")
        failures = []
        for step in range(len(self._channels)):
            index = (self._current + step) % len(self._channels)
            requests: queue.Queue[Any] = queue.Queue()
            requests.put(create)
            stream = _stub(rpc.WatchStub, self._channels[index]).Watch(_drain(requests))
            try:
                first = next(stream)
            except grpc.RpcError as exc:
                requests.put(None)
                if exc.code() in UNREACHABLE:
                    failures.append(f"{self.endpoints[index]}: {exc.code().name}")
                    continue
                raise _barn_error(exc) from None
            self._current = index
            return stream, first, requests
        raise BarnError(f"no etcd endpoint answered the watch ({'; '.join(failures)})")

    def _events(self, stream: Any, requests: queue.Queue[Any], first: Any, prefix: str) -> Iterator[WatchEvent]:
        closer = threading.Thread(target=self._cancel_on_close, args=(stream, requests), daemon=True)
        with self._lock:
            self._closers.add(closer)
        closer.start()
        answer = first
        try:
            while True:
                if answer.compact_revision:
                    raise CompactedError(f"watch of {prefix}: compacted at {answer.compact_revision}")
                for event in answer.events:
                    kind: Literal["PUT", "DELETE"] = "DELETE" if event.type == pb.Event.DELETE else "PUT"
                    yield WatchEvent(kind, _kv(event.kv), int(event.kv.mod_revision))
                if answer.canceled:
                    return
                try:
                    answer = next(stream)
                except grpc.RpcError as exc:
                    if self._closed.is_set() or exc.code() is grpc.StatusCode.CANCELLED:
                        return
                    raise _barn_error(exc) from None
                except StopIteration:
                    return
        finally:
            requests.put(None)
            stream.cancel()

    def _cancel_on_close(self, stream: Any, requests: queue.Queue[Any]) -> None:
        """Ends a watch's stream when the Barn is closed (a watch blocks when idle)."""
        try:
            while not self._closed.wait(0.5):
                if stream.done():
                    return
            requests.put(None)
            stream.cancel()
        finally:
            with self._lock:
                self._closers.discard(threading.current_thread())

    # --- leases --------------------------------------------------------------------------

    def grant_lease(self, ttl: float) -> int:
        if not (math.isfinite(ttl) and ttl > 0):
            raise BarnError(f"a lease's ttl must be a positive number of seconds, got {ttl!r}")
        answer = self._call(rpc.LeaseStub, "LeaseGrant", pb.LeaseGrantRequest(TTL=max(1, math.ceil(ttl))))
        if answer.error:
            raise BarnError(f"etcd refused the lease: {answer.error}")
        return int(answer.ID)

    def keep_alive(self, lease: int) -> None:
        with self._lock:
            keeper = self._keepers.get(lease)
            if keeper is None or keeper.broken:
                keeper = self._keepers[lease] = _KeepAlive(self._channels[self._current], lease, self.timeout)
        keeper.beat()

    def revoke_lease(self, lease: int) -> None:
        with self._lock:
            keeper = self._keepers.pop(lease, None)
        if keeper is not None:
            keeper.close()
        self._call(rpc.LeaseStub, "LeaseRevoke", pb.LeaseRevokeRequest(ID=int(lease)))

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            keepers = list(self._keepers.values())
            self._keepers.clear()
        for keeper in keepers:
            keeper.close()
        for channel in self._channels:
            channel.close()
        # a closer still cancelling its stream when the interpreter exits is frozen holding
        # the call's lock, and the call's __del__ then waits for it forever (a server that
        # never exited on SIGTERM): they end here
        with self._lock:
            closers = list(self._closers)
        for closer in closers:
            closer.join(CLOSE_WAIT)


class _KeepAlive:
    """One lease's LeaseKeepAlive stream: a beat is one request and its answer."""

    def __init__(self, channel: grpc.Channel, lease: int, timeout: float) -> None:
        self.lease = lease
        self.timeout = timeout
        self.broken = False
        self._requests: queue.Queue[Any] = queue.Queue()
        self._stream = _stub(rpc.LeaseStub, channel).LeaseKeepAlive(_drain(self._requests))

    def beat(self) -> None:
        self._requests.put(pb.LeaseKeepAliveRequest(ID=int(self.lease)))
        try:
            answer = next(self._stream)
        except (grpc.RpcError, StopIteration) as exc:
            self.broken = True
            raise BarnError(f"lease {self.lease}: keep-alive failed ({exc})") from None
        if answer.TTL <= 0:
            raise LeaseNotFoundError(f"lease {self.lease}: not found (expired or revoked)")

    def close(self) -> None:
        self._requests.put(None)
        self._stream.cancel()


def _drain(requests: queue.Queue[Any]) -> Iterator[Any]:
    """What a stream sends: the queue's items, until a None."""
    while True:
        item = requests.get()
        if item is None:
            return
        yield item


def _stub(factory: Any, channel: grpc.Channel) -> Any:
    """A generated stub (grpcio's are untyped)."""
    return factory(channel)


def _barn_error(exc: grpc.RpcError) -> BarnError:
    details = str(exc.details() or exc.code().name)
    if any(text in details for text in LEASE_GONE):
        return LeaseNotFoundError(f"etcd: {details}")
    if "compacted" in details:
        return CompactedError(f"etcd: {details}")
    return BarnError(f"etcd: {exc.code().name}: {details}")
