"""the OpenAI Batch API: files, batches, and the finished lines of running batches

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("owner_key_id", sa.Integer(), nullable=True),
        _when("created_at", nullable=False),
    )
    op.create_index("ix_files_owner_key_id", "files", ["owner_key_id"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("owner_key_id", sa.Integer(), nullable=True),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=True),
        sa.Column("output_file_id", sa.String(64), nullable=True),
        sa.Column("error_file_id", sa.String(64), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=True),
        _when("created_at", nullable=False),
        *(_when(name) for name in ("expires_at", "in_progress_at", "finalizing_at", "completed_at",
                                   "failed_at", "expired_at", "cancelling_at", "cancelled_at")),
    )
    for column in ("job_id", "owner_key_id", "input_file_id"):
        op.create_index(f"ix_batches_{column}", "batches", [column])
    op.create_table(
        "batch_results",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("batch_id", sa.String(64), sa.ForeignKey("batches.id"), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.UniqueConstraint("batch_id", "line", name="uq_batch_result"),
    )
    op.create_index("ix_batch_results_batch_id", "batch_results", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_batch_results_batch_id", "batch_results")
    op.drop_table("batch_results")
    for column in ("input_file_id", "owner_key_id", "job_id"):
        op.drop_index(f"ix_batches_{column}", "batches")
    op.drop_table("batches")
    op.drop_index("ix_files_owner_key_id", "files")
    op.drop_table("files")
