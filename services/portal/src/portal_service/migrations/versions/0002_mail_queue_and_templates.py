"""mail queue and templates

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 13:40:00.000000
"""

from alembic import op

from mesh_common.mail.migrations import (
    mail_tables_downgrade_v1,
    mail_tables_upgrade_v1,
    template_tables_downgrade_v1,
    template_tables_upgrade_v1,
)


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    mail_tables_upgrade_v1(op)
    template_tables_upgrade_v1(op)


def downgrade() -> None:
    template_tables_downgrade_v1(op)
    mail_tables_downgrade_v1(op)
