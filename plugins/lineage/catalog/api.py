"""The catalog's REST routes on every server (``runink_api_routes``): the same answers as
``runink catalog list|show``, ``runink lineage`` and ``runink annotations``, with only the
herds the caller may read (action ``catalog.read``: the viewer role and up); and annotations
stored by a person or by ``runink annotate`` (action ``catalog.annotate``: runner and up)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.responses import HTMLResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from runink.core.errors import RuninkError
from runink.core.interfaces.annotator import Annotation
from runink.core.model import Identity
from runink.plugins.lineage.catalog import MAX_LISTED
from runink.plugins.lineage.catalog.annotations import add_annotations, list_annotations
from runink.plugins.lineage.catalog.queries import (
    CatalogError,
    Direction,
    LineageGraph,
    dataset_detail,
    find_dataset,
    job_datasets,
    lineage,
    page_datasets,
    run_detail,
)
from runink.plugins.lineage.catalog.ui import SECURITY_HEADERS, dataset_href, page, run_href

if TYPE_CHECKING:
    from runink.core.security import RouteGuard
    from runink.plugins.lineage.catalog.sink import CatalogSink

READ = "catalog.read"
ANNOTATE = "catalog.annotate"
MAX_ROW_ID = 2**31 - 1  # the catalog's ids (an INTEGER column: a larger ``after`` was a 500)


def _no_nul(text: str) -> str:
    # (PostgreSQL refuses NUL in text: a 500, the query and its values in the server's log)
    if "\0" in text:
        raise ValueError("contains a NUL byte")
    return text


NoNul = AfterValidator(_no_nul)


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be one printable line (no control characters)")
    return value


Printable = AfterValidator(_printable)
HerdQuery = Annotated[list[str] | None, Query(max_length=64, description="Only these herds (of those you may read).")]
DatasetQuery = Annotated[
    str, Query(min_length=1, max_length=2048, description="Its URI (as listed) or its absolute path."), NoNul
]
AfterQuery = Annotated[int, Query(ge=0, le=MAX_ROW_ID, description="Page on: the last id of the page before.")]


class NewAnnotation(BaseModel):
    """One annotation to store: its target (``dataset``, ``column:NAME`` or ``record:ID``)."""

    model_config = ConfigDict(extra="forbid")
    target: Annotated[str, NoNul] = Field(min_length=1, max_length=300, pattern=r"^(dataset|column:.+|record:.+)$")
    # one printable line: a name, shown on terminals to everyone who may read the herd (a value
    # is free text: made safe where it is shown)
    key: Annotated[str, NoNul, Printable] = Field(min_length=1, max_length=200)
    value: Annotated[str, NoNul] = Field(max_length=20_000)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    failed: bool = False  # a model's answer that did not parse: ``raw`` holds it, ``value`` why
    raw: Annotated[str, NoNul] | None = Field(default=None, max_length=20_000)


class NewAnnotations(BaseModel):
    """Annotations of one dataset, by a person or by a model (then its name and prompt)."""

    model_config = ConfigDict(extra="forbid")
    uri: Annotated[str, NoNul] = Field(min_length=1, max_length=2048)
    herd: Annotated[str, NoNul] | None = Field(default=None, max_length=64)
    model: Annotated[str, NoNul] | None = Field(default=None, max_length=200)
    prompt_path: Annotated[str, NoNul] | None = Field(default=None, max_length=1000)
    prompt_hash: Annotated[str, NoNul] | None = Field(default=None, max_length=64)
    annotations: list[NewAnnotation] = Field(min_length=1, max_length=1000)


def _href(graph: LineageGraph, node: str) -> str:
    if node.startswith("d:"):
        return dataset_href(graph.datasets[int(node[2:])]["uri"])
    return run_href(node[2:])


def add_routes(router: APIRouter, guard: RouteGuard, sink: CatalogSink) -> None:
    caller = Depends(guard.caller)  # (a default, not an Annotated alias: annotations here are strings)

    def readable(identity: Identity, herd: list[str] | None) -> list[str]:
        allowed = guard.herds(identity, READ)
        return allowed if not herd else [h for h in herd if h in allowed]

    def dataset(name: str, herds: list[str]) -> Any:
        if "://" not in name and not name.startswith("/"):
            raise HTTPException(422, f"dataset {name!r}: give its URI or an absolute path")
        try:
            return find_dataset(sink.engine(), name, herds)
        except CatalogError as exc:
            raise HTTPException(404, str(exc)) from None

    def graph(identity: Identity, uri: str, herd: list[str] | None, direction: Direction, depth: int) -> LineageGraph:
        herds = readable(identity, herd)
        return lineage(sink.engine(), dataset(uri, herds), direction, depth, herds)

    @router.get("/v1/catalog/datasets", openapi_extra=guard.declare(READ), tags=["catalog"])
    def catalog_datasets(
        herd: HerdQuery = None,
        after: AfterQuery = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = MAX_LISTED,
        identity: Identity = caller,
    ) -> dict[str, Any]:
        """The datasets of the herds the caller may read (herd, URI, contract, rows, last run),
        in the order they were first seen, a page at a time: ``next`` is the ``after`` of the
        next page (null: no more)."""
        found, more = page_datasets(sink.engine(), readable(identity, herd), after, limit)
        return {"datasets": found, "next": more}

    @router.get("/v1/catalog/dataset", openapi_extra=guard.declare(READ), tags=["catalog"])
    def catalog_dataset(
        uri: DatasetQuery,
        herd: HerdQuery = None,
        runs: Annotated[int, Query(ge=1, le=1000)] = 20,
        identity: Identity = caller,
    ) -> dict[str, Any]:
        """One dataset: schema, contract versions, recent runs with row counts, drift, annotations."""
        return dataset_detail(sink.engine(), dataset(uri, readable(identity, herd)), runs)

    @router.get("/v1/catalog/annotations", openapi_extra=guard.declare(READ), tags=["catalog"])
    def catalog_annotations(
        uri: DatasetQuery,
        *,
        herd: HerdQuery = None,
        record: Annotated[str | None, Query(min_length=1, max_length=200), NoNul] = None,
        after: AfterQuery = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = MAX_LISTED,
        identity: Identity = caller,
    ) -> dict[str, Any]:
        """A dataset's annotations (its own, its columns', its records'), oldest first, a page at
        a time: ``next`` is the ``after`` of the next page (null: no more)."""
        found = dataset(uri, readable(identity, herd))
        notes = list_annotations(sink.engine(), found, record=record, after=after, limit=limit)
        more = notes[-1]["id"] if len(notes) == limit else None
        return {"dataset": found.uri, "herd": found.herd, "annotations": notes, "next": more}

    @router.post("/v1/catalog/annotations", openapi_extra=guard.declare(ANNOTATE), tags=["catalog"], status_code=201)
    def catalog_annotate(new: NewAnnotations, identity: Identity = caller) -> dict[str, Any]:
        """Store annotations of a dataset as the caller (its author): a person's, or what
        ``runink annotate`` got from a model."""
        found = dataset(new.uri, readable(identity, None if new.herd is None else [new.herd]))
        guard.check(identity, ANNOTATE, f"catalog/datasets/{found.id}", found.herd)  # (403 if it may only read)
        notes = [
            Annotation(
                n.target,
                n.key,
                n.value,
                n.confidence if n.confidence is not None else 1.0,
                new.model or "",
                {"failed": True, "raw": n.raw, "error": n.value} if n.failed else {},
            )
            for n in new.annotations
        ]
        try:
            stored = add_annotations(
                sink.engine(),
                found,
                notes,
                model=new.model or "",
                prompt_path=new.prompt_path,
                prompt_hash=new.prompt_hash,
                author=identity.subject,
            )
        except RuninkError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"dataset": found.uri, "herd": found.herd, "stored": stored}

    @router.get("/v1/catalog/jobs/{job_id}", openapi_extra=guard.declare(READ), tags=["catalog"])
    def catalog_job(
        job_id: Annotated[str, Path(min_length=1, max_length=200), NoNul], identity: Identity = caller
    ) -> dict[str, Any]:
        """What each scenario of a pipeline job read and wrote (for `runink status`)."""
        return {"job": job_id, "scenarios": job_datasets(sink.engine(), job_id, guard.herds(identity, READ))}

    @router.get("/v1/catalog/runs/{run_id:path}", openapi_extra=guard.declare(READ), tags=["catalog"])
    def catalog_run(
        run_id: Annotated[str, Path(min_length=1, max_length=200), NoNul], identity: Identity = caller
    ) -> Any:
        """One step run: what it did, and the datasets it read and wrote."""
        try:
            return run_detail(sink.engine(), run_id, guard.herds(identity, READ))
        except CatalogError as exc:
            raise HTTPException(404, str(exc)) from None

    @router.get("/v1/catalog/lineage.svg", openapi_extra=guard.declare(READ), tags=["catalog"])
    def catalog_lineage_svg(
        uri: DatasetQuery,
        herd: HerdQuery = None,
        direction: Direction = "both",
        depth: Annotated[int, Query(ge=1, le=50)] = 3,
        identity: Identity = caller,
    ) -> Response:
        """The lineage graph as SVG, each node a link to its page (/ui/...)."""
        from runink.plugins.lineage.catalog.svg import to_svg

        found = graph(identity, uri, herd, direction, depth)
        drawn = to_svg(found, lambda node: _href(found, node))
        return Response(drawn, media_type="image/svg+xml", headers=SECURITY_HEADERS)

    @router.get("/ui/lineage/{target:path}", openapi_extra=guard.declare("public"), include_in_schema=False)
    def ui_lineage(target: str) -> HTMLResponse:
        """The page of a dataset's lineage (no data in it: its script asks the API)."""
        name = target if "://" in target else "/" + target.lstrip("/")
        return HTMLResponse(page("lineage", name[:2048]), headers=SECURITY_HEADERS)

    @router.get("/ui/runs/{run_id:path}", openapi_extra=guard.declare("public"), include_in_schema=False)
    def ui_run(run_id: str) -> HTMLResponse:
        return HTMLResponse(page("run", run_id[:200]), headers=SECURITY_HEADERS)

    @router.get("/v1/catalog/lineage", openapi_extra=guard.declare(READ), tags=["catalog"])
    def catalog_lineage(
        uri: DatasetQuery,
        herd: HerdQuery = None,
        direction: Direction = "both",
        depth: Annotated[int, Query(ge=1, le=50)] = 3,
        identity: Identity = caller,
    ) -> dict[str, Any]:
        """The lineage graph around a dataset, ``depth`` dataset hops each way asked."""
        return graph(identity, uri, herd, direction, depth).to_json()
