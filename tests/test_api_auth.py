"""Who may call what, over real sockets: the REST API with the cluster's own tokens and herd RBAC
(uvicorn on 127.0.0.1 in a thread, a memory-Barn store, httpx as the client).

Every route is enumerated from the app itself: each declares its action; each answers 401
without credentials or with bad ones, and 403 to an identity without the role; and a user of
one herd can neither read nor change anything of another herd (its jobs, logs, bindings,
tokens, quota), nor the nodes, and a refused request changes nothing."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from auth_helpers import secured_app
from fastapi.routing import APIRoute

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.store import ClusterStore
from runink.core.errors import AuthenticationError, RuninkError
from runink.core.hookspecs import hookimpl
from runink.core.model import AuthRequest, Grant, Identity
from runink.core.plugins import PluginManager
from runink.core.security import CLUSTER
from runink.core.server.api import create_app
from runink.core.server.auth import AUDIT, AUDIT_UNDONE, INSECURE_HEADER, LEEWAY, ClusterTokens, bearer, new_key_file
from runink.core.server.serve_api import serve_api, stop_api
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager

GiB = 1024**3
PUBLIC = {
    "/.well-known/jwks.json",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/v1/cluster/ca",  # (the CA a joining node pins by the fingerprint in its token)
    "/v1/nodes/join",  # (its credential is the one-time join token in the body)
    "/healthz",  # (probes: alive, and whether the Barn answers; nothing else)
    "/readyz",
}
# routes that answer everyone authenticated, listing only what the caller may see
FILTERED = {("GET", "/v1/herds"), ("GET", "/v1/jobs"), ("GET", "/v1/whoami"), ("GET", "/v1/cost")}


class Users:
    """An identity plugin standing in for an OIDC provider: ``Bearer user:NAME:GROUP,GROUP``."""

    @hookimpl
    def runink_authenticate(self, request: AuthRequest) -> Identity | None:
        token = bearer(request.headers)
        if token is None or not token.startswith("user:"):
            return None
        _, name, groups = token.split(":", 2)
        return Identity(name, groups=tuple(g for g in groups.split(",") if g), authenticated_by="users")


@dataclass
class Api:
    http: httpx.Client
    app: Any
    store: ClusterStore
    lifecycle: Lifecycle
    tokens: ClusterTokens
    job: str  # a job of herd "team"

    def token(self, role: str, herd: str, name: str = "t") -> str:
        return self.tokens.mint(f"sa:{name}", [Grant(role, herd)], 600)[0]

    def as_(self, token: str | None) -> dict[str, str]:
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: dict[str, Any] | None, token: str) -> httpx.Response:
        """POST as ``token`` (a bearer token, or ``user:...`` for the Users plugin)."""
        return self.http.post(path, json=body, headers=self.as_(token))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with secured_app(tmp_path, ("users", Users())) as secured:
        server, thread = serve_api(secured.app, "127.0.0.1", 0)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=10) as http:
                yield Api(http, secured.app, secured.store, secured.lifecycle, secured.tokens, secured.job)
        finally:
            stop_api(server, thread)


def routes(api: Api) -> list[tuple[str, str, str]]:
    """(method, path as declared, its action) of every route of the app but the public ones."""
    found = []
    for route in api.app.routes:
        if isinstance(route, APIRoute) and route.path not in PUBLIC:
            for method in route.methods:
                found.append((method, route.path, (route.openapi_extra or {}).get("x-runink-action", "")))
    return sorted(found)


BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/herds"): {"name": "new-herd"},
    ("POST", "/v1/jobs"): {"herd": "team", "command": ["/bin/true"]},
    ("POST", "/v1/pipelines"): {
        "herd": "team",
        "pipeline": "/srv/p.dsl",
        "tasks": [{"scenario": "A", "after": [], "resources": {}}],
    },
    ("POST", "/v1/herds/{name}/rbac"): {"kind": "user", "subject": "mallory", "role": "admin"},
    ("POST", "/v1/herds/{name}/rbac/unbind"): {"kind": "user", "subject": "alice"},
    ("POST", "/v1/rbac"): {"kind": "user", "subject": "mallory", "role": "cluster-admin"},
    ("POST", "/v1/rbac/unbind"): {"kind": "user", "subject": "root"},
    ("POST", "/v1/herds/{name}/tokens"): {"name": "ci", "role": "admin"},
    ("POST", "/v1/tokens"): {"name": "ci", "role": "cluster-admin"},
    ("POST", "/v1/tokens/revoke"): {"subject": "sa:ci"},
    ("PUT", "/v1/herds/{name}/secrets/{secret}"): {"value": "mallory-was-here"},
    ("PUT", "/v1/roles/{name}"): {"allows": ["jobs.read"]},
    ("PUT", "/v1/herds/{name}/roots"): {"roots": ["/srv/pipelines"]},
    ("PUT", "/v1/herds/{name}/node-labels"): {"node_labels": {"restricted.runink.io/pool": "mallory"}},
    ("PUT", "/v1/nodes/{node_id}/labels"): {"labels": {"restricted.runink.io/pool": "mallory"}},
    ("PUT", "/v1/nodes/{node_id}/capacity"): {"pinned": {"cpu": 1}},
}


#: routes of the cluster's, not of a herd: refused to a herd's admin as the cluster's
CLUSTER_PATHS = ("/v1/rbac", "/v1/rbac/unbind", "/v1/tokens", "/v1/tokens/revoke")


def call(api: Api, method: str, path: str, headers: dict[str, str], herd: str = "team") -> httpx.Response:
    url = path.replace("{name}", herd).replace("{job_id}", api.job).replace("{node_id}", "n1")
    url = url.replace("{secret}", "db_password")
    body = BODIES.get((method, path))
    return api.http.request(method, url, json=body, headers=headers)


def _b64(part: dict[str, Any]) -> str:
    return jwt.utils.base64url_encode(json.dumps(part).encode()).decode()


def state(api: Api) -> list[tuple[str, bytes]]:
    """Every record but the audit log's (a refused change is logged: that is all it may change)."""
    return [(kv.key, kv.value) for kv in api.store.barn.scan("/") if not kv.key.startswith((AUDIT, AUDIT_UNDONE))]


