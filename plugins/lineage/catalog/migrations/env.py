"""Alembic's environment for the catalog: run by ``runink.plugins.lineage.catalog.store.migrate``
on the connection it passes (``config.attributes["connection"]``)."""

from __future__ import annotations

from alembic import context

from runink.plugins.lineage.catalog.models import CatalogTable

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=CatalogTable.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
