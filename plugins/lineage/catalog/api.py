"""The catalog's REST routes on every server (``runink_api_routes``): the same answers as
``runink catalog list|show`` and ``runink lineage``, with only the herds the caller may read
(action ``catalog.read``: the viewer role and up)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from runink.core.model import Identity
from runink.plugins.lineage.catalog.queries import (
    CatalogError,
    dataset_detail,
    find_dataset,
    job_datasets,
    lineage,
    list_datasets,
)

if TYPE_CHECKING:
    from runink.core.security import RouteGuard
    from runink.plugins.lineage.catalog.sink import CatalogSink

READ = "catalog.read"
HerdQuery = Annotated[list[str] | None, Query(max_length=64, description="Only these herds (of those you may read).")]
DatasetQuery = Annotated[
    str, Query(min_length=1, max_length=2048, description="Its URI (as listed) or its absolute path.")
]


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

    @router.get("/v1/catalog/datasets", openapi_extra=guard.declare(READ), tags=["catalog"])
    def catalog_datasets(herd: HerdQuery = None, identity: Identity = caller) -> dict[str, Any]:
        """Every dataset of the herds the caller may read: herd, URI, contract, rows, last run."""
        return {"datasets": list_datasets(sink.engine(), readable(identity, herd))}

    @router.get("/v1/catalog/dataset", openapi_extra=guard.declare(READ), tags=["catalog"])
    def catalog_dataset(
        uri: DatasetQuery,
        herd: HerdQuery = None,
        runs: Annotated[int, Query(ge=1, le=1000)] = 20,
        identity: Identity = caller,
    ) -> dict[str, Any]:
        """One dataset: schema, contract versions, recent runs with row counts, drift, annotations."""
        return dataset_detail(sink.engine(), dataset(uri, readable(identity, herd)), runs)

    @router.get("/v1/catalog/jobs/{job_id}", openapi_extra=guard.declare(READ), tags=["catalog"])
    def catalog_job(
        job_id: Annotated[str, Path(min_length=1, max_length=200)], identity: Identity = caller
    ) -> dict[str, Any]:
        """What each scenario of a pipeline job read and wrote (for `runink status`)."""
        return {"job": job_id, "scenarios": job_datasets(sink.engine(), job_id, guard.herds(identity, READ))}

    @router.get("/v1/catalog/lineage", openapi_extra=guard.declare(READ), tags=["catalog"])
    def catalog_lineage(
        uri: DatasetQuery,
        herd: HerdQuery = None,
        direction: Literal["upstream", "downstream", "both"] = "both",
        depth: Annotated[int, Query(ge=1, le=50)] = 3,
        identity: Identity = caller,
    ) -> dict[str, Any]:
        """The lineage graph around a dataset, ``depth`` dataset hops each way asked."""
        herds = readable(identity, herd)
        return lineage(sink.engine(), dataset(uri, herds), direction, depth, herds).to_json()