def test_every_route_declares_its_action(api: Api) -> None:
    undeclared = [(m, p) for m, p, action in routes(api) if not action]
    assert not undeclared, undeclared
    assert len(routes(api)) >= 24  # (the enumeration found the API's routes)


@pytest.mark.parametrize(
    "credentials",
    [None, "Basic YWxpY2U6cHc=", "Bearer", "Bearer not-a-jwt", "Bearer a.b.c"],
    ids=["none", "basic", "bearer-alone", "garbage", "not-json-jwt"],
)
def test_every_route_answers_401_without_valid_credentials(api: Api, credentials: str | None) -> None:
    before = state(api)
    headers = {} if credentials is None else {"Authorization": credentials}
    for method, path, _ in routes(api):
        answer = call(api, method, path, headers)
        assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        # and its connection closed: one without credentials holds no slot between requests
        assert answer.headers["Connection"] == "close"
    assert state(api) == before
    with socket.create_connection(("127.0.0.1", int(str(api.http.base_url).rsplit(":", 1)[1]))) as raw:
        raw.sendall(b"GET /v1/herds HTTP/1.1\r\nHost: x\r\n\r\n")  # (keep-alive asked, by HTTP/1.1)
        raw.settimeout(5)
        got = b""
        while chunk := raw.recv(65536):
            got += chunk
        assert got.startswith(b"HTTP/1.1 401")  # ... then the server closed it


