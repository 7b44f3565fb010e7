"""The BarnBackend driver interface: the cluster state store (an etcd-like key/value + revisions).

Every change bumps a cluster-wide revision. Writes return only once durable (committed by a
quorum for a replicated backend); reads are linearizable. Keys belonging to a herd start
with ``/herds/<herd>/``. Backends: ``memory`` (one process) and ``raft`` (pysyncobj).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from runink.core.errors import BarnError


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int | None = None


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    revision: int


@dataclass(frozen=True)
class TxnOp:
    """One operation of a transaction: put (value set) or delete (value None)."""

    key: str
    value: bytes | None


#: the options every Barn driver that is a client of remote servers takes (the raft and etcd
#: drivers): where the servers are, how long a call may take, the watch history a client keeps,
#: and the TLS files; a driver adds its own (``{**REMOTE_CLIENT_OPTIONS, "token": ...}``)
REMOTE_CLIENT_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "endpoints": (list, tuple, str),
    "timeout": float,
    "history": (int, type(None)),
    "tls_ca": (str, type(None)),
    "tls_cert": (str, type(None)),
    "tls_key": (str, type(None)),
}


class BarnBackend(ABC):
    GROUP: ClassVar[str] = "runink.barn_backends"
    name: ClassVar[str] = ""
    #: each call is a round trip to another process, so calls made from several threads at
    #: once overlap (``ClusterStore.later`` starts independent reads together); an in-process
    #: Barn would only pay for the threads
    remote: ClassVar[bool] = False

    @abstractmethod
    def get(self, key: str) -> KeyValue | None: ...

    @abstractmethod
    def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """Store the value; returns the new revision."""

    @abstractmethod
    def delete(self, key: str) -> bool: ...

    def compare_and_set(self, key: str, expected_mod_revision: int, value: bytes) -> bool:
        """Put only if the key's mod_revision is ``expected_mod_revision`` (0: key absent).

        A one-compare transaction; a backend may override it with something cheaper."""
        held, _ = self.transaction([(key, expected_mod_revision)], [TxnOp(key, value)])
        return held

    @abstractmethod
    def scan(self, prefix: str, *, limit: int | None = None, after: str | None = None) -> list[KeyValue]:
        """Keys starting with ``prefix``, sorted by key, at most ``limit`` of them; ``after``:
        only those after this key (a page on from the last key of the page before)."""

    def count(self, prefix: str) -> int:
        """How many keys start with ``prefix``. Here a scan a page at a time; a backend that
        can count without reading the values overrides it (every built-in one does)."""
        counted, after = 0, None
        while page := self.scan(prefix, limit=COUNT_PAGE, after=after):
            counted += len(page)
            after = page[-1].key
        return counted

    @abstractmethod
    def transaction(
        self, compare: Sequence[tuple[str, int]], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> tuple[bool, int]:
        """Atomically: if every (key, mod_revision) matches apply ``success`` else ``failure``.

        Returns (whether the compare held, the revision after).
        """

    @abstractmethod
    def watch(self, prefix: str, from_revision: int) -> Iterator[WatchEvent]:
        """Changes under ``prefix`` with revision >= ``from_revision``, then live changes."""

    @abstractmethod
    def grant_lease(self, ttl: float) -> int:
        """A lease id; keys put with it are deleted when it expires without ``keep_alive``."""

    @abstractmethod
    def keep_alive(self, lease: int) -> None: ...

    @abstractmethod
    def revoke_lease(self, lease: int) -> None: ...

    @abstractmethod
    def revision(self) -> int:
        """The current revision (a linearizable read)."""

    def leads(self) -> bool | None:
        """Whether the member this client is connected to leads its group now (None: the
        backend has no leader, e.g. one in-process store). A cluster server asks it of a client
        of its own embedded member, to schedule only next to the leader."""
        return None

    def close(self) -> None:  # noqa: B027 (optional: most backends hold something, not all)
        """Release what the backend holds (threads, sockets, files); ends open watches."""


COUNT_PAGE = 1000  # keys per scan of BarnBackend.count's fallback
MAX_KEY_BYTES = 4096  # a key, UTF-8 encoded
MAX_VALUE_BYTES = 4 << 20  # a value (the Raft server's request limit is 16 MiB of base64 JSON)


def check_key(key: object) -> str:
    """A Barn key: a non-empty string of at most MAX_KEY_BYTES in UTF-8 (BarnError otherwise)."""
    if not isinstance(key, str) or not key:
        raise BarnError(f"a Barn key must be a non-empty string, got {short_repr(key)}")
    try:
        size = len(key.encode())
    except UnicodeEncodeError:  # a lone surrogate: it could not be stored or sent back as UTF-8
        raise BarnError(f"a Barn key must be valid Unicode text, got {short_repr(key)}") from None
    if size > MAX_KEY_BYTES:
        raise BarnError(f"a Barn key is at most {MAX_KEY_BYTES} bytes, got {size}: {short_repr(key)}")
    return key


def check_value(key: str, value: object) -> bytes:
    """A Barn value: bytes, at most MAX_VALUE_BYTES (BarnError otherwise, naming the key)."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise BarnError(f"the value of Barn key {short_repr(key)} must be bytes, got {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise BarnError(f"the value of Barn key {short_repr(key)} is {len(value)} bytes, at most {MAX_VALUE_BYTES}")
    return bytes(value)


def short_repr(value: object) -> str:
    """``repr`` cut to a length that fits an error line (a key may be megabytes of input)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def herd_key(herd: str, *parts: str) -> str:
    """The key of something that belongs to ``herd``: ``/herds/<herd>/<part>/<part>...``.

    Herd names and parts may not contain ``/`` (a part could otherwise reach into another
    herd's keys); RBAC and quotas scope by this prefix.
    """
    for name, value in (("herd", herd), *(("key part", p) for p in parts)):
        if not value or "/" in value or value in (".", ".."):
            raise ValueError(f"invalid {name} {value!r} in a Barn key (empty, '.', '..' or contains '/')")
    return "/".join(("", "herds", herd, *parts))
