"""A/B experiments and feedback

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("alias", sa.String(128), nullable=False, unique=True),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "completions",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("endpoint", sa.String(16), nullable=False),
        sa.Column("requested_model", sa.String(256), nullable=False),
        sa.Column("experiment", sa.String(128), nullable=True),
        sa.Column("arm", sa.String(256), nullable=True),
        sa.Column("model_version", sa.String(256), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=False),
        sa.Column("prompt_text", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_completions_experiment", "completions", ["experiment"])
    op.create_index("ix_completions_model_version", "completions", ["model_version"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("completion_id", sa.String(128), sa.ForeignKey("completions.id"), nullable=False),
        sa.Column("rating", sa.Float(), nullable=True),
        sa.Column("preferred_completion_id", sa.String(128), sa.ForeignKey("completions.id"),
                  nullable=True),
        sa.Column("comment", sa.String(4096), nullable=True),
        sa.Column("key_name", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_feedback_completion_id", "feedback", ["completion_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_completion_id", "feedback")
    op.drop_table("feedback")
    op.drop_index("ix_completions_model_version", "completions")
    op.drop_index("ix_completions_experiment", "completions")
    op.drop_table("completions")
    op.drop_table("experiments")