def test_tokens_the_cluster_did_not_sign_as_they_are_are_401(api: Api, tmp_path: Path) -> None:
    good = api.token("cluster-admin", CLUSTER)
    claims = jwt.decode(good, options={"verify_signature": False})
    header = jwt.get_unverified_header(good)
    new_key_file(tmp_path / "other.pem")
    stranger = ClusterTokens([tmp_path / "other.pem"])
    from cryptography.hazmat.primitives import serialization

    own_key = serialization.load_pem_private_key((tmp_path / "key.pem").read_bytes(), None)
    head, payload, signature = good.split(".")
    forged_payload = _b64({**claims, "sub": "sa:root"})
    bad = {
        "expired": jwt.encode({**claims, "exp": int(time.time()) - 3600}, own_key, "ES256", headers=header),  # type: ignore[arg-type]
        "not yet valid": jwt.encode({**claims, "nbf": int(time.time()) + 3600}, own_key, "ES256", headers=header),  # type: ignore[arg-type]
        "wrong audience": jwt.encode({**claims, "aud": "kubernetes"}, own_key, "ES256", headers=header),  # type: ignore[arg-type]
        "tampered": f"{head}.{forged_payload}.{signature}",
        "another cluster's key": stranger.mint("sa:x", [Grant("cluster-admin", CLUSTER)], 600)[0],
        "another key, our kid": jwt.encode(
            claims,
            serialization.load_pem_private_key((tmp_path / "other.pem").read_bytes(), None),  # type: ignore[arg-type]
            "ES256",
            headers=header,
        ),
        "alg none": f"{_b64({**header, 'alg': 'none'})}.{payload}.",
        "no exp": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, own_key, "ES256", headers=header),  # type: ignore[arg-type]
        "unknown role": jwt.encode(
            {**claims, "grants": [{"role": "god", "herd": "*"}]},
            own_key,  # type: ignore[arg-type]
            "ES256",
            headers=header,
        ),
    }
    assert api.http.get("/v1/nodes", headers=api.as_(good)).status_code == 200
    for why, token in bad.items():
        answer = api.http.get("/v1/nodes", headers=api.as_(token))
        assert answer.status_code == 401, (why, answer.text)
        assert token not in answer.text


def test_every_route_answers_403_to_an_identity_without_the_role(api: Api) -> None:
    before = state(api)
    for who in (None, "viewer-of-other"):
        token = api.token("viewer", "other") if who else api.tokens.mint("sa:nobody", [], 600)[0]
        for method, path, _ in routes(api):
            answer = call(api, method, path, api.as_(token))
            if (method, path) in FILTERED:
                assert answer.status_code == 200, (method, path, answer.text)
                assert "team" not in answer.text and api.job not in answer.text
            elif path.startswith("/v1/jobs/{job_id}"):  # (a job of a herd it may not read: none)
                assert answer.status_code == 404 and "no such job" in answer.text, (who, method, path, answer.text)
            else:
                assert answer.status_code == 403, (who, method, path, answer.status_code, answer.text)
    assert state(api) == before


def test_a_user_of_one_herd_reaches_nothing_of_another(api: Api) -> None:
    """An admin of herd "other" (every right there) against herd "team"."""
    before = state(api)
    token = api.token("admin", "other")
    for method, path, action in routes(api):
        answer = call(api, method, path, api.as_(token), herd="team")
        if (method, path) in FILTERED:
            assert "team" not in answer.text and api.job not in answer.text and "secret-output" not in answer.text
        elif action.startswith(("herds.", "nodes.")) or path in CLUSTER_PATHS:
            assert answer.status_code == 403, (method, path, answer.text)
        elif path.startswith("/v1/jobs/{job_id}"):  # as for an id that names no job: not whose it is
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["detail"] == f"job {api.job!r}: no such job"
        else:  # herd-scoped: allowed in "other", so refused only because the herd is "team"
            assert answer.status_code == 403, (method, path, answer.text)
            assert "team" in answer.json()["detail"] or "cluster" in answer.json()["detail"]
    assert state(api) == before
    # ... while in its own herd it may do what its role allows
    assert api.http.get("/v1/herds/other", headers=api.as_(token)).status_code == 200
    assert api.post("/v1/jobs", {"herd": "other", "command": ["/bin/true"]}, token).status_code == 201


