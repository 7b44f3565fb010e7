"""The Barn's wire format, written by the server (``api.py``) and read by the client
(``client.py``) from this one place: keys and values in JSON (values base64), an error's kind
and its exception, the headers that name the leader and mark a forwarded request, request ids.

Light on purpose: the client imports it, and must not pull in pysyncobj or the event loop.
The request bodies' own checks are ``schema.py``.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

from runink.core.errors import BarnError, CompactedError, LeaseNotFoundError
from runink.core.interfaces.barn import KeyValue, WatchEvent

LEADER_HEADER = "X-Runink-Leader"  # on every answer: the leader's HTTP address, where clients go next
FORWARDED = "X-Runink-Forwarded"  # set on a request a follower passed to the leader
FORWARDED_RAW = FORWARDED.lower().encode()  # as http_protocol.py hands headers over
RETRY_AFTER = 1  # seconds, in 503 answers


@dataclass
class Answer:
    """What the server answers one request: status, JSON payload, extra headers."""

    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


# --- keys and values ----------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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


def kv_from_json(data: dict[str, Any] | None) -> KeyValue | None:
    """``kv_json``'s inverse."""
    if data is None:
        return None
    return KeyValue(
        data["key"],
        base64.b64decode(data["value"]),
        int(data["create_revision"]),
        int(data["mod_revision"]),
        int(data["version"]),
        data.get("lease"),
    )


def event_json(event: WatchEvent) -> dict[str, Any]:
    return {"type": event.type, "kv": kv_json(event.kv), "revision": event.revision}


def event_from_json(data: dict[str, Any]) -> WatchEvent:
    """``event_json``'s inverse."""
    kv = kv_from_json(data["kv"])
    assert kv is not None
    return WatchEvent(data["type"], kv, int(data["revision"]))


def new_request_id() -> str:
    """A write's id: retried with the same id, the write applies once (see BarnState)."""
    return os.urandom(16).hex()  # what uuid4().hex is, without building a UUID


# --- errors -------------------------------------------------------------------------------


def error_answer(exc: BarnError) -> Answer:
    """The answer to a refused request; ``error_from_answer`` raises the same error again."""
    if isinstance(exc, CompactedError):
        return Answer(400, {"error": "compacted", "message": str(exc)})
    if isinstance(exc, LeaseNotFoundError):
        return Answer(404, {"error": "lease_not_found", "message": str(exc)})
    return Answer(400, {"error": "bad_request", "message": str(exc)})


def not_found(path: str) -> Answer:
    return Answer(404, {"error": "not_found", "message": f"no {path}"})


def unavailable(why: str) -> Answer:
    """503: no leader, or the outcome of a write is unknown (the client retries elsewhere)."""
    return Answer(503, {"error": "unavailable", "message": why}, {"Retry-After": str(RETRY_AFTER)})


def error_from_answer(status: int, payload: dict[str, Any]) -> BarnError:
    """The error a non-200, non-503 answer stands for."""
    kind, message = payload.get("error"), str(payload.get("message", payload))
    if kind == "compacted":
        return CompactedError(message)
    if kind == "lease_not_found":
        return LeaseNotFoundError(message)
    return BarnError(f"the Barn answered {status}: {message}")
