"""connector framework: task tables, connector tables (connections, mappings, sync markers,
links, task notifications) and the mail outbox (notification mails), for the Brevo contact sync
and the Excel participant import

Revision ID: 0003_connectors
Revises: 0002
Create Date: 2026-11-23 14:30:00.000000
"""

from alembic import op
from mesh_common.tasks.migrations import task_tables_downgrade_v1, task_tables_upgrade_v1

from mesh_common.connectors.migrations import downgrade_v1, upgrade_v1
from mesh_common.mail.migrations import mail_tables_downgrade_v1, mail_tables_upgrade_v1


revision = "0003_connectors"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    task_tables_upgrade_v1(op)  # type: ignore[arg-type]  # alembic.op proxies Operations
    upgrade_v1()
    mail_tables_upgrade_v1(op)


def downgrade() -> None:
    mail_tables_downgrade_v1(op)
    downgrade_v1()
    task_tables_downgrade_v1(op)  # type: ignore[arg-type]