def test_roles_allow_what_they_say_and_no_more(api: Api) -> None:
    viewer, runner = api.token("viewer", "team"), api.token("runner", "team")
    submit = {"herd": "team", "command": ["/bin/true"]}
    assert api.http.get(f"/v1/jobs/{api.job}", headers=api.as_(viewer)).status_code == 200
    assert api.http.get(f"/v1/jobs/{api.job}/logs", headers=api.as_(viewer)).status_code == 200
    assert api.post("/v1/jobs", submit, viewer).status_code == 403
    assert api.post(f"/v1/jobs/{api.job}/cancel", None, viewer).status_code == 403
    submitted = api.post("/v1/jobs", submit, runner)
    assert submitted.status_code == 201 and submitted.json()["job"]["owner"] == "sa:t"  # (who submitted it)
    assert api.http.get("/v1/herds/team/rbac", headers=api.as_(runner)).status_code == 403
    listed = api.http.get("/v1/jobs", headers=api.as_(viewer)).json()["jobs"]
    assert {j["herd"] for j in listed} == {"team"}
    assert [h["name"] for h in api.http.get("/v1/herds", headers=api.as_(viewer)).json()["herds"]] == ["team"]
    # a cluster-viewer reads every herd and the nodes, changes nothing
    cluster_viewer = api.token("cluster-viewer", CLUSTER)
    assert api.http.get("/v1/nodes", headers=api.as_(cluster_viewer)).status_code == 200
    assert api.post("/v1/nodes/n1/cordon", None, cluster_viewer).status_code == 403
    assert len(api.http.get("/v1/herds", headers=api.as_(cluster_viewer)).json()["herds"]) == 2


def test_an_ended_jobs_answer_carries_its_output_only_to_whom_may_read_logs(api: Api) -> None:
    admin = api.as_(api.token("cluster-admin", CLUSTER))
    assert api.http.put("/v1/roles/job-reader", json={"allows": ["jobs.read"]}, headers=admin).status_code == 200
    bound = {"kind": "user", "subject": "bob", "role": "job-reader"}
    assert api.post("/v1/herds/team/rbac", bound, api.token("admin", "team")).status_code == 201
    viewer, reader = api.as_(api.token("viewer", "team")), api.as_("user:bob:")
    path = f"/v1/jobs/{api.job}?output=true"
    assert "output" not in api.http.get(path, headers=viewer).json()  # (not ended yet)
    assert api.post(f"/v1/jobs/{api.job}/cancel", None, api.token("admin", "team")).status_code == 200
    ended = api.http.get(path, headers=viewer).json()
    assert ended["job"]["state"] == "CANCELLED"
    assert {s: (o["data"], o["next_offset"]) for s, o in ended["output"].items()} == {
        "stdout": ("", 0),
        "stderr": ("", 0),
    }
    as_reader = api.http.get(path, headers=reader)
    assert as_reader.status_code == 200 and "output" not in as_reader.json()  # jobs.read, not logs.read
    assert api.http.get(f"/v1/jobs/{api.job}/logs", headers=reader).status_code == 403
    assert "output" not in api.http.get(f"/v1/jobs/{api.job}", headers=viewer).json()  # (not asked)


def test_bindings_give_and_take_roles_to_users_groups_and_service_accounts(api: Api) -> None:
    admin = api.token("admin", "team", name="team-admin")
    alice = "user:alice:devs,ops"
    submit = {"herd": "team", "command": ["/bin/true"]}
    assert api.post("/v1/jobs", submit, alice).status_code == 403
    bound = api.http.post(
        "/v1/herds/team/rbac", json={"kind": "group", "subject": "devs", "role": "runner"}, headers=api.as_(admin)
    )
    assert bound.status_code == 201 and bound.json()["by"] == "sa:team-admin"
    assert api.post("/v1/jobs", submit, alice).status_code == 201
    listed = api.http.get("/v1/herds/team/rbac", headers=api.as_(admin)).json()["bindings"]
    assert [(b["kind"], b["subject"], b["role"]) for b in listed] == [("group", "devs", "runner")]
    # a herd admin binds only herd roles, and only in its herd
    cluster_role = {"kind": "user", "subject": "alice", "role": "cluster-admin"}
    assert api.post("/v1/herds/team/rbac", cluster_role, admin).status_code == 409
    assert api.post("/v1/rbac", cluster_role, admin).status_code == 403
    assert (
        api.http.post(
            "/v1/herds/other/rbac", json=cluster_role | {"role": "viewer"}, headers=api.as_(admin)
        ).status_code
        == 403
    )
    # a subject with "/" and spaces (an OIDC sub may hold them) is bound and unbound as it is
    odd = {"kind": "user", "subject": "https://idp.example/u 42", "role": "viewer"}
    assert api.post("/v1/herds/team/rbac", odd, admin).status_code == 201
    gone = api.http.post(
        "/v1/herds/team/rbac/unbind", json={"kind": "group", "subject": "devs"}, headers=api.as_(admin)
    )
    assert gone.status_code == 204
    assert api.post("/v1/jobs", submit, alice).status_code == 403  # (this server forgot at once)
    again = api.http.post(
        "/v1/herds/team/rbac/unbind", json={"kind": "group", "subject": "devs"}, headers=api.as_(admin)
    )
    assert again.status_code == 404
    # a service account bound by name: its token needs no grant of its own
    bare = api.tokens.mint("sa:deployer", [], 600)[0]
    assert api.post("/v1/jobs", submit, bare).status_code == 403
    sa = {"kind": "sa", "subject": "deployer", "role": "runner"}
    assert api.post("/v1/herds/team/rbac", sa, admin).status_code == 201
    assert api.post("/v1/jobs", submit, bare).status_code == 201


