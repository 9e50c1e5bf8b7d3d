"""orders: notification mails prepared after the answer (notify_at, notify_attempts)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 15:00:00
"""

import sqlalchemy as sa
from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    # ALTER TABLE is rendered by alembic, not through the connection's schema_translate_map:
    # name the service's schema (PostgreSQL) explicitly (mesh_common.db.migrations sets it).
    schema: str | None = context.config.attributes.get("schema")
    return schema


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column("notify_at", sa.Float(precision=53), nullable=True))
        batch_op.add_column(
            sa.Column("notify_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.create_index("ix_orders_notify_at", ["notify_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=_schema()) as batch_op:
        batch_op.drop_index("ix_orders_notify_at")
        batch_op.drop_column("notify_attempts")
        batch_op.drop_column("notify_at")
