"""The catalog's database through SQLAlchemy: an engine for its URL, and its schema brought to
the newest migration with alembic (events are written by writer.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text

from runink.plugins.lineage.catalog.writer import HEAD_REVISION, SQLITE, SQLITE_PRAGMAS, private_file

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def engine_for(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///PATH`` or ``postgresql+psycopg://...``); SQLite in
    WAL mode with foreign keys on, its folder made."""
    if url.startswith(SQLITE):
        path = Path(url.removeprefix(SQLITE))
        private_file(path)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            for pragma in SQLITE_PRAGMAS:
                cursor.execute(pragma)
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database's schema to ``revision`` (the newest by default) with alembic."""
    if revision == "head" and current_revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The database's alembic revision, if it has one."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def forget_herd(engine: Engine, herd: str) -> None:
    """Remove every row of ``herd`` (deleted: a herd made later under its name starts with none),
    in one transaction, those that others point to last."""
    from sqlmodel import delete

    from runink.plugins.lineage.catalog.models import (
        Annotation,
        ContractVersion,
        Dataset,
        LineageEdge,
        PipelineRun,
        SchemaDrift,
        StepRun,
    )

    with engine.begin() as connection:
        for table in (Annotation, SchemaDrift, LineageEdge, StepRun, ContractVersion, PipelineRun, Dataset):
            connection.execute(delete(table).where(table.herd == herd))  # type: ignore[arg-type]
