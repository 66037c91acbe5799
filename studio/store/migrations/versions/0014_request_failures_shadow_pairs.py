"""the serving path's failed requests (per arm, for a canary's error guardrail) and the shadow
phase's judged pairs

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_failures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("endpoint", sa.String(16), nullable=False),
        sa.Column("requested_model", sa.String(256), nullable=False),
        sa.Column("experiment", sa.String(128), nullable=True),
        sa.Column("arm", sa.String(256), nullable=True),
        sa.Column("model_version", sa.String(256), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(1024), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("owner_key_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    for col in ("experiment", "model_version", "owner_key_id", "created_at"):
        op.create_index(f"ix_request_failures_{col}", "request_failures", [col])
    op.create_table(
        "shadow_pairs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("generation_id", sa.Integer(), sa.ForeignKey("loop_generations.id"), nullable=False),
        sa.Column("endpoint", sa.String(16), nullable=False),
        sa.Column("champion", sa.String(256), nullable=False),
        sa.Column("candidate", sa.String(256), nullable=False),
        sa.Column("completion_id", sa.String(128), nullable=True),
        sa.Column("prompt", sa.JSON(), nullable=False),
        sa.Column("prompt_text", sa.Text(), nullable=False),
        sa.Column("champion_response", sa.Text(), nullable=False),
        sa.Column("candidate_response", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=True),
        sa.Column("judge_detail", sa.Text(), nullable=True),
        sa.Column("judged_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_shadow_pairs_generation_id", "shadow_pairs", ["generation_id"])
    op.create_index("ix_shadow_pairs_verdict", "shadow_pairs", ["verdict"])


def downgrade() -> None:
    op.drop_table("shadow_pairs")
    op.drop_table("request_failures")
