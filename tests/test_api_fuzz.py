"""Bad input (issue 20): the REST API fuzzed from its own OpenAPI schema with schemathesis,
in process (its ASGI transport, no socket), as nobody, as the admin of another herd and as a
cluster admin. No answer is a 5xx or holds a traceback or the caller's token, nobody gets in
without a token, the other herd's admin changes nothing of herd "team", and no refused request
(4xx) changes the Barn but for the audit log.

Cases are generated derandomized (the same cases on every run) and few per operation, so the
whole file takes seconds; set $RUNINK_FUZZ_EXAMPLES to fuzz harder."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import pytest
import schemathesis
from auth_helpers import SECRET_VALUE, secured_app
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET
from schemathesis.core.result import Err
from schemathesis.core.transport import Response
from schemathesis.generation.case import Case
from schemathesis.schemas import APIOperation

from runink.core.control.store import ClusterStore
from runink.core.model import Grant
from runink.core.security import CLUSTER
from runink.core.server.auth import AUDIT, AUDIT_UNDONE, ClusterTokens

GiB = 1024**3
Operation: TypeAlias = "APIOperation[Any, Any, Any, Any]"
# generated cases per operation and generation mode ($RUNINK_FUZZ_EXAMPLES: to fuzz harder)
EXAMPLES = int(os.environ.get("RUNINK_FUZZ_EXAMPLES", "8"))
# routes anyone may call -> what they may answer (the app here speaks no TLS and signs no
# node certificates: the joining routes say so)
PUBLIC = {
    "/.well-known/jwks.json": {200},
    "/v1/cluster/ca": {404},
    "/v1/nodes/join": {400, 401, 404, 422},
    "/healthz": {200},
    "/readyz": {200},
}
JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]*")


def modes(operation: Operation, fixed: dict[str, Any] | None = None) -> list[GenerationMode]:
    """Valid cases, and invalid ones where the operation takes anything to get wrong that
    ``fixed`` (as_strategy's fixed parameters) leaves free."""
    fixed = fixed or {}
    free = [
        p.name
        for kind, parameters in (("path_parameters", operation.path_parameters), ("query", operation.query))
        for p in parameters
        if p.name not in fixed.get(kind, {})
    ]
    takes = bool(free or len(operation.body))
    return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if takes else [GenerationMode.POSITIVE]


@dataclass
class Cluster:
    store: ClusterStore
    tokens: ClusterTokens
    job: str  # the one job of herd "team"
    operations: list[Operation]

    def token(self, role: str, herd: str) -> str:
        token: str = self.tokens.mint(f"sa:fuzz-{role}", [Grant(role, herd)], 600)[0]
        return token

    def state(self) -> dict[str, bytes]:
        """Every record but the audit log's (a refused change is logged: that is all it may change)."""
        return {kv.key: kv.value for kv in self.store.barn.scan("/") if not kv.key.startswith((AUDIT, AUDIT_UNDONE))}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """As tests/test_api_auth.py's ``api``: herds "team" and "other", node n1, a job of team."""
    with secured_app(tmp_path) as secured:
        schema = schemathesis.openapi.from_asgi("/openapi.json", secured.app)
        operations = []
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                raise result.err()
            operations.append(result.ok())
        assert len(operations) >= 26  # (the schema has every route)
        yield Cluster(secured.store, secured.tokens, secured.job, operations)


def describe(case: Case[Any], answer: Response) -> str:
    body = "(none)" if case.body is NOT_SET else case.body
    return (
        f"{case.method} {case.formatted_path} query={case.query} body={body!r}"
        f" -> {answer.status_code} {answer.text[:300]}"
    )


def fuzz(operation: Operation, check: Callable[[Case[Any]], None], mode: GenerationMode, **fixed: Any) -> None:
    """Runs ``check`` on EXAMPLES cases of ``operation`` (``fixed``: as_strategy's fixed parts)."""

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def run(case: Case[Any]) -> None:
        check(case)

    run()


def unreadable_body(answer: Response) -> bool:
    """FastAPI's refusal of a body that is not UTF-8 (400) or not JSON (422)."""
    detail = answer.json().get("detail") if answer.status_code in {400, 422} else None
    if answer.status_code == 400:
        return detail == "There was an error parsing the body"
    return isinstance(detail, str) and detail.endswith(": JSON decode error")


def sane(case: Case[Any], answer: Response, token: str | None) -> None:
    """What every answer to anyone must be."""
    assert answer.status_code < 500, describe(case, answer)
    assert "Traceback" not in answer.text, describe(case, answer)
    assert SECRET_VALUE.decode() not in answer.text, describe(case, answer)  # (a secret's value: never)
    if token is not None:
        assert token not in answer.text, describe(case, answer)
    # a token minted (201) by a token route is its answer's "token", and in no other answer
    shown = answer.text
    if answer.status_code == 201 and isinstance(minted := answer.json(), dict):
        shown = json.dumps({key: value for key, value in minted.items() if key != "token"})
    assert not JWT.search(shown), describe(case, answer)


def test_nobody_without_a_token_gets_an_answer_or_changes_anything(cluster: Cluster) -> None:
    before = cluster.state()
    seen: set[int] = set()

    def check(case: Case[Any]) -> None:
        answer = case.call()
        sane(case, answer, None)
        seen.add(answer.status_code)
        if case.operation.path in PUBLIC:
            assert answer.status_code in PUBLIC[case.operation.path], describe(case, answer)
        elif answer.status_code in {400, 422}:
            # FastAPI reads the body before it asks who calls: a body that is no JSON at all
            # is refused as such (and changes nothing); any other is refused as unauthenticated
            assert unreadable_body(answer), describe(case, answer)
        else:
            assert answer.status_code == 401, describe(case, answer)
            assert answer.headers.get("www-authenticate") == ["Bearer"], describe(case, answer)
        assert cluster.state() == before, describe(case, answer)

    for operation in cluster.operations:
        for mode in modes(operation):
            fuzz(operation, check, mode)
    assert 401 in seen


def test_the_admin_of_another_herd_reaches_nothing_of_team(cluster: Cluster) -> None:
    token = cluster.token("admin", "other")
    headers = {"Authorization": f"Bearer {token}"}
    before = cluster.state()
    team = {"name": "team", "job_id": cluster.job, "node_id": "n1", "secret": "db_password"}
    seen: set[int] = set()

    def changed_outside_other() -> list[str]:
        """Keys changed since ``before`` that are not herd other's (what this admin may change)."""
        after = cluster.state()
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        return sorted(k for k in changed if not _of_other(k, after.get(k)))

    def check(case: Case[Any]) -> None:
        # path parameters are fixed to team's herd, its job or node n1 (below)
        names_team = bool(case.path_parameters)
        if isinstance(case.body, dict) and "herd" in case.body:
            case.body["herd"] = "team"
            names_team = True
        if case.operation.path == "/v1/jobs" and case.method == "GET" and isinstance(case.query, dict):
            names_team = names_team or case.query.get("herd") == "team"
        refused_before = cluster.state()
        answer = case.call(headers=headers)
        sane(case, answer, token)
        seen.add(answer.status_code)
        if answer.status_code >= 400:
            assert cluster.state() == refused_before, describe(case, answer)
        if names_team:
            assert answer.status_code in {403, 404, 409, 422} or unreadable_body(answer), describe(case, answer)
        else:  # (a refusal naming team's resource may name it)
            assert '"team"' not in answer.text, describe(case, answer)
        # (the id it asked for, said back as for one that names no job: nothing of team's told)
        echoed = answer.status_code == 404 and answer.text == f'{{"detail":"job {cluster.job!r}: no such job"}}'
        assert "secret-output" not in answer.text and (echoed or cluster.job not in answer.text), describe(case, answer)
        assert not changed_outside_other(), (changed_outside_other(), describe(case, answer))

    for operation in cluster.operations:
        fixed: dict[str, Any] = {}
        if operation.path_parameters:
            fixed["path_parameters"] = {p.name: team[p.name] for p in operation.path_parameters}
        if operation.path == "/v1/jobs" and operation.method.upper() == "GET":
            fixed["query"] = {"herd": "team"}
        for mode in modes(operation, fixed):
            fuzz(operation, check, mode, **fixed)
    assert {200, 403} <= seen, seen  # (it was let in where it may be, and refused)


def _of_other(key: str, value: bytes | None) -> bool:
    """Whether ``key`` is a record of herd "other" (its own, its index entries, its jobs')."""
    if key.startswith(("/herds/other/", "/cluster/herds/other")) or "/other/" in key:
        return True
    return key.startswith("/cluster/jobs/") and value == b"other"


def test_a_cluster_admin_never_gets_a_5xx_and_refusals_change_nothing(cluster: Cluster) -> None:
    """Free cases (mostly unknown herds, jobs and nodes), then cases on team's herd and job and
    node n1, where valid ones are carried out (the deletion of a herd last)."""
    token = cluster.token("cluster-admin", CLUSTER)
    headers = {"Authorization": f"Bearer {token}"}
    team = {"name": "team", "job_id": cluster.job, "node_id": "n1", "secret": "db_password"}
    seen: set[int] = set()

    def checker(on_team: bool) -> Callable[[Case[Any]], None]:
        def check(case: Case[Any]) -> None:
            if on_team and isinstance(case.body, dict) and "herd" in case.body:
                case.body["herd"] = "team"
            before = cluster.state()
            answer = case.call(headers=headers)
            sane(case, answer, token)
            seen.add(answer.status_code)
            if answer.status_code >= 400:
                assert cluster.state() == before, describe(case, answer)

        return check

    for operation in cluster.operations:
        for mode in modes(operation):
            fuzz(operation, checker(on_team=False), mode)
    for operation in sorted(cluster.operations, key=lambda o: o.method.upper() == "DELETE"):
        fixed = {"path_parameters": {p.name: team[p.name] for p in operation.path_parameters}}
        for mode in modes(operation, fixed):
            fuzz(operation, checker(on_team=True), mode, **fixed)
    assert {200, 201, 204} <= seen and {404, 422} <= seen, seen  # (valid cases were carried out)
