"""Custom roles (core/control/roles.py): defined in the Barn from the actions the built-in herd
roles know, refused for unknown or cluster actions and built-in names, not deleted while bound;
through HerdRbac a custom role allows exactly its actions in the herd it is bound in; a server
reads the definitions at most once a second; the REST routes (core/server/roles_api.py) over a
real socket, and `runink rbac role` against them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from auth_helpers import secured_app
from fixture_types import CliRunner

from runink.core.control import roles as roles_module
from runink.core.control.bindings import Binding, bindings, unbind
from runink.core.control.records import Herd
from runink.core.control.roles import (
    CUSTOM_ROLES,
    RoleRecord,
    bind_role,
    custom_roles,
    define_role,
    delete_role,
    herd_role_names,
    read_role,
)
from runink.core.control.store import ClusterStore, NotFound, Refused
from runink.core.hookspecs import hookimpl
from runink.core.model import AuthRequest, Grant, Identity
from runink.core.plugins import PluginManager
from runink.core.security import CLUSTER, HERD_ACTIONS, HERD_ROLES, KNOWN_ACTIONS, ROLES
from runink.core.server.auth import ApiAuth, ClusterTokens, bearer
from runink.core.server.roles_api import add_role_routes
from runink.core.server.serve_api import serve_api, stop_api
from runink.plugins.auth.rbac import HerdRbac
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager

ALICE = Identity("alice", authenticated_by="users")


@pytest.fixture
def store() -> ClusterStore:
    store = ClusterStore(MemoryBarn())
    for herd in ("team", "other"):
        store.create_herd(Herd(name=herd))
    return store


@pytest.fixture
def manager() -> Iterator[PluginManager]:
    with plugin_manager(("rbac", HerdRbac()), entrypoints=False) as manager:
        yield manager


def define(store: ClusterStore, name: str, *allows: str) -> RoleRecord:
    return define_role(store, RoleRecord(name=name, allows=list(allows)))


def bind_alice(store: ClusterStore, role: str, herd: str = "team") -> None:
    bind_role(store, Binding(kind="user", subject="alice", role=role, herd=herd))


# --- definitions ---------------------------------------------------------------------------


def test_a_herd_role_takes_the_herd_actions_and_roles_have_their_actions() -> None:
    assert ROLES["admin"] == HERD_ACTIONS  # (admin holds every herd action)
    assert "roles.read" in ROLES["viewer"] and "roles.manage" in ROLES["cluster-admin"]
    assert "roles.manage" not in HERD_ACTIONS


def test_a_role_is_stored_with_its_patterns_expanded(store: ClusterStore) -> None:
    stored = define(store, "log-reader", "logs.*", "jobs.read", "jobs.read")
    assert stored.allows == ["jobs.read", "logs.read"]
    assert custom_roles(store) == {"log-reader": frozenset({"jobs.read", "logs.read"})}
    # RESOURCE.* is the resource's herd verbs only (herds.create and .delete are the cluster's)
    assert define(store, "herd-reader", "herds.*").allows == ["herds.read"]
    assert define(store, "jobber", "jobs.*").allows == ["jobs.cancel", "jobs.read", "jobs.submit"]
    # defining again replaces it
    define(store, "log-reader", "logs.read")
    assert custom_roles(store)["log-reader"] == {"logs.read"}
    assert herd_role_names(store) == [*HERD_ROLES, "herd-reader", "jobber", "log-reader"]
    assert store.barn.get(CUSTOM_ROLES + "log-reader") is not None


@pytest.mark.parametrize(
    ("allows", "words"),
    [
        (["jobs.read", "jobs.fly"], "unknown action(s) 'jobs.fly'"),
        (["bogus.*"], "unknown action(s) 'bogus.*'"),
        (["*"], "unknown action(s) '*'"),
        (["nodes.manage"], "nodes.manage: cluster action(s); a custom role is a herd role"),
        (["jobs.read", "nodes.*"], "nodes.*: cluster action(s)"),
        (["herds.create"], "herds.create: cluster action(s)"),
        (["audit.read"], "audit.read: cluster action(s)"),
        (["nodes.join"], "nodes.join: cluster action(s)"),
        (["roles.manage"], "roles.manage: cluster action(s)"),
        ([], "allows nothing"),
    ],
)
def test_unknown_and_cluster_actions_are_refused_by_name(store: ClusterStore, allows: list[str], words: str) -> None:
    with pytest.raises(Refused) as refused:
        define(store, "custom", *allows)
    assert words in str(refused.value) and "'custom'" in str(refused.value)
    assert custom_roles(store) == {}


@pytest.mark.parametrize("name", ["admin", "viewer", "node", "cluster-admin", "cluster-ops"])
def test_a_custom_role_cannot_shadow_a_built_in_one(store: ClusterStore, name: str) -> None:
    with pytest.raises(Refused, match="built-in role"):
        define(store, name, "jobs.read")
    assert custom_roles(store) == {}


def test_a_role_name_follows_the_name_rule(store: ClusterStore) -> None:
    with pytest.raises(ValueError, match="role 'Bad Name'"):
        RoleRecord(name="Bad Name", allows=["jobs.read"])


def test_a_bound_role_is_not_deleted_and_names_where_it_is_bound(store: ClusterStore) -> None:
    define(store, "log-reader", "logs.read")
    bind_alice(store, "log-reader", "other")
    with pytest.raises(Refused, match=r"bound in herd other \(user alice\); unbind it first"):
        delete_role(store, "log-reader")
    assert "log-reader" in custom_roles(store)
    unbind(store, "other", "user", "alice")
    delete_role(store, "log-reader")
    with pytest.raises(NotFound, match="no such custom role"):
        read_role(store, "log-reader")
    with pytest.raises(NotFound):
        delete_role(store, "log-reader")


def test_a_binding_made_while_a_delete_checks_makes_the_delete_fail(
    store: ClusterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete scans the bindings, finds none; a bind lands before its write: refused."""
    define(store, "log-reader", "logs.read")
    scan = roles_module.bound_to

    def scan_then_bind(store: ClusterStore, name: str) -> list[Binding]:
        found = scan(store, name)
        bind_alice(store, name)
        return found

    monkeypatch.setattr(roles_module, "bound_to", scan_then_bind)
    with pytest.raises(Refused, match="changed or bound meanwhile"):
        delete_role(store, "log-reader")
    assert "log-reader" in custom_roles(store)
    assert [b.role for b in bindings(store, "team")] == ["log-reader"]


