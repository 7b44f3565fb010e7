"""The ``catalog`` lineage sink: every lineage event recorded in the catalog's database, from the
sink's own thread (a run never waits for it, nor for SQLAlchemy's import).

    [plugin.catalog]
    url = "postgresql+psycopg://runink@db/runink"   # default: sqlite:///<data_dir>/catalog.db
    enabled = true

The schema is brought to the newest migration the first time the sink writes (and by every
``runink catalog`` command), so a new version of Runink upgrades an existing catalog in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import typer

from runink.core.config import RuninkConfig
from runink.core.errors import RuninkError
from runink.core.hookspecs import hookimpl
from runink.core.model import LineageEvent
from runink.plugins.lineage.sink import QueuedLineageSink

if TYPE_CHECKING:
    from runink.core.driverload import OptionsSchema


FLUSH_BEFORE_FORGETTING = 30.0  # seconds a herd's deletion waits for the catalog's queued events


class CatalogSink(QueuedLineageSink):
    #: [plugin.catalog] (checked by runink.core.plugin_options before runink_configure)
    options_schema: ClassVar[OptionsSchema] = {"url": str, "enabled": bool}
    label = "catalog"

    def __init__(self) -> None:
        super().__init__()
        self.url = "sqlite:///.runink/catalog.db"  # (until runink_configure names <data_dir>'s)
        self.enabled = True
        self._engine: Any = None  # SQLAlchemy's, for queries and migrations
        self._writer: Any = None  # the events' (writer.py)

    @hookimpl
    def runink_configure(self, config: RuninkConfig) -> None:
        options = config.plugin_options("catalog")
        url, enabled = options.get("url"), options.get("enabled", True)
        if url is not None and not (isinstance(url, str) and "://" in url):
            raise RuninkError(
                f"[plugin.catalog] url: expected a database URL (sqlite:///PATH, postgresql+psycopg://...), got {url!r}"
            )
        if not isinstance(enabled, bool):
            raise RuninkError(f"[plugin.catalog] enabled: expected true or false, got {enabled!r}")
        self.url = url or f"sqlite:///{(Path(config.data_dir) / 'catalog.db').resolve()}"
        self.enabled = enabled

    def active(self) -> bool:
        return self.enabled

    def engine(self) -> Any:
        """The catalog's engine, its schema at the newest migration (made on first use)."""
        if self._engine is None:
            from runink.plugins.lineage.catalog.store import engine_for, migrate

            engine = engine_for(self.url)
            migrate(engine)
            self._engine = engine
        return self._engine

    def deliver(self, event: LineageEvent) -> None:
        if self._writer is None:
            from runink.plugins.lineage.catalog.writer import HEAD_REVISION, CatalogWriter

            writer = CatalogWriter(self.url)
            if writer.revision() != HEAD_REVISION:  # new, or made by an older Runink: migrated first
                self.engine()
            self._writer = writer
        self._writer.record(event)

    def closed(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._engine is not None:
            self._engine.dispose()

    @hookimpl
    def runink_herd_deleted(self, herd: str) -> None:
        if not self.enabled:
            return
        from runink.plugins.lineage.catalog.store import forget_herd

        self.flush(FLUSH_BEFORE_FORGETTING)  # (events of the herd still queued would write rows again)
        forget_herd(self.engine(), herd)

    @hookimpl
    def runink_api_routes(self, router: Any, guard: Any) -> None:
        from runink.plugins.lineage.catalog.api import add_routes

        add_routes(router, guard, self)

    @hookimpl
    def runink_cli_commands(self, app: typer.Typer) -> None:
        from runink.plugins.lineage.catalog.cli import register

        register(app, self)
