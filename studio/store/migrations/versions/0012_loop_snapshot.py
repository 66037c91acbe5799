"""loop generations: the preference snapshot, its cutoff, and the canary's experiment alias

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loop_generations") as batch:
        batch.add_column(sa.Column("snapshot_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("cutoff_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("canary_alias", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("loop_generations") as batch:
        batch.drop_column("canary_alias")
        batch.drop_column("cutoff_at")
        batch.drop_column("snapshot_id")