def test_binding_a_custom_role(store: ClusterStore) -> None:
    define(store, "log-reader", "logs.read")
    with pytest.raises(Refused, match=r"role 'nope': not a role of herd team \(one of viewer.*log-reader\)"):
        bind_alice(store, "nope")
    with pytest.raises(Refused, match="role ':': not a role of herd team"):
        bind_alice(store, ":")  # (not a name a role can have: refused the same way)
    with pytest.raises(Refused, match="not a role of the cluster"):
        bind_alice(store, "log-reader", CLUSTER)  # custom roles are herd roles
    with pytest.raises(NotFound, match="no such herd"):
        bind_alice(store, "log-reader", "ghost")
    bind_alice(store, "log-reader")
    bind_alice(store, "viewer", "other")  # built-in roles go through bindings.bind as before
    assert [b.role for b in bindings(store, "team")] == ["log-reader"]
    assert [b.role for b in bindings(store, "other")] == ["viewer"]


# --- authorization -------------------------------------------------------------------------


def allowed_actions(auth: ApiAuth, identity: Identity, herd: str) -> set[str]:
    return {a for a in KNOWN_ACTIONS if auth.decide(identity, a, "x", herd).allowed}


def test_a_custom_role_allows_its_actions_in_its_herd_and_nothing_else(
    store: ClusterStore, manager: PluginManager
) -> None:
    define(store, "log-reader", "jobs.read", "logs.read", "secrets.write")
    bind_alice(store, "log-reader")
    auth = ApiAuth(manager, store)
    assert allowed_actions(auth, ALICE, "team") == {"jobs.read", "logs.read", "secrets.write"}
    assert allowed_actions(auth, ALICE, "other") == set()
    assert allowed_actions(auth, ALICE, CLUSTER) == set()
    decision = auth.decide(ALICE, "logs.read", "x", "team")
    assert decision.reason == "role log-reader in herd team (bound to user alice)"
    # a role gone (a binding written around delete_role's check) allows nothing
    store.barn.delete(CUSTOM_ROLES + "log-reader")
    assert allowed_actions(ApiAuth(manager, store), ALICE, "team") == set()


