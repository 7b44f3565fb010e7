"""one annotation per step run, dataset, record and key: a record's annotations are upserted as
they come (a chunk delivered twice, or made again by a retried attempt, replaces its rows)

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


def upgrade() -> None:
    op.create_index(
        "ux_annotations_record",
        "annotations",
        ["step_run", "dataset_id", "record", "key"],
        unique=True,
        sqlite_where=sa.text(RECORDS_ONLY),
        postgresql_where=sa.text(RECORDS_ONLY),
    )


def downgrade() -> None:
    op.drop_index("ux_annotations_record", table_name="annotations")
