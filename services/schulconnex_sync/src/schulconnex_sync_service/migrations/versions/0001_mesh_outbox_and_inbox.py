"""mesh outbox and inbox

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23 11:48:12.669038
"""

from mesh_common.db.mesh_tables import downgrade_v1, upgrade_v1


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    upgrade_v1()


def downgrade() -> None:
    downgrade_v1()
