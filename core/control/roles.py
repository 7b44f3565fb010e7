"""Custom roles: sets of herd actions an operator names, stored in the Barn next to the
built-in roles of core/security.py (which stay in code).

A custom role is defined once for the cluster (``/cluster/roles/NAME``) and bound per herd,
like ``viewer`` or ``admin``: a custom role is a herd role, so it may allow only the actions
some built-in herd role knows (``HERD_ACTIONS``); the cluster's own actions (nodes, herds'
lifecycle, the audit log, roles themselves) stay with the cluster roles. ``RESOURCE.*`` names
every herd verb of that resource, expanded when the role is defined: a later version adding a
verb does not widen a role already stored.

A server reads the definitions at most once a second (``RoleCache``), and only when a binding
names a role that is not built in: a cluster with no custom role bound never reads them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Annotated

from msgspec import Meta, field

from runink.core.control.bindings import Binding, bind, binding_key, bindings
from runink.core.control.records import Record, RecordError, keys
from runink.core.control.store import ClusterStore, NotFound, Refused
from runink.core.interfaces.barn import TxnOp
from runink.core.model import Grant
from runink.core.security import CLUSTER, CLUSTER_ACTIONS, HERD_ACTIONS, HERD_ROLES, KNOWN_ACTIONS, ROLES, CustomGrant
from runink.core.units import NAME, check_name

log = logging.getLogger(__name__)

CUSTOM_ROLES = "/cluster/roles/"  # NAME -> a RoleRecord
MAX_ALLOWS = 256  # actions (or RESOURCE.* patterns) one definition may list
ROLES_FOR = 1.0  # seconds a server trusts the custom roles it read (a narrowed role lasts this long)


class RoleRecord(Record, kw_only=True):
    name: str
    allows: Annotated[list[str], Meta(max_length=MAX_ALLOWS)]  # RESOURCE.VERB, sorted (patterns expanded)
    by: str = ""  # who defined it (last)
    at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        check_name(self.name, "role")


def role_key(name: str) -> str:
    return CUSTOM_ROLES + check_name(name, "role")


def expand_allows(name: str, allows: Iterable[str]) -> list[str]:
    """The actions ``allows`` names, sorted: each ``RESOURCE.VERB`` a herd role knows, or
    ``RESOURCE.*`` (the herd verbs of RESOURCE). Refused, naming them, for unknown actions and
    for the cluster's actions."""
    found: set[str] = set()
    unknown: list[str] = []
    cluster: list[str] = []
    for entry in allows:
        resource, dot, verb = entry.partition(".")
        if verb == "*" and dot:
            every = {a for a in KNOWN_ACTIONS if a.partition(".")[0] == resource}
            if not every:
                unknown.append(entry)
            elif not every & HERD_ACTIONS:
                cluster.append(entry)
            found |= every & HERD_ACTIONS
        elif entry in HERD_ACTIONS:
            found.add(entry)
        elif entry in CLUSTER_ACTIONS:
            cluster.append(entry)
        else:
            unknown.append(entry)
    if unknown:
        raise Refused(
            f"role {name!r}: unknown action(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(HERD_ACTIONS))}, or RESOURCE.*)"
        )
    if cluster:
        raise Refused(
            f"role {name!r}: {', '.join(cluster)}: cluster action(s); a custom role is a herd role "
            "(bound in one herd), so it may allow only herd actions"
        )
    if not found:
        raise Refused(f"role {name!r}: allows nothing (give at least one action)")
    return sorted(found)


def define_role(store: ClusterStore, role: RoleRecord) -> RoleRecord:
    """Store ``role`` (replacing its earlier definition: its bindings get the new actions
    within a second); its ``allows`` expanded and checked (``expand_allows``). Refused for a
    built-in role's name."""
    if role.name in ROLES or role.name.startswith("cluster-"):
        raise Refused(f"role {role.name!r}: the name of a built-in role (or of the cluster-* ones)")
    stored = role.model_copy(update={"allows": expand_allows(role.name, role.allows)})
    store.barn.put(role_key(role.name), stored.model_dump_json().encode())
    return stored


def read_role(store: ClusterStore, name: str) -> tuple[RoleRecord, int]:
    """The custom role ``name`` and its key's revision; NotFound if there is none (nor can be:
    a name breaking the name rule, as a binding's role may be)."""
    kv = store.barn.get(role_key(name)) if NAME.fullmatch(name) else None
    if kv is None:
        raise NotFound(f"role {name!r}: no such custom role")
    return RoleRecord.model_validate_json(kv.value), kv.mod_revision


