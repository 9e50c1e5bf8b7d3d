"""mail outbox (feedback mails of runs) and sc_group_transitions (school-year change)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 12:00:00.000000
"""

from alembic import op
import sqlalchemy as sa

from mesh_common.mail.migrations import (
    mail_tables_downgrade_v1,
    mail_tables_downgrade_v2,
    mail_tables_upgrade_v1,
    mail_tables_upgrade_v2,
)


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    mail_tables_upgrade_v1(op)  # type: ignore[arg-type]  # alembic.op proxies Operations
    mail_tables_upgrade_v2(op)  # type: ignore[arg-type]
    op.create_table(
        "sc_group_transitions",
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("local_key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("remote_id", sa.String(length=200), nullable=False),
        sa.Column("successor", sa.String(length=200), nullable=True),
        sa.Column("from_semester", sa.String(length=8), nullable=False),
        sa.Column("to_semester", sa.String(length=8), nullable=False),
        sa.Column("delete_at", sa.Float(precision=53), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("execution_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "local_key", name=op.f("pk_sc_group_transitions")),
    )
    op.create_index("ix_sc_group_transitions_due", "sc_group_transitions", ["status", "delete_at"])


def downgrade() -> None:
    op.drop_index("ix_sc_group_transitions_due", table_name="sc_group_transitions")
    op.drop_table("sc_group_transitions")
    mail_tables_downgrade_v2(op)  # type: ignore[arg-type]
    mail_tables_downgrade_v1(op)  # type: ignore[arg-type]
