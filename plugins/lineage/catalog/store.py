"""The catalog's database: an engine for its URL, the schema brought to the newest migration,
and a lineage event recorded as rows (one transaction per event)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, select, text
from sqlmodel import Session, col

from runink.core.model import LineageEvent
from runink.plugins.lineage.catalog.models import (
    ContractVersion,
    Dataset,
    LineageEdge,
    PipelineRun,
    SchemaDrift,
    StepRun,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{(Path(data_dir) / 'catalog.db').resolve()}"


def engine_for(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///PATH`` or ``postgresql+psycopg://...``); SQLite in
    WAL mode with foreign keys on, its folder made."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


#: the newest migration (tests/test_catalog.py checks it is alembic's head): a catalog already
#: there is not handed to alembic at all (its import alone is ~0.1 s of every run's CPU)
HEAD_REVISION = "0001"


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database's schema to ``revision`` (the newest by default) with alembic."""
    if revision == "head" and _revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _revision(engine: Engine) -> str | None:
    """The database's alembic revision, if it has one."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def record(engine: Engine, lineage: LineageEvent) -> None:
    """``lineage`` as rows, in one transaction: its pipeline run and step run (created by START,
    completed by the end), its datasets and the edges to them, the contract version and the
    drift it saw."""
    with Session(engine) as session, session.begin():
        _Recorder(session, lineage).record()


class _Recorder:
    def __init__(self, session: Session, lineage: LineageEvent) -> None:
        self.session, self.lineage, self.facets = session, lineage, lineage.facets
        self.herd, self.now = lineage.herd, lineage.event_time.astimezone(UTC)
        self.ended = lineage.event_type != "START"

    def record(self) -> None:
        step = self._step_run()
        facets = self.facets
        schemas = facets.get("schemas") or {}
        invalid = set(facets.get("invalid_outputs") or ())
        contract, digest = _text(facets.get("contract")), _text(facets.get("contract_hash"))
        for uri in self.lineage.inputs:
            dataset = self._dataset(uri)
            if self.ended:
                if schemas.get("input") is not None and dataset.columns_json is None:
                    dataset.columns_json = json.dumps(schemas["input"])
                if dataset.last_run is None and step.rows_in is not None:  # read here, never written: what was read
                    dataset.rows = step.rows_in
                if contract and digest:
                    dataset.contract, dataset.contract_hash = contract, digest
                    self._contract_version(contract, digest, dataset)
                assert dataset.id is not None
                for message in facets.get("drift") or ():
                    drift = SchemaDrift(
                        herd=self.herd,
                        step_run=step.id,
                        dataset_id=dataset.id,
                        message=str(message)[:1000],
                        seen=self.now,
                    )
                    self.session.add(drift)
            self._edge(step, dataset, "in", step.rows_in)
        for uri in self.lineage.outputs:
            dataset = self._dataset(uri)
            rows = step.rows_invalid if uri in invalid else step.rows_out
            if self.lineage.event_type == "COMPLETE":
                dataset.rows, dataset.last_run, dataset.updated = rows, step.id, self.now
                if uri not in invalid and schemas.get("output") is not None:
                    dataset.columns_json = json.dumps(schemas["output"])
            self._edge(step, dataset, "out", rows)

    def _step_run(self) -> StepRun:
        lineage, facets, now = self.lineage, self.facets, self.now
        pipeline_run = str(facets.get("pipeline_run") or lineage.run_id.rpartition("/")[0] or lineage.run_id)
        run = self.session.get(PipelineRun, pipeline_run)
        if run is None:
            pipeline = str(facets.get("pipeline") or lineage.job)
            self.session.add(PipelineRun(id=pipeline_run, herd=self.herd, pipeline=pipeline, started=now, updated=now))
        else:
            run.updated = now
        step = self.session.get(StepRun, lineage.run_id)
        if step is None:
            started = _time(facets.get("started")) or now
            step = StepRun(
                id=lineage.run_id,
                pipeline_run=pipeline_run,
                herd=self.herd,
                scenario=lineage.job,
                state="RUNNING",
                started=started,
            )
            self.session.add(step)
        step.job_id, step.task_id = _text(facets.get("job_id")), _text(facets.get("task_id"))
        step.node, step.attempt = _text(facets.get("node")), _int(facets.get("attempt"))
        if self.ended:
            step.state = _text(facets.get("state")) or ("SUCCEEDED" if lineage.event_type == "COMPLETE" else "FAILED")
            step.rows_in, step.rows_valid = _int(facets.get("rows_in")), _int(facets.get("rows_valid"))
            step.rows_invalid, step.rows_out = _int(facets.get("rows_invalid")), _int(facets.get("rows_out"))
            step.contract_hash, step.error = _text(facets.get("contract_hash")), _text(facets.get("error"))
            step.finished = _time(facets.get("finished")) or now
            step.duration = (step.finished - _aware(step.started)).total_seconds()
        self.session.flush()
        return step

    def _dataset(self, uri: str) -> Dataset:
        query = select(Dataset).where(col(Dataset.herd) == self.herd, col(Dataset.uri) == uri)
        dataset = self.session.scalars(query).first()
        if dataset is None:
            dataset = Dataset(herd=self.herd, uri=uri, updated=self.now)
            self.session.add(dataset)
            self.session.flush()
        return dataset

    def _edge(self, step: StepRun, dataset: Dataset, direction: str, rows: int | None) -> None:
        assert dataset.id is not None
        query = select(LineageEdge).where(
            col(LineageEdge.step_run) == step.id,
            col(LineageEdge.dataset_id) == dataset.id,
            col(LineageEdge.direction) == direction,
        )
        found = self.session.scalars(query).first()
        if found is None:
            self.session.add(
                LineageEdge(herd=self.herd, step_run=step.id, dataset_id=dataset.id, direction=direction, rows=rows)
            )
        elif rows is not None:
            found.rows = rows

    def _contract_version(self, contract: str, digest: str, dataset: Dataset) -> None:
        query = select(ContractVersion).where(
            col(ContractVersion.herd) == self.herd,
            col(ContractVersion.contract) == contract,
            col(ContractVersion.hash) == digest,
        )
        if self.session.scalars(query).first() is None:
            assert dataset.id is not None
            version = ContractVersion(
                herd=self.herd,
                contract=contract,
                hash=digest,
                dataset_id=dataset.id,
                first_seen=self.now,
                first_run=self.lineage.run_id,
            )
            self.session.add(version)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else None


def _aware(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes (stored in UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
