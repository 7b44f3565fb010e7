"""Recording lineage events in the catalog: plain SQL (upserts), one transaction per event.

Why not the sqlmodel classes: this runs in every pipeline run, and importing SQLAlchemy and
sqlmodel costs ~0.3 s of CPU, taken from the slices of short runs (bench/pipeline/
lineage_sinks.py). A SQLite catalog (the default) is written through the standard library's
sqlite3; any other URL through SQLAlchemy. The tables are the models' (models.py), made by
the migrations; what is read goes through sqlmodel (queries.py). The statements are the same
for both (SQLite >= 3.24 and PostgreSQL both take ``ON CONFLICT``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runink.core.model import LineageEvent

SQLITE = "sqlite:///"
#: what every connection to a SQLite catalog sets (the writer's here, SQLAlchemy's in store.py)
SQLITE_PRAGMAS = ("PRAGMA foreign_keys=ON", "PRAGMA journal_mode=WAL")
#: the newest migration (tests/test_catalog.py checks it is alembic's head): a catalog at it is
#: written without importing SQLAlchemy or alembic at all
HEAD_REVISION = "0004"

_PIPELINE_RUN = """
INSERT INTO pipeline_runs (id, herd, pipeline, started, updated) VALUES (:id, :herd, :pipeline, :now, :now)
ON CONFLICT (id) DO UPDATE SET updated = excluded.updated"""
_STEP_STARTED = """
INSERT INTO step_runs (id, pipeline_run, herd, scenario, state, job_id, task_id, node, attempt, started)
VALUES (:id, :pipeline_run, :herd, :scenario, 'RUNNING', :job_id, :task_id, :node, :attempt, :started)
ON CONFLICT (id) DO UPDATE SET job_id = excluded.job_id, task_id = excluded.task_id, node = excluded.node,
    attempt = excluded.attempt"""
_STEP_ENDED = """
INSERT INTO step_runs (id, pipeline_run, herd, scenario, state, job_id, task_id, node, attempt, rows_in, rows_valid,
    rows_invalid, rows_out, contract_hash, error, started, finished, duration)
VALUES (:id, :pipeline_run, :herd, :scenario, :state, :job_id, :task_id, :node, :attempt, :rows_in, :rows_valid,
    :rows_invalid, :rows_out, :contract_hash, :error, :started, :finished, :duration)
ON CONFLICT (id) DO UPDATE SET state = excluded.state, job_id = excluded.job_id, task_id = excluded.task_id,
    node = excluded.node, attempt = excluded.attempt, rows_in = excluded.rows_in, rows_valid = excluded.rows_valid,
    rows_invalid = excluded.rows_invalid, rows_out = excluded.rows_out, contract_hash = excluded.contract_hash,
    error = excluded.error, finished = excluded.finished, duration = excluded.duration"""
_STEP_START = "SELECT started FROM step_runs WHERE id = :id"
_DATASET = """
INSERT INTO datasets (herd, uri, updated) VALUES (:herd, :uri, :now) ON CONFLICT (herd, uri) DO NOTHING"""
_DATASET_ROW = "SELECT id, last_run, columns_json FROM datasets WHERE herd = :herd AND uri = :uri"
_PII = "SELECT pii_json FROM datasets WHERE id = :id"
_READ = """
UPDATE datasets SET rows = CASE WHEN last_run IS NULL THEN COALESCE(CAST(:rows AS INTEGER), rows) ELSE rows END,
    columns_json = COALESCE(columns_json, :columns), pii_json = COALESCE(:pii, pii_json),
    contract = COALESCE(:contract, contract), contract_hash = COALESCE(:contract_hash, contract_hash)
WHERE id = :id"""
_WRITTEN = """
UPDATE datasets SET rows = :rows, last_run = :run, updated = :now, columns_json = COALESCE(:columns, columns_json),
    pii_json = COALESCE(:pii, pii_json)
WHERE id = :id"""
_CONTRACT = """
INSERT INTO contract_versions (herd, contract, hash, dataset_id, first_seen, first_run)
VALUES (:herd, :contract, :hash, :dataset_id, :now, :run) ON CONFLICT (herd, contract, hash) DO NOTHING"""
_DRIFT = """
INSERT INTO schema_drift (herd, step_run, dataset_id, message, seen)
VALUES (:herd, :run, :dataset_id, :message, :now)"""
#: a run's summary of its @annotate steps, replaced when its end is recorded again
_FORGET_SUMMARY = "DELETE FROM annotations WHERE step_run = :run AND dataset_id = :dataset_id AND record IS NULL"
#: a failed run's record annotations (its output was not published)
_FORGET_RECORDS = "DELETE FROM annotations WHERE step_run = :run AND dataset_id = :dataset_id AND record IS NOT NULL"
_NOTE = """
INSERT INTO annotations (herd, dataset_id, "column", record, key, value, confidence, model, prompt_path, prompt_hash,
    step_run, failed, raw, author, created)
