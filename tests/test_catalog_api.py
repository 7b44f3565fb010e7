"""Plugins' REST routes (`runink_api_routes`) are authenticated and authorized as the server's
own; the catalog's routes answer only with the herds the caller may read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auth_helpers import secured_app
from fastapi import APIRouter, Depends
from fastapi.testclient import TestClient

from runink.core import hookimpl
from runink.core.config import RuninkConfig
from runink.core.events import herd_deleted
from runink.core.model import Grant, Identity, LineageEvent
from runink.core.security import RouteGuard
from runink.core.server.api import create_app
from runink.core.server.auth import ApiAuth
from runink.plugins.auth.rbac import HerdRbac
from runink.plugins.lineage.catalog.sink import CatalogSink
from runink.plugins.lineage.catalog.writer import CatalogWriter
from runink.testing import plugin_manager


class _Routes:
    @hookimpl
    def runink_api_routes(self, router: APIRouter, guard: RouteGuard) -> None:
        caller = Depends(guard.caller)

        @router.get("/v1/example/herds", openapi_extra=guard.declare("jobs.read"))
        def herds(identity: Identity = caller) -> dict[str, Any]:
            return {"herds": guard.herds(identity, "jobs.read")}

        @router.get("/v1/example/herds/{herd}", openapi_extra=guard.declare("jobs.read"))
        def one(herd: str, identity: Identity = caller) -> dict[str, Any]:
            guard.check(identity, "jobs.read", "jobs", herd)
            return {"herd": herd}


def _headers(tokens: Any, *grants: Grant) -> dict[str, str]:
    token, _ = tokens.mint("someone", list(grants), 600)
    return {"Authorization": f"Bearer {token}"}


def test_hook_runink_api_routes(tmp_path: Path) -> None:
    with (
        secured_app(tmp_path) as secured,
        plugin_manager(
            ("cluster-tokens", secured.tokens), ("rbac", HerdRbac()), ("example", _Routes()), entrypoints=False
        ) as manager,
    ):
        app = create_app(secured.lifecycle, secured.store, auth=ApiAuth(manager, secured.store), tokens=secured.tokens)
        client = TestClient(app)
        viewer = _headers(secured.tokens, Grant("viewer", "team"))
        assert client.get("/v1/example/herds", headers=viewer).json() == {"herds": ["team"]}
        assert client.get("/v1/example/herds/team", headers=viewer).status_code == 200
        assert client.get("/v1/example/herds/other", headers=viewer).status_code == 403
        assert client.get("/v1/example/herds").status_code == 401
        paths = app.openapi()["paths"]
        assert paths["/v1/example/herds"]["get"]["x-runink-action"] == "jobs.read"  # declared, as every route


def _event(herd: str, name: str) -> LineageEvent:
    facets = {"rows_out": 5, "pipeline": "p", "pipeline_run": f"run-{herd}"}
    inputs, outputs = (f"csv:///{herd}/in.csv",), (f"csv:///{herd}/{name}.csv",)
    return LineageEvent("COMPLETE", f"run-{herd}/s", "s", herd, inputs, outputs, facets=facets)


def _two_herds_catalog(tmp_path: Path) -> CatalogSink:
    """A catalog sink whose catalog holds a run of herd ``team`` and one of ``other``."""
    sink = CatalogSink()
    sink.runink_configure(RuninkConfig(data_dir=tmp_path / "data"))
    sink.engine()  # (the schema made)
    writer = CatalogWriter(sink.url)
    for herd in ("team", "other"):
        writer.record(_event(herd, "out"))
    writer.close()
    return sink


def test_the_catalogs_routes_answer_with_the_herds_the_caller_may_read(tmp_path: Path) -> None:
    sink = _two_herds_catalog(tmp_path)
    with secured_app(tmp_path, ("catalog", sink)) as secured:
        client = TestClient(secured.app)
        viewer = _headers(secured.tokens, Grant("viewer", "team"))
        listed = client.get("/v1/catalog/datasets", headers=viewer).json()["datasets"]
        assert sorted(d["uri"] for d in listed) == ["csv:///team/in.csv", "csv:///team/out.csv"]
        nothing = {"datasets": [], "next": None}
        assert client.get("/v1/catalog/datasets", params={"herd": "other"}, headers=viewer).json() == nothing
        shown = client.get("/v1/catalog/dataset", params={"uri": "csv:///team/out.csv"}, headers=viewer)
        assert shown.status_code == 200 and shown.json()["rows"] == 5
        hidden = client.get("/v1/catalog/dataset", params={"uri": "csv:///other/out.csv"}, headers=viewer)
        assert hidden.status_code == 404 and "not in the catalog" in hidden.json()["detail"]
        graph = client.get("/v1/catalog/lineage", params={"uri": "/team/out.csv", "depth": 2}, headers=viewer).json()
        assert sorted(d["uri"] for d in graph["datasets"]) == ["csv:///team/in.csv", "csv:///team/out.csv"]
        relative = client.get("/v1/catalog/lineage", params={"uri": "team/out.csv"}, headers=viewer)
        assert relative.status_code == 422 and "absolute path" in relative.json()["detail"]
        assert client.get("/v1/catalog/datasets").status_code == 401
        cluster_viewer = _headers(secured.tokens, Grant("cluster-viewer", "*"))
        assert len(client.get("/v1/catalog/datasets", headers=cluster_viewer).json()["datasets"]) == 4
    sink.close()


def test_annotations_are_stored_by_runners_as_their_author_and_listed_a_page_at_a_time(tmp_path: Path) -> None:
    sink = _two_herds_catalog(tmp_path)
    with secured_app(tmp_path, ("catalog", sink)) as secured:
        client = TestClient(secured.app)
        viewer = _headers(secured.tokens, Grant("viewer", "team"))
        runner = _headers(secured.tokens, Grant("runner", "team"))
        notes = [{"target": "column:amount", "key": "description", "value": "in EUR"}]
        notes += [{"target": f"record:{n}", "key": "ok", "value": "yes", "confidence": 0.5} for n in range(5)]
        new = {"uri": "csv:///team/out.csv", "annotations": notes}
        refused = client.post("/v1/catalog/annotations", json=new, headers=viewer)
        assert refused.status_code == 403  # it may read the dataset, not annotate it
        stored = client.post("/v1/catalog/annotations", json=new, headers=runner)
        assert stored.status_code == 201 and stored.json()["stored"] == 6 and stored.json()["herd"] == "team"
        elsewhere = client.post("/v1/catalog/annotations", json={**new, "uri": "csv:///other/out.csv"}, headers=runner)
        assert elsewhere.status_code == 404  # another herd's: not even there
        for bad in (
            {**new, "annotations": [{"target": "row:1", "key": "k", "value": "v"}]},
            {**new, "annotations": [{"target": "dataset", "key": "k", "value": "v", "confidence": 2}]},
            {**new, "annotations": []},
            {**new, "annotations": [{"target": "dataset", "key": "k", "value": "v" * 20_001}]},
            # a key is a name, shown on terminals: one printable line (a review's cleared the screen)
            {**new, "annotations": [{"target": "dataset", "key": "note\x1b[2J", "value": "v"}]},
            {**new, "annotations": [{"target": "dataset", "key": "two\nlines", "value": "v"}]},
            {**new, "author": "someone else"},
        ):
            assert client.post("/v1/catalog/annotations", json=bad, headers=runner).status_code == 422
        query = {"uri": "csv:///team/out.csv", "limit": 4}
        first = client.get("/v1/catalog/annotations", params=query, headers=viewer).json()
        assert [n["target"] for n in first["annotations"]] == ["column:amount", "record:0", "record:1", "record:2"]
        assert {n["author"] for n in first["annotations"]} == {"someone"} and first["annotations"][0]["model"] is None
        rest = client.get("/v1/catalog/annotations", params={**query, "after": first["next"]}, headers=viewer).json()
        assert [n["target"] for n in rest["annotations"]] == ["record:3", "record:4"] and rest["next"] is None
        one = client.get("/v1/catalog/annotations", params={**query, "record": "3"}, headers=viewer).json()
        assert [n["value"] for n in one["annotations"]] == ["yes"]
        shown = client.get("/v1/catalog/dataset", params={"uri": "csv:///team/out.csv"}, headers=viewer).json()
        assert [n["target"] for n in shown["annotations"]] == ["column:amount"] and shown["record_annotations"] == 5
    sink.close()


def test_datasets_come_a_page_at_a_time_and_bad_text_or_ids_are_422(tmp_path: Path) -> None:
    """100,000 datasets were one 17 MB answer (any viewer, any time); an ``after`` past the ids'
    column or a NUL in a name was a 500 (PostgreSQL refuses NUL in text, and logged the query)."""
    sink = _two_herds_catalog(tmp_path)
    writer = CatalogWriter(sink.url)
    for n in range(5):
        writer.record(_event("team", f"more-{n}"))
    writer.close()
    with secured_app(tmp_path, ("catalog", sink)) as secured:
        client = TestClient(secured.app)
        viewer = _headers(secured.tokens, Grant("viewer", "team"))
        seen, after = [], 0
        for _ in range(10):
            page = client.get("/v1/catalog/datasets", params={"limit": 3, "after": after}, headers=viewer).json()
            assert len(page["datasets"]) <= 3
            seen += [d["uri"] for d in page["datasets"]]
            if page["next"] is None:
                break
            after = page["next"]
        assert sorted(seen) == sorted(
            ["csv:///team/in.csv", "csv:///team/out.csv"] + [f"csv:///team/more-{n}.csv" for n in range(5)]
        )
        runner = _headers(secured.tokens, Grant("runner", "team"))
        for method, path, params, body in (
            ("GET", "/v1/catalog/datasets", {"after": 2**63}, None),
            ("GET", "/v1/catalog/annotations", {"uri": "csv:///team/out.csv", "after": 2**31}, None),
            ("GET", "/v1/catalog/dataset", {"uri": "csv:///team/out.csv\0"}, None),
            ("GET", "/v1/catalog/annotations", {"uri": "csv:///team/out.csv", "record": "a\0b"}, None),
            ("GET", "/v1/catalog/runs/a%00b", {}, None),
            ("GET", "/v1/catalog/jobs/a%00b", {}, None),
            (
                "POST",
                "/v1/catalog/annotations",
                {},
                {"uri": "csv:///team/out.csv", "annotations": [{"target": "dataset", "key": "k", "value": "a\0b"}]},
            ),
        ):
            answer = client.request(method, path, params=params, json=body, headers=runner)
            assert answer.status_code == 422, (path, params, answer.text)
    sink.close()


def test_the_catalog_and_the_lineage_file_are_their_owners_only(tmp_path: Path) -> None:
    """Every herd's lineage, errors and annotations are in them: they were 0644."""
    from runink.plugins.lineage.jsonl_sink import JsonlLineageSink

    sink = _two_herds_catalog(tmp_path)
    database = Path(sink.url.removeprefix("sqlite:///"))
    assert database.stat().st_mode & 0o777 == 0o600
    assert all(p.stat().st_mode & 0o077 == 0 for p in database.parent.glob("catalog.db*"))
    jsonl = JsonlLineageSink()
    jsonl.runink_configure(RuninkConfig(data_dir=tmp_path / "data"))
    jsonl.deliver(_event("team", "out"))
    assert jsonl.path is not None and jsonl.path.stat().st_mode & 0o777 == 0o600
    assert jsonl.path.parent.stat().st_mode & 0o777 == 0o700
    sink.close()