def role_records(store: ClusterStore) -> list[RoleRecord]:
    """Every custom role, by name; one stored by hand that does not parse is left out (logged)."""
    found = []
    for kv in store.barn.scan(CUSTOM_ROLES):
        try:
            found.append(RoleRecord.model_validate_json(kv.value))
        except RecordError as exc:
            log.warning("%s: not a role record, ignored (%s)", kv.key, exc)
    return found


def custom_roles(store: ClusterStore) -> dict[str, frozenset[str]]:
    """Custom role name -> the actions it allows (only herd actions, whatever was stored)."""
    return {r.name: frozenset(r.allows) & HERD_ACTIONS for r in role_records(store) if r.name not in ROLES}


def herd_role_names(store: ClusterStore) -> list[str]:
    """The roles a herd binding may name: the built-in herd roles, then the custom ones."""
    return [*HERD_ROLES, *sorted(custom_roles(store))]


def bound_to(store: ClusterStore, name: str) -> list[Binding]:
    """The bindings, in every herd, that give role ``name``."""
    return [b for herd in store.herds() for b in bindings(store, herd.name) if b.role == name]


def delete_role(store: ClusterStore, name: str) -> None:
    """Remove custom role ``name``; Refused while a binding gives it (naming the herd and the
    subject), NotFound if there is none."""
    _, revision = read_role(store, name)
    held = bound_to(store, name)
    if held:
        first = held[0]
        more = f" and {len(held) - 1} more binding(s)" if len(held) > 1 else ""
        raise Refused(
            f"role {name!r}: bound in herd {first.herd} ({first.kind} {first.subject}){more}; unbind it first"
        )
    # compared with the revision read: a binding made meanwhile rewrote the role (bind_role)
    deleted, _ = store.barn.transaction([(role_key(name), revision)], [TxnOp(role_key(name), None)])
    if not deleted:
        raise Refused(f"role {name!r}: changed or bound meanwhile; try again")


def bind_role(store: ClusterStore, binding: Binding) -> Binding:
    """``bindings.bind``, taking a custom role as well in a herd. The role's record is written
    again (unchanged) in the binding's transaction: a ``delete_role`` that read it before then
    fails its compare, so no binding outlives its role."""
    if binding.role in ROLES or binding.herd == CLUSTER:
        return bind(store, binding)  # built-in roles; and the cluster takes no custom role
    try:
        record, role_revision = read_role(store, binding.role)
    except NotFound:
        raise Refused(
            f"role {binding.role!r}: not a role of herd {binding.herd} (one of {', '.join(herd_role_names(store))})"
        ) from None
    herd = store.herd(binding.herd)  # NotFound names it
    if herd.record.deleting:
        raise Refused(f"herd {binding.herd!r}: being deleted")
    ops = [
        TxnOp(binding_key(binding.herd, binding.kind, binding.subject), binding.model_dump_json().encode()),
        TxnOp(role_key(record.name), record.model_dump_json().encode()),
    ]
    held, _ = store.barn.transaction(
        [(keys.herd(binding.herd), herd.revision), (role_key(record.name), role_revision)], ops
    )
    if not held:
        raise Refused(f"herd {binding.herd!r} or role {binding.role!r}: changed meanwhile; try again")
    return binding


class RoleCache:
    """A server's copy of the custom roles, read at most once every ROLES_FOR seconds, and
    only when a grant names a role that is not built in (``grant``)."""

    def __init__(self, store: ClusterStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._read: tuple[float, dict[str, frozenset[str]]] | None = None  # (read at, the roles)
        self._forgotten = 0  # (see ApiAuth._read_bindings: a read from before a change is not kept)

    def custom(self) -> dict[str, frozenset[str]]:
        now = time.monotonic()
        with self._lock:
            cached = self._read
            generation = self._forgotten
        if cached is not None and now - cached[0] < ROLES_FOR:
            return cached[1]
        found = custom_roles(self.store)
        with self._lock:
            if generation == self._forgotten:
                self._read = (now, found)
        return found

    def forget(self) -> None:
        """Read the roles again on the next grant (this server just changed one)."""
        with self._lock:
            self._read = None
            self._forgotten += 1

    def grant(self, role: str, herd: str, source: str = "") -> Grant:
        """The grant of ``role`` in ``herd``: a custom role's carries its actions (none once
        the role is gone). A custom role never counts cluster-wide (a binding in the cluster
        naming one, written around ``bind``, allows nothing)."""
        if role in ROLES or herd == CLUSTER:
            return Grant(role, herd, source)
        return CustomGrant(role, herd, source, actions=self.custom().get(role, frozenset()))
