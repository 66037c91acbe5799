"""gateway: usage records and per-key limits

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:  # batch: SQLite cannot ALTER most things
        batch.add_column(sa.Column("rpm_limit", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tpm_limit", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("budget_usd", sa.Float(), nullable=True))
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("key_name", sa.String(128), nullable=True),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(128), nullable=True),
        sa.Column("endpoint", sa.String(16), nullable=False),
        sa.Column("model_group", sa.String(256), nullable=False),
        sa.Column("deployment", sa.String(256), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(1024), nullable=True),
    )
    for col in ("at", "key_id", "service", "job_id", "model_group"):
        op.create_index(f"ix_usage_records_{col}", "usage_records", [col])


def downgrade() -> None:
    op.drop_table("usage_records")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("budget_usd")
        batch.drop_column("tpm_limit")
        batch.drop_column("rpm_limit")
