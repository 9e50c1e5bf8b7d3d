"""task and connector framework tables, confirmations and run feedback of the Schulconnex sync

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 13:30:00.000000
"""

from alembic import op
import sqlalchemy as sa

from mesh_common.connectors.migrations import downgrade_v1, upgrade_v1


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _upgrade_task_tables()
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
    _downgrade_task_tables()


# The task framework's tables as of mesh_common.tasks.tables (same DDL as course-export 0004).
def _upgrade_task_tables() -> None:
    op.create_table(
        "mesh_task_leases",
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("expires_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("task", name=op.f("pk_mesh_task_leases")),
    )
    op.create_table(
        "mesh_tasks",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=100), nullable=False),
        sa.Column("schedule_type", sa.String(length=16), nullable=True),
        sa.Column("schedule_value", sa.String(length=200), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("next_run_at", sa.Float(precision=53), nullable=True),
        sa.Column("last_run_at", sa.Float(precision=53), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_mesh_tasks")),
    )
    op.create_table(
        "mesh_task_executions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("scheduled_for", sa.Float(precision=53), nullable=True),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.Float(precision=53), nullable=False),
        sa.Column("finished_at", sa.Float(precision=53), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("parent_id", sa.String(length=64), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task"],
            ["mesh_tasks.name"],
            name=op.f("fk_mesh_task_executions_task_mesh_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mesh_task_executions")),
    )
    with op.batch_alter_table("mesh_task_executions", schema=None) as batch_op:
        batch_op.create_index("ix_mesh_task_executions_status", ["status"], unique=False)
        batch_op.create_index("ix_mesh_task_executions_task", ["task", "started_at"], unique=False)

    op.create_table(
        "mesh_task_items",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("execution_id", sa.String(length=64), nullable=False),
        sa.Column("record_key", sa.String(length=500), nullable=False),
        sa.Column("action", sa.String(length=50), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["mesh_task_executions.id"],
            name=op.f("fk_mesh_task_items_execution_id_mesh_task_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mesh_task_items")),
    )
    with op.batch_alter_table("mesh_task_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_mesh_task_items_execution", ["execution_id", "outcome"], unique=False
        )


def _downgrade_task_tables() -> None:
    with op.batch_alter_table("mesh_task_items", schema=None) as batch_op:
        batch_op.drop_index("ix_mesh_task_items_execution")

    op.drop_table("mesh_task_items")
    with op.batch_alter_table("mesh_task_executions", schema=None) as batch_op:
        batch_op.drop_index("ix_mesh_task_executions_task")
        batch_op.drop_index("ix_mesh_task_executions_status")

    op.drop_table("mesh_task_executions")
    op.drop_table("mesh_tasks")
    op.drop_table("mesh_task_leases")