VALUES (:herd, :dataset_id, NULL, :record, :key, :value, NULL, :model, :prompt_path, :prompt_hash, :run, :failed, :raw,
    NULL, :now)"""
_RECORD_NOTE = (
    _NOTE
    + """
ON CONFLICT (step_run, dataset_id, record, key) WHERE record IS NOT NULL DO UPDATE SET value = excluded.value,
    model = excluded.model, prompt_path = excluded.prompt_path, prompt_hash = excluded.prompt_hash,
    failed = excluded.failed, raw = excluded.raw, created = excluded.created"""
)
#: a record's earlier answer of the other kind (a retried attempt's: failed before, parsed now, or
#: the other way round), so that a record holds one attempt's annotation
_CLEAR_FAILED = """DELETE FROM annotations
WHERE step_run = :run AND dataset_id = :dataset_id AND record = :record AND key = 'failed'"""
_CLEAR_ANSWERS = """DELETE FROM annotations
WHERE step_run = :run AND dataset_id = :dataset_id AND record = :record AND key <> 'failed'"""
_EDGE = """
INSERT INTO lineage_edges (herd, step_run, dataset_id, direction, rows)
VALUES (:herd, :run, :dataset_id, :direction, :rows)
ON CONFLICT (step_run, dataset_id, direction) DO UPDATE SET rows = COALESCE(excluded.rows, lineage_edges.rows)"""


class CatalogWriter:
    """Writes events into the catalog at ``url`` (its schema already migrated: see store.py)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._engine: Any = None
        if url.startswith(SQLITE):
            path = Path(url.removeprefix(SQLITE))
            private_file(path)
            self._sqlite = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
            for pragma in SQLITE_PRAGMAS:
                self._sqlite.execute(pragma)
        else:
            from runink.plugins.lineage.catalog.store import engine_for

            self._engine = engine_for(url)

    def revision(self) -> str | None:
        """The catalog's alembic revision (None: no schema yet)."""
        if self._sqlite is not None:
            found = self._sqlite.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).fetchone()
            if found is None:
                return None
            row = self._sqlite.execute("SELECT version_num FROM alembic_version").fetchone()
            return None if row is None else str(row[0])
        from runink.plugins.lineage.catalog.store import current_revision

        return current_revision(self._engine)

    def record(self, lineage: LineageEvent) -> None:
        """``lineage`` as rows, in one transaction: its pipeline run and step run (created by
        START, completed by the end), its datasets and the edges to them, the contract version
        and the drift it saw."""
        if self._sqlite is not None:
            connection = self._sqlite
            connection.execute("BEGIN IMMEDIATE")
            try:
                _Event(_fetch(connection), connection.executemany, _sqlite_time, lineage).record()
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return
        from sqlalchemy import text

        def run(sql: str, params: dict[str, Any]) -> list[Any]:
            result = transaction.execute(text(sql), params)
            return list(result.fetchall()) if result.returns_rows else []

        def run_many(sql: str, rows: list[dict[str, Any]]) -> None:
            transaction.execute(text(sql), rows)  # (one batch: psycopg pipelines them)

        with self._engine.begin() as transaction:
            _Event(run, run_many, _aware, lineage).record()

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._engine is not None:
            self._engine.dispose()


