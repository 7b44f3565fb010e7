"""Authentication and authorization chains."""

from __future__ import annotations

import pytest

from runink.core import hookimpl
from runink.core.errors import AuthenticationError
from runink.core.model import AuthRequest, AuthzDecision, Identity
from runink.core.security import authenticate, authorize
from runink.testing import plugin_manager


class TokenAuth:
    """Accepts ``Bearer good-token`` and rejects other bearer tokens; ignores other schemes."""

    @hookimpl
    def runink_authenticate(self, request: AuthRequest) -> Identity | None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return None
        if header != "Bearer good-token":
            raise AuthenticationError("bearer token is not valid")
        return Identity("alice", ("analysts",), authenticated_by="token")


class PeerAuth:
    @hookimpl
    def runink_authenticate(self, request: AuthRequest) -> Identity | None:
        return Identity("local-admin", authenticated_by="peer") if request.peer == "127.0.0.1" else None


def test_hook_runink_authenticate() -> None:
    with plugin_manager(("token", TokenAuth()), ("peer", PeerAuth()), entrypoints=False) as manager:
        bearer = AuthRequest(headers={"authorization": "Bearer good-token"}, peer="127.0.0.1")
        # peer was registered last, so it is asked first and wins: firstresult.
        assert authenticate(manager, bearer).subject == "local-admin"
        remote = AuthRequest(headers={"authorization": "Bearer good-token"}, peer="10.1.1.1")
        assert authenticate(manager, remote).subject == "alice"
        with pytest.raises(AuthenticationError, match="not valid"):
            authenticate(manager, AuthRequest(headers={"authorization": "Bearer stolen"}, peer="10.1.1.1"))
        with pytest.raises(AuthenticationError, match="no authentication plugin accepted"):
            authenticate(manager, AuthRequest(peer="10.1.1.1"))


class HerdMembers:
    @hookimpl
    def runink_authorize(self, identity: Identity, action: str, resource: str, herd: str) -> AuthzDecision | None:
        return AuthzDecision(True, "member") if herd in identity.claims.get("herds", ()) else None


class NoDeletes:
    @hookimpl
    def runink_authorize(self, identity: Identity, action: str, resource: str, herd: str) -> AuthzDecision | None:
        return AuthzDecision(False, "deletes are frozen") if action.endswith(".delete") else None


def test_hook_runink_authorize() -> None:
    alice = Identity("alice", claims={"herds": ["finance"]})
    with plugin_manager(("members", HerdMembers()), ("freeze", NoDeletes()), entrypoints=False) as manager:
        allowed = authorize(manager, alice, "jobs.submit", "pipeline/orders", "finance")
        assert allowed.allowed and allowed.plugin == "members"
        denied = authorize(manager, alice, "jobs.delete", "job/42", "finance")
        assert not denied.allowed and denied.reason == "deletes are frozen" and denied.plugin == "freeze"
        nobody = authorize(manager, alice, "jobs.submit", "pipeline/x", "risk")
        assert not nobody.allowed and nobody.reason == "alice may not jobs.submit in herd risk"
