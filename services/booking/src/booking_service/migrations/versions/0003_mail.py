"""mail queue and mail templates

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 13:40:00
"""

from alembic import op
from mesh_common.mail.migrations import (
    mail_tables_downgrade_v1,
    mail_tables_upgrade_v1,
    template_tables_downgrade_v1,
    template_tables_upgrade_v1,
)

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    mail_tables_upgrade_v1(op)  # type: ignore[arg-type]  # alembic.op proxies Operations
    template_tables_upgrade_v1(op)  # type: ignore[arg-type]


def downgrade() -> None:
    template_tables_downgrade_v1(op)  # type: ignore[arg-type]
    mail_tables_downgrade_v1(op)  # type: ignore[arg-type]
