"""The lineage catalog: datasets, contract versions, pipeline and step runs, lineage edges,
schema drift and annotations, in SQLite (the default) or PostgreSQL, fed by the ``catalog``
lineage sink and read by ``runink catalog`` and ``runink lineage`` (docs/lineage.md)."""

#: annotations one listing answers at most (``runink annotations``, the REST route; ``after`` pages on)
MAX_LISTED = 1000