def test_minted_tokens_hold_their_role_in_their_herd_only(api: Api) -> None:
    admin = api.token("admin", "team")
    minted = api.http.post(
        "/v1/herds/team/tokens", json={"name": "ci", "role": "runner", "ttl": 600}, headers=api.as_(admin)
    )
    assert minted.status_code == 201
    ci = minted.json()["token"]
    assert minted.json()["subject"] == "sa:ci" and minted.json()["expires"] <= time.time() + 601
    assert api.post("/v1/jobs", {"herd": "team", "command": ["/bin/true"]}, ci).status_code == 201
    assert api.post("/v1/jobs", {"herd": "other", "command": ["/bin/true"]}, ci).status_code == 403
    assert api.post("/v1/herds/team/tokens", {"name": "x", "role": "runner"}, ci).status_code == 403
    assert (
        api.http.post(
            "/v1/herds/team/tokens", json={"name": "x", "role": "cluster-admin"}, headers=api.as_(admin)
        ).status_code
        == 409
    )
    too_long = api.http.post(
        "/v1/herds/team/tokens", json={"name": "x", "role": "viewer", "ttl": 1e9}, headers=api.as_(admin)
    )
    assert too_long.status_code == 422 and "ttl" in too_long.json()["detail"]
    # the JWKS verifies it (what another service would check it with)
    keys = api.http.get("/.well-known/jwks.json").json()["keys"]
    key = jwt.PyJWK(keys[0]).key
    assert jwt.decode(ci, key, algorithms=["ES256"], audience="runink")["sub"] == "sa:ci"


def test_a_herd_admin_minting_a_name_bound_elsewhere_holds_none_of_those_bindings(api: Api) -> None:
    """Any herd admin may mint a service account of any name: a name bound in another herd,
    or cluster-wide, is another account there (it made a herd admin cluster-admin)."""
    root = api.token("cluster-admin", CLUSTER, name="root")
    assert api.post("/v1/rbac", {"kind": "sa", "subject": "deployer", "role": "cluster-admin"}, root).status_code == 201
    assert api.post("/v1/herds/other/rbac", {"kind": "sa", "subject": "etl", "role": "admin"}, root).status_code == 201
    admin = api.token("admin", "team", name="mallory")
    minted = {}
    for name in ("deployer", "etl"):
        answer = api.post("/v1/herds/team/tokens", {"name": name, "role": "viewer"}, admin)
        assert answer.status_code == 201
        minted[name] = answer.json()["token"]
    assert api.http.get("/v1/whoami", headers=api.as_(minted["deployer"])).json()["cluster_roles"] == []
    assert api.post("/v1/herds", {"name": "taken"}, minted["deployer"]).status_code == 403
    assert api.post("/v1/tokens", {"name": "x", "role": "cluster-admin"}, minted["deployer"]).status_code == 403
    assert api.http.get("/v1/herds/other/secrets", headers=api.as_(minted["etl"])).status_code == 403
    assert api.post("/v1/jobs", {"herd": "other", "command": ["/bin/true"]}, minted["etl"]).status_code == 403
    # in its own herd a herd's service account takes the bindings of its name there
    assert api.post("/v1/herds/team/rbac", {"kind": "sa", "subject": "etl", "role": "runner"}, admin).status_code == 201
    assert api.post("/v1/jobs", {"herd": "team", "command": ["/bin/true"]}, minted["etl"]).status_code == 201
    # and the cluster's own service accounts keep theirs everywhere (the operator's token)
    cluster_sa = api.tokens.mint("sa:deployer", [Grant("viewer", CLUSTER)], 600)[0]
    assert "cluster-admin" in api.http.get("/v1/whoami", headers=api.as_(cluster_sa)).json()["cluster_roles"]


