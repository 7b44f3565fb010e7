"""The REST routes of custom roles (core/control/roles.py): list the roles, define one, delete
one. Added to the app by ``create_app`` (``add_role_routes``).

* ``GET /v1/roles[?herd=H]``: the built-in roles and the custom ones, with their actions.
  Action ``roles.read``, which every built-in role holds: without ``herd`` it is checked in
  the cluster (the cluster roles), with ``herd`` in that herd, so anyone holding a role
  anywhere can list the roles by naming the herd they hold it in (what a herd admin needs to
  bind one). The definitions are not secret; listing them is kept to people with a role.
* ``PUT /v1/roles/NAME`` ``{"allows": [...]}`` and ``DELETE /v1/roles/NAME``: action
  ``roles.manage``, cluster admins only (a role counts in every herd that binds it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from runink.core.control.roles import MAX_ALLOWS, RoleRecord, define_role, delete_role, role_records
from runink.core.control.store import ClusterStore
from runink.core.model import Identity
from runink.core.security import CLUSTER, CLUSTER_ROLES, HERD_ROLES, ROLES
from runink.core.server.auth import ApiAuth
from runink.core.units import NAME

RolePath = Annotated[str, Path(pattern=NAME.pattern, max_length=63)]
HerdQuery = Annotated[str | None, Query(pattern=NAME.pattern, max_length=63)]


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allows: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=MAX_ALLOWS)


def _caller(request: Request) -> Identity:
    """The identity the request's token names: 401 without (as the API's other routes)."""
    auth: ApiAuth = request.app.state.auth
    return auth.identify(request.headers, request.client.host if request.client else None)


Caller = Annotated[Identity, Depends(_caller)]


def add_role_routes(app: FastAPI, store: ClusterStore, auth: ApiAuth, action: Callable[[str], dict[str, Any]]) -> None:
    """Add the role routes to ``app`` (made by ``create_app``: its error handlers answer
    NotFound 404 and Refused 409); ``action`` declares each route's action."""

    @app.get("/v1/roles", openapi_extra=action("roles.read"))
    def list_roles(identity: Caller, herd: HerdQuery = None) -> dict[str, Any]:
        """The built-in roles (where each is bound) and the custom ones (herd roles)."""
        auth.check(identity, "roles.read", "roles", herd or CLUSTER)
        built_in = [
            {"name": name, "where": "herd" if name in HERD_ROLES else "cluster", "allows": sorted(ROLES[name])}
            for name in (*HERD_ROLES, *CLUSTER_ROLES)
        ]
        custom = [
            {"name": r.name, "where": "herd", "allows": r.allows, "by": r.by, "at": r.at}
            for r in sorted(role_records(store), key=lambda r: r.name)
            if r.name not in ROLES
        ]
        return {"built_in": built_in, "custom": custom}

    @app.put("/v1/roles/{name}", openapi_extra=action("roles.manage"))
    def put_role(name: RolePath, body: RoleIn, identity: Caller) -> dict[str, Any]:
        """Define custom role ``name`` (or replace its definition): herd actions only."""
        auth.check(identity, "roles.manage", f"roles/{name}", CLUSTER)
        stored = define_role(store, RoleRecord(name=name, allows=body.allows, by=identity.subject))
        auth.roles.forget()
        return stored.model_dump(mode="json")

    @app.delete("/v1/roles/{name}", status_code=204, openapi_extra=action("roles.manage"))
    def remove_role(name: RolePath, identity: Caller) -> None:
        """Remove custom role ``name``: refused (409) while a binding gives it."""
        auth.check(identity, "roles.manage", f"roles/{name}", CLUSTER)
        delete_role(store, name)
        auth.roles.forget()
