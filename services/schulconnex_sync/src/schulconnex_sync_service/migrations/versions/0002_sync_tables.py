"""task and connector framework tables, confirmations and run feedback of the Schulconnex sync

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 13:30:00.000000
"""

from alembic import op
import sqlalchemy as sa
from mesh_common.tasks.migrations import task_tables_downgrade_v1, task_tables_upgrade_v1

from mesh_common.connectors.migrations import downgrade_v1, upgrade_v1


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    task_tables_upgrade_v1(op)  # type: ignore[arg-type]  # alembic.op proxies Operations
    upgrade_v1()
    op.create_table(
        "sc_confirmations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("case_no", sa.SmallInteger(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("remote_id", sa.String(length=200), nullable=True),
        sa.Column("local_key", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("remote", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("choice", sa.String(length=200), nullable=True),
        sa.Column("remote_revision", sa.String(length=64), nullable=True),
        sa.Column("local_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.Column("decided_at", sa.Float(precision=53), nullable=True),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("execution_id", sa.String(length=64), nullable=True),
        sa.Column("applied_execution_id", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sc_confirmations")),
    )
    with op.batch_alter_table("sc_confirmations", schema=None) as batch_op:
        batch_op.create_index("ix_sc_confirmations_status", ["status", "kind"], unique=False)
        batch_op.create_index("uq_sc_confirmations_subject", ["tenant", "subject"], unique=True)

    op.create_table(
        "sc_runs",
        sa.Column("execution_id", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.Float(precision=53), nullable=False),
        sa.Column("finished_at", sa.Float(precision=53), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("execution_id", name=op.f("pk_sc_runs")),
    )


def downgrade() -> None:
    op.drop_table("sc_runs")
    with op.batch_alter_table("sc_confirmations", schema=None) as batch_op:
        batch_op.drop_index("uq_sc_confirmations_subject")
        batch_op.drop_index("ix_sc_confirmations_status")
    op.drop_table("sc_confirmations")
    downgrade_v1()
    task_tables_downgrade_v1(op)  # type: ignore[arg-type]