def test_a_custom_role_bound_cluster_wide_by_hand_allows_nothing(store: ClusterStore, manager: PluginManager) -> None:
    """bind refuses it; a record written straight into the Barn must not widen to every herd."""
    define(store, "log-reader", "logs.read")
    from runink.core.control.bindings import binding_key

    forged = Binding(kind="user", subject="alice", role="log-reader", herd=CLUSTER)
    store.barn.put(binding_key(CLUSTER, "user", "alice"), forged.model_dump_json().encode())
    assert allowed_actions(ApiAuth(manager, store), ALICE, "team") == set()


def test_a_role_changed_on_one_server_counts_within_a_second_on_another(
    store: ClusterStore, manager: PluginManager
) -> None:
    define(store, "log-reader", "jobs.read", "logs.read")
    bind_alice(store, "log-reader")
    here, there = ApiAuth(manager, store), ApiAuth(manager, store)
    assert there.decide(ALICE, "logs.read", "x", "team").allowed
    changed = time.monotonic()
    define(store, "log-reader", "jobs.read")  # through `here`: it forgets its copy
    here.roles.forget()
    assert not here.decide(ALICE, "logs.read", "x", "team").allowed
    if time.monotonic() - changed < 0.5:  # (a slow machine may have let the copy expire)
        assert there.decide(ALICE, "logs.read", "x", "team").allowed  # its copy, still
    while there.decide(ALICE, "logs.read", "x", "team").allowed:
        assert time.monotonic() - changed < 1.5, "another server still allows what the role dropped"
        time.sleep(0.05)
    assert there.decide(ALICE, "jobs.read", "x", "team").allowed


