"""task tables

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 12:27:59.953988
"""

from alembic import op
from mesh_common.tasks.migrations import task_tables_downgrade_v1, task_tables_upgrade_v1

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    task_tables_upgrade_v1(op)  # type: ignore[arg-type]  # alembic.op proxies Operations


def downgrade() -> None:
    task_tables_downgrade_v1(op)  # type: ignore[arg-type]
