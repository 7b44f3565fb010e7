"""Authentication and authorization: the chains of hook plugins the API server runs per request."""

from __future__ import annotations

from dataclasses import replace

from runink.core.errors import AuthenticationError
from runink.core.model import AuthRequest, AuthzDecision, Identity
from runink.core.plugins import PluginManager


def authenticate(manager: PluginManager, request: AuthRequest) -> Identity:
    """The identity the first recognising plugin returns; AuthenticationError when none does."""
    identity = manager.hooks.authenticate(request)
    if identity is None:
        raise AuthenticationError("no authentication plugin accepted the request's credentials")
    return identity


def authorize(manager: PluginManager, identity: Identity, action: str, resource: str, herd: str) -> AuthzDecision:
    """Combine every plugin's vote: any deny wins, else one allow is needed; no votes means deny."""
    votes: list[AuthzDecision] = [
        replace(answer.value, plugin=answer.plugin)
        for answer in manager.hooks.authorize(identity, action, resource, herd)
    ]
    for vote in votes:
        if not vote.allowed:
            return vote
    for vote in votes:
        if vote.allowed:
            return vote
    return AuthzDecision(False, f"no authorization plugin allows {action} on {resource} in herd {herd}", "")