def test_an_insecure_server_says_so_in_every_answer() -> None:
    store = ClusterStore(MemoryBarn())
    app = create_app(Lifecycle(store), store)
    server, thread = serve_api(app, "127.0.0.1", 0)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=10) as http:
            for answer in (http.get("/v1/herds"), http.get("/v1/jobs/job-nope"), http.post("/v1/herds", json={})):
                assert "insecure-dev" in answer.headers[INSECURE_HEADER]
    finally:
        stop_api(server, thread)


def test_a_server_without_authentication_refuses_to_start(tmp_path: Path) -> None:
    from runink.core.config import RuninkConfig
    from runink.core.server.process import Server, ServerOptions

    with plugin_manager() as manager, pytest.raises(RuninkError, match="no authentication configured: give --auth-key"):
        Server(ServerOptions(api=("127.0.0.1", 0), agents=("127.0.0.1", 0), plaintext=True), RuninkConfig(), manager)
    (tmp_path / "bad.pem").write_text("not a key")
    (tmp_path / "bad.pem").chmod(0o600)
    with plugin_manager() as manager, pytest.raises(RuninkError, match=r"--auth-key .*bad.pem: not a readable PEM"):
        Server(
            ServerOptions(
                api=("127.0.0.1", 0), agents=("127.0.0.1", 0), auth_keys=[tmp_path / "bad.pem"], plaintext=True
            ),
            RuninkConfig(),
            manager,
        )


def test_a_server_does_not_start_without_an_authorization_plugin_that_failed(tmp_path: Path) -> None:
    """Fail closed: an OPA plugin whose configuration is wrong would otherwise just not vote."""
    from runink.core.config import load_config
    from runink.core.server.process import Server, ServerOptions
    from runink.plugins.auth.opa import OpaAuthorizer

    (tmp_path / "runink.toml").write_text('[plugin.opa]\nurl = "http://127.0.0.1:9/"\ntimeout = 999\n')
    config = load_config(tmp_path / "runink.toml")
    new_key_file(tmp_path / "key.pem")
    with plugin_manager(("opa", OpaAuthorizer()), config=config, entrypoints=False) as manager:
        options = ServerOptions(
            api=("127.0.0.1", 0), agents=("127.0.0.1", 0), auth_keys=[tmp_path / "key.pem"], plaintext=True
        )
        with pytest.raises(RuninkError, match=r"plugin opa failed \(runink_configure raised .*timeout.*does not start"):
            Server(options, config, manager)


def test_the_manager_of_the_fixture_has_no_other_authorizer(api: Api) -> None:
    """(the matrix above proves RBAC alone: no stray plugin allowing everything)"""
    manager: PluginManager = api.app.state.auth.manager
    names = {name for name, plugin in manager.pm.list_name_plugin() if hasattr(plugin, "runink_authorize")}
    assert names == {"rbac"}


def test_decisions_about_changes_go_to_the_audit_log_which_cluster_admins_read(api: Api) -> None:
    runner, viewer = api.token("runner", "team", name="ci"), api.token("viewer", "team", name="peek")
    assert api.post("/v1/jobs", {"herd": "team", "command": ["/bin/true"]}, runner).status_code == 201
    assert api.post(f"/v1/jobs/{api.job}/cancel", None, viewer).status_code == 403
    assert api.http.get(f"/v1/jobs/{api.job}", headers=api.as_(viewer)).status_code == 200  # (reads: not logged)
    for who in (runner, api.token("admin", "team"), api.token("cluster-viewer", CLUSTER)):
        assert api.http.get("/v1/audit", headers=api.as_(who)).status_code == 403
    answer = api.http.get("/v1/audit", headers=api.as_(api.token("cluster-admin", CLUSTER)))
    assert answer.status_code == 200
    logged = [(r["subject"], r["action"], r["herd"], r["allowed"]) for r in answer.json()["records"]]
    # (reads, allowed or not, change nothing: not logged)
    assert logged == [("sa:ci", "jobs.submit", "team", True), ("sa:peek", "jobs.cancel", "team", False)]
    denied = answer.json()["records"][1]
    assert denied["resource"] == f"jobs/{api.job}" and "may not jobs.cancel" in denied["reason"]
    # written once, under the day it was made (UTC)
    # (a refusal apart, with a bound of its own: audit_retention.py)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    written = api.store.barn.scan(AUDIT) + api.store.barn.scan(AUDIT_UNDONE)
    assert [kv.key.rsplit("/", 1)[0] for kv in written] == [f"{AUDIT}{day}", f"{AUDIT_UNDONE}{day}"]
    assert all(kv.create_revision == kv.mod_revision for kv in written)


