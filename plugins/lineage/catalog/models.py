"""The catalog's tables (sqlmodel). Every row carries its herd: queries filter on the herds the
caller may read. The schema is changed only through an alembic migration (migrations/);
tests/test_catalog.py checks that these models and the migrations agree."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, UniqueConstraint, text
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel


class CatalogTable(SQLModel, registry=registry()):
    """The catalog's tables share a metadata of their own (not SQLModel's global one, which
    another plugin's tables would join): ``CatalogTable.metadata`` is what migrations manage."""


class Dataset(CatalogTable, table=True):
    """A dataset a step run read or wrote: its canonical URI (``parquet:///abs/x.parquet``)."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("herd", "uri"),)

    id: int | None = Field(default=None, primary_key=True)
    herd: str = Field(max_length=64)
    uri: str = Field(max_length=2048)
    contract: str | None = Field(default=None, max_length=200)  # the contract of its last reading or writing
    contract_hash: str | None = Field(default=None, max_length=64)
    columns_json: str | None = None  # [[name, Arrow type], ...] as last seen
    # its columns a contract marked pii or mask (["email", ...]): runink annotate masks them (0003)
    pii_json: str | None = None
    rows: int | None = None  # rows in its last write (or read, if never written here)
    last_run: str | None = Field(default=None, max_length=200)  # the step run that last touched it
    updated: datetime


class ContractVersion(CatalogTable, table=True):
    """A contract's version (its hash) as first seen on a dataset."""

    __tablename__ = "contract_versions"
    __table_args__ = (UniqueConstraint("herd", "contract", "hash"),)

    id: int | None = Field(default=None, primary_key=True)
    herd: str = Field(max_length=64)
    contract: str = Field(max_length=200)
    hash: str = Field(max_length=64)
    dataset_id: int = Field(foreign_key="datasets.id")
    first_seen: datetime
    first_run: str = Field(max_length=200)


class PipelineRun(CatalogTable, table=True):
    __tablename__ = "pipeline_runs"

    id: str = Field(primary_key=True, max_length=200)  # the run id (`runink run --json` prints it)
    herd: str = Field(max_length=64, index=True)
    pipeline: str = Field(max_length=200)
    started: datetime
    updated: datetime


class StepRun(CatalogTable, table=True):
    """One scenario run (its attempts counted): the unit lineage links datasets through."""

    __tablename__ = "step_runs"
    __table_args__ = (Index("ix_step_runs_herd_started", "herd", "started"),)

    id: str = Field(primary_key=True, max_length=200)  # <pipeline run>/<scenario slug>
    pipeline_run: str = Field(foreign_key="pipeline_runs.id", max_length=200, index=True)
    herd: str = Field(max_length=64)
    scenario: str = Field(max_length=200)
    state: str = Field(max_length=32)  # RUNNING, then SUCCEEDED, FAILED, ...
    job_id: str | None = Field(default=None, max_length=200, index=True)
    task_id: str | None = Field(default=None, max_length=200)
    node: str | None = Field(default=None, max_length=200)
    attempt: int | None = None
    rows_in: int | None = None
    rows_valid: int | None = None
    rows_invalid: int | None = None
    rows_out: int | None = None
    contract_hash: str | None = Field(default=None, max_length=64)
    error: str | None = None
    started: datetime
    finished: datetime | None = None
    duration: float | None = None  # seconds


class LineageEdge(CatalogTable, table=True):
    """dataset -> step run ("in") or step run -> dataset ("out")."""

    __tablename__ = "lineage_edges"
    __table_args__ = (
        UniqueConstraint("step_run", "dataset_id", "direction"),
        Index("ix_lineage_edges_dataset", "dataset_id", "direction"),
    )

    id: int | None = Field(default=None, primary_key=True)
    herd: str = Field(max_length=64)
    step_run: str = Field(foreign_key="step_runs.id", max_length=200)
    dataset_id: int = Field(foreign_key="datasets.id")
    direction: str = Field(max_length=3)  # "in" or "out"
    rows: int | None = None


class SchemaDrift(CatalogTable, table=True):
    """Drift a step run saw between a dataset and its contract."""

    __tablename__ = "schema_drift"

    id: int | None = Field(default=None, primary_key=True)
    herd: str = Field(max_length=64)
    step_run: str = Field(foreign_key="step_runs.id", max_length=200, index=True)
    dataset_id: int = Field(foreign_key="datasets.id", index=True)
    message: str = Field(max_length=1000)
    seen: datetime


class Annotation(CatalogTable, table=True):
    """What a person or a model said about a dataset, one of its columns or one record."""

    __tablename__ = "annotations"
    # (migration 0004) a record's annotation is upserted as it comes: one per run, dataset, record, key
    __table_args__ = (
        Index(
            "ux_annotations_record",
            "step_run",
            "dataset_id",
            "record",
            "key",
            unique=True,
            sqlite_where=text("record IS NOT NULL"),
            postgresql_where=text("record IS NOT NULL"),
        ),
        # listed a page at a time (runink annotations), the dataset's own apart (runink catalog show)
        Index("ix_annotations_dataset_page", "dataset_id", "id"),
        Index(
            "ix_annotations_dataset_notes",
            "dataset_id",
            "id",
            sqlite_where=text("record IS NULL"),
            postgresql_where=text("record IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    herd: str = Field(max_length=64)
    dataset_id: int = Field(foreign_key="datasets.id", index=True)
    column: str | None = Field(default=None, max_length=200)
    record: str | None = Field(default=None, max_length=200)
    key: str = Field(max_length=200)
    value: str | None = None
    confidence: float | None = None
    model: str | None = Field(default=None, max_length=200)
    prompt_path: str | None = Field(default=None, max_length=1000)
    prompt_hash: str | None = Field(default=None, max_length=64)
    # (indexed: a run's annotations are replaced when its end is recorded again; migration 0002)
    step_run: str | None = Field(default=None, foreign_key="step_runs.id", max_length=200, index=True)
    failed: bool = False  # the model's answer did not parse: ``raw`` holds it
    raw: str | None = None
    author: str | None = Field(default=None, max_length=200)
    created: datetime
