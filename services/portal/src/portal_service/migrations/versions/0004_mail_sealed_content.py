"""mail queue: sealed_content (the sealed real content of mail naming sensitive values)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 10:00:00.000000
"""

from alembic import op

from mesh_common.mail.migrations import mail_tables_downgrade_v2, mail_tables_upgrade_v2

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    mail_tables_upgrade_v2(op)  # type: ignore[arg-type]  # alembic.op proxies Operations


def downgrade() -> None:
    mail_tables_downgrade_v2(op)  # type: ignore[arg-type]
