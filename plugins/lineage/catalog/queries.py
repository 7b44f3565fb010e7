"""Reading the catalog: datasets, one dataset's detail, and the lineage graph around it.

Every query takes ``herds``: the herds the caller may read (None: all, for the local identity
of the embedded run); rows of other herds are never returned, nor counted.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from runink.core.errors import RuninkError
from runink.plugins.lineage.catalog.annotations import count_record_annotations, list_annotations
from runink.plugins.lineage.catalog.models import (
    ContractVersion,
    Dataset,
    LineageEdge,
    SchemaDrift,
    StepRun,
)

Direction = Literal["upstream", "downstream", "both"]
MAX_RUNS = 2000  # step runs in one lineage graph (a person reads it; the rest: a narrower query)
MAX_ROWS = 20 * MAX_RUNS  # rows one hop's query may read


class CatalogError(RuninkError):
    """A catalog query cannot be answered as asked (no such dataset, an ambiguous name)."""


def list_datasets(engine: Engine, herds: Collection[str] | None) -> list[dict[str, Any]]:
    """Every dataset the caller may read, by herd and URI."""
    with Session(engine) as session:
        query = select(Dataset).order_by(col(Dataset.herd), col(Dataset.uri))
        if herds is not None:
            query = query.where(col(Dataset.herd).in_(list(herds)))
        return [_dataset_summary(d) for d in session.scalars(query)]


def page_datasets(
    engine: Engine, herds: Collection[str] | None, after: int, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of ``list_datasets`` in the order they were first seen: at most ``limit`` after
    the dataset id ``after``, and the ``after`` of the next page (None: no more)."""
    with Session(engine) as session:
        query = select(Dataset).where(col(Dataset.id) > after).order_by(col(Dataset.id)).limit(limit)
        if herds is not None:
            query = query.where(col(Dataset.herd).in_(list(herds)))
        found = list(session.scalars(query))
    more = found[-1].id if len(found) == limit else None
    return [_dataset_summary(d) for d in found], more


def find_dataset(engine: Engine, name: str, herds: Collection[str] | None, base: Path | None = None) -> Dataset:
    """The dataset ``name`` names: its catalog URI (``parquet:///abs/x.parquet``), or a path
    (relative to ``base``) in any format. Refused when none, or several herds, match."""
    with Session(engine) as session:
        if "://" in name:
            query = select(Dataset).where(col(Dataset.uri) == name)
        else:
            path = str((base or Path.cwd()) / name) if not name.startswith("/") else name
            query = select(Dataset).where(col(Dataset.uri).like("%://" + _escape_like(path), escape="\\"))
        if herds is not None:
            query = query.where(col(Dataset.herd).in_(list(herds)))
        found = list(session.scalars(query.limit(20)))
    if not found:
        raise CatalogError(f"dataset {name!r}: not in the catalog (runink catalog list shows what is)")
    if len(found) > 1:
        named = ", ".join(f"{d.uri} (herd {d.herd})" for d in found)
        raise CatalogError(f"dataset {name!r}: several match: {named}; give the URI or --herd")
    return found[0]


def dataset_detail(engine: Engine, dataset: Dataset, runs: int = 20) -> dict[str, Any]:
    """Its schema, contract versions, last ``runs`` step runs that read or wrote it (with row
    counts), the drift seen on it, its annotations (its own and its columns', the first 200) and
    how many its records have."""
    with Session(engine) as session:
        versions = session.scalars(
            select(ContractVersion)
            .where(col(ContractVersion.dataset_id) == dataset.id)
            .order_by(col(ContractVersion.first_seen))
        )
        touched = session.execute(
            select(col(LineageEdge.direction), col(LineageEdge.rows), StepRun)
            .join(StepRun, col(StepRun.id) == col(LineageEdge.step_run))
            .where(col(LineageEdge.dataset_id) == dataset.id)
            .order_by(col(StepRun.started).desc())
            .limit(runs)
        )
        drift = session.scalars(
            select(SchemaDrift)
            .where(col(SchemaDrift.dataset_id) == dataset.id)
            .order_by(col(SchemaDrift.seen).desc())
            .limit(50)
        )
        return {
            **_dataset_summary(dataset),
            "schema": json.loads(dataset.columns_json) if dataset.columns_json else None,
            # its columns a contract marked pii or mask (runink annotate masks them)
            "pii": json.loads(dataset.pii_json) if dataset.pii_json else [],
            "contract_versions": [
                {
                    "contract": v.contract,
                    "hash": v.hash,
                    "first_seen": v.first_seen.isoformat(),
                    "first_run": v.first_run,
                }
                for v in versions
            ],
            "runs": [
                {**_step_summary(step), "direction": "read" if direction == "in" else "wrote", "rows": rows}
                for direction, rows, step in touched
            ],
            "drift": [{"run": d.step_run, "message": d.message, "seen": d.seen.isoformat()} for d in drift],
            # the dataset's and its columns' (the records' are listed by `runink annotations`)
            "annotations": list_annotations(engine, dataset, records=False, limit=200),
            "record_annotations": count_record_annotations(engine, dataset),
        }