def test_hook_runink_herd_deleted(tmp_path: Path) -> None:
    """A herd deleted and made again under its name read the old one's catalog: its datasets,
    runs and annotations, and could annotate them (a review's run)."""
    sink = _two_herds_catalog(tmp_path)
    with secured_app(tmp_path, ("catalog", sink)) as secured:
        client = TestClient(secured.app)
        admin = _headers(secured.tokens, Grant("cluster-admin", "*"))
        client.post(f"/v1/jobs/{secured.job}/cancel", headers=admin).raise_for_status()
        assert client.delete("/v1/herds/team", headers=admin).status_code == 204
        assert client.post("/v1/herds", json={"name": "team"}, headers=admin).status_code == 201
        listed = client.get("/v1/catalog/datasets", headers=admin).json()["datasets"]
        assert sorted(d["uri"] for d in listed) == ["csv:///other/in.csv", "csv:///other/out.csv"]
    with plugin_manager(("catalog", sink), entrypoints=False) as manager:
        assert herd_deleted(manager, "other") == []  # (called directly too: the rest goes)
    (tmp_path / "again").mkdir()
    with secured_app(tmp_path / "again", ("catalog", sink)) as secured:
        admin = _headers(secured.tokens, Grant("cluster-admin", "*"))
        assert TestClient(secured.app).get("/v1/catalog/datasets", headers=admin).json()["datasets"] == []
    sink.close()
