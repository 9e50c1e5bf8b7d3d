"""Migration steps for the task tables, called from each service's own alembic revisions.

The tables are defined once in :mod:`mesh_common.tasks.tables`; a service that runs tasks adds
a revision that calls these steps with its ``op``::

    from mesh_common.tasks.migrations import task_tables_downgrade_v1, task_tables_upgrade_v1

    def upgrade() -> None:
        task_tables_upgrade_v1(op)

    def downgrade() -> None:
        task_tables_downgrade_v1(op)

A step is frozen once released: a later change to the tables gets a new ``..._v2`` used by a new
revision in each service, never an edit of an old one. A test checks that the tables these steps
create are exactly the ones ``task_tables()`` defines (prefix ``mesh_``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic.operations import Operations

_Epoch = sa.Float(precision=53)
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def task_tables_upgrade_v1(op: Operations) -> None:
    """Create ``mesh_tasks``, ``mesh_task_executions``, ``mesh_task_items`` and
    ``mesh_task_leases`` with their indexes."""
    op.create_table(
        "mesh_task_leases",
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("expires_at", _Epoch, nullable=False),
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
        sa.Column("next_run_at", _Epoch, nullable=True),
        sa.Column("last_run_at", _Epoch, nullable=True),
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
        sa.Column("scheduled_for", _Epoch, nullable=True),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("started_at", _Epoch, nullable=False),
        sa.Column("finished_at", _Epoch, nullable=True),
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
    op.create_index("ix_mesh_task_executions_status", "mesh_task_executions", ["status"])
    op.create_index("ix_mesh_task_executions_task", "mesh_task_executions", ["task", "started_at"])
    op.create_table(
        "mesh_task_items",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("execution_id", sa.String(length=64), nullable=False),
        sa.Column("record_key", sa.String(length=500), nullable=False),
        sa.Column("action", sa.String(length=50), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("created_at", _Epoch, nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["mesh_task_executions.id"],
            name=op.f("fk_mesh_task_items_execution_id_mesh_task_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mesh_task_items")),
    )
    op.create_index("ix_mesh_task_items_execution", "mesh_task_items", ["execution_id", "outcome"])


def task_tables_downgrade_v1(op: Operations) -> None:
    """Drop what :func:`task_tables_upgrade_v1` created."""
    op.drop_index("ix_mesh_task_items_execution", table_name="mesh_task_items")
    op.drop_table("mesh_task_items")
    op.drop_index("ix_mesh_task_executions_task", table_name="mesh_task_executions")
    op.drop_index("ix_mesh_task_executions_status", table_name="mesh_task_executions")
    op.drop_table("mesh_task_executions")
    op.drop_table("mesh_tasks")
    op.drop_table("mesh_task_leases")