class _Event:
    def __init__(self, run: Any, run_many: Any, time: Any, lineage: LineageEvent) -> None:
        self.run, self.run_many, self.time, self.lineage = run, run_many, time, lineage
        self.facets: Mapping[str, Any] = lineage.facets
        self.herd = lineage.herd
        self.now = time(lineage.event_time.astimezone(UTC))
        self.ended = lineage.event_type in ("COMPLETE", "FAIL", "ABORT")

    def record(self) -> None:
        lineage, facets, herd = self.lineage, self.facets, self.herd
        pipeline_run = str(facets.get("pipeline_run") or lineage.run_id.rpartition("/")[0] or lineage.run_id)
        pipeline = str(facets.get("pipeline") or lineage.job)
        self.run(_PIPELINE_RUN, {"id": pipeline_run, "herd": herd, "pipeline": pipeline, "now": self.now})
        step = self._step(pipeline_run)
        invalid = set(facets.get("invalid_outputs") or ())
        if lineage.event_type == "OTHER":  # record annotations, on the outputs they are in
            for uri in lineage.outputs:
                if uri not in invalid:
                    self._record_notes(self._dataset(uri))
            return
        found = facets.get("schemas")
        schemas: dict[str, Any] = found if isinstance(found, dict) else {}
        contract, digest = _text(facets.get("contract")), _text(facets.get("contract_hash"))
        for uri in lineage.inputs:
            dataset = self._dataset(uri)
            if self.ended:
                columns = json.dumps(schemas["input"]) if schemas.get("input") is not None else None
                pii = facets.get("pii_columns")
                marked = self._pii_marks(dataset, pii) if isinstance(pii, list) and pii else None
                known = {"rows": step["rows_in"], "columns": columns, "id": dataset, "pii": marked}
                self.run(_READ, {**known, "contract": contract, "contract_hash": digest if contract else None})
                if contract and digest:
                    version = {"herd": herd, "contract": contract, "hash": digest, "dataset_id": dataset}
                    self.run(_CONTRACT, {**version, "now": self.now, "run": lineage.run_id})
                for message in facets.get("drift") or ():
                    drift = {"herd": herd, "run": lineage.run_id, "dataset_id": dataset, "message": str(message)[:1000]}
                    self.run(_DRIFT, {**drift, "now": self.now})
            self._edge(dataset, "in", step["rows_in"])
        for uri in lineage.outputs:
            dataset = self._dataset(uri)
            rows = step["rows_invalid"] if uri in invalid else step["rows_out"]
            if lineage.event_type == "COMPLETE":
                columns = json.dumps(schemas["output"]) if uri not in invalid and schemas.get("output") else None
                # the source's pii columns that it writes (a DLQ carries the rows as read: all of
                # them): `runink annotate` of an output sent them to the model unmasked
                marks = _written_pii(facets.get("pii_columns"), None if uri in invalid else schemas.get("output"))
                pii = self._pii_marks(dataset, marks) if marks else None
                written = {"rows": rows, "run": lineage.run_id, "now": self.now, "columns": columns, "pii": pii}
                self.run(_WRITTEN, {**written, "id": dataset})
                if uri not in invalid:
                    self._summary_notes(dataset)
            elif self.ended and uri not in invalid:  # not published: what its records were annotated with goes too
                self.run(_FORGET_RECORDS, {"run": lineage.run_id, "dataset_id": dataset})
            self._edge(dataset, "out", rows)

    def _summary_notes(self, dataset: int) -> None:
        """What each @annotate step did (records, failures, tokens, cost), on the output its
        records are in: input -> annotating step run -> annotations. Recorded again, they
        replace the run's earlier ones."""
        summaries = self.facets.get("annotations")
        if not isinstance(summaries, list) or not summaries:
            return
        self.run(_FORGET_SUMMARY, {"run": self.lineage.run_id, "dataset_id": dataset})
        for summary in summaries:
            if not isinstance(summary, dict):
                continue
            total = f"{summary.get('records', 0)} records, {summary.get('failed', 0)} failed"
            if summary.get("tokens") is not None:  # what the run spent (the annotator's usage)
                total += f"; {summary['tokens']} tokens, {summary.get('requests')} requests, cost {summary.get('cost')}"
            note = {"record": None, "key": "annotated", "value": total, "failed": False, "raw": None}
            self.run(_NOTE, {**self._made_by(summary, dataset), **note})

    def _record_notes(self, dataset: int) -> None:
        """The records' annotations of an OTHER event (a chunk as the slice made them), each
        upserted: a chunk recorded twice, or a record annotated again, replaces its rows."""
        chunk = self.facets.get("record_annotations")
        if not isinstance(chunk, dict):
            return
        common = self._made_by(chunk, dataset)
        rows: list[dict[str, Any]] = []
        answered: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for entry in chunk.get("records") or ():
            if not isinstance(entry, dict):
                continue
            record = _text(entry.get("record"))
            if record is None:
                continue
            which = {"run": common["run"], "dataset_id": dataset, "record": record}
            if entry.get("failed"):
                failures.append(which)
                failed = {"record": record, "key": "failed", "value": _text(entry.get("error")), "failed": True}
                rows.append({**common, **failed, "raw": _text(entry.get("raw"))})
                continue
            answered.append(which)
            for key, value in (entry.get("fields") or {}).items():
                answer = {"record": record, "key": str(key), "value": _text(value), "failed": False, "raw": None}
                rows.append({**common, **answer})
        for sql, records in ((_CLEAR_FAILED, answered), (_CLEAR_ANSWERS, failures)):
            if records:
                self.run_many(sql, records)
        if rows:
            self.run_many(_RECORD_NOTE, rows)

    def _made_by(self, made: dict[str, Any], dataset: int) -> dict[str, Any]:
        return {
            "herd": self.herd,
            "dataset_id": dataset,
            "model": _text(made.get("model")),
            "prompt_path": _text(made.get("prompt_path")),
            "prompt_hash": _text(made.get("prompt_hash")),
            "run": self.lineage.run_id,
            "now": self.now,
        }

    def _step(self, pipeline_run: str) -> dict[str, Any]:
        facets, lineage = self.facets, self.lineage
        started = _epoch(facets.get("started")) or lineage.event_time.astimezone(UTC)
        step = {
            "id": lineage.run_id,
            "pipeline_run": pipeline_run,
            "herd": self.herd,
            "scenario": lineage.job,
            "job_id": _text(facets.get("job_id")),
            "task_id": _text(facets.get("task_id")),
            "node": _text(facets.get("node")),
            "attempt": _int(facets.get("attempt")),
            "started": self.time(started),
        }
        ended = dict.fromkeys(("rows_in", "rows_valid", "rows_invalid", "rows_out"))
        if not self.ended:
            self.run(_STEP_STARTED, step)
            return {**step, **ended}
        found = self.run(_STEP_START, {"id": lineage.run_id})  # (the START's time, if it came)
        began = _read_time(found[0][0]) if found else started
        finished = _epoch(facets.get("finished")) or lineage.event_time.astimezone(UTC)
        default = "SUCCEEDED" if lineage.event_type == "COMPLETE" else "FAILED"
        step.update(
            {key: _int(facets.get(key)) for key in ended},
            state=_text(facets.get("state")) or default,
            contract_hash=_text(facets.get("contract_hash")),
            error=_text(facets.get("error")),
            started=self.time(began),
            finished=self.time(finished),
            duration=(finished - began).total_seconds(),
        )
        self.run(_STEP_ENDED, step)
        return step

    def _pii_marks(self, dataset: int, marked: list[Any]) -> str:
        """The dataset's PII columns: those marked before and those this run's contract marks.
        Never fewer: a later contract that marks other columns once erased the earlier marks,
        and `runink annotate` sent those columns to the model unmasked."""
        found = self.run(_PII, {"id": dataset})
        try:
            before = json.loads(found[0][0]) if found and found[0][0] else []
        except ValueError:
            before = []
        known = [str(c) for c in before] if isinstance(before, list) else []
        return json.dumps(sorted({*known, *(str(c) for c in marked)}))

    def _dataset(self, uri: str) -> int:
        self.run(_DATASET, {"herd": self.herd, "uri": uri, "now": self.now})
        return int(self.run(_DATASET_ROW, {"herd": self.herd, "uri": uri})[0][0])

    def _edge(self, dataset: int, direction: str, rows: int | None) -> None:
        edge = {"herd": self.herd, "run": self.lineage.run_id, "dataset_id": dataset, "direction": direction}
        self.run(_EDGE, {**edge, "rows": rows})


def private_file(path: Path) -> None:
    """Create the SQLite file ``path`` (and its folder) readable by its owner only, if it is not
    there: every herd's lineage, errors and annotations are in it, and SQLite gives its -wal
    and -shm files the database file's mode. (It was made 0644 in a 0755 folder.)"""
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # (another process made it meanwhile)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))


def _fetch(connection: sqlite3.Connection) -> Any:
    return lambda sql, params: connection.execute(sql, params).fetchall()


def _sqlite_time(moment: datetime) -> str:
    """As SQLAlchemy stores a UTC datetime in SQLite (the models read it back)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _aware(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _read_time(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _epoch(value: Any) -> datetime | None:
    return (
        datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) and not isinstance(value, bool) else None
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _written_pii(pii: Any, schema: Any) -> list[str]:
    """Of the source's pii columns, those an output holds (its schema: ``[[name, type], ...]``;
    every one when its schema is not known)."""
    if not isinstance(pii, list) or not pii:
        return []
    names = [str(c) for c in pii]
    if not isinstance(schema, list) or not schema:
        return names
    held = {str(f[0]) for f in schema if isinstance(f, list | tuple) and f}
    return [n for n in names if n in held]
