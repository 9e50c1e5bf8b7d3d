"""Migration steps for the mesh tables every service owns (outbox and inbox).

The tables are defined once in :mod:`mesh_common.bus.outbox` / :mod:`mesh_common.bus.inbox`;
each service's alembic history creates them by calling these versioned steps, so the DDL exists
once instead of in every service. A step is frozen once released: a later change to the tables
gets a new ``upgrade_vN`` used by a new revision in each service, never an edit of an old one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def upgrade_v1() -> None:
    """Create ``mesh_inbox`` and ``mesh_outbox`` (with the partial index of pending rows)."""
    op.create_table(
        "mesh_inbox",
        sa.Column("handler", sa.String(length=200), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("processed_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("handler", "message_id", name=op.f("pk_mesh_inbox")),
    )
    op.create_table(
        "mesh_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("type", sa.String(length=200), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(precision=53), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.Float(precision=53), nullable=True),
        sa.Column("failed_at", sa.Float(precision=53), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mesh_outbox")),
        sa.UniqueConstraint("message_id", name=op.f("uq_mesh_outbox_message_id")),
    )
    with op.batch_alter_table("mesh_outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_mesh_outbox_pending",
            ["id"],
            unique=False,
            postgresql_where=sa.text("sent_at IS NULL AND failed_at IS NULL"),
            sqlite_where=sa.text("sent_at IS NULL AND failed_at IS NULL"),
        )


def downgrade_v1() -> None:
    with op.batch_alter_table("mesh_outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_mesh_outbox_pending",
            postgresql_where=sa.text("sent_at IS NULL AND failed_at IS NULL"),
            sqlite_where=sa.text("sent_at IS NULL AND failed_at IS NULL"),
        )

    op.drop_table("mesh_outbox")
    op.drop_table("mesh_inbox")
