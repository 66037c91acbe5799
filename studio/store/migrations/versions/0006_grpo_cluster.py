"""data: snapshot lineage (parent, transform, params), dropped and rejected rows

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dataset_snapshots") as batch:  # batch: SQLite cannot ALTER most things
        batch.add_column(sa.Column("parent_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("transform", sa.String(64), nullable=True))
        batch.add_column(sa.Column("params", sa.JSON(), nullable=True))
        # server_default: snapshots stored before this revision dropped nothing.
        batch.add_column(sa.Column("dropped_count", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("dropped_uri", sa.String(1024), nullable=True))
        batch.create_index("ix_dataset_snapshots_parent_id", ["parent_id"])
    with op.batch_alter_table("dataset_versions") as batch:
        batch.add_column(sa.Column("rejected_uri", sa.String(1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dataset_versions") as batch:
        batch.drop_column("rejected_uri")
    with op.batch_alter_table("dataset_snapshots") as batch:
        batch.drop_index("ix_dataset_snapshots_parent_id")
        for col in ("dropped_uri", "dropped_count", "params", "transform", "parent_id"):
            batch.drop_column(col)
