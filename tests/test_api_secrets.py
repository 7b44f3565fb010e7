"""Herd secrets through the REST API, over a real socket: values go in and never come out
(names and versions only), only the herd's editors and admins touch them, they are stored only
as ciphertext, and a job may ask only for secrets its herd has."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from auth_helpers import SECRET_VALUE, secured_app

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import RunState, keys
from runink.core.control.store import ClusterStore, NotFound, Refused
from runink.core.interfaces.barn import TxnOp
from runink.core.interfaces.secrets import InvalidSecretError
from runink.core.model import Grant
from runink.core.server.auth import ClusterTokens
from runink.core.server.serve_api import serve_api, stop_api
from runink.core.units import NAME_WORDS


@dataclass
class Api:
    http: httpx.Client
    store: ClusterStore
    lifecycle: Lifecycle
    tokens: ClusterTokens

    def as_(self, role: str, herd: str = "team") -> dict[str, str]:
        token = self.tokens.mint(f"sa:{role}", [Grant(role, herd)], 600)[0]
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with secured_app(tmp_path) as secured:
        server, thread = serve_api(secured.app, "127.0.0.1", 0)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=10) as http:
                yield Api(http, secured.store, secured.lifecycle, secured.tokens)
        finally:
            stop_api(server, thread)


def test_an_editor_sets_and_lists_secrets_and_no_answer_holds_a_value(api: Api) -> None:
    editor = api.as_("editor")
    url = "/v1/herds/team/secrets/api.key"
    first = api.http.put(url, json={"value": "k-one-1234567890"}, headers=editor)
    assert first.status_code == 200 and first.json() == {"herd": "team", "name": "api.key", "version": 1}
    second = api.http.put(url, json={"value": "k-two-1234567890"}, headers=editor)
    assert second.json()["version"] == 2
    listed = api.http.get("/v1/herds/team/secrets", headers=editor).json()["secrets"]
    assert [(s["name"], s["version"]) for s in listed] == [("api.key", 2), ("db_password", 1)]
    every_answer = first.text + second.text + str(listed)
    assert "k-one" not in every_answer and "k-two" not in every_answer
    # only ciphertext in the Barn: no value in any record
    values = [kv.value for kv in api.store.barn.scan("/")]
    for plain in (b"k-one-1234567890", b"k-two-1234567890", SECRET_VALUE):
        assert not any(plain in value for value in values)
    assert api.lifecycle.secrets is not None and api.lifecycle.secrets.get("team", "api.key") == b"k-two-1234567890"
    assert api.http.delete(url, headers=editor).status_code == 204
    assert api.http.delete(url, headers=editor).status_code == 404


@pytest.mark.parametrize(
    ("role", "herd", "read", "write"),
    [
        ("viewer", "team", 403, 403),
        ("runner", "team", 403, 403),
        ("editor", "team", 200, 200),
        ("admin", "team", 200, 200),
        ("admin", "other", 403, 403),
        ("cluster-viewer", "*", 403, 403),
        ("cluster-admin", "*", 200, 200),
    ],
)
def test_who_may_read_names_and_set_values(api: Api, role: str, herd: str, read: int, write: int) -> None:
    who = api.as_(role, herd)
    assert api.http.get("/v1/herds/team/secrets", headers=who).status_code == read
    answer = api.http.put("/v1/herds/team/secrets/db_password", json={"value": "changed-value-9"}, headers=who)
    assert answer.status_code == write
    assert api.lifecycle.secrets is not None
    expected = b"changed-value-9" if write == 200 else SECRET_VALUE
    assert api.lifecycle.secrets.get("team", "db_password") == expected
    assert api.http.delete("/v1/herds/team/secrets/db_password", headers=who).status_code == (
        204 if write == 200 else 403
    )


def test_bad_names_and_values_are_refused_naming_what(api: Api) -> None:
    editor = api.as_("editor")
    bad_name = api.http.put("/v1/herds/team/secrets/..hidden", json={"value": "x"}, headers=editor)
    assert bad_name.status_code == 422
    # (in words, not the pattern's regular expression: a review)
    assert bad_name.json()["detail"] == (
        "path.secret '..hidden': expected 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )
    bad_herd = api.http.put(
        "/v1/herds/Bad%20Name!/roots", json={"roots": ["/tmp"]}, headers=api.as_("cluster-admin", "*")
    )
    assert bad_herd.json()["detail"] == f"path.name 'Bad Name!': {NAME_WORDS}"
    no_herd = api.http.put("/v1/herds/nosuch/roots", json={"roots": ["/tmp"]}, headers=api.as_("cluster-admin", "*"))
    assert (no_herd.status_code, no_herd.json()["detail"]) == (404, "herd 'nosuch': not found")  # (was its Barn key)
    too_big = api.http.put("/v1/herds/team/secrets/big", json={"value": "é" * 40_000}, headers=editor)
    assert too_big.status_code == 409 and "at most 65536" in too_big.text  # 80,000 bytes
    unknown_herd = api.http.put("/v1/herds/nope/secrets/a", json={"value": "x"}, headers=api.as_("cluster-admin", "*"))
    assert unknown_herd.status_code == 404 and "nope" in unknown_herd.text
    extra = api.http.put("/v1/herds/team/secrets/a", json={"value": "x", "echo": True}, headers=editor)
    assert extra.status_code == 422


def test_a_job_may_ask_only_for_its_herds_secrets_and_its_record_holds_names_only(api: Api) -> None:
    runner = api.as_("runner")
    body = {"herd": "team", "command": ["/bin/true"], "secrets": ["db_password"], "secrets_env": True}
    answer = api.http.post("/v1/jobs", json=body, headers=runner)
    assert answer.status_code == 201
    job = answer.json()["job"]
    described = api.http.get(f"/v1/jobs/{job['id']}", headers=runner).json()
    (task,) = described["tasks"]
    assert task["secrets"] == ["db_password"] and task["secrets_env"] is True
    assert SECRET_VALUE.decode() not in str(described)
    missing = api.http.post("/v1/jobs", json={**body, "secrets": ["nope"]}, headers=runner)
    assert missing.status_code == 409 and "herd 'team' has no secret 'nope'" in missing.text
    other = api.http.post("/v1/jobs", json={**body, "herd": "other"}, headers=api.as_("admin", "other"))
    assert other.status_code == 409 and "herd 'other' has no secret 'db_password'" in other.text
    twice = api.http.post("/v1/jobs", json={**body, "secrets": ["a", "a"]}, headers=runner)
    assert twice.status_code == 422


def test_a_node_gets_an_attempts_secrets_only_while_it_runs_it_there(api: Api) -> None:
    life = api.lifecycle
    job = life.submit_command("team", ["/bin/true"], secrets=["db_password"])
    (task_id,) = job.tasks
    with pytest.raises(Refused, match="not the task's current attempt"):  # not placed yet
        life.task_secrets("team", task_id, 1, 1, "n1")
    current = life.store.task("team", task_id)  # placed on n1, as the scheduler does
    task = current.record.moved_to(RunState.SCHEDULED, node="n1", attempt=1, token=life.store.barn.revision())
    life.store.commit([(keys.task("team", task_id), current.revision)], [(keys.task("team", task_id), task)])
    assert life.task_secrets("team", task_id, task.attempt, task.token, "n1") == {"db_password": SECRET_VALUE}
    with pytest.raises(Refused, match="not placed on node 'n2'"):
        life.task_secrets("team", task_id, task.attempt, task.token, "n2")
    with pytest.raises(Refused):  # an older token
        life.task_secrets("team", task_id, task.attempt, task.token - 1, "n1")
    assert life.report("team", task_id, task.attempt, task.token, RunState.SUCCEEDED, exit_code=0, started=1.0)
    with pytest.raises(Refused):  # ended: nothing more to start
        life.task_secrets("team", task_id, task.attempt, task.token, "n1")
    with pytest.raises(NotFound):
        life.task_secrets("team", "job-1-2.0001", 1, 1, "n1")


def test_a_herd_being_deleted_takes_no_secret_and_its_next_namesake_inherits_none(api: Api) -> None:
    """A secret set while its herd was being deleted survived the delete, and a new herd of
    the same name read it (one tenant's secret reached another)."""
    admin = api.as_("cluster-admin", "*")
    assert api.http.put("/v1/herds/team/secrets/a", json={"value": "old"}, headers=admin).status_code == 200
    current = api.store.herd("team")
    marked = current.record.model_copy(update={"deleting": True})
    api.store.barn.transaction(
        [(keys.herd("team"), current.revision)], [TxnOp(keys.herd("team"), marked.model_dump_json().encode())]
    )
    late = api.http.put("/v1/herds/team/secrets/late", json={"value": "late"}, headers=admin)
    assert late.status_code == 409 and "being deleted" in late.text
    # the Barn backend compares the herd's record in its own write (what the API's check cannot)
    backend = api.lifecycle.secrets
    assert backend is not None
    with pytest.raises(InvalidSecretError, match="being deleted"):
        backend.put("team", "late", b"late")
    with pytest.raises(InvalidSecretError, match="no such herd"):
        backend.put("ghost", "s", b"x")


def test_a_herd_keeps_a_bounded_number_of_secrets(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from runink.core.server import api as api_module

    editor = api.as_("editor")
    kept = len(api.http.get("/v1/herds/team/secrets", headers=editor).json()["secrets"])
    monkeypatch.setattr(api_module, "MAX_HERD_SECRETS", kept + 2)
    for name in ("a", "b"):
        assert api.http.put(f"/v1/herds/team/secrets/{name}", json={"value": "x"}, headers=editor).status_code == 200
    third = api.http.put("/v1/herds/team/secrets/c", json={"value": "x"}, headers=editor)
    assert third.status_code == 409 and f"at most {kept + 2}" in third.text
    again = api.http.put("/v1/herds/team/secrets/a", json={"value": "y"}, headers=editor)  # a new version: fine
    assert again.status_code == 200 and again.json()["version"] == 2