def test_an_audit_record_of_a_refused_request_holds_no_escape_sequence_and_cli_tables_print_none(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused request's text went into the audit record whole (only the subject and reason
    were made safe): `runink audit` then cleared the cluster admin's screen and printed rows
    of the attacker's (a review). Stored safe, and every CLI table cell printed safe."""
    from runink.core.cli.output import print_table

    hostile = "mallory\x1b]0;PWNED\x07\x1b[2J\x1b[31mFAKE: all clear\x1b[0m"
    viewer = api.token("viewer", "team", name="peek")
    refused = api.post("/v1/herds/team/rbac", {"kind": "user", "subject": hostile, "role": "admin"}, viewer)
    assert refused.status_code == 403
    answer = api.http.get("/v1/audit", headers=api.as_(api.token("cluster-admin", CLUSTER)))
    (record,) = [r for r in answer.json()["records"] if r["action"] == "rbac.bind"]
    assert "\x1b" not in record["resource"] and "\x07" not in record["resource"]
    assert record["resource"].startswith("rbac/user/mallory\ufffd]0;PWNED")
    print_table("t", ("a", "b"), [(hostile, "two\nlines\ttabbed")])
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\x07" not in shown and "FAKE: all clear" in shown and "two" in shown


def test_the_audit_log_is_read_a_page_at_a_time_keeping_the_last_records(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/audit read a whole day into memory to return its last ``limit`` records."""
    from runink.core.server import api as api_module

    monkeypatch.setattr(api_module, "AUDIT_PAGE", 3)
    day = f"{AUDIT}{time.strftime('%Y-%m-%d', time.gmtime())}/"
    for n in range(10):
        api.store.barn.put(f"{day}{n:020d}-x", json.dumps({"n": n}).encode())
    sizes: list[int | None] = []
    scan = api.store.barn.scan

    def counted(prefix: str, *, limit: int | None = None, after: str | None = None) -> list[Any]:
        if prefix.startswith(AUDIT):
            sizes.append(limit)
        return scan(prefix, limit=limit, after=after)

    monkeypatch.setattr(api.store.barn, "scan", counted)
    admin = api.as_(api.token("cluster-admin", CLUSTER))
    answer = api.http.get("/v1/audit", params={"limit": 4}, headers=admin)
    assert [r["n"] for r in answer.json()["records"]] == [6, 7, 8, 9]
    assert sizes and set(sizes) == {3}  # (every read a page)
    no_day = api.http.get("/v1/audit", params={"day": "2026-13-45"}, headers=admin)  # (listed nothing: a review)
    assert (no_day.status_code, no_day.json()["detail"]) == (422, "query.day: '2026-13-45' is no day (YYYY-MM-DD)")


def test_a_submissions_audit_record_is_committed_with_the_job_and_a_refused_one_is_logged_too(api: Api) -> None:
    runner = api.token("runner", "team", name="ci")
    before = api.store.barn.revision()
    answer = api.post("/v1/jobs", {"herd": "team", "command": ["/bin/true"]}, runner)
    assert answer.status_code == 201
    job = api.store.job(answer.json()["job"]["id"])
    (record,) = api.store.barn.scan(AUDIT)
    # one commit: the record's revision is the job's, and nothing else was committed between
    assert record.mod_revision == job.revision == api.store.barn.revision() == before + 1
    # refused after the decision (a request that can never fit): no job, and the allowed
    # decision is in the log all the same; a body the schema refuses is no decision at all
    huge = {"herd": "team", "command": ["/bin/true"], "resources": {"cpu": 4000}}
    assert api.post("/v1/jobs", huge, runner).status_code == 409
    bad = {"herd": "team", "command": ["/bin/true"], "timeout": -1}
    assert api.post("/v1/jobs", bad, runner).status_code == 422
    assert len(api.store.jobs("team")) == 2  # the fixture's and the one above
    logged = [json.loads(kv.value) for kv in api.store.barn.scan(AUDIT)]
    assert [(r["action"], r["allowed"]) for r in logged] == [("jobs.submit", True)]
    # (kept with the changes not made, apart: a runner's 409s again and again had pushed every
    # change made out of the log, a review)
    undone = [json.loads(kv.value) for kv in api.store.barn.scan(AUDIT_UNDONE)]
    assert [(r["action"], r["allowed"]) for r in undone] == [("jobs.submit", True)]
    shown = api.http.get("/v1/audit", headers=api.as_(api.token("cluster-admin", CLUSTER))).json()["records"]
    assert [r["resource"] for r in shown] == ["jobs", "jobs"]  # (both, in time order)


def test_a_token_checked_once_is_still_refused_once_it_expired(tmp_path: Path) -> None:
    """The server keeps a token's checked identity (one ES256 verify per token, not per
    request), but its expiry is looked at on every request, with the same leeway."""
    new_key_file(tmp_path / "key.pem")
    tokens = ClusterTokens([tmp_path / "key.pem"])
    # exp (whole seconds) = base - LEEWAY + 2: within its leeway until base + 2, 1-2 s from now
    base = int(time.time())
    token, _ = tokens.mint("sa:short", [Grant("cluster-admin", CLUSTER)], 2, now=base - LEEWAY)
    request = AuthRequest(headers={"authorization": f"Bearer {token}"})
    first = tokens.runink_authenticate(request)
    assert first is not None and first.subject == "sa:short"
    assert tokens.runink_authenticate(request) is first  # (kept: not checked again)
    time.sleep(max(0.0, base + 2 - time.time()) + 0.2)
    with pytest.raises(AuthenticationError):
        tokens.runink_authenticate(request)
    with pytest.raises(AuthenticationError, match="expired"):  # forgotten: checked in full again
        tokens.runink_authenticate(request)


def test_cost_reports_and_job_lists_are_read_two_at_a_time_and_one_per_caller(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each parses every record of its herds: 12 cost reports at once held a server at 4.6 GB
    and slowed every herd (a review's run): two at a time on a server, a third waits its turn,
    then is a 503. And one per caller: a viewer's 30 in flight held both slots, and every other
    herd's job lists waited 10 s for a 503 (another review); its second is a 429 at once."""
    import concurrent.futures
    import threading

    from runink.core.server import api as api_module

    monkeypatch.setattr(api_module, "HEAVY_WAIT", 0.3)
    reading, release = threading.Semaphore(0), threading.Event()

    def slowed(read: Any) -> Any:
        def slow(*args: Any, **kwargs: Any) -> Any:
            reading.release()
            release.wait(10)
            return read(*args, **kwargs)

        return slow

    monkeypatch.setattr(api.store, "jobs", slowed(api.store.jobs))
    monkeypatch.setattr(api.store, "jobs_page", slowed(api.store.jobs_page))
    one, two, three = (api.as_(api.token("viewer", "team", name=n)) for n in ("one", "two", "three"))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(api.http.get, "/v1/cost", headers=one), pool.submit(api.http.get, "/v1/jobs", headers=two)]
        assert reading.acquire(timeout=5) and reading.acquire(timeout=5)  # (both in)
        again = api.http.get("/v1/jobs", params={"herd": "team"}, headers=one)
        assert again.status_code == 429 and again.headers["Retry-After"] == "1"
        assert "sa:one is reading cost reports or job lists on this server already" in again.json()["detail"]
        third = api.http.get("/v1/jobs", params={"herd": "team"}, headers=three)
        assert third.status_code == 503 and third.headers["Retry-After"] == "1"
        assert "cost reports or job lists are being read on this server; try again" in third.json()["detail"]
        release.set()
        assert [f.result().status_code for f in held] == [200, 200]
    assert api.http.get("/v1/jobs", headers=one).status_code == 200
