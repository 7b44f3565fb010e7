"""Annotations in the catalog: what a model (or a person) said about a dataset, a column or a
record, stored beside the dataset with the model, the prompt's path and hash and the run.

An annotator's ``Annotation`` names its target as ``dataset``, ``column:NAME`` or
``record:ID``; a failed one (the model's answer did not parse) carries ``extra["failed"]``
and the raw answer in ``extra["raw"]``, and is stored with ``failed`` set and ``raw`` kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from runink.core.errors import RuninkError
from runink.core.interfaces.annotator import Annotation
from runink.plugins.lineage.catalog import MAX_LISTED
from runink.plugins.lineage.catalog.models import Annotation as AnnotationRow
from runink.plugins.lineage.catalog.models import Dataset

#: the longest raw answer kept (characters): enough to see what went wrong
MAX_RAW = 20_000
#: the longest value kept (characters), as the cluster's API takes (a model's 5 MB description
#: was stored whole)
MAX_VALUE = 20_000


def _target(target: str) -> tuple[str | None, str | None]:
    """(column, record) of an annotation's target."""
    if target == "dataset":
        return None, None
    kind, sep, name = target.partition(":")
    if sep and name and kind in ("column", "record"):
        return (name, None) if kind == "column" else (None, name)
    raise RuninkError(f"annotation target {target!r}: expected dataset, column:NAME or record:ID")


def add_annotations(
    engine: Engine,
    dataset: Dataset,
    annotations: Iterable[Annotation],
    *,
    model: str,
    prompt_path: str | None,
    prompt_hash: str | None,
    step_run: str | None = None,
    author: str | None = None,
) -> int:
    """Store ``annotations`` of ``dataset`` (in its herd), in one transaction; how many."""
    if dataset.id is None:
        raise RuninkError(f"dataset {dataset.uri}: not stored in the catalog yet (no id)")
    now = datetime.now(UTC)
    rows = []
    for note in annotations:
        column, record = _target(note.target)
        failed = bool(note.extra.get("failed", False))
        raw = note.extra.get("raw")
        rows.append(
            AnnotationRow(
                herd=dataset.herd,
                dataset_id=dataset.id,
                column=column,
                record=record,
                key=note.key,
                # a failed one has no value: the reason it failed is kept there instead
                value=(note.value or (str(note.extra.get("error") or "") if failed else ""))[:MAX_VALUE],
                confidence=note.confidence,
                model=note.model or model or None,  # (a person's: none)
                prompt_path=prompt_path,
                prompt_hash=prompt_hash,
                step_run=step_run,
                failed=failed,
                raw=str(raw)[:MAX_RAW] if raw is not None else None,
                author=author,
                created=now,
            )
        )
    with Session(engine) as session:
        session.add_all(rows)
        session.commit()
    return len(rows)


def list_annotations(
    engine: Engine,
    dataset: Dataset,
    *,
    records: bool = True,
    record: str | None = None,
    after: int = 0,
    limit: int = MAX_LISTED,
) -> list[dict[str, Any]]:
    """``dataset``'s annotations in the order they were first stored, at most ``limit`` (up to
    MAX_LISTED) of those with an id above ``after``: all, only one ``record``'s, or (``records``
    False) only those of the dataset and its columns. The caller found the dataset with the
    herds it may read."""
    query = select(AnnotationRow).where(col(AnnotationRow.dataset_id) == dataset.id, col(AnnotationRow.id) > after)
    if record is not None:
        query = query.where(col(AnnotationRow.record) == record)
    elif not records:
        query = query.where(col(AnnotationRow.record).is_(None))
    with Session(engine) as session:
        found = session.scalars(query.order_by(col(AnnotationRow.id)).limit(max(0, min(limit, MAX_LISTED))))
        return [_listed(note) for note in found]


def count_record_annotations(engine: Engine, dataset: Dataset) -> int:
    with Session(engine) as session:
        query = (
            select(func.count())
            .select_from(AnnotationRow)
            .where(col(AnnotationRow.dataset_id) == dataset.id, col(AnnotationRow.record).is_not(None))
        )
        return int(session.scalar(query) or 0)


def _listed(note: AnnotationRow) -> dict[str, Any]:
    return {
        "id": note.id,
        "herd": note.herd,
        "target": "dataset"
        if note.column is None and note.record is None
        else f"column:{note.column}"
        if note.column is not None
        else f"record:{note.record}",
        "column": note.column,
        "record": note.record,
        "key": note.key,
        "value": note.value,
        "confidence": note.confidence,
        "model": note.model,
        "prompt_path": note.prompt_path,
        "prompt_hash": note.prompt_hash,
        "run": note.step_run,
        "failed": note.failed,
        "raw": note.raw,
        "author": note.author,
        "created": note.created.isoformat(),
    }