@dataclass
class LineageGraph:
    """Datasets and step runs around one dataset, and the edges between them
    (dataset -> step run: read; step run -> dataset: wrote)."""

    root: int
    datasets: dict[int, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: set[tuple[str, str]] = field(default_factory=set)  # ("d:<id>", "r:<id>") or ("r:<id>", "d:<id>")
    truncated: bool = False  # more runs than MAX_RUNS: the most recent ones are in it

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LineageGraph:
        """The graph ``to_json`` gave (a server's answer)."""
        graph = cls(int(str(data["root"])[2:]))
        graph.datasets = {int(d["id"][2:]): {k: v for k, v in d.items() if k != "id"} for d in data["datasets"]}
        graph.runs = {r["id"][2:]: {k: v for k, v in r.items() if k != "id"} for r in data["runs"]}
        graph.edges = {(e["from"], e["to"]) for e in data["edges"]}
        graph.truncated = bool(data.get("truncated"))
        return graph

    def to_json(self) -> dict[str, Any]:
        return {
            "root": f"d:{self.root}",
            "datasets": [{"id": f"d:{i}", **d} for i, d in sorted(self.datasets.items())],
            "runs": [{"id": f"r:{i}", **r} for i, r in sorted(self.runs.items())],
            "edges": [{"from": a, "to": b} for a, b in sorted(self.edges)],
            "truncated": self.truncated,
        }


def lineage(
    engine: Engine, dataset: Dataset, direction: Direction, depth: int, herds: Collection[str] | None
) -> LineageGraph:
    """The graph ``depth`` dataset hops from ``dataset`` (a hop: dataset -> step run ->
    dataset), upstream (what it was made from), downstream (what was made from it) or both.
    One query per hop and direction; step runs of a herd the caller may not read are left out."""
    assert dataset.id is not None
    graph = LineageGraph(dataset.id, {dataset.id: _dataset_summary(dataset)})
    with Session(engine) as session:
        for way in ("upstream", "downstream") if direction == "both" else (direction,):
            frontier = {dataset.id}
            for _ in range(depth):
                frontier = _hop(session, graph, frontier, way, herds)
                if not frontier:
                    break
    return graph


def _hop(
    session: Session, graph: LineageGraph, frontier: set[int], way: str, herds: Collection[str] | None
) -> set[int]:
    """One hop from the datasets ``frontier``: the step runs that wrote them (upstream) or read
    them (downstream), and the datasets those read (upstream) or wrote (downstream)."""
    near, far = ("out", "in") if way == "upstream" else ("in", "out")
    other = aliased(LineageEdge, name="other")
    query = (
        select(col(LineageEdge.dataset_id), StepRun, col(other.dataset_id))
        .join(StepRun, col(StepRun.id) == col(LineageEdge.step_run))
        .outerjoin(other, (col(other.step_run) == col(LineageEdge.step_run)) & (col(other.direction) == far))
        .where(col(LineageEdge.dataset_id).in_(frontier), col(LineageEdge.direction) == near)
        .order_by(col(StepRun.started).desc())  # (past the bound, the most recent runs are kept)
        .limit(MAX_ROWS)
    )
    if herds is not None:
        query = query.where(col(StepRun.herd).in_(list(herds)))
    reached: set[int] = set()
    far_edges: list[tuple[int, tuple[str, str]]] = []
    for known, step, found in session.execute(query):
        if step.id not in graph.runs and len(graph.runs) >= MAX_RUNS:
            graph.truncated = True
            continue
        run_node, known_node = f"r:{step.id}", f"d:{known}"
        graph.runs.setdefault(step.id, _step_summary(step))
        graph.edges.add((run_node, known_node) if near == "out" else (known_node, run_node))
        if found is None:
            continue
        found_node = f"d:{found}"
        far_edges.append((found, (found_node, run_node) if far == "in" else (run_node, found_node)))
        if found not in graph.datasets:
            reached.add(found)
    for dataset in _datasets(session, reached, herds):
        assert dataset.id is not None
        graph.datasets[dataset.id] = _dataset_summary(dataset)
    # an edge only to a dataset the caller may read (a run may have read another herd's)
    graph.edges.update(edge for found, edge in far_edges if found in graph.datasets)
    return {d for d in reached if d in graph.datasets}


def _datasets(session: Session, ids: Iterable[int], herds: Collection[str] | None) -> list[Dataset]:
    wanted = list(ids)
    if not wanted:
        return []
    query = select(Dataset).where(col(Dataset.id).in_(wanted))
    if herds is not None:
        query = query.where(col(Dataset.herd).in_(list(herds)))
    return list(session.scalars(query))


def run_detail(engine: Engine, run_id: str, herds: Collection[str] | None) -> dict[str, Any]:
    """One step run: what it did, and the datasets it read and wrote (with their row counts)."""
    with Session(engine) as session:
        step = session.get(StepRun, run_id)
        if step is None or (herds is not None and step.herd not in herds):
            raise CatalogError(f"run {run_id!r}: not in the catalog")
        edges = session.execute(
            select(col(LineageEdge.direction), col(LineageEdge.rows), Dataset)
            .join(Dataset, col(Dataset.id) == col(LineageEdge.dataset_id))
            .where(col(LineageEdge.step_run) == run_id)
            .order_by(col(Dataset.uri))
        )
        datasets: dict[str, list[dict[str, Any]]] = {"read": [], "wrote": []}
        for direction, rows, dataset in edges:
            datasets["read" if direction == "in" else "wrote"].append({"uri": dataset.uri, "rows": rows})
        return {**_step_summary(step), "task": step.task_id, "finished": _when(step.finished), **datasets}


def job_datasets(engine: Engine, job_id: str, herds: Collection[str] | None) -> list[dict[str, Any]]:
    """The datasets each scenario run of a cluster job read and wrote, with row counts."""
    query = (
        select(StepRun, col(LineageEdge.direction), col(LineageEdge.rows), col(Dataset.uri))
        .join(LineageEdge, col(LineageEdge.step_run) == col(StepRun.id))
        .join(Dataset, col(Dataset.id) == col(LineageEdge.dataset_id))
        .where(col(StepRun.job_id) == job_id)
        .order_by(col(StepRun.started), col(Dataset.uri))
    )
    if herds is not None:
        query = query.where(col(StepRun.herd).in_(list(herds)))
    found: dict[str, dict[str, Any]] = {}
    with Session(engine) as session:
        for step, direction, rows, uri in session.execute(query):
            entry = found.setdefault(
                step.id, {"scenario": step.scenario, "run": step.id, "state": step.state, "read": [], "wrote": []}
            )
            entry["read" if direction == "in" else "wrote"].append({"uri": uri, "rows": rows})
    return list(found.values())


def count_step_runs(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(StepRun)) or 0)


def _dataset_summary(dataset: Dataset) -> dict[str, Any]:
    return {
        "herd": dataset.herd,
        "uri": dataset.uri,
        "contract": dataset.contract,
        "contract_hash": dataset.contract_hash,
        "rows": dataset.rows,
        "last_run": dataset.last_run,
        "updated": dataset.updated.isoformat(),
    }


def _step_summary(step: StepRun) -> dict[str, Any]:
    return {
        "run": step.id,
        "pipeline_run": step.pipeline_run,
        "herd": step.herd,
        "scenario": step.scenario,
        "state": step.state,
        "job": step.job_id,
        "node": step.node,
        "attempt": step.attempt,
        "rows_in": step.rows_in,
        "rows_valid": step.rows_valid,
        "rows_invalid": step.rows_invalid,
        "rows_out": step.rows_out,
        "started": step.started.isoformat(),
        "duration": step.duration,
        "error": step.error,
    }


def _when(moment: Any) -> str | None:
    return None if moment is None else str(moment.isoformat())


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
