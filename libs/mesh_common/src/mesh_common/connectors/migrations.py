"""Migration steps for the connector tables (connections, mappings, sync markers, links,
task notifications), for the alembic history of every service that hosts connectors.

A service's revision calls ``upgrade_v1()`` / ``downgrade_v1()`` like it calls
:mod:`mesh_common.db.mesh_tables` for the outbox and inbox. A step is frozen once released: a
later change to :mod:`mesh_common.connectors.tables` gets a new ``upgrade_vN`` used by a new
revision in each service, never an edit of this one (a test compares the result of every step
with the table definitions).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

_EPOCH = sa.Float(precision=53)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade_v1() -> None:
    """Create the five connector tables with their constraints and indexes."""
    op.create_table(
        "mesh_connections",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("secrets", sa.Text(), nullable=True),
        sa.Column("secret_fields", sa.JSON(), nullable=False),
        sa.Column("created_at", _EPOCH, nullable=False),
        sa.Column("updated_at", _EPOCH, nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("last_test_at", _EPOCH, nullable=True),
        sa.Column("last_test_ok", sa.Boolean(), nullable=True),
        sa.Column("last_test_message", sa.Text(), nullable=True),
        sa.Column("last_test_latency_ms", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_mesh_connections")),
    )
    op.create_table(
        "mesh_mappings",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("fingerprint", sa.String(length=32), nullable=False),
        sa.Column("source_fields", sa.JSON(), nullable=True),
        sa.Column("comment", sa.String(length=500), nullable=True),
        sa.Column("created_at", _EPOCH, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mesh_mappings")),
        sa.UniqueConstraint("name", "version", name="uq_mesh_mappings_name_version"),
    )
    op.create_table(
        "mesh_sync_markers",
        sa.Column("system", sa.String(length=50), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("entity", sa.String(length=50), nullable=False),
        sa.Column("local_key", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_sync_at", _EPOCH, nullable=False),
        sa.Column("last_success_at", _EPOCH, nullable=True),
        sa.Column("remark", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("execution_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint(
            "system", "tenant", "entity", "local_key", name=op.f("pk_mesh_sync_markers")
        ),
    )
    op.create_index(
        "ix_mesh_sync_markers_status",
        "mesh_sync_markers",
        ["system", "tenant", "entity", "status"],
        unique=False,
    )
    op.create_table(
        "mesh_links",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("system", sa.String(length=50), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("entity", sa.String(length=50), nullable=False),
        sa.Column("local_key", sa.String(length=200), nullable=False),
        sa.Column("external_key", sa.String(length=200), nullable=False),
        sa.Column("created_at", _EPOCH, nullable=False),
        sa.Column("updated_at", _EPOCH, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mesh_links")),
        sa.UniqueConstraint(
            "system", "tenant", "entity", "external_key", name="uq_mesh_links_external"
        ),
        sa.UniqueConstraint("system", "tenant", "entity", "local_key", name="uq_mesh_links_local"),
    )
    op.create_index("ix_mesh_links_local", "mesh_links", ["entity", "local_key"], unique=False)
    op.create_table(
        "mesh_task_notifications",
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("on_success", sa.Boolean(), nullable=False),
        sa.Column("on_failure", sa.Boolean(), nullable=False),
        sa.Column("on_partial", sa.Boolean(), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("updated_at", _EPOCH, nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("task", name=op.f("pk_mesh_task_notifications")),
    )


def downgrade_v1() -> None:
    op.drop_table("mesh_task_notifications")
    op.drop_index("ix_mesh_links_local", table_name="mesh_links")
    op.drop_table("mesh_links")
    op.drop_index("ix_mesh_sync_markers_status", table_name="mesh_sync_markers")
    op.drop_table("mesh_sync_markers")
    op.drop_table("mesh_mappings")
    op.drop_table("mesh_connections")
