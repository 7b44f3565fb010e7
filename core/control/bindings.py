"""Role bindings: which subject (a user, a group, a service account) holds which role, in one
herd or in every herd (the cluster roles), stored in the Barn.

A herd's bindings live under the herd's own keys (``/herds/H/rbac/``), so they go with it when
it is deleted; the cluster's under ``/cluster/rbac/``. A subject is any text an identity
provider names (an OIDC ``sub`` may hold ``/`` or spaces), so its key holds it base64url-coded.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Literal

from msgspec import Meta, field

from runink.core.control.records import Record, keys
from runink.core.control.store import ClusterStore, NotFound, Refused
from runink.core.interfaces.barn import TxnOp
from runink.core.security import CLUSTER, CLUSTER_ROLES, HERD_ROLES

SubjectKind = Literal["user", "group", "sa"]
MAX_SUBJECT = 256  # characters of a subject's name
CLUSTER_BINDINGS = "/cluster/rbac/"


class Binding(Record, kw_only=True):
    kind: SubjectKind
    subject: Annotated[str, Meta(min_length=1, max_length=MAX_SUBJECT)]
    role: str
    herd: str  # a herd's name, or "*": every herd (a cluster role)
    by: str = ""  # who bound it
    at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not self.subject.isprintable():
            raise ValueError("subject: not printable text")


def prefix_of(herd: str) -> str:
    return CLUSTER_BINDINGS if herd == CLUSTER else f"{keys.herd(herd)}/rbac/"


def binding_key(herd: str, kind: SubjectKind, subject: str) -> str:
    coded = base64.urlsafe_b64encode(subject.encode()).decode().rstrip("=")
    return f"{prefix_of(herd)}{kind}/{coded}"


def bindings(store: ClusterStore, herd: str) -> list[Binding]:
    """The bindings of ``herd`` (``*``: the cluster's)."""
    return [Binding.model_validate_json(kv.value) for kv in store.barn.scan(prefix_of(herd))]


def bind(store: ClusterStore, binding: Binding) -> Binding:
    """Give ``binding.subject`` its role in ``binding.herd`` (replacing the role it held there).
    Refused for a role that cannot be bound there: a herd takes the herd roles, the cluster
    the cluster roles; NotFound for an unknown herd."""
    allowed = CLUSTER_ROLES if binding.herd == CLUSTER else HERD_ROLES
    if binding.role not in allowed:
        where = "the cluster" if binding.herd == CLUSTER else f"herd {binding.herd}"
        raise Refused(f"role {binding.role!r}: not a role of {where} (one of {', '.join(allowed)})")
    ops = [TxnOp(binding_key(binding.herd, binding.kind, binding.subject), binding.model_dump_json().encode())]
    if binding.herd == CLUSTER:
        store.barn.transaction([], ops)
        return binding
    herd = store.herd(binding.herd)  # NotFound names it
    if herd.record.deleting:
        raise Refused(f"herd {binding.herd!r}: being deleted")
    # compared with the herd's key: a binding never outlives a herd deleted meanwhile
    held, _ = store.barn.transaction([(keys.herd(binding.herd), herd.revision)], ops)
    if not held:
        raise Refused(f"herd {binding.herd!r}: changed meanwhile; try again")
    return binding


def unbind(store: ClusterStore, herd: str, kind: SubjectKind, subject: str) -> None:
    if not store.barn.delete(binding_key(herd, kind, subject)):
        where = "the cluster" if herd == CLUSTER else f"herd {herd}"
        raise NotFound(f"{kind} {subject!r}: no binding in {where}")