def test_roles_are_read_at_most_once_a_second_and_not_at_all_when_none_is_bound(
    store: ClusterStore, manager: PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    scan = store.barn.scan

    def counting_scan(prefix: str, **kwargs: Any) -> Any:
        if prefix == CUSTOM_ROLES:
            reads.append(prefix)
        return scan(prefix, **kwargs)

    monkeypatch.setattr(store.barn, "scan", counting_scan)
    define(store, "log-reader", "logs.read")
    bind_alice(store, "viewer")
    auth = ApiAuth(manager, store)
    for _ in range(50):
        assert auth.decide(ALICE, "jobs.read", "x", "team").allowed
    assert reads == []  # only built-in roles bound: the definitions are never read
    bind_alice(store, "log-reader", "other")
    reads.clear()
    start = time.monotonic()
    for _ in range(50):
        assert auth.decide(ALICE, "logs.read", "x", "other").allowed
    assert len(reads) <= 1 + int(time.monotonic() - start)


# --- REST and CLI --------------------------------------------------------------------------


class Users:
    """An identity plugin standing in for an OIDC provider: ``Bearer user:NAME``."""

    @hookimpl
    def runink_authenticate(self, request: AuthRequest) -> Identity | None:
        token = bearer(request.headers)
        if token is None or not token.startswith("user:"):
            return None
        return Identity(token[5:], authenticated_by="users")


@dataclass
class Api:
    http: httpx.Client
    url: str
    store: ClusterStore
    tokens: ClusterTokens
    job: str  # a job of herd "team"

    def token(self, role: str, herd: str) -> str:
        return self.tokens.mint("sa:t", [Grant(role, herd)], 600)[0]

    def call(self, method: str, path: str, token: str | None, body: Any = None, **params: Any) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return self.http.request(method, path, json=body, headers=headers, params=params)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with secured_app(tmp_path, ("users", Users())) as secured:
        if not any(getattr(route, "path", "") == "/v1/roles" for route in secured.app.routes):
            # (until create_app adds them itself)
            add_role_routes(secured.app, secured.store, secured.app.state.auth, lambda name: {"x-runink-action": name})
        server, thread = serve_api(secured.app, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.config.port}"
        try:
            with httpx.Client(base_url=url, timeout=10) as http:
                yield Api(http, url, secured.store, secured.tokens, secured.job)
        finally:
            stop_api(server, thread)


def test_the_role_routes_declare_their_actions(api: Api) -> None:
    paths = api.http.get("/openapi.json").json()["paths"]
    assert paths["/v1/roles"]["get"]["x-runink-action"] == "roles.read"
    assert paths["/v1/roles/{name}"]["put"]["x-runink-action"] == "roles.manage"
    assert paths["/v1/roles/{name}"]["delete"]["x-runink-action"] == "roles.manage"


def test_only_a_cluster_admin_defines_and_deletes_roles(api: Api) -> None:
    admin, team_admin = api.token("cluster-admin", CLUSTER), api.token("admin", "team")
    body = {"allows": ["jobs.read", "logs.*"]}
    for token, status in ((None, 401), (team_admin, 403), (api.token("cluster-viewer", CLUSTER), 403)):
        assert api.call("PUT", "/v1/roles/log-reader", token, body).status_code == status
        assert api.call("DELETE", "/v1/roles/log-reader", token).status_code == status
    assert custom_roles(api.store) == {}
    defined = api.call("PUT", "/v1/roles/log-reader", admin, body)
    assert defined.status_code == 200, defined.text
    assert defined.json()["allows"] == ["jobs.read", "logs.read"] and defined.json()["by"] == "sa:t"
    assert api.call("DELETE", "/v1/roles/log-reader", team_admin).status_code == 403
    assert api.call("DELETE", "/v1/roles/log-reader", admin).status_code == 204
    assert api.call("DELETE", "/v1/roles/log-reader", admin).status_code == 404


@pytest.mark.parametrize(
    ("name", "body", "status", "words"),
    [
        ("ops", {"allows": ["nodes.manage"]}, 409, "a custom role is a herd role"),
        ("ops", {"allows": ["jobs.fly"]}, 409, "unknown action(s) 'jobs.fly'"),
        ("admin", {"allows": ["jobs.read"]}, 409, "built-in role"),
        ("ops", {"allows": []}, 422, "body.allows"),
        ("ops", {"allows": ["jobs.read"], "more": 1}, 422, "body.more"),
        ("Not_A-Name", {"allows": ["jobs.read"]}, 422, "path.name"),
    ],
)
def test_a_bad_definition_is_refused_in_one_line(api: Api, name: str, body: Any, status: int, words: str) -> None:
    answer = api.call("PUT", f"/v1/roles/{name}", api.token("cluster-admin", CLUSTER), body)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"] and "\n" not in answer.json()["detail"]
    assert custom_roles(api.store) == {}


def test_listing_roles_takes_a_role_where_it_is_asked(api: Api) -> None:
    define(api.store, "log-reader", "logs.read")
    viewer = api.token("viewer", "team")
    assert api.call("GET", "/v1/roles", None).status_code == 401
    assert api.call("GET", "/v1/roles", api.tokens.mint("sa:nobody", [], 600)[0], herd="team").status_code == 403
    assert api.call("GET", "/v1/roles", viewer).status_code == 403  # the cluster's: not a herd viewer's
    assert api.call("GET", "/v1/roles", viewer, herd="other").status_code == 403
    listed = api.call("GET", "/v1/roles", viewer, herd="team")
    assert listed.status_code == 200, listed.text
    built_in = {r["name"]: (r["where"], r["allows"]) for r in listed.json()["built_in"]}
    assert built_in["runner"] == ("herd", sorted(ROLES["runner"]))
    assert built_in["cluster-admin"][0] == "cluster" and "node" not in built_in
    assert [(r["name"], r["allows"]) for r in listed.json()["custom"]] == [("log-reader", ["logs.read"])]
    assert api.call("GET", "/v1/roles", api.token("cluster-viewer", CLUSTER)).status_code == 200


def test_a_bound_custom_role_works_over_the_api_and_a_change_counts_at_once(api: Api) -> None:
    admin = api.token("cluster-admin", CLUSTER)
    assert api.call("PUT", "/v1/roles/log-reader", admin, {"allows": ["jobs.read", "logs.read"]}).status_code == 200
    bind_role(api.store, Binding(kind="user", subject="alice", role="log-reader", herd="team"))
    alice = "user:alice"
    assert api.call("GET", f"/v1/jobs/{api.job}/logs", alice).status_code == 200
    assert api.call("POST", "/v1/jobs", alice, {"herd": "team", "command": ["/bin/true"]}).status_code == 403
    assert api.call("GET", "/v1/herds/other", alice).status_code == 403
    # the server that changed the role forgets its copy: the narrower role counts at once
    assert api.call("PUT", "/v1/roles/log-reader", admin, {"allows": ["jobs.read"]}).status_code == 200
    assert api.call("GET", f"/v1/jobs/{api.job}/logs", alice).status_code == 403
    assert api.call("GET", f"/v1/jobs/{api.job}", alice).status_code == 200
    refused = api.call("DELETE", "/v1/roles/log-reader", admin)
    assert refused.status_code == 409 and "bound in herd team (user alice)" in refused.json()["detail"]
    alice_unbound = api.call("POST", "/v1/herds/team/rbac/unbind", admin, {"kind": "user", "subject": "alice"})
    assert alice_unbound.status_code == 204
    assert api.call("DELETE", "/v1/roles/log-reader", admin).status_code == 204


def test_a_herd_admin_binds_a_custom_role_through_the_api(api: Api) -> None:
    define(api.store, "log-reader", "logs.read")
    binding = {"kind": "user", "subject": "alice", "role": "log-reader"}
    bound = api.call("POST", "/v1/herds/team/rbac", api.token("admin", "team"), binding)
    assert bound.status_code == 201, bound.text
    assert api.call("GET", f"/v1/jobs/{api.job}/logs", "user:alice").status_code == 200


def test_the_cli_creates_lists_and_deletes_roles(api: Api, run_cli: CliRunner) -> None:
    env = {"RUNINK_SERVER": api.url, "RUNINK_TOKEN": api.token("cluster-admin", CLUSTER)}
    created = run_cli("rbac", "role", "create", "log-reader", "--allow", "jobs.read", "--allow", "logs.*", env=env)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "role log-reader: jobs.read, logs.read"
    listed = json.loads(run_cli("rbac", "role", "list", "--json", env=env).stdout)
    assert [(r["name"], r["allows"]) for r in listed["custom"]] == [("log-reader", ["jobs.read", "logs.read"])]
    table = run_cli("rbac", "role", "list", env=env)
    assert table.returncode == 0 and "log-reader" in table.stdout and "custom" in table.stdout
    bad = run_cli("rbac", "role", "create", "ops", "--allow", "nodes.manage", env=env)
    assert bad.returncode != 0 and "a custom role is a herd role" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    deleted = run_cli("rbac", "role", "delete", "log-reader", env=env)
    assert deleted.returncode == 0 and deleted.stdout.strip() == "role log-reader: deleted"
    assert custom_roles(api.store) == {}
    helped = run_cli("rbac", "role", "--help", env=env)
    assert helped.returncode == 0 and "create" in helped.stdout and "delete" in helped.stdout
