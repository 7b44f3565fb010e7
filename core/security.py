"""Authentication and authorization: the chains of hook plugins the API server runs per request,
and the built-in roles a herd's bindings name.

An action is ``RESOURCE.VERB`` (``jobs.submit``). A role is a set of actions; a binding gives
a role to a subject (a user, a group, a service account) in one herd, or in every herd (the
cluster roles, herd ``*``). Which plugin decides is configuration: the built-in RBAC plugin
allows what the identity's roles allow; OPA or a plugin of your own may vote too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from runink.core.errors import AuthenticationError
from runink.core.model import AuthRequest, AuthzDecision, Grant, Identity

if TYPE_CHECKING:  # (the CLI's commands read CLUSTER without loading the plugin machinery)
    from runink.core.plugins import PluginManager

CLUSTER = "*"  # the herd of a cluster-wide grant or action

_READ = frozenset({"herds.read", "jobs.read", "logs.read", "roles.read", "catalog.read"})
_RUN = _READ | {"jobs.submit", "jobs.cancel", "catalog.annotate"}
# secrets: names and versions read, values written, never read back (a runner's slices get
# them: whoever may run jobs in a herd that has secrets may, through a job, see them)
_EDIT = _RUN | {"rbac.read", "secrets.read", "secrets.write"}
_ADMIN = _EDIT | {"rbac.bind", "tokens.create", "tokens.revoke"}
#: the built-in roles: what each lets its holder do in the herd it is bound in (``cluster-*``:
#: in every herd, and the actions of no herd: herds, nodes, cluster bindings)
ROLES: dict[str, frozenset[str]] = {
    "viewer": _READ,
    "runner": _RUN,
    "editor": _EDIT,
    "admin": _ADMIN,
    "cluster-viewer": _READ | {"nodes.read", "rbac.read"},
    "cluster-admin": _ADMIN
    | {"nodes.read", "nodes.manage", "herds.create", "herds.delete", "herds.update", "audit.read", "roles.manage"},
}
#: a node's agent (tokens only, never bound): its gRPC stream, no action of the REST API
ROLES["node"] = frozenset({"nodes.join"})
HERD_ROLES = ("viewer", "runner", "editor", "admin")
CLUSTER_ROLES = ("cluster-viewer", "cluster-admin")
#: every action a role can name, and those a herd role can (a custom role's: custom roles are
#: bound in one herd); the rest are the cluster's (nodes, herds' lifecycle, the audit log)
KNOWN_ACTIONS = frozenset().union(*ROLES.values())
HERD_ACTIONS = frozenset().union(*(ROLES[role] for role in HERD_ROLES))
CLUSTER_ACTIONS = KNOWN_ACTIONS - HERD_ACTIONS


class RouteGuard(Protocol):
    """What a plugin's REST routes (``runink_api_routes``) authenticate and authorize with, as
    the server's own routes do."""

    #: a FastAPI dependency giving the request's identity (401 without credentials):
    #: ``identity: Identity = Depends(guard.caller)``
    caller: Callable[..., Identity]

    def check(self, identity: Identity, action: str, resource: str, herd: str) -> None:
        """Raise (403) unless ``identity`` may do ``action`` on ``resource`` in ``herd``."""

    def herds(self, identity: Identity, action: str) -> list[str]:
        """The herds in which ``identity`` may do ``action`` (to answer with those only)."""

    def declare(self, action: str) -> dict[str, Any]:
        """A route's ``openapi_extra``: the action it needs (every route declares one)."""


@dataclass(frozen=True)
class CustomGrant(Grant):
    """A grant of a custom role (defined in the Barn, core/control/roles.py), carrying the
    actions the role allowed when the grant was built: an authorization plugin decides from
    the grant alone, without reading the Barn."""

    actions: frozenset[str] = frozenset()


def actions_of(grant: Grant) -> frozenset[str]:
    """What ``grant``'s role allows: a built-in role's actions (a custom grant never redefines
    one), else the actions a custom grant carries; nothing for an unknown role."""
    if grant.role in ROLES:
        return ROLES[grant.role]
    return grant.actions if isinstance(grant, CustomGrant) else frozenset()


def allows(grants: Sequence[Grant], action: str, herd: str) -> Grant | None:
    """The first grant whose role allows ``action`` in ``herd`` (a cluster grant: any herd)."""
    for grant in grants:
        if action in actions_of(grant) and grant.herd in (herd, CLUSTER):
            return grant
    return None


def authenticate(manager: PluginManager, request: AuthRequest) -> Identity:
    """The identity the first recognising plugin returns; AuthenticationError when none does."""
    identity = manager.hooks.authenticate(request)
    if identity is None:
        raise AuthenticationError("no authentication plugin accepted the request's credentials")
    return identity


def authorize(
    manager: PluginManager, identity: Identity, action: str, resource: str, herd: str, *, grants: Sequence[Grant] = ()
) -> AuthzDecision:
    """Combine every plugin's vote: any deny wins, else one allow is needed; no votes means deny."""
    votes: list[AuthzDecision] = [
        replace(answer.value, plugin=answer.plugin)
        for answer in manager.hooks.authorize(identity, action, resource, herd, grants)
    ]
    for vote in votes:
        if not vote.allowed:
            return vote
    for vote in votes:
        if vote.allowed:
            return vote
    where = "the cluster" if herd == CLUSTER else f"herd {herd}"
    return AuthzDecision(False, f"{identity.subject} may not {action} in {where}", "")
