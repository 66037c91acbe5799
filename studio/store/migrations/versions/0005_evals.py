"""evaluation runs and per-datapoint results

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_outputs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("datapoint", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("model_version", sa.String(256), nullable=True),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.String(2048), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "datapoint", "model", name="uq_eval_output"),
    )
    op.create_index("ix_eval_outputs_job_id", "eval_outputs", ["job_id"])
    op.create_table(
        "eval_scores",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("datapoint", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("scorer", sa.String(128), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(2048), nullable=True),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "datapoint", "model", "scorer", name="uq_eval_score"),
    )
    op.create_index("ix_eval_scores_job_id", "eval_scores", ["job_id"])
    op.create_table(
        "promotion_gates",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("dataset", sa.String(256), nullable=False),
        sa.Column("scorer", sa.JSON(), nullable=False),
        sa.Column("margin", sa.Float(), nullable=False),
        sa.Column("limit", sa.Integer(), nullable=True),
        sa.Column("generation", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "promotion_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("to_stage", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("eval_job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=True),
        sa.Column("reason", sa.String(4096), nullable=False),
        sa.Column("by", sa.String(128), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_promotion_events_name", "promotion_events", ["name"])


def downgrade() -> None:
    op.drop_index("ix_promotion_events_name", "promotion_events")
    op.drop_table("promotion_events")
    op.drop_table("promotion_gates")
    op.drop_index("ix_eval_scores_job_id", "eval_scores")
    op.drop_table("eval_scores")
    op.drop_index("ix_eval_outputs_job_id", "eval_outputs")
    op.drop_table("eval_outputs")
