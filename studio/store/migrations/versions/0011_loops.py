"""the self-driving improvement loop: loops, generations, their transitions and looks

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "loops",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("served_name", sa.String(128), nullable=False, unique=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("train", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(2048), nullable=True),
        sa.Column("rollbacks_in_a_row", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("owner_key_id", sa.Integer(), nullable=True),
        _when("created_at", nullable=False),
        _when("updated_at", nullable=False),
    )
    op.create_index("ix_loops_owner_key_id", "loops", ["owner_key_id"])
    op.create_table(
        "loop_generations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("loop_id", sa.Integer(), sa.ForeignKey("loops.id"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("active_loop_id", sa.Integer(), nullable=True, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("paused_from", sa.String(16), nullable=True),
        sa.Column("rollback_reason", sa.String(32), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("canary_step", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("candidate", sa.String(256), nullable=True),
        sa.Column("champion", sa.String(256), nullable=True),
        _when("deadline_at"),
        _when("created_at", nullable=False),
        _when("updated_at", nullable=False),
        _when("ended_at"),
        sa.UniqueConstraint("loop_id", "number", name="uq_loop_generation_number"),
    )
    op.create_index("ix_loop_generations_loop_id", "loop_generations", ["loop_id"])
    op.create_index("ix_loop_generations_state", "loop_generations", ["state"])
    op.create_table(
        "loop_transitions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("generation_id", sa.Integer(), sa.ForeignKey("loop_generations.id"), nullable=False),
        _when("at", nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
    )
    op.create_index("ix_loop_transitions_generation_id", "loop_transitions", ["generation_id"])
    op.create_table(
        "loop_looks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("generation_id", sa.Integer(), sa.ForeignKey("loop_generations.id"), nullable=False),
        _when("at", nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("look", sa.JSON(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("estimate", sa.Float(), nullable=True),
        sa.Column("lower", sa.Float(), nullable=True),
        sa.Column("upper", sa.Float(), nullable=True),
        sa.Column("verdict", sa.JSON(), nullable=False),
    )
    op.create_index("ix_loop_looks_generation_id", "loop_looks", ["generation_id"])


def downgrade() -> None:
    op.drop_index("ix_loop_looks_generation_id", "loop_looks")
    op.drop_table("loop_looks")
    op.drop_index("ix_loop_transitions_generation_id", "loop_transitions")
    op.drop_table("loop_transitions")
    op.drop_index("ix_loop_generations_state", "loop_generations")
    op.drop_index("ix_loop_generations_loop_id", "loop_generations")
    op.drop_table("loop_generations")
    op.drop_index("ix_loops_owner_key_id", "loops")
    op.drop_table("loops")
