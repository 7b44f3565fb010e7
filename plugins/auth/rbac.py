"""Herd RBAC, the built-in authorization plugin: allows an action when one of the roles the
caller holds in the herd (or cluster-wide) includes it (``runink.core.security.ROLES``; a
custom role's actions come with its grant, a ``CustomGrant`` the server resolved from the Barn).
It never denies: with no role that allows it, it abstains, and no allow means deny; another
plugin (OPA) may deny what a role allows."""

from __future__ import annotations

from collections.abc import Sequence

from runink.core.hookspecs import hookimpl
from runink.core.model import AuthzDecision, Grant, Identity
from runink.core.security import CLUSTER, allows


class HerdRbac:
    @hookimpl
    def runink_authorize(
        self, identity: Identity, action: str, resource: str, herd: str, grants: Sequence[Grant]
    ) -> AuthzDecision | None:
        grant = allows(grants, action, herd)
        if grant is None:
            return None
        where = "the cluster" if grant.herd == CLUSTER else f"herd {grant.herd}"
        return AuthzDecision(True, f"role {grant.role} in {where} ({grant.source or 'granted'})")
