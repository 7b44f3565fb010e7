"""one annotation per step run, dataset, record and key: a record's annotations are upserted as
they come (a chunk delivered twice, or made again by a retried attempt, replaces its rows);
a dataset's annotations listed a page at a time, its own and its columns' apart from its records'

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

RECORDS_ONLY = "record IS NOT NULL"
NOT_RECORDS = "record IS NULL"


def upgrade() -> None:
    op.create_index(
        "ux_annotations_record",
        "annotations",
        ["step_run", "dataset_id", "record", "key"],
        unique=True,
        sqlite_where=sa.text(RECORDS_ONLY),
        postgresql_where=sa.text(RECORDS_ONLY),
    )
    op.create_index("ix_annotations_dataset_page", "annotations", ["dataset_id", "id"])
    op.create_index(
        "ix_annotations_dataset_notes",
        "annotations",
        ["dataset_id", "id"],
        sqlite_where=sa.text(NOT_RECORDS),
        postgresql_where=sa.text(NOT_RECORDS),
    )


def downgrade() -> None:
    op.drop_index("ix_annotations_dataset_notes", table_name="annotations")
    op.drop_index("ix_annotations_dataset_page", table_name="annotations")
    op.drop_index("ux_annotations_record", table_name="annotations")
