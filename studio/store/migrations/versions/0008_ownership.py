"""trust: owners of objects, owned names, job keys derived from their submitter

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Tables whose rows record the key that owns them (null: made before owners were recorded; only
# an admin changes those).
OWNED = ("jobs", "dataset_versions", "experiments", "serving_deployments", "completions", "feedback")


def upgrade() -> None:
    op.create_table(
        "owned_names",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("owner_key_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("owner_key_id", sa.Integer(), nullable=True))
            batch.create_index(f"ix_{table}_owner_key_id", ["owner_key_id"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("job_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_api_keys_job_id", ["job_id"])
    with op.batch_alter_table("promotion_events") as batch:
        batch.add_column(sa.Column("by_key_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("promotion_events") as batch:
        batch.drop_column("by_key_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_job_id")
        batch.drop_column("expires_at")
        batch.drop_column("job_id")
        batch.drop_column("parent_id")
    for table in reversed(OWNED):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_owner_key_id")
            batch.drop_column("owner_key_id")
    op.drop_table("owned_names")
